"""Prune a real model with ``--report r.html`` and screenshot the page in headless Chromium.

Usage::

    python tools/render_report.py [MODEL] [--out DIR] [--structured R] [--size 1200,3600]

MODEL defaults to /work/main/zoo/resnet50.onnx, else a small CNN built here
(``onnxprune.testing.graphs.mixed_cnn``). Writes DIR/r.html, DIR/pruned.onnx and
DIR/report.png (DIR: ./render_report_out). Needs Debian's ``chromium`` package
(``apt-get install -y chromium``); CI does not run this. It checks what a test cannot: that a
browser draws the page (plots visible, nothing fetched), and prints the timings.

Measured on the shared 2-core dev machine, ResNet-50, --structured 0.3, --runs 10 (noisy):
the prune with a JSON report 10-12 s, with the HTML report 15-17 s (the per-op profile of
both models, the second load and matplotlib: ~5 s), the screenshot ~2.5 s; the page ~145 KiB.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_MODEL = Path("/work/main/zoo/resnet50.onnx")


def _model(arg: str | None, out: Path) -> Path:
    if arg:
        return Path(arg)
    if DEFAULT_MODEL.exists():
        return DEFAULT_MODEL
    import onnx

    from onnxprune.testing.graphs import mixed_cnn

    path = out / "mixed_cnn.onnx"
    onnx.save(mixed_cnn(), path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--out", default="render_report_out")
    ap.add_argument("--structured", default="0.3")
    ap.add_argument("--size", default="1200,3600", help="browser window W,H")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = _model(args.model, out)
    page, png = out / "r.html", out / "report.png"
    cmd = [sys.executable, "-m", "onnxprune", str(model), "--structured", args.structured,
           "-o", str(out / "pruned.onnx"), "--report", str(page), "--runs", "10", "--force", "-q"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    t1 = time.perf_counter()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not found: apt-get install -y chromium", file=sys.stderr)
        return 1
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
         f"--window-size={args.size}", page.as_uri()],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    t2 = time.perf_counter()
    print(f"command: {' '.join(cmd)}")
    print(f"prune + HTML report {t1 - t0:.1f} s, screenshot {t2 - t1:.1f} s")
    print(f"page {page} ({page.stat().st_size / 1024:.0f} KiB), screenshot {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
