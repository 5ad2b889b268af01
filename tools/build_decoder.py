"""Write a random-weight Llama-style decoder (or the memory benchmark's MLP) with external data.

No torch: weights go straight to the data file one tensor at a time, so a 2B-parameter
(8 GB fp32) model is written with well under 1 GB of memory. The graph is the one
``onnxprune.testing.decoder`` documents (inputs input_ids and position_ids, int64 [batch, seq]).

    python tools/build_decoder.py /work/zoo2/large/llama-0.5B.onnx --preset 0.5B
    python tools/build_decoder.py tiny.onnx --layers 2 --hidden 64 --heads 8 --kv-heads 4 --ffn 96 --vocab 128
    python tools/build_decoder.py mlp.onnx --mlp 10000x6      # the 2.4 GB MLP
    python tools/build_decoder.py --calib ids.npz --vocab 32000 --samples 32 --seq 64
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from onnxprune.testing.decoder import PRESETS, write_decoder, write_mlp


def write_calib(path: str, vocab: int, samples: int, seq: int, seed: int = 0) -> None:
    """An .npz of int64 input_ids [samples, seq] and the matching position_ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (samples, seq), dtype=np.int64)
    pos = np.broadcast_to(np.arange(seq, dtype=np.int64), (samples, seq)).copy()
    np.savez(path, input_ids=ids, position_ids=pos)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", nargs="?")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    for name in ("layers", "hidden", "heads", "kv-heads", "ffn", "vocab", "seed"):
        p.add_argument(f"--{name}", type=int)
    p.add_argument("--mlp", help="WIDTHxLAYERS: write the Gemm+Relu MLP instead")
    p.add_argument("--calib", help="write an .npz of token sequences to this path")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    a = p.parse_args(argv)
    if a.calib:
        write_calib(a.calib, a.vocab or PRESETS[a.preset].vocab, a.samples, a.seq)
        print(f"wrote {a.calib}: {a.samples} sequences of {a.seq} tokens")
        if not a.output:
            return 0
    if not a.output:
        p.error("give the output path")
    t0 = time.perf_counter()
    if a.mlp:
        width, layers = (int(v) for v in a.mlp.lower().split("x"))
        write_mlp(a.output, width, layers)
        print(
            f"wrote {a.output}: MLP {layers} x {width}^2 ({layers * width * width * 4 / 1e9:.2f} GB)"
            f" in {time.perf_counter() - t0:.0f} s"
        )
        return 0
    overrides = {
        k.replace("-", "_"): v
        for k, v in vars(a).items()
        if k in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "seed") and v is not None
    }
    cfg = dataclasses.replace(PRESETS[a.preset], **overrides)
    write_decoder(a.output, cfg)
    print(
        f"wrote {a.output}: {cfg.params / 1e9:.3f}B parameters ({cfg.params * 4 / 1e9:.2f} GB fp32), "
        f"{cfg} in {time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
