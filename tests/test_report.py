"""The report composes typed sections; dicts appear only in to_dict() (README "Report")."""

import json

from onnxprune import prune
from onnxprune.report.results import Recoveries, RecoverySummary, Report, UnstructuredSummary
from onnxprune.runtime.validate import ValidationResult
from onnxprune.structured.engine import StructuredResult
from onnxprune.testing.graphs import conv_bn_relu as small_cnn

TOP_KEYS = [
    "input_path", "output_path", "params_before", "params_after", "nonzero_before",
    "nonzero_after", "macs_before", "macs_after", "size_bytes_before", "size_bytes_after",
    "gzip_bytes_before", "gzip_bytes_after", "unstructured", "structured", "validation",
    "recovery", "notes", "timings_s", "memory",
]  # fmt: skip


def test_sections_are_typed_and_the_json_keys_stay():
    r = prune(small_cnn(), structured=0.25, unstructured=0.5, round_to=1, runs=5).report
    assert isinstance(r.structured, StructuredResult)
    assert isinstance(r.unstructured, UnstructuredSummary)
    assert isinstance(r.validation, ValidationResult)
    assert r.recovery is None
    d = json.loads(json.dumps(r.to_dict()))
    assert list(d) == TOP_KEYS
    assert list(d["unstructured"]) == [
        "mode", "target", "scope", "selected_params", "zeroed", "tensors", "skipped", "criterion"
    ]  # fmt: skip
    assert list(d["structured"])[:4] == ["scope", "criterion", "round_to", "ratio"]
    assert d["unstructured"]["zeroed"] == r.unstructured.zeroed > 0
    assert [g["channels_after"] for g in d["structured"]["groups"]] == [
        g.channels_after for g in r.structured.groups
    ]
    assert "structured (ratio 0.25, scope local, criterion l1, round-to 1)" in r.render()


def test_recovery_sections_keep_their_run_order():
    class Rec:
        def to_dict(self):
            return {"steps": ["bias"], "samples": 4, "waves": 1, "seconds": 0.5,
                    "layers_refit": 2, "mean_err_before": 0.5, "mean_err_after": 0.25,
                    "layers": [], "skipped": [{"layer": "fc", "reason": "why"}]}  # fmt: skip

    report = Report()
    report.add_recovery("unstructured", Rec())
    report.add_recovery("structured", Rec())
    assert isinstance(report.recovery, Recoveries)
    assert isinstance(report.recovery.structured, RecoverySummary)
    assert list(report.to_dict()["recovery"]) == ["structured", "unstructured"]
    text = report.render()
    assert "recovery after structured pruning (bias, 4 calibration samples, 0.5 s)" in text
    assert "mean layer output error 0.5 -> 0.25" in text and "left alone fc: why" in text
