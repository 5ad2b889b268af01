"""Calibration inputs from .npz, folders of .npy files and folders of images: every form the
loader accepts, the preprocessing math, and every way the files can be wrong."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxprune.calibration.data import load_calibration, make_inputs
from onnxprune.calibration.preprocess import Preprocess, parse_preprocess
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.runtime.feeds import InputBatch
from onnxprune.runtime.session import run_model

CPU = ["CPUExecutionProvider"]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def classifier(batch: int | str = "batch", features: int | str = 4) -> onnx.ModelProto:
    """x [batch, 4] -> Gemm -> scores [batch, 3]."""
    w = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["scores"], transB=1)],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(w, "w")],
    )
    return finish(graph)


def two_inputs() -> onnx.ModelProto:
    """a [batch, 4] + b [batch, 4] -> y."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    return finish(graph)


def image_model(
    channels: int = 3,
    h: int | str = 6,
    w: int | str = 5,
    layout: str = "NCHW",
    elem: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """A tiny image model: x (NCHW or NHWC, float or uint8) -> [Cast] [Transpose] -> Conv."""
    weight = np.random.default_rng(3).standard_normal((2, channels, 3, 3)).astype(np.float32)
    nodes, src = [], "x"
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [src], ["xf"], to=TensorProto.FLOAT))
        src = "xf"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [src], ["xt"], perm=[0, 3, 1, 2]))
        src = "xt"
    nodes.append(helper.make_node("Conv", [src, "w"], ["y"], pads=[1, 1, 1, 1]))
    shape = ["N", channels, h, w] if layout == "NCHW" else ["N", h, w, channels]
    graph = helper.make_graph(
        nodes,
        "img",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, h, w])],
        [numpy_helper.from_array(weight, "w")],
    )
    return finish(graph)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def write_images(folder: Path, n: int, h: int = 6, w: int = 5, mode: str = "RGB", ext="png"):
    """``n`` seeded random images; returns their pixel arrays in sorted filename order."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(7)
    pixels = []
    for i in range(n):
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
        Image.fromarray(arr, mode=mode).save(folder / f"img{i:03d}.{ext}")
        pixels.append(arr)
    return pixels


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


# ---- .npz (the form validate.make_inputs always took) ----------------------------------------


def test_npz_still_loads_through_load_calibration(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.savez(tmp_path / "c.npz", x=x)
    batch = load_calibration(tmp_path / "c.npz", classifier(), max_samples=4)
    assert isinstance(batch, InputBatch)
    assert np.array_equal(batch["x"], x[:4])
    assert batch.notes == [f"inputs from {tmp_path / 'c.npz'} (4 samples)"]
    routed = make_inputs(classifier(), calib=tmp_path / "c.npz", max_samples=4)
    assert np.array_equal(routed["x"], x[:4]) and routed.notes == batch.notes


def test_npz_with_max_samples_reads_only_the_rows_kept(tmp_path):
    """Bytes past the rows kept are never read: corrupting them (a CRC error on a full read)
    does not matter with max_samples."""
    x = np.random.default_rng(0).standard_normal((20000, 4)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    raw = (tmp_path / "c.npz").read_bytes()
    tail = x[10000:].tobytes()  # far past zipfile's read-ahead
    at = raw.index(tail)
    (tmp_path / "c.npz").write_bytes(raw[:at] + bytes(len(tail)) + raw[at + len(tail) :])
    batch = load_calibration(tmp_path / "c.npz", classifier(), max_samples=10)
    assert np.array_equal(batch["x"], x[:10]) and batch["x"].flags.writeable
    with pytest.raises(OnnxPruneError, match=r"not a numpy \.npz file"):
        load_calibration(tmp_path / "c.npz", classifier())


@pytest.mark.parametrize("form", ["compressed", "fortran", "fewer_rows"])
def test_npz_head_read_matches_a_full_read(tmp_path, form):
    x = np.random.default_rng(1).standard_normal((9, 4)).astype(np.float32)
    if form == "compressed":
        np.savez_compressed(tmp_path / "c.npz", x=x)
    else:
        np.savez(tmp_path / "c.npz", x=np.asfortranarray(x) if form == "fortran" else x)
    keep = 20 if form == "fewer_rows" else 3
    batch = load_calibration(tmp_path / "c.npz", classifier(), max_samples=keep)
    assert np.array_equal(batch["x"], x[:keep]) and batch["x"].flags.c_contiguous


# ---- folders of .npy -------------------------------------------------------------------------


def test_one_npy_per_input_holds_all_samples(tmp_path):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((10, 4)).astype(np.float32) for _ in range(2))
    folder = tmp_path / "calib"
    folder.mkdir()
    np.save(folder / "a.npy", a)
    np.save(folder / "b.npy", b)
    batch = load_calibration(folder, two_inputs(), max_samples=7)
    assert np.array_equal(batch["a"], a[:7]) and np.array_equal(batch["b"], b[:7])
    # the trimmed rows are copied out of the memory map: a plain array, nothing mapped
    assert type(batch["a"]) is np.ndarray and batch["a"].flags.owndata
    assert "(7 samples)" in batch.notes[0]


def test_single_input_folder_with_its_own_name_is_all_samples(tmp_path):
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    folder = tmp_path / "calib"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    batch = load_calibration(folder, classifier())
    assert np.array_equal(batch["x"], x)


@pytest.mark.parametrize("leading_one", [False, True])
def test_one_sample_per_npy_file_stacked_in_sorted_order(tmp_path, leading_one):
    folder = tmp_path / "calib"
    folder.mkdir()
    samples = {}
    for name in ["s10", "s02", "s01", "s03"]:  # written out of order
        s = np.random.default_rng(len(samples)).standard_normal(4).astype(np.float32)
        np.save(folder / f"{name}.npy", s[None] if leading_one else s)
        samples[name] = s
    batch = load_calibration(folder, classifier())
    expected = np.stack([samples[k] for k in sorted(samples)])
    assert batch["x"].shape == (4, 4) and np.array_equal(batch["x"], expected)
    assert "one per .npy file" in batch.notes[0] and "(4 samples)" in batch.notes[0]
    outs = run_model(save(classifier(), tmp_path / "m.onnx"), batch, CPU)
    assert outs[0].shape == (4, 3)


def test_max_samples_stops_reading_files(tmp_path):
    """Files past the first N (sorted) are never opened: a broken one there does no harm."""
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"{i}.npy", np.full(4, i, np.float32))
    (folder / "9.npy").write_bytes(b"not numpy at all")
    batch = load_calibration(folder, classifier(), max_samples=2)
    assert np.array_equal(batch["x"], [[0] * 4, [1] * 4])
    with pytest.raises(OnnxPruneError, match=r"cannot read calibration file .*9\.npy"):
        load_calibration(folder, classifier())


def npy_case(folder: Path, case: str) -> tuple[onnx.ModelProto, str]:
    """Write a broken .npy folder; return the model and the expected message."""
    folder.mkdir()
    ok = np.zeros(4, np.float32)
    if case == "empty":
        return classifier(), "is empty"
    if case == "only_subfolders":
        (folder / "sub").mkdir()
        np.save(folder / "sub" / "x.npy", ok)
        return classifier(), "subfolders are not searched"
    if case == "stray_file":
        np.save(folder / "a.npy", ok)
        (folder / "readme.txt").write_text("hi")
        return classifier(), "readme.txt, which is neither .npy nor an image"
    if case == "mixed":
        np.save(folder / "a.npy", ok)
        Image.new("RGB", (5, 6)).save(folder / "b.png")
        return classifier(), "mixes .npy files and images (a.npy, b.png)"
    if case == "sample_shape":
        np.save(folder / "a.npy", ok)
        np.save(folder / "b.npy", np.zeros(5, np.float32))
        return classifier(), "b.npy has shape (5,) for input 'x': axis 1 is 5, the model wants 4"
    if case == "sample_rank":
        np.save(folder / "a.npy", np.zeros((2, 4), np.float32))
        np.save(folder / "b.npy", ok)
        return classifier(), "a.npy has shape (2, 4): a sample for input 'x'"
    if case == "samples_differ":
        np.save(folder / "a.npy", np.zeros(4, np.float32))
        np.save(folder / "b.npy", np.zeros(6, np.float32))
        return classifier(features="f"), "b.npy holds a sample of shape (6,) but a.npy"
    if case == "dtype":
        np.save(folder / "a.npy", ok)
        np.save(folder / "b.npy", np.zeros(4, np.float64))
        return classifier(), "b.npy has dtype float64 but the model input 'x' is float32"
    if case == "names":
        np.save(folder / "a.npy", np.zeros((2, 4), np.float32))
        np.save(folder / "c.npy", np.zeros((2, 4), np.float32))
        return (
            two_inputs(),
            "one <input name>.npy per model input (a, b): missing b; unexpected c",
        )
    if case == "per_input_shape":
        np.save(folder / "a.npy", np.zeros((2, 4), np.float32))
        np.save(folder / "b.npy", np.zeros((2, 3), np.float32))
        return two_inputs(), "array 'b' has shape (2, 3): axis 1 is 3, the model wants 4"
    if case == "pickled":
        np.save(folder / "a.npy", np.array([{"x": 1}], dtype=object))
        return classifier(), "a.npy: not a numpy .npy file"
    raise AssertionError(case)


NPY_CASES = [
    "empty", "only_subfolders", "stray_file", "mixed", "sample_shape", "sample_rank",
    "samples_differ", "dtype", "names", "per_input_shape", "pickled",
]  # fmt: skip


@pytest.mark.parametrize("case", NPY_CASES)
def test_bad_npy_folder_is_one_clear_error(tmp_path, case):
    model, message = npy_case(tmp_path / "calib", case)
    with pytest.raises(OnnxPruneError, match=re.escape(message)) as info:
        load_calibration(tmp_path / "calib", model)
    assert not isinstance(info.value, UsageError)
    one_line(info)


def test_missing_path_and_preprocess_on_arrays_are_errors(tmp_path):
    with pytest.raises(OnnxPruneError, match="is not a file or a folder"):
        load_calibration(tmp_path / "nothing", classifier())
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 4), np.float32))
    with pytest.raises(UsageError, match="applies to a folder of images"):
        load_calibration(tmp_path / "c.npz", classifier(), preprocess="imagenet")
    (tmp_path / "npys").mkdir()
    np.save(tmp_path / "npys" / "x.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(UsageError, match=r"holds \.npy files"):
        load_calibration(tmp_path / "npys", classifier(), preprocess="none")
    with pytest.raises(UsageError, match="needs --calib"):
        make_inputs(classifier(), preprocess="imagenet")
    with pytest.raises(UsageError, match="at least 1"):
        load_calibration(tmp_path / "npys", classifier(), max_samples=0)


# ---- preprocessing specs ---------------------------------------------------------------------


def test_preprocess_specs_and_presets():
    fields = (1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    imagenet = parse_preprocess("imagenet")
    spelled = parse_preprocess("scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225")
    assert (imagenet.scale, imagenet.mean, imagenet.std) == fields
    assert (spelled.scale, spelled.mean, spelled.std) == fields
    assert imagenet.spec == "imagenet" and not imagenet.is_identity
    assert parse_preprocess("RAW").is_identity and parse_preprocess("none").is_identity
    p = parse_preprocess(" scale = 2e-1 , std=0.5 ")
    assert p == Preprocess(scale=0.2, mean=(0.0,), std=(0.5,), spec="scale = 2e-1 , std=0.5")


@pytest.mark.parametrize("channel_axis", [0, 2])
def test_preprocess_math_matches_numpy(channel_axis):
    pixels = np.arange(36, dtype=np.float32).reshape(3, 4, 3)  # 3 channels on either axis
    before = pixels.copy()
    got = parse_preprocess("scale=1/10,mean=1,2,3,std=2,4,8").apply(pixels, channel_axis)
    shape = [1, 1, 1]
    shape[channel_axis] = 3
    mean = np.array([1, 2, 3], np.float32).reshape(shape)
    std = np.array([2, 4, 8], np.float32).reshape(shape)
    assert np.allclose(got, (before / 10 - mean) / std, atol=1e-6)
    assert np.array_equal(pixels, before)  # the input is not modified


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "is empty"),
        ("scale=abc", "scale value 'abc' is not a number"),
        ("scale=1/0", "not a number"),
        ("gamma=2", "unknown key 'gamma'"),
        ("0.5", "expected key=value"),
        ("scale=1,scale=2", "scale is given twice"),
        ("scale=1,2", "scale takes one value"),
        ("std=0.5,0", "std cannot be 0"),
        ("mean=inf", "not a number"),
        ("scale=1e400", "not a number"),
    ],
)
def test_bad_preprocess_spec_is_a_usage_error(spec, message):
    with pytest.raises(UsageError, match=message) as info:
        parse_preprocess(spec)
    one_line(info)


# ---- folders of images -----------------------------------------------------------------------


def test_rgb_images_default_to_imagenet_nchw(tmp_path):
    pixels = write_images(tmp_path / "imgs", 3)
    batch = load_calibration(tmp_path / "imgs", image_model())
    x = batch["x"]
    assert x.shape == (3, 3, 6, 5) and x.dtype == np.float32
    want = (np.stack(pixels).astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    assert np.allclose(x, want.transpose(0, 3, 1, 2), atol=1e-5)
    note = batch.notes[0]
    assert "(3 samples)" in note and "preprocess imagenet (default for 3-channel images)" in note
    assert "NCHW" in note
    outs = run_model(save(image_model(), tmp_path / "m.onnx"), batch, CPU)
    assert outs[0].shape == (3, 2, 6, 5)


def test_nhwc_input_and_explicit_spec(tmp_path):
    pixels = write_images(tmp_path / "imgs", 2, ext="bmp")  # lossless like png
    spec = "scale=1/255,mean=0.5,std=0.25"
    batch = load_calibration(tmp_path / "imgs", image_model(layout="NHWC"), preprocess=spec)
    want = (np.stack(pixels).astype(np.float32) / 255 - 0.5) / 0.25
    assert batch["x"].shape == (2, 6, 5, 3)
    assert np.allclose(batch["x"], want, atol=1e-5)
    assert "NHWC" in batch.notes[0] and f"preprocess {spec} (--calib-preprocess)" in batch.notes[0]


def test_grayscale_defaults_to_scale_and_raw_keeps_pixels(tmp_path):
    pixels = write_images(tmp_path / "imgs", 2, mode="L")
    gray = image_model(channels=1)
    batch = load_calibration(tmp_path / "imgs", gray)
    assert batch["x"].shape == (2, 1, 6, 5)
    assert np.allclose(batch["x"][:, 0], np.stack(pixels) / 255.0, atol=1e-7)
    assert "preprocess scale=1/255 (default for 1-channel images)" in batch.notes[0]
    raw = load_calibration(tmp_path / "imgs", gray, preprocess="raw")
    assert np.array_equal(raw["x"][:, 0], np.stack(pixels).astype(np.float32))


def test_images_are_converted_and_resized(tmp_path):
    """A grayscale 20x30 picture feeds a 3-channel 6x5 input: three equal channels."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (30, 20), color=100).save(folder / "a.jpg")
    Image.new("RGB", (7, 9), color=(10, 20, 30)).save(folder / "b.png")
    batch = load_calibration(folder, image_model(), preprocess="none")
    x = batch["x"]
    assert x.shape == (2, 3, 6, 5)
    assert np.allclose(x[0], 100.0, atol=1.0)  # a flat jpg stays flat through the resize
    assert np.array_equal(x[1], np.broadcast_to(np.array([10, 20, 30.0])[:, None, None], (3, 6, 5)))
    assert "resized to 6x5" in batch.notes[0]


def test_uint8_image_input_gets_raw_pixels(tmp_path):
    pixels = write_images(tmp_path / "imgs", 2)
    model = image_model(layout="NHWC", elem=TensorProto.UINT8)
    batch = load_calibration(tmp_path / "imgs", model)
    assert batch["x"].dtype == np.uint8 and np.array_equal(batch["x"], np.stack(pixels))
    with pytest.raises(OnnxPruneError, match="is uint8: images feed float inputs"):
        load_calibration(tmp_path / "imgs", model, preprocess="imagenet")


def test_image_max_samples_stops_reading(tmp_path):
    pixels = write_images(tmp_path / "imgs", 2)
    (tmp_path / "imgs" / "zzz.png").write_bytes(b"garbage")
    batch = load_calibration(tmp_path / "imgs", image_model(), max_samples=2, preprocess="raw")
    assert np.array_equal(batch["x"], np.stack(pixels).astype(np.float32).transpose(0, 3, 1, 2))
    with pytest.raises(OnnxPruneError, match=r"cannot read image zzz\.png in ") as info:
        load_calibration(tmp_path / "imgs", image_model())
    one_line(info)


@pytest.mark.parametrize(
    ("model", "message", "kind"),
    [
        (classifier(), "input 'x' has shape [batch, 4]: images need a 4-D", OnnxPruneError),
        (two_inputs(), "the model has 2 inputs (a, b)", OnnxPruneError),
        (image_model(h="H", w="W"), "no fixed height and width", OnnxPruneError),
        (image_model(channels=5), "no 1- or 3-channel axis", OnnxPruneError),
        (image_model(elem=TensorProto.INT64), "is int64: images feed float", OnnxPruneError),
    ],
)
def test_image_folder_for_the_wrong_model(tmp_path, model, message, kind):
    write_images(tmp_path / "imgs", 1)
    with pytest.raises(kind, match=re.escape(message)) as info:
        load_calibration(tmp_path / "imgs", model)
    assert type(info.value) is kind
    one_line(info)


def test_mean_of_the_wrong_length_is_a_usage_error(tmp_path):
    write_images(tmp_path / "imgs", 1)
    with pytest.raises(UsageError, match="mean has 2 values but the model takes 3-channel"):
        load_calibration(tmp_path / "imgs", image_model(), preprocess="mean=0.1,0.2")


# ---- through the command line ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("empty", 1, "is empty"),
        ("mixed", 1, "mixes .npy files and images"),
        ("sample_shape", 1, "b.npy has shape (5,)"),
        ("bad_image", 1, "cannot read image bad.png"),
        ("not_4d", 1, "images need a 4-D"),
        ("bad_spec", 2, "unknown key 'gamma'"),
        ("samples_zero", 2, "--calib-samples"),
    ],
)
def test_calib_errors_through_the_cli(tmp_path, capsys, run_cli, case, code, needle):
    folder = tmp_path / "calib"
    model = classifier()
    extra: list[str] = []
    if case in ("empty", "mixed", "sample_shape"):
        model, _ = npy_case(folder, case)
    elif case == "bad_image":
        write_images(folder, 1)
        (folder / "bad.png").write_bytes(b"\x89PNG broken")
        model = image_model()
    elif case == "not_4d":
        write_images(folder, 1)
    else:
        write_images(folder, 1)
        model = image_model()
        extra = ["--calib-preprocess", "gamma=2"] if case == "bad_spec" else ["--calib-samples", 0]
    path = save(model, tmp_path / "m.onnx")
    got, out, err = run_cli(["validate", path, path, "--calib", folder, *extra], capsys)
    assert got == code, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert out == ""
