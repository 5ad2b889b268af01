"""The one options model: normalized and checked on construction, the same for API and CLI."""

import pytest

from onnxprune import UsageError, prune
from onnxprune.options import PruneOptions, ValidateOptions
from onnxprune.testing.graphs import conv_bn_relu as small_cnn


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nm": (2, 0)},
        {"nm": 4},
        {"nm": (2, 4, 8)},
        {"unstructured": 0.5, "seed": "abc"},
        {"unstructured": "0.5"},
        {"unstructured": True},
        {"structured": 0.3, "round_to": 2.5},
        {"structured": 0.3, "exclude": [1, 2]},
        {"unstructured": 0.5, "runs": 0},
        {"nm": (0, 4)},
        {"nm": (5, 4)},
        {"nm": (4, 4)},
        {"nm": (2.0, 4)},
        {"unstructured": 0.5, "seed": -1},
        {"unstructured": 0.5, "seed": 1.5},
        {"unstructured": 0.5, "validate": "no"},
        {"unstructured": 0.5, "force": 1},
        {"unstructured": 0.5, "external_data": "x"},
        {"unstructured": 0.5, "calib": 3},
        {"unstructured": 0.5, "calib": "c.npz", "lstsq": "yes"},
        {"unstructured": 0.5, "calib": "c.npz", "labels": 7},
        {"unstructured": 0.5, "exclude": 5},
        {"unstructured": 0.5, "providers": ["cpu"]},
        {"unstructured": 0.5, "max_group_ratio": 1.0},
    ],
)
def test_bad_values_of_any_type_are_usage_errors(kwargs):
    with pytest.raises(UsageError) as e:
        PruneOptions(**kwargs)
    assert "\n" not in str(e.value) and " got " in str(e.value)
    with pytest.raises(UsageError):
        prune(small_cnn(), **kwargs)


def test_values_are_normalized():
    opts = PruneOptions(nm="2:4", exclude="classifier*")
    assert opts.nm == (2, 4) and opts.exclude == ("classifier*",)
    assert PruneOptions(nm=[2, 4], exclude=["a", "b"]).exclude == ("a", "b")


def test_options_are_frozen():
    opts = PruneOptions(structured=0.3)
    with pytest.raises(AttributeError):
        opts.structured = 0.9


def test_validate_options_share_the_data_checks():
    with pytest.raises(UsageError, match="--labels needs --calib"):
        ValidateOptions(labels="labels.npy")
    with pytest.raises(UsageError, match="--providers must be one of cpu, cuda, auto"):
        ValidateOptions(providers="tpu")
    assert ValidateOptions(seed=3).data_kwargs()["seed"] == 3


def test_exclude_string_is_one_pattern_in_the_api():
    r = prune(small_cnn(), unstructured=0.5, exclude="conv1*", validate=False)
    tensors = [t["tensor"] for t in r.report.to_dict()["unstructured"]["tensors"]]
    assert tensors and not any(t.startswith("conv1") for t in tensors)


def test_the_api_refuses_paths_that_are_not_paths():
    with pytest.raises(UsageError, match="output must be a path"):
        prune(small_cnn(), unstructured=0.5, output=3)
    with pytest.raises(UsageError, match="model must be a path"):
        prune(3, unstructured=0.5)


def test_the_api_refuses_a_model_whose_external_data_was_not_loaded(tmp_path):
    import onnx

    from onnxprune import OnnxPruneError

    onnx.save(small_cnn(), tmp_path / "m.onnx", save_as_external_data=True,
              location="m.onnx.data", size_threshold=0)  # fmt: skip
    skeleton = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    for validate in (False, True):
        with pytest.raises(OnnxPruneError, match="load_external_data=True") as e:
            prune(skeleton, unstructured=0.5, validate=validate)
        assert type(e.value) is OnnxPruneError and "\n" not in str(e.value)
    # the same model by path, or loaded with its data, prunes
    assert prune(tmp_path / "m.onnx", unstructured=0.5, validate=False).report.unstructured
    assert prune(onnx.load(tmp_path / "m.onnx"), unstructured=0.5, validate=False).model


def test_seed_minus_one_is_a_usage_error_on_the_command_line(tmp_path, capsys, run_cli):
    import onnx

    onnx.save(small_cnn(), tmp_path / "m.onnx")
    code, _, err = run_cli([tmp_path / "m.onnx", "--unstructured", "0.5", "--seed", "-1"], capsys)
    assert code == 2 and err == "error: --seed must be a whole number >= 0, got -1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
