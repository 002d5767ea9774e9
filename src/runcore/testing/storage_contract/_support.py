"""What every part of the storage contract suite shares."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest

from runcore.runs import LEGAL_TRANSITIONS, Run, RunStatus

T = TypeVar("T")

#: How long a concurrency test waits for its threads before it fails (seconds).
THREAD_TIMEOUT = 60.0

_S = RunStatus


def _run(job_name: str = "job", **kwargs: Any) -> Run:
    return Run(job_name=job_name, **kwargs)


def _cid(i: int) -> str:
    """The run id of catalog run ``i`` (run ids are UUIDs; these are stable ones)."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"runcore-contract-run-{i}"))


def _ids(records: Sequence[Any]) -> list[str]:
    return [record.run.run_id for record in records]


def _in_threads(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run ``fn(0) .. fn(n-1)`` on ``n`` threads released at once; re-raise the first error.

    Daemon threads and one overall deadline, so a storage that deadlocks fails the test
    (after :data:`THREAD_TIMEOUT`) instead of hanging it.
    """
    barrier = threading.Barrier(n)
    results: dict[int, T] = {}
    errors: dict[int, BaseException] = {}

    def call(i: int) -> None:
        try:
            barrier.wait(timeout=THREAD_TIMEOUT)
            results[i] = fn(i)
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + THREAD_TIMEOUT
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = [i for i, thread in enumerate(threads) if thread.is_alive()]
    if stuck:
        pytest.fail(f"threads {stuck} did not finish within {THREAD_TIMEOUT} s (a deadlock?)")
    if errors:
        raise errors[min(errors)]
    return [results[i] for i in range(n)]


def _transition_paths() -> Iterator[list[RunStatus]]:
    """Every path through the status machine from NOT_STARTED to a terminal status."""

    def walk(path: list[RunStatus]) -> Iterator[list[RunStatus]]:
        last = path[-1]
        if last.is_terminal:
            yield path
            return
        for nxt in sorted(LEGAL_TRANSITIONS[last], key=lambda s: s.value):
            if nxt not in path:
                yield from walk([*path, nxt])

    yield from walk([_S.NOT_STARTED])
