"""Tiny ONNX graphs built with ``onnx.helper``, reused by every structured-pruning test.

``Builder`` writes graphs the way exporters do (NCHW, constant weights as initializers,
random values from a seed); the named blocks compose it: ``conv_bn_relu``, ``residual_block``,
``se_block``, ``chain`` (``blocks``), and the attention graphs ``mha_block``,
``encoder_block``, ``decoder_block`` in every head-split form of ``HEAD_FORMS``
(``transformer``). Every builder returns a checked ``ModelProto`` whose outputs have inferred
shapes. Import from here (``from onnxprune.testing.graphs import Builder``): the split into
modules only keeps each one short.
"""

from __future__ import annotations

from onnxprune.testing.graphs.blocks import (
    chain,
    concat_block,
    conv_bn_relu,
    depthwise_block,
    dynamic_batch,
    flatten_gemm,
    gemm_mlp,
    grouped_block,
    mixed_cnn,
    mlp_block,
    residual_block,
    se_block,
    small_cnn,
    split_block,
    unet_block,
)
from onnxprune.testing.graphs.builder import OPSET, Builder
from onnxprune.testing.graphs.transformer import (
    HEAD_FORMS,
    attention,
    decoder_block,
    encoder_block,
    expand_sizes,
    gelu_erf,
    layer_norm,
    mha_block,
    repeat_kv,
    rms_norm,
    size_of,
)

__all__ = [
    "HEAD_FORMS",
    "OPSET",
    "Builder",
    "attention",
    "chain",
    "concat_block",
    "conv_bn_relu",
    "decoder_block",
    "depthwise_block",
    "dynamic_batch",
    "encoder_block",
    "expand_sizes",
    "flatten_gemm",
    "gelu_erf",
    "gemm_mlp",
    "grouped_block",
    "layer_norm",
    "mha_block",
    "mixed_cnn",
    "mlp_block",
    "repeat_kv",
    "residual_block",
    "rms_norm",
    "se_block",
    "size_of",
    "small_cnn",
    "split_block",
    "unet_block",
]
