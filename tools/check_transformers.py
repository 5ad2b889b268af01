"""Export small transformers and check that neuron and head pruning keeps them exact (issue #4).

    python tools/check_transformers.py [--zoo DIR | --out DIR] [--neurons 0.3]
        [--heads 0.25,0.5] [--torch-python /work/tvenv/bin/python] [--minilm]

Exports (random weights, CPU torch, through ``tools/export_transformers.py`` run by an
interpreter that has torch) a BERT-style encoder, a ViT and a Llama-style GQA decoder into a
fresh directory, or checks the models already in ``--zoo``. Each is pruned with
``--structured`` ``--neurons`` and every ``--heads`` ratio, and must:

* pass ``onnx.checker.check_model(full_check=True)`` with the same inputs and outputs;
* run in onnxruntime (CPU) at two batch/sequence sizes other than the export example's;
* equal the original with the removed neurons' and heads' outgoing weights zeroed (the
  exactness oracle of ``tests/oracles.py``), relative error <= 1e-4 on two seeds;
* be smaller: fewer parameters and fewer MACs.

Prints one markdown table (heads and FFN neurons per layer before -> after) and exits 1 on
any failure. ``--minilm`` also checks ``zoo/minilm.onnx`` (pretrained, exported separately).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.metrics.counts import count_macs, count_params
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.oracles import assert_close, zeroed

ROOT = Path(__file__).resolve().parents[1]

MODELS = {"bert": "bert_tiny", "vit": "vit_tiny", "gqa": "gqa_decoder"}
SIZES = ((2, 8), (3, 5))
"""(batch, sequence) for symbolic dims: neither is the export example's (2 x 6 / 2 x 7)."""


def feeds(model: onnx.ModelProto, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Random inputs: token ids in [0, 100), masks all ones, floats standard normal."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = [
            d.dim_value if d.HasField("dim_value") else (batch if i == 0 else seq)
            for i, d in enumerate(t.shape.dim)
        ]
        if t.elem_type == onnx.TensorProto.INT64:
            out[vi.name] = (
                np.ones(shape, np.int64)
                if "mask" in vi.name
                else rng.integers(0, 100, size=shape, dtype=np.int64)
            )
        else:
            out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def run(model: onnx.ModelProto, f: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return s.run(None, f)


def _span(values: list[tuple[int, int]]) -> str:
    """'4 -> 3' when every layer agrees, else each layer's pair."""
    if not values:
        return "-"
    if len(set(values)) == 1:
        b, a = values[0]
        return f"{b} -> {a} (x{len(values)})"
    return ", ".join(f"{b}->{a}" for b, a in values)


def check(path: Path, neurons: float, heads: float) -> tuple[list[str], list[str]]:
    """One table row and the failures of one model at one setting."""
    model = onnx.load(path)
    pruned, result = prune_structured(model, StructuredOptions(ratio=neurons, heads=heads))
    fails: list[str] = []
    plan = result.plan
    head_groups = [(g.heads, g.heads_after) for g in result.groups if g.heads]
    ffn = [(g.channels_before, g.channels_after) for g in result.groups if not g.heads]
    try:
        onnx.checker.check_model(pruned, full_check=True)
        same_io = [(i.name, i.type) for i in pruned.graph.input] == [
            (i.name, i.type) for i in model.graph.input
        ] and [(o.name, o.type) for o in pruned.graph.output] == [
            (o.name, o.type) for o in model.graph.output
        ]
        if not same_io:
            fails.append("inputs or outputs changed")
    except Exception as exc:  # the checker raises several types
        fails.append(f"check_model: {str(exc).splitlines()[0]}")
    exact = "-"
    if plan is not None and not plan.empty:
        ref_model = zeroed(model, plan)
        try:
            for seed, (batch, seq) in enumerate(SIZES):
                f = feeds(model, batch, seq, seed)
                assert_close(run(ref_model, f), run(pruned, f), 1e-4)
            exact = "yes"
        except AssertionError as exc:
            exact = "NO"
            fails.append(f"not exact: {exc}")
        except Exception as exc:  # onnxruntime refuses the pruned model
            exact = "does not run"
            fails.append(f"onnxruntime: {str(exc).splitlines()[0]}")
    else:
        fails.append("nothing was pruned")
    p0, p1 = count_params(model)[0], count_params(pruned)[0]
    m0, m1 = count_macs(model)[0], count_macs(pruned)[0]
    if not (p1 < p0 and m1 < m0):
        fails.append("not smaller")
    row = [
        path.stem,
        f"{neurons:g} / {heads:g}",
        _span(head_groups),
        _span(ffn),
        f"{p1 / p0:.3f}",
        f"{m1 / m0:.3f}",
        exact,
    ]
    return row, fails


def export(out: Path, names: list[str], python: str) -> None:
    cmd = [python, str(ROOT / "tools" / "export_transformers.py"), "--out", str(out)]
    cmd += ["--only", ",".join(names)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--zoo", type=Path, help="check the models already in DIR (no export)")
    where.add_argument("--out", type=Path, help="export into DIR (default: a temporary one)")
    ap.add_argument("--neurons", type=float, default=0.3)
    ap.add_argument("--heads", default="0.25,0.5", help="comma-separated --heads ratios")
    ap.add_argument("--torch-python", default="/work/tvenv/bin/python")
    ap.add_argument("--minilm", action="store_true", help="also check zoo/minilm.onnx")
    args = ap.parse_args(argv)
    heads = [float(h) for h in args.heads.split(",") if h]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.zoo
        if folder is None:
            folder = args.out or Path(tmp)
            export(folder, list(MODELS), args.torch_python)
        paths = [folder / f"{n}.onnx" for n in MODELS.values()]
        if args.minilm:
            paths.append((args.zoo or ROOT / "zoo") / "minilm.onnx")
        print(
            "\n| model | neurons / heads | heads per layer | FFN neurons per layer "
            "| params ratio | MAC ratio | exact (oracle, 2 sizes) |"
        )
        print("|---|---|---|---|---|---|---|")
        failures = []
        for path in paths:
            for h in heads:
                row, fails = check(path, args.neurons, h)
                print("| " + " | ".join(row) + " |", flush=True)
                failures += [f"{path.stem} (heads {h:g}): {f}" for f in fails]
    for f in failures:
        print("FAIL", f)
    print("\nall checks passed" if not failures else f"\n{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
