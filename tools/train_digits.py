"""Train two small classifiers on scikit-learn's bundled digits and export them to models/.

    python tools/train_digits.py [--out models] [--epochs-cnn 60] [--epochs-mlp 80]

Data: ``sklearn.datasets.load_digits`` (1797 8x8 grayscale images, 10 classes, ships with
scikit-learn: no download), pixels scaled to [0, 1]; a fixed stratified split holds out 20% as
the test set (360 samples); the calibration set is the first 256 samples of the training split.

Models (opset 17, TorchScript exporter, dynamic batch dimension ``N``, output ``logits``):

* ``digits_cnn.onnx``: input ``input`` [N, 1, 8, 8]; three Conv3x3(pad 1)+BatchNorm+ReLU
  (32, 64, 64 channels) with a MaxPool after the second, Flatten, Gemm 1024->64, ReLU,
  Gemm 64->10. Exported in eval mode with ``training=PRESERVE, do_constant_folding=False`` so the
  BatchNormalization nodes stay in the graph.
* ``digits_mlp.onnx``: LeNet-300-100 shape, input ``input`` [N, 64]; Gemm 64->300, ReLU,
  Gemm 300->100, ReLU, Gemm 100->10.

Also writes ``digits_{cnn,mlp}_{calib,test}.npz`` (one key, ``input``, usable as ``--calib``),
``digits_test_labels.npy`` (int64) and ``README.md`` with the onnxruntime test accuracies.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn
from torch_compat import setup_torch

SEED = 0
OPSET = 17
N_CALIB = 256
TEST_FRACTION = 0.2
MIN_ACC = {"cnn": 0.97, "mlp": 0.96}


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixel values 0..16 -> [0, 1]
    y = y.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, 32), *block(32, 64), nn.MaxPool2d(2), *block(64, 64)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel (zero fill) on [B, 1, 8, 8] images."""
    out = torch.zeros_like(x)
    dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
    src = x[:, :, max(0, -dy) : 8 - max(0, dy), max(0, -dx) : 8 - max(0, dx)]
    out[:, :, max(0, dy) : 8 - max(0, -dy), max(0, dx) : 8 - max(0, -dx)] = src
    return out


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    image: bool,
    seed: int,
) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(xt) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            xb = xt[idx]
            if image:
                xb = augment(xb.view(-1, 1, 8, 8), gen)
            opt.zero_grad()
            loss_fn(model(xb), yt[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def export(model: nn.Module, example: torch.Tensor, path: str, keep_bn: bool) -> None:
    kwargs = {}
    if keep_bn:
        kwargs = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
    tmp = path + ".tmp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            tmp,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            **kwargs,
        )
    os.replace(tmp, path)


def ort_check(path: str, x: np.ndarray, y: np.ndarray, ref: np.ndarray) -> float:
    """Run at batch 1 and 64 and the full test set; compare to torch; return test accuracy."""
    import onnx
    import onnxruntime as ort

    ops = {n.op_type for n in onnx.load(path).graph.node}
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for n in (1, 64):
        out = sess.run(None, {"input": x[:n]})[0]
        assert out.shape == (n, 10), (path, out.shape)
        assert np.allclose(out, ref[:n], atol=1e-4, rtol=1e-4), (path, n)
    logits = sess.run(None, {"input": x})[0]
    diff = float(np.max(np.abs(logits - ref)))
    acc = float(np.mean(logits.argmax(1) == y))
    print(f"  {path}: ops {sorted(ops)}; max |ort - torch| {diff:.2e}; batch 1, 64 ok")
    return acc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="models")
    ap.add_argument("--epochs-cnn", type=int, default=60)
    ap.add_argument("--epochs-mlp", type=int, default=80)
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    setup_torch(SEED)
    os.makedirs(args.out, exist_ok=True)
    x_tr, y_tr, x_te, y_te = load_split()
    print(f"digits: train {len(x_tr)}, test {len(x_te)}, calib {N_CALIB} (from train)")

    inputs = {
        "cnn": (x_tr.reshape(-1, 1, 8, 8), x_te.reshape(-1, 1, 8, 8)),
        "mlp": (x_tr, x_te),
    }
    results: dict[str, float] = {}
    for kind, cls, epochs in (
        ("cnn", DigitsCNN, args.epochs_cnn),
        ("mlp", DigitsMLP, args.epochs_mlp),
    ):
        t0 = time.perf_counter()
        torch.manual_seed(SEED)
        tr, te = inputs[kind]
        model = train(cls(), tr, y_tr, epochs, image=kind == "cnn", seed=SEED)
        with torch.no_grad():
            ref = model(torch.from_numpy(te)).numpy()
        torch_acc = float(np.mean(ref.argmax(1) == y_te))
        path = os.path.join(args.out, f"digits_{kind}.onnx")
        export(model, torch.from_numpy(te[:1]), path, keep_bn=kind == "cnn")
        np.savez(os.path.join(args.out, f"digits_{kind}_calib.npz"), input=tr[:N_CALIB])
        np.savez(os.path.join(args.out, f"digits_{kind}_test.npz"), input=te)
        print(f"{kind}: trained {epochs} epochs in {time.perf_counter() - t0:.1f}s")
        acc = ort_check(path, te, y_te, ref)
        print(f"  test accuracy: onnxruntime {acc:.4f} (torch {torch_acc:.4f})")
        results[kind] = acc
    np.save(os.path.join(args.out, "digits_test_labels.npy"), y_te)

    import onnx

    cnn_ops = [n.op_type for n in onnx.load(os.path.join(args.out, "digits_cnn.onnx")).graph.node]
    n_bn = cnn_ops.count("BatchNormalization")
    if n_bn == 0:
        print("error: digits_cnn.onnx has no BatchNormalization node", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t_start
    write_readme(args.out, results, len(x_te), n_bn)
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"{args.out}/ total {total / 1024:.0f} KiB; done in {elapsed:.0f}s")
    low = [k for k, a in results.items() if a < MIN_ACC[k]]
    if low:
        print(f"error: accuracy below target for {low}", file=sys.stderr)
        return 1
    return 0


def write_readme(out: str, acc: dict[str, float], n_test: int, n_bn: int) -> None:
    import onnxruntime as ort

    text = f"""# Shipped models

Made by `python tools/train_digits.py` (the tools venv with the CPU torch wheel; under half a
minute on the 2-core machine; reruns reproduce these files byte for byte). Trained on scikit-learn's bundled `load_digits`
(8x8 grayscale, 10 classes, pixels scaled to [0, 1]), seed {SEED}; a stratified split holds out
{n_test} test samples; the calibration set is the first {N_CALIB} training samples.

| file | what |
| --- | --- |
| `digits_cnn.onnx` | input `input` [N,1,8,8] float32 -> `logits` [N,10]; Conv3x3+BatchNorm+ReLU x3 (32, 64, 64 channels, MaxPool after the second), Flatten, Gemm 1024->64, ReLU, Gemm 64->10; {n_bn} BatchNormalization nodes kept |
| `digits_mlp.onnx` | input `input` [N,64] float32 -> `logits` [N,10]; LeNet-300-100: Gemm 64->300, ReLU, Gemm 300->100, ReLU, Gemm 100->10 |
| `digits_cnn_calib.npz`, `digits_cnn_test.npz` | key `input`: [{N_CALIB},1,8,8] / [{n_test},1,8,8] float32 (`--calib` files) |
| `digits_mlp_calib.npz`, `digits_mlp_test.npz` | key `input`: [{N_CALIB},64] / [{n_test},64] float32 |
| `digits_test_labels.npy` | int64 [{n_test}] labels of the test inputs (same order) |

Both models: opset {OPSET}, dynamic batch dimension `N`.

Test accuracy, measured with onnxruntime {ort.__version__} (CPU) on the {n_test} held-out samples:

| model | test accuracy |
| --- | --- |
| digits_cnn.onnx | {acc["cnn"]:.4f} |
| digits_mlp.onnx | {acc["mlp"]:.4f} |
"""
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
