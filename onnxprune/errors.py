"""Errors a user can act on.

Every failure we anticipate is raised as an ``OnnxPruneError`` carrying the exit code the CLI
must use, so the CLI can print exactly one ``error:`` line and never a traceback:
1 means the model (or a file) is the problem, 2 means the command line is, 3 means a quality
gate failed (the comparison ran; the pruned model did not meet the threshold).
"""

from __future__ import annotations


class OnnxPruneError(Exception):
    """A problem with the model or its files (CLI exit code 1)."""

    exit_code = 1


class UsageError(OnnxPruneError):
    """A problem with the options the user gave (CLI exit code 2)."""

    exit_code = 2


class GateError(OnnxPruneError):
    """A quality gate (``--min-cosine``, ``--max-drop``, ``--max-rel-diff``) failed (CLI exit
    code 3): the pruned model was compared and found wanting, or the comparison could not
    prove anything (inconclusive). ``report`` is the run's report (a ``Report`` from ``prune``,
    the result dict from ``evaluate_files``) so a caller can still write and read it."""

    exit_code = 3

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report
