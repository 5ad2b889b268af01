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
