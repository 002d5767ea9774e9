"""Retries in one place: the settings and the tenacity loops runcore uses.

tenacity is imported on first use, so ``import runcore`` does not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import attrs

from runcore import _validate

if TYPE_CHECKING:
    from runcore.worker.cancel import Cancel

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
    #: Seconds after the first failure past which no further attempt is made, whatever the
    #: attempts left (None: attempts alone bound the retries).
    deadline: float | None = None

    def __attrs_post_init__(self) -> None:

        _validate.integer("RetrySettings.attempts", self.attempts, minimum=1)
        _validate.delay("RetrySettings.initial_wait", self.initial_wait)
        _validate.delay("RetrySettings.max_wait", self.max_wait)
        if self.deadline is not None:
            _validate.delay("RetrySettings.deadline", self.deadline)

    def describe(self) -> str:
        """The budget in words: "6 attempts" or "30 s (at most 40 attempts)"."""
        if self.deadline is None:
            return f"{self.attempts} attempts"
        return f"{self.deadline:g} s (at most {self.attempts} attempts)"


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


def retry_step(
    call: Callable[[int], T],
    *,
    retries: int,
    wait_before: Callable[[int], float],
    may_retry: Callable[[BaseException], bool],
    on_retry: Callable[[int, BaseException, float], None],
    cancel: Cancel,
) -> T:
    """Call ``call(attempt)`` (attempt counts from 1), retrying up to ``retries`` times.

    A failure is retried while ``may_retry(exc)`` and the run is not being canceled.
    ``wait_before(n)`` gives the seconds to wait before retry ``n``; ``on_retry(attempt, exc,
    wait)`` is told before each wait. The wait ends early on ``cancel``, and then the last
    error is raised instead of trying again.
    """
    import tenacity

    attempt = [1]  # the attempt about to be made
    last: list[BaseException] = []

    def attempt_call() -> T:
        if last and cancel.is_set():  # canceled during the wait: give up with the last error
            raise last[-1]
        return call(attempt[0])

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        assert exc is not None
        last.append(exc)
        attempt[0] = state.attempt_number + 1
        on_retry(state.attempt_number, exc, float(state.upcoming_sleep))

    def sleep(seconds: float) -> None:
        cancel.wait(seconds)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=lambda state: wait_before(state.attempt_number),
        retry=tenacity.retry_if_exception(lambda exc: not cancel.is_set() and may_retry(exc)),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    return retrying(attempt_call)
