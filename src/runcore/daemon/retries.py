"""Run retries: a failed run is run again, by policy, exactly once per failure.

A daemon duty. Each pass looks at runs that failed since the last pass and, for each one the
policy retries, creates a new run with ``parent_run_id`` (and ``root_run_id``), tagged
``runcore/retry_number`` and ``runcore/retry_of``, and submits it through the coordinator,
so the limits apply to retries too.

Policy: ``run_retries.max_retries`` (or the run's ``runcore/max_retries`` tag) attempts in
all after the first; failures of op code are retried only with ``retry_on_op_failure``; a
step that raised ``Failure(allow_retry=False)`` stops them; ``delay_seconds`` after the
failure. Strategy (tag ``runcore/retry_strategy``): ``from_failure`` (default) re-runs only
the steps that did not succeed and reuses the stored outputs of those that did;
``all_steps`` re-runs everything the failed run ran.

Exactly once: the retry's run id is derived from the failed run's id, so a second daemon (or
this one, after a crash between creating and submitting) finds it instead of making another,
and submitting is a compare-and-set from NOT_STARTED. At least once: a storage that fails
(a database server restarting) ends the pass before its cursor moves past the failed run, so
the next pass retries it; no other error of one run stops the others.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from runcore import _validate
from runcore.daemon.base import Duty
from runcore.errors import (
    ConfigError,
    DuplicateRunError,
    OutputStoreError,
    RuncoreError,
    StorageError,
)
from runcore.events import EventType
from runcore.runs import (
    MAX_RETRIES_TAG,
    RETRY_NUMBER_TAG,
    RETRY_OF_TAG,
    RETRY_STRATEGY_TAG,
    TAG_PREFIX,
    USER_CONTROL_TAGS,
    FailureKind,
    Run,
    RunsFilter,
    RunStatus,
)

if TYPE_CHECKING:
    from runcore.config import RunRetriesConfig
    from runcore.definitions import Job
    from runcore.instance import Instance

_RETRY_NAMESPACE = uuid.UUID("6f1d3c52-7a0e-4c8b-9d61-2b5e8f0a9c17")


def retry_run_id(run_id: str) -> str:
    """The id of the retry of ``run_id`` (the same in every process)."""
    return str(uuid.uuid5(_RETRY_NAMESPACE, f"{run_id}/retry"))


@attrs.frozen
class RetryPass:
    """What one retry pass did."""

    submitted: tuple[str, ...] = ()  # retry run ids submitted in this pass
    skipped: tuple[tuple[str, str], ...] = ()  # (failed run id, why not retried)


def _attempt_of(run: Run) -> int:
    """Which retry ``run`` is (0: the original run), from runcore's own tag;
    :class:`ConfigError` if the stored tag is malformed."""
    raw = run.tags.get(RETRY_NUMBER_TAG)
    return 0 if raw is None else _validate.int_text(f"tag {RETRY_NUMBER_TAG}", raw, minimum=0)


class RunRetrier(Duty):
    """The run-retries duty: creates and submits retries of failed runs (see the module
    docstring).

    It takes the instance (it is a driver, like the daemon, not a component of it).
    Threads: none; the daemon calls :meth:`run_once` from its retry thread.
    """

    name = "retries"

    def __init__(
        self,
        instance: Instance,
        config: RunRetriesConfig,
        clock: Callable[[], float],
        *,
        lookback_seconds: float = 24 * 3600.0,
        interval: float = 5.0,
    ) -> None:
        self.interval = _validate.interval("RunRetrier(interval=...)", interval)
        self.instance = instance
        self.config = config
        self.clock = clock
        self._cursor: float | None = None
        self.lookback_seconds = _validate.duration(
            "RunRetrier(lookback_seconds=...)", lookback_seconds
        )

    def run_once(self, now: float | None = None) -> RetryPass:
        """Retry every run that failed since the last pass, by policy (at ``now``, default:
        the clock)."""
        now = self.clock() if now is None else now
        since = (now - self.lookback_seconds) if self._cursor is None else self._cursor
        failed = self.instance.storage.get_run_records(
            RunsFilter(statuses=[RunStatus.FAILURE], updated_after=since - 1.0), ascending=True
        )
        submitted: list[str] = []
        skipped: list[tuple[str, str]] = []
        waiting_until: float | None = None
        for record in failed:
            run = record.run
            why_not = self._why_not(run)
            if why_not is not None:
                skipped.append((run.run_id, why_not))
                continue
            ended = run.ended_at or run.updated_at or now
            if now - ended < self.config.delay_seconds:
                # Not yet: keep the cursor before it so a later pass sees it again.
                waiting_until = ended if waiting_until is None else min(waiting_until, ended)
                continue
            retry = self._retry(run)
            if retry is not None:
                submitted.append(retry)
        newest = max((r.run.updated_at or r.run.created_at for r in failed), default=since)
        self._cursor = min(newest, waiting_until) if waiting_until is not None else newest
        return RetryPass(submitted=tuple(submitted), skipped=tuple(skipped))

    def _why_not(self, run: Run) -> str | None:
        """Why ``run`` is not to be retried, or None if it is."""
        if run.corrupt is not None:
            return f"it is corrupt in storage ({run.corrupt})"
        raw = run.tags.get(MAX_RETRIES_TAG)
        try:
            allowed = (
                _validate.int_text(f"tag {MAX_RETRIES_TAG}", raw, minimum=0)
                if raw is not None
                else self.config.max_retries
            )
            attempt = _attempt_of(run)
        except ConfigError as exc:
            return f"its tags cannot be trusted: {exc}"
        if attempt >= allowed:
            return f"it is attempt {attempt} of {allowed} retries allowed"
        if run.failure_kind is FailureKind.USER_CODE and not self.config.retry_on_op_failure:
            return "op failures are not retried (run_retries.retry_on_op_failure is false)"
        events = self.instance.storage.get_event_records(
            run.run_id, event_types=[EventType.RUN_FAILURE]
        )
        if any(r.event.data.get("allow_retry") is False for r in events):
            return "a step raised Failure(allow_retry=False)"
        return None

    def _retry(self, run: Run) -> str | None:
        """Create (once) and submit the retry of ``run``; its id, or None if it cannot be."""
        storage = self.instance.storage
        retry_id = retry_run_id(run.run_id)
        existing = storage.get_run(retry_id)
        if existing is None:
            try:
                existing = self._create(run, retry_id)
            except DuplicateRunError:
                existing = storage.get_run(retry_id)
            except StorageError:
                raise  # not this run's fault: the pass ends, and the next one tries again
            except RuncoreError as exc:
                import logging

                logging.getLogger("runcore.daemon.retries").warning(
                    "cannot retry run %s: %s", run.run_id, exc
                )
                return None
        if existing is None or existing.status is not RunStatus.NOT_STARTED:
            return None  # submitted already (by us before a crash, or by another daemon)
        try:
            self.instance.run_coordinator.submit_run(existing)
        except StorageError:
            raise  # left NOT_STARTED: the pass ends before its cursor moves, the next submits it
        except RuncoreError:
            pass  # a launch failure is recorded on the retry
        return retry_id

    def _create(self, run: Run, retry_id: str) -> Run:
        instance = self.instance
        job = instance.jobs.resolve(run)  # the submitted Job object if this process has it
        strategy = run.tags.get(RETRY_STRATEGY_TAG, "from_failure")
        ran = list(run.step_keys_to_execute or job.order)
        step_keys: list[str] | None = run.step_keys_to_execute
        if strategy == "from_failure":
            succeeded = {
                r.event.step_key
                for r in instance.storage.get_event_records(
                    run.run_id, event_types=[EventType.STEP_SUCCESS]
                )
            }
            step_keys = [k for k in ran if k not in succeeded] or ran
            self._carry_outputs(run, retry_id, job, step_keys)
        attempt = _attempt_of(run) + 1
        # The user's tags and control tags only: runcore's bookkeeping is written afresh.
        tags = {
            k: v
            for k, v in run.tags.items()
            if not k.startswith(TAG_PREFIX) or k in USER_CONTROL_TAGS
        }
        tags[RETRY_NUMBER_TAG] = str(attempt)
        tags[RETRY_OF_TAG] = run.run_id
        return instance._create_run(
            job,
            tags,
            code_location=run.code_location,
            step_keys=step_keys,
            run_id=retry_id,
            parent_run_id=run.run_id,
            root_run_id=run.root_run_id or run.run_id,
        )

    def _carry_outputs(self, run: Run, retry_id: str, job: Job, step_keys: list[str]) -> None:
        """Copy the stored outputs the retry's steps take from steps it does not run."""
        store = self.instance.output_store
        needed = {
            src
            for key in step_keys
            for src in job.upstream[key].values()
            if src is not None and src not in step_keys
        }
        for step_key in needed:
            holder: str | None = run.run_id
            while holder is not None and not store.has(holder, step_key):
                parent = self.instance.storage.get_run(holder)
                holder = parent.parent_run_id if parent is not None else None
            if holder is None:
                raise OutputStoreError(
                    f"the output of step {step_key!r} is not stored for run {run.run_id} or "
                    "its ancestors, so a from_failure retry cannot reuse it"
                )
            store.put(retry_id, step_key, store.get(holder, step_key))
