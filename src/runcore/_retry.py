"""Retries in one place: the settings and the tenacity loops runcore uses.

tenacity is imported on first use, so ``import runcore`` does not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import attrs

T = TypeVar("T")


@attrs.frozen
class RetrySettings:
    """How a transient failure is retried: attempts in all, and the exponential wait.

    The n-th wait is ``initial_wait * 2**(n-1)`` capped at ``max_wait``, plus a random jitter
    of up to ``initial_wait`` so that processes that collided do not retry in lockstep.
    """

    attempts: int = 5
    initial_wait: float = 0.05
    max_wait: float = 2.0


SQLITE_LOCKED = RetrySettings()


def retry_sqlite_locked(
    fn: Callable[[], T],
    is_locked: Callable[[BaseException], bool],
    settings: RetrySettings = SQLITE_LOCKED,
) -> T:
    """Call ``fn``; if it fails with a lock that outlasted SQLite's own busy timeout, retry.

    The first call goes straight through (no tenacity import) so the common path stays cheap.
    """
    try:
        return fn()
    except Exception as exc:
        if not is_locked(exc):
            raise
    import tenacity

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(settings.attempts - 1),
        wait=tenacity.wait_exponential(multiplier=settings.initial_wait, max=settings.max_wait)
        + tenacity.wait_random(0, settings.initial_wait),
        retry=tenacity.retry_if_exception(is_locked),
        reraise=True,
    )
    return retrying(fn)
