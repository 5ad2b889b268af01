"""Candidate evaluations as independent jobs, behind one interface: ``Executor.map``.

A target search evaluates many candidates (a latency table's pruned widths, a sensitivity
scan's masked copies); each is a pure function of its inputs, so where it runs is a choice
of the caller, not of the search: in this process (``jobs=1``, the default: nothing to
pickle, errors with their own traceback), in worker processes on this machine
(``LocalExecutor(jobs=N)``, ``--jobs N``), or on a Ray cluster (``RayExecutor(address)``,
``--ray ADDRESS``, the optional extra ``onnxprune[ray]``), so a search over a large model can
use many machines. ``map`` returns results in the order of the items, whichever finishes
first, so a search gives the same answer with 1 worker or 20.

Worker processes are *spawned*, not forked: a forked onnxruntime (its thread pools) or a
forked tqdm lock can hang, and spawn behaves the same on Linux, macOS and Windows. A job
function must therefore be picklable: a module-level function, its items plain data.

Timing jobs in parallel on one machine measure contention, not the model: a latency table
built with ``jobs`` workers is honest only when ``jobs`` x onnxruntime threads fits the
cores, or when each Ray worker has its own machine.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from onnxprune.errors import OnnxPruneError, UsageError

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "make_executor"]


class Executor(Protocol):
    """Runs ``fn`` on every item; results in the items' order. ``workers``: how many jobs
    run at once (a search sizes its per-job time budgets by it)."""

    workers: int

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list: ...

    def close(self) -> None: ...


class LocalExecutor:
    """``jobs`` spawned worker processes on this machine; ``jobs=1`` runs in this process.

    The pool starts on the first ``map`` with more than one item and is reused until
    ``close`` (or the end of a ``with`` block): spawning a Python with onnx and onnxruntime
    costs about a second per worker.
    """

    def __init__(self, jobs: int = 1) -> None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise UsageError(f"--jobs must be a whole number of at least 1, got {jobs!r}")
        self.workers = jobs
        self._pool = None

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list:
        items = list(items)
        if self.workers == 1 or len(items) <= 1:
            return [fn(item) for item in items]
        _check_picklable(fn)
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        try:
            return list(self._pool.map(fn, items))
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            if "pickle" in str(exc).lower():
                raise OnnxPruneError(f"a job cannot be sent to a worker process: {exc}") from exc
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RayExecutor:
    """Jobs as Ray tasks on the cluster at ``address`` (``ray start --head`` prints it;
    ``"auto"`` finds a local one). Each task asks for ``cpus`` CPUs, so a timing job with
    onnxruntime threads gets cores to itself.

    Ray is imported on first use: without the extra installed, onnxprune works as before and
    only ``--ray`` says what to install. The job's model file must be readable at the same
    path on every node (a shared folder), as the items carry paths, not weights.
    """

    def __init__(self, address: str, *, cpus: float = 1.0) -> None:
        if not str(address).strip():
            raise UsageError("--ray needs a cluster address (host:port, or 'auto')")
        self.address = str(address).strip()
        self.cpus = float(cpus)
        self._ray = None
        self._workers = 1

    @property
    def workers(self) -> int:
        """Tasks the cluster runs at once (its CPUs / ``cpus``); connects on first use."""
        self._connect()
        return self._workers

    def _connect(self):
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError as exc:
            raise UsageError(
                "--ray needs Ray, which is not installed: pip install 'onnxprune[ray]'"
            ) from exc
        try:
            ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False)
        except Exception as exc:  # ConnectionError, RuntimeError, ray's own types
            raise OnnxPruneError(
                f"cannot connect to the Ray cluster at {self.address}: {exc}"
            ) from exc
        cpus = ray.cluster_resources().get("CPU", 1.0)
        self._workers = max(1, int(cpus // max(self.cpus, 1e-9)))
        self._ray = ray
        return ray

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list:
        items = list(items)
        if not items:
            return []
        ray = self._connect()
        task = ray.remote(num_cpus=self.cpus)(fn)
        refs = [task.remote(item) for item in items]
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, OnnxPruneError):  # a job's own clear error, as it was
                raise cause from None
            raise OnnxPruneError(f"a Ray job failed: {str(exc).splitlines()[0]}") from exc

    def close(self) -> None:
        if self._ray is not None:
            self._ray.shutdown()
            self._ray = None

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(jobs: int = 1, ray: str | None = None, *, cpus: float = 1.0) -> Executor:
    """The executor for ``--jobs N`` / ``--ray ADDRESS`` (Ray wins when both are given)."""
    if ray is not None:
        return RayExecutor(ray, cpus=cpus)
    return LocalExecutor(jobs)


def _check_picklable(fn: Callable) -> None:
    """A lambda or a nested function fails only inside the pool, with a long traceback;
    say it here, once, in one line."""
    try:
        pickle.dumps(fn)
    except Exception as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise OnnxPruneError(
            f"job function {name} cannot be sent to a worker process (define it at module "
            f"level): {exc}"
        ) from exc
