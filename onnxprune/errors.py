"""Errors a user can act on.

Every failure we anticipate is raised as an ``OnnxPruneError`` carrying the exit code the CLI
must use, so the CLI can print exactly one ``error:`` line and never a traceback:
1 means the model (or a file) is the problem, 2 means the command line is.
"""

from __future__ import annotations


class OnnxPruneError(Exception):
    """A problem with the model or its files (CLI exit code 1)."""

    exit_code = 1


class UsageError(OnnxPruneError):
    """A problem with the options the user gave (CLI exit code 2)."""

    exit_code = 2
