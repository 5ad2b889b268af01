"""The coverage table of the README: one row per model family a deployment engineer holds.

    python tools/coverage_table.py [--models /work/zoo2] [--zoo zoo] [--only LSTM,GRU] [--json F]

For each family it loads the model the way the CLI does (load-time normalization included),
prunes it with ``prune_structured`` at the options in the row, and prints:

- the result: groups pruned, or *blocked* with the first reason when nothing could be cut;
- MACs after / before (``onnxprune.metrics`` at the sizes the CLI resolves: batch 1, 224 for
  image sides, 128 tokens; without them Swin's window dimension would count as 1);
- the oracle: for exact kinds the pruned model against the original with the removed
  channels' contributions zeroed (``onnxprune.testing.zeroed``: quantized weights set to their
  zero point, recurrent units' rows and columns cleared); for ``--hidden`` the stream oracle
  (``onnxprune.testing.stream_oracle``: norms computed over the kept channels). Both on two
  random inputs in onnxruntime; the figure is max |diff| / max |reference|;
- valid: ``onnx.checker`` (full check) passes and onnxruntime runs the pruned model.

Weights that are all zero (torchvision's zero-initialized ViT head) are first given small
random values, or every oracle would compare zeros with zeros; the row says so.

Where the models come from (random weights; none is committed):

    /tmp/torchvenv/bin/python tools/export_zoo.py --out zoo          # resnet50, convnext_tiny, vit_b_16
    python tools/export_quantized.py                                  # quant/*_{qdq,qop,dyn}.onnx
    python tools/export_quantized.py /work/zoo2/hidden/bert_tiny.onnx # quant/bert_tiny_nbits.onnx
    /tmp/torchvenv/bin/python tools/export_attention.py               # attn/swin_t.onnx (+ --fused MiniLM)
    /tmp/torchvenv/bin/python tools/export_transformers.py            # hidden/bert_tiny.onnx
    /tmp/torchvenv/bin/python tools/export_recurrent.py export        # rnn/*.onnx

The foreign-exporter rows (jax2tf constant chains, keras NHWC, fp16 through Cast) are built
here with ``onnxprune.testing.graphs.foreign`` (8 channels, so they are cut with exact counts).
A model that is missing is listed as such, with the command that makes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.load import load_model, normalize_model
from onnxprune.metrics.macs import count_macs
from onnxprune.runtime.shapes import resolve_shapes
from onnxprune.structured.dependency import analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.graphs.foreign import cast_weights, jax2tf_model, nhwc_block
from onnxprune.testing.oracles import (
    random_feeds,
    randomize_zero_weights,
    run,
    session,
    zeroed,
)
from onnxprune.testing.stream_oracle import stream_reference


@dataclass
class Row:
    family: str
    model: str
    """A path under ``--models`` (``zoo:NAME`` for ``--zoo``), or ``built:NAME``."""
    options: dict = field(default_factory=lambda: {"ratio": 0.3})
    oracle: str = "exact"
    """``exact`` or ``stream`` (``--hidden``)."""


BUILT: dict[str, Callable[[], onnx.ModelProto]] = {
    "jax2tf": jax2tf_model,
    "nhwc": nhwc_block,
    "fp16": lambda: cast_weights(np.float16),
}

EXACT_COUNTS = {"ratio": 0.5, "round_to": 1}
HEADS = {"ratio": 0.3, "heads": 0.25}
HIDDEN = {"ratio": 0.3, "hidden": 0.3}

ROWS = [
    Row("quantized QDQ", "quant/resnet50_qdq.onnx"),
    Row("quantized QOperator", "quant/resnet50_qop.onnx"),
    Row("quantized dynamic", "quant/resnet50_dyn.onnx"),
    Row("quantized QDQ (transformer)", "quant/bert_tiny_qdq.onnx"),
    Row("weight-only 4-bit MatMulNBits", "quant/bert_tiny_nbits.onnx"),
    Row("packed-QKV ViT-B/16", "zoo:vit_b_16", HEADS),
    Row("Swin-T windowed attention", "attn/swin_t.onnx", HEADS),
    Row("fused-attention MiniLM (ORT optimizer)", "attn/minilm_fused.onnx", HEADS),
    Row("hidden-stream ConvNeXt-T", "zoo:convnext_tiny", HIDDEN, "stream"),
    Row("hidden-stream Swin-T", "attn/swin_t.onnx", HIDDEN, "stream"),
    Row("hidden-stream Swin-T, heads too", "attn/swin_t.onnx", {**HIDDEN, "heads": 0.3}, "stream"),
    Row("hidden-stream ViT-B/16", "zoo:vit_b_16", {**HIDDEN, "heads": 0.25}, "stream"),
    Row("hidden-stream BERT", "hidden/bert_tiny.onnx", HIDDEN, "stream"),
    Row("LSTM (bidirectional, 2 layers)", "rnn/speech_lstm.onnx"),
    Row("GRU (2 layers)", "rnn/speech_gru.onnx"),
    Row("If (branch weights outside)", "rnn/speech_if.onnx"),
    Row("If (branch weights inside)", "rnn/speech_if_inner.onnx"),
    Row("Loop (state refined by a Conv)", "rnn/speech_loop.onnx"),
    Row("jax2tf-style constant-chain weights", "built:jax2tf", EXACT_COUNTS),
    Row("NHWC keras-style (Transpose sandwiches)", "built:nhwc", EXACT_COUNTS),
    Row("fp16 weights through Cast", "built:fp16", EXACT_COUNTS),
]


def _load(row: Row, models: Path, zoo: Path) -> tuple[onnx.ModelProto, list[str]]:
    kind, _, name = row.model.partition(":")
    if kind == "built":
        model = BUILT[name]()
        return model, normalize_model(model)
    path = zoo / f"{name}.onnx" if kind == "zoo" else models / row.model
    if not path.exists():
        raise FileNotFoundError(path)
    return load_model(path).model, []


def _relative_error(reference: onnx.ModelProto, pruned: onnx.ModelProto, model) -> float:
    worst = 0.0
    for seed in (0, 1):
        feeds = random_feeds(model, seed, symbolic=2)
        for ref, got in zip(run(reference, feeds), run(pruned, feeds), strict=True):
            ref64 = np.asarray(ref, np.float64)
            scale = max(float(np.abs(ref64).max()), 1e-12)
            worst = max(worst, float(np.abs(ref64 - got).max()) / scale)
    return worst


def _valid(pruned: onnx.ModelProto, model: onnx.ModelProto) -> str:
    try:
        onnx.checker.check_model(pruned, full_check=True)
        session(pruned).run(None, random_feeds(model, 0, symbolic=2))
        return "yes"
    except Exception as exc:  # a tool's row: whatever failed is the finding
        return f"NO: {str(exc).splitlines()[0][:80]}"


def measure(row: Row, models: Path, zoo: Path) -> dict:
    """One row of the table (see the module docstring)."""
    out: dict = {"family": row.family, "model": row.model, "options": row.options}
    try:
        model, notes = _load(row, models, zoo)
    except FileNotFoundError as exc:
        return {**out, "result": f"missing: {exc}"}
    randomized = randomize_zero_weights(model)
    t0 = time.perf_counter()
    try:
        pruned, result = prune_structured(model, StructuredOptions(**row.options))
    except OnnxPruneError as exc:
        return {**out, "result": f"refused: {exc}"}
    out["prune_s"] = round(time.perf_counter() - t0, 1)
    shapes = resolve_shapes(model, (), None).shapes  # what the CLI counts at: batch 1, ...
    before, after = count_macs(model, shapes)[0], count_macs(pruned, shapes)[0]
    out["macs_ratio"] = after / before if before else 1.0
    reasons = sorted({b["reason"] for b in result.blocked})
    out["blocked_reasons"] = reasons
    cut = [g for g in result.plan.groups if len(g.kept) < g.slots]
    if not cut:
        out["result"] = "blocked: " + (reasons[0] if reasons else "nothing to cut")
        return out
    stream = (result.hidden or {}).get("groups", []) if row.oracle == "stream" else []
    out["result"] = f"pruned: {len(cut)} groups" + (
        f" ({sum(g['channels_after'] < g['channels_before'] for g in stream)} streams)"
        if row.oracle == "stream" else ""
    )  # fmt: skip
    if row.oracle == "stream" and not any(g["channels_after"] < g["channels_before"] for g in stream):
        groups = analyze(model, hidden=True)  # the stream groups, with why each stayed whole
        why = [g.blocked_reason for g in groups if g.stream and g.blocked_reason]
        out["result"] += "; stream kept whole: " + (why[0] if why else "no normalized stream found")
    if randomized:
        out["result"] += f"; {randomized} all-zero weights randomized first"
    try:
        if row.oracle == "stream" and any(
            g["channels_after"] < g["channels_before"] for g in stream
        ):
            reference, oracle = stream_reference(model, result.plan), "stream oracle"
        else:
            reference, oracle = zeroed(model, result.plan), "exactness oracle"
        out["oracle"] = oracle
        out["rel_error"] = _relative_error(reference, pruned, model)
    except Exception as exc:  # a tool's row: whatever failed is the finding
        out["oracle"], out["rel_error"] = f"failed: {str(exc).splitlines()[0][:80]}", None
    out["valid"] = _valid(pruned, model)
    out["notes"] = notes
    return out


def _cells(r: dict) -> list[str]:
    err = r.get("rel_error")
    check = "-" if "oracle" not in r else (
        f"{r['oracle']}: {err:.1e}" if err is not None else r["oracle"]
    )  # fmt: skip
    macs = f"{r['macs_ratio']:.3f}" if "macs_ratio" in r else "-"
    opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in r["options"].items())
    opts = opts.replace("--ratio", "--structured")
    return [r["family"], r["model"], f"`{opts}`", r["result"], macs, check, r.get("valid", "-")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, default=Path("/work/zoo2"))
    ap.add_argument("--zoo", type=Path, default=Path("zoo"))
    ap.add_argument("--only", default=None, help="comma-separated family name prefixes")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = [r for r in ROWS if args.only is None or any(
        r.family.startswith(p) for p in args.only.split(","))]  # fmt: skip
    head = ["family", "model", "options", "result", "MACs after/before", "check", "valid in ORT"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    results = []
    for row in rows:
        r = measure(row, args.models, args.zoo)
        results.append(r)
        print("| " + " | ".join(_cells(r)) + " |", flush=True)
    print("\n(check: max |pruned - reference| / max |reference| on 2 random inputs; exact "
          "means within float rounding, ~1e-6)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
