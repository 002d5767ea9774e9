"""``Job.execute_in_process`` and ``execute_run``: events, failures, retries, cancel, storage."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import runcore as rc
from runcore.worker.execution import execute_run
from runcore.worker.outputs import InMemoryOutputStore

T = rc.EventType
WAIT = 10.0  # generous bound for threading.Event waits; never reached when things work


def _types(events: list[rc.Event], step_key: str | None = None) -> list[str]:
    return [e.event_type.value for e in events if step_key is None or e.step_key == step_key]


@rc.op
def extract() -> list[int]:
    return [1, 2, 3]


@rc.op(retry_policy=rc.RetryPolicy(max_retries=2, delay=0.05), tags={"kind": "sql"})
def load(context: Any, extract: list[int]) -> int:
    context.log.info("loading", rows=len(extract))
    return sum(extract)


etl = rc.job("etl", [extract, load], tags={"team": "data"})


# --- success --------------------------------------------------------------------------------


def test_success_result_events_and_outputs() -> None:
    result = etl.execute_in_process()
    assert result.success
    assert result.status is rc.RunStatus.SUCCESS
    assert result.output_for("load") == 6
    assert result.output_for("extract") == [1, 2, 3]
    assert len(result.run_id) == 36
    assert result.run.job_name == "etl"
    assert result.failure_reason is None
    assert _types(result.events) == [
        "RUN_STARTING",
        "RUN_START",
        "STEP_START",
        "STEP_OUTPUT",
        "STEP_SUCCESS",
        "STEP_START",
        "LOG",
        "STEP_OUTPUT",
        "STEP_SUCCESS",
        "RUN_SUCCESS",
    ]
    assert all(e.run_id == result.run_id for e in result.events)
    log = result.events_for_step("load")[1]
    assert (log.message, log.level, log.data) == ("loading", "INFO", {"rows": 3})
    assert result.first_failure() is None


def test_context_exposes_run_and_op_facts() -> None:
    seen: dict[str, Any] = {}

    @rc.op(tags={"kind": "probe"})
    def probe(context: Any) -> None:
        seen.update(
            run_id=context.run_id,
            job_name=context.job_name,
            op_name=context.op_name,
            step_key=context.step_key,
            tags=dict(context.tags),
            op_tags=dict(context.op_tags),
            attempt=context.attempt,
            canceled=context.is_canceled,
        )
        for level in ("debug", "info", "warning", "error", "critical"):
            getattr(context.log, level)(f"at {level}", level=level)

    job = rc.job("probe_job", [probe], tags={"team": "data", "env": "dev"})
    result = job.execute_in_process(
        tags={"env": "prod"}, run_id="0f1e2d3c-0000-4000-8000-00000000f1ed"
    )
    assert seen == {
        "run_id": "0f1e2d3c-0000-4000-8000-00000000f1ed",
        "job_name": "probe_job",
        "op_name": "probe",
        "step_key": "probe",
        "tags": {"team": "data", "env": "prod"},
        "op_tags": {"kind": "probe"},
        "attempt": 1,
        "canceled": False,
    }
    assert result.run_id == "0f1e2d3c-0000-4000-8000-00000000f1ed"
    assert result.run.tags == {"team": "data", "env": "prod"}
    logs = [e for e in result.events if e.event_type is T.LOG]
    assert [e.level for e in logs] == ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def test_log_fields_are_recorded_as_json_data() -> None:
    rows = [1, 2]

    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque>"

    @rc.op
    def logs(context: Any) -> None:
        context.log.info("fields", rows=rows, obj=Opaque(), nested={"t": (1, 2)}, n=None)
        rows.append(3)  # changing the list later does not change the log
        with pytest.raises(ValueError, match="unknown log level 'loud'"):
            context.log.log("loud", "x")

    result = rc.job("logs", [logs]).execute_in_process()
    (event,) = [e for e in result.events if e.event_type is T.LOG]
    assert event.data == {"rows": [1, 2], "obj": "<Opaque>", "nested": {"t": [1, 2]}, "n": None}


def test_given_tags_are_validated() -> None:
    with pytest.raises(rc.ConfigError, match="tag 'n' has a int value"):
        etl.execute_in_process(tags={"n": 1})  # type: ignore[dict-item]


def test_job_executor_is_used_unless_one_is_given() -> None:
    threads: list[str] = []

    @rc.op
    def where() -> None:
        threads.append(threading.current_thread().name)

    job = rc.job("where", [where], executor=rc.ThreadPoolExecutor(1))
    job.execute_in_process()
    job.execute_in_process(executor=rc.InProcessExecutor())
    assert threads[0].startswith("runcore-step-")
    assert threads[1] == threading.current_thread().name


# --- failures -------------------------------------------------------------------------------


def _failing_job() -> tuple[rc.Job, list[str]]:
    """root -> bad -> after_bad -> last; root -> good (an independent branch)."""
    ran: list[str] = []

    @rc.op
    def root() -> int:
        ran.append("root")
        return 1

    @rc.op
    def bad(root: int) -> int:
        ran.append("bad")
        raise ValueError(f"bad input {root}")

    @rc.op
    def after_bad(bad: int) -> int:
        ran.append("after_bad")
        return bad

    @rc.op
    def last(after_bad: int) -> int:
        ran.append("last")
        return after_bad

    @rc.op
    def good(root: int) -> int:
        ran.append("good")
        return root + 1

    return rc.job("fails", [root, bad, after_bad, last, good]), ran


def test_a_failed_step_skips_its_downstream_and_independent_branches_run() -> None:
    job, ran = _failing_job()
    result = job.execute_in_process(raise_on_error=False)
    assert not result.success
    assert result.status is rc.RunStatus.FAILURE
    assert sorted(ran) == ["bad", "good", "root"]
    assert result.output_for("good") == 2
    assert _types(result.events, "after_bad") == ["STEP_SKIPPED"]
    assert _types(result.events, "last") == ["STEP_SKIPPED"]
    assert "upstream step 'bad' failed" in result.events_for_step("last")[0].message
    assert _types(result.events)[-1] == "RUN_FAILURE"

    failure = result.first_failure()
    assert failure is not None
    assert failure.event_type is T.STEP_FAILURE
    assert failure.step_key == "bad"
    assert failure.error is not None
    assert failure.error.type == "ValueError"
    assert failure.error.message == "bad input 1"
    assert "Traceback (most recent call last)" in failure.error.traceback
    assert "in bad" in failure.error.traceback
    assert 'raise ValueError(f"bad input {root}")' in failure.error.traceback

    assert result.failure_reason == "step 'bad' failed: ValueError: bad input 1"
    assert result.run.failure_reason == result.failure_reason
    with pytest.raises(rc.OutputStoreError, match=r"op 'after_bad' has no output.*was skipped"):
        result.output_for("after_bad")
    with pytest.raises(rc.OutputStoreError, match=r"op 'bad' has no output.*it failed"):
        result.output_for("bad")
    with pytest.raises(rc.DefinitionError, match=r"job 'fails' has no op 'nope'"):
        result.output_for("nope")


def test_raise_on_error_raises_the_ops_own_error_with_a_note() -> None:
    job, _ = _failing_job()
    with pytest.raises(ValueError, match="bad input 1") as info:
        job.execute_in_process()
    assert any("step 'bad'" in note for note in info.value.__notes__)


def test_failure_metadata_and_message_from_rc_failure() -> None:
    @rc.op
    def refuses() -> None:
        raise rc.Failure("not today", metadata={"rows": 3, "path": Path("/x")})

    result = rc.job("refuses", [refuses]).execute_in_process(raise_on_error=False)
    failure = result.first_failure()
    assert failure is not None
    assert failure.data == {"rows": 3, "path": repr(Path("/x"))}
    assert failure.error is not None
    assert (failure.error.type, failure.error.message) == ("Failure", "not today")


def test_error_cause_chain_is_recorded() -> None:
    @rc.op
    def wraps() -> None:
        try:
            {}["missing"]
        except KeyError as exc:
            raise RuntimeError("lookup failed") from exc

    result = rc.job("wraps", [wraps]).execute_in_process(raise_on_error=False)
    failure = result.first_failure()
    assert failure is not None and failure.error is not None
    assert failure.error.type == "RuntimeError"
    assert failure.error.cause is not None
    assert failure.error.cause.type == "KeyError"


def test_system_exit_in_an_op_is_a_step_failure_not_an_exit() -> None:
    job, _ = _failing_job()

    @rc.op
    def quits() -> None:
        raise SystemExit(4)

    @rc.op
    def after_quit(quits: None) -> None: ...

    job = rc.job("quits", [quits, after_quit])
    result = job.execute_in_process(raise_on_error=False)
    assert result.status is rc.RunStatus.FAILURE
    failure = result.first_failure()
    assert failure is not None and failure.error is not None
    assert failure.error.type == "SystemExit"
    assert _types(result.events, "after_quit") == ["STEP_SKIPPED"]
    # With raise_on_error the run's failure is raised, not the SystemExit.
    with pytest.raises(rc.RunFailedError, match=r"step 'quits' failed: SystemExit: 4") as info:
        job.execute_in_process()
    assert info.value.step_key == "quits"


def test_keyboard_interrupt_fails_the_run_and_propagates() -> None:
    ran: list[str] = []

    @rc.op
    def first() -> int:
        return 1

    @rc.op
    def interrupted(first: int) -> int:
        raise KeyboardInterrupt

    @rc.op
    def independent(first: int) -> int:
        ran.append("independent")
        return 2

    inst = rc.Instance.ephemeral()
    job = rc.job("interrupt", [first, interrupted, independent])
    with pytest.raises(KeyboardInterrupt):
        job.execute_in_process(
            instance=inst, run_id="0f1e2d3c-0000-4000-8000-0000000001a7", raise_on_error=False
        )
    run = inst.get_run("0f1e2d3c-0000-4000-8000-0000000001a7")
    assert run.status is rc.RunStatus.FAILURE
    assert run.failure_reason is not None and "interrupted" in run.failure_reason
    events = inst.get_events("0f1e2d3c-0000-4000-8000-0000000001a7")
    # The interrupt stops the run: steps not yet started are skipped, not run.
    assert ran == []
    assert _types(events, "independent") == ["STEP_SKIPPED"]
    assert _types(events)[-1] == "RUN_FAILURE"


def test_engine_error_ends_the_run_failure_with_the_error() -> None:
    class BrokenExecutor(rc.Executor):
        def execute(self, execution: Any) -> None:
            raise RuntimeError("executor bug")

    inst = rc.Instance.ephemeral()
    with pytest.raises(rc.RunFailedError, match="executor bug") as info:
        etl.execute_in_process(instance=inst, executor=BrokenExecutor())
    run = inst.get_run(info.value.run_id)
    assert run.status is rc.RunStatus.FAILURE
    last = inst.get_events(run.run_id)[-1]
    assert last.event_type is T.RUN_FAILURE
    assert last.error is not None and last.error.type == "RuntimeError"


# --- retries --------------------------------------------------------------------------------


def test_step_retries_until_success_with_events_and_attempts() -> None:
    attempts: list[int] = []

    @rc.op(retry_policy=rc.RetryPolicy(max_retries=3, delay=0.001, backoff=2.0))
    def flaky(context: Any) -> str:
        attempts.append(context.attempt)
        if context.attempt < 3:
            raise ConnectionError(f"try {context.attempt}")
        return "ok"

    result = rc.job("flaky", [flaky]).execute_in_process()
    assert result.output_for("flaky") == "ok"
    assert attempts == [1, 2, 3]
    assert _types(result.events, "flaky") == [
        "STEP_START",
        "STEP_UP_FOR_RETRY",
        "STEP_UP_FOR_RETRY",
        "STEP_OUTPUT",
        "STEP_SUCCESS",
    ]
    retries = [e for e in result.events if e.event_type is T.STEP_UP_FOR_RETRY]
    assert [e.data["attempt"] for e in retries] == [1, 2]
    assert [e.data["wait_s"] for e in retries] == [0.001, 0.002]  # delay * backoff ** (n - 1)
    assert retries[0].error is not None and retries[0].error.message == "try 1"
    assert "attempt 1 of 4" in retries[0].message


def test_retries_exhausted_fail_the_step_with_the_last_error() -> None:
    calls: list[int] = []

    @rc.op(retry_policy=rc.RetryPolicy(max_retries=2))
    def always(context: Any) -> None:
        calls.append(context.attempt)
        raise OSError(f"attempt {context.attempt}")

    result = rc.job("always", [always]).execute_in_process(raise_on_error=False)
    assert calls == [1, 2, 3]
    assert _types(result.events, "always").count("STEP_UP_FOR_RETRY") == 2
    failure = result.first_failure()
    assert failure is not None and failure.error is not None
    assert failure.error.message == "attempt 3"


def test_failure_without_retry_stops_retries() -> None:
    calls: list[int] = []

    @rc.op(retry_policy=rc.RetryPolicy(max_retries=5))
    def fatal(context: Any) -> None:
        calls.append(context.attempt)
        raise rc.Failure("bad credentials", allow_retry=False)

    result = rc.job("fatal", [fatal]).execute_in_process(raise_on_error=False)
    assert calls == [1]
    assert "STEP_UP_FOR_RETRY" not in _types(result.events)


def test_retry_wait_includes_jitter_within_bounds() -> None:
    @rc.op(retry_policy=rc.RetryPolicy(max_retries=3, delay=0.001, jitter=0.004))
    def jittery(context: Any) -> None:
        raise ValueError("no")

    result = rc.job("jittery", [jittery]).execute_in_process(raise_on_error=False)
    waits = [e.data["wait_s"] for e in result.events if e.event_type is T.STEP_UP_FOR_RETRY]
    assert len(waits) == 3
    assert all(0.001 <= w <= 0.005 for w in waits)


@pytest.mark.parametrize("error", [SystemExit, KeyboardInterrupt])
def test_keyboard_interrupt_and_system_exit_are_not_retried(error: type[BaseException]) -> None:
    calls: list[int] = []

    @rc.op(retry_policy=rc.RetryPolicy(max_retries=3))
    def stops(context: Any) -> None:
        calls.append(context.attempt)
        raise error

    job = rc.job("stops", [stops])
    if error is KeyboardInterrupt:
        with pytest.raises(KeyboardInterrupt):
            job.execute_in_process(raise_on_error=False)
    else:
        assert not job.execute_in_process(raise_on_error=False).success
    assert calls == [1]


# --- op selection ---------------------------------------------------------------------------


def test_op_selection_runs_only_the_selected_steps() -> None:
    result = etl.execute_in_process(op_selection=["*load"])
    assert result.output_for("load") == 6
    only_extract = etl.execute_in_process(op_selection=["extract"])
    assert only_extract.run.step_keys_to_execute == ["extract"]
    assert _types(only_extract.events, "load") == []
    with pytest.raises(rc.DefinitionError, match=r"op 'load' was not executed"):
        only_extract.output_for("load")
    downstream = etl.execute_in_process(op_selection="extract*")
    assert downstream.run.step_keys_to_execute == ["extract", "load"]


def test_selecting_an_unknown_op_is_an_error() -> None:
    with pytest.raises(rc.DefinitionError, match=r"job 'etl' has no op 'lod'"):
        etl.execute_in_process(op_selection=["lod"])


def test_a_selection_that_needs_an_unselected_upstream_is_a_clear_error() -> None:
    inst = rc.Instance.ephemeral()
    with pytest.raises(rc.DefinitionError) as info:
        etl.execute_in_process(op_selection=["load"], instance=inst)
    assert "op 'load' of job 'etl' takes the output of extract" in str(info.value)
    assert "'*load'" in str(info.value)
    assert inst.get_runs() == []  # nothing was created


# --- cancel ---------------------------------------------------------------------------------


def _cancelable_job(started: threading.Event, release: threading.Event) -> rc.Job:
    @rc.op
    def first() -> int:
        return 1

    @rc.op
    def blocking(context: Any, first: int) -> int:
        started.set()
        release.wait(WAIT)
        return first

    @rc.op
    def later(blocking: int) -> int:
        return blocking

    @rc.op
    def also_later(first: int) -> int:
        return first

    return rc.job("cancelable", [first, blocking, later, also_later])


def _starting_run(inst: rc.Instance, job: rc.Job) -> rc.Run:
    run = inst.storage.add_run(rc.Run(job_name=job.name))
    moved = inst.storage.transition(run.run_id, [rc.RunStatus.NOT_STARTED], rc.RunStatus.STARTING)
    assert moved is not None
    return moved


def test_cancel_event_set_while_a_step_runs_ends_the_run_canceled() -> None:
    started, release = threading.Event(), threading.Event()
    job = _cancelable_job(started, release)
    inst = rc.Instance.ephemeral()
    run = _starting_run(inst, job)
    cancel = threading.Event()

    def cancel_when_started() -> None:
        assert started.wait(WAIT)
        cancel.set()
        release.set()

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    final, _ = execute_run(
        run, job, storage=inst.storage, output_store=InMemoryOutputStore(), cancel=cancel
    )
    canceller.join(WAIT)
    assert final.status is rc.RunStatus.CANCELED
    assert inst.get_run(run.run_id).status is rc.RunStatus.CANCELED
    events = inst.get_events(run.run_id)
    assert _types(events, "blocking")[-1] == "STEP_SUCCESS"  # the running step finished
    for key in ("later", "also_later"):
        assert _types(events, key) == ["STEP_SKIPPED"]
        assert "canceled" in next(e for e in events if e.step_key == key).message
    assert _types(events)[-2:] == ["RUN_CANCELING", "RUN_CANCELED"]


def test_cancel_run_through_the_instance_with_a_thread_pool_executor() -> None:
    started, release = threading.Event(), threading.Event()
    watching, seen_cancel = threading.Event(), threading.Event()

    @rc.op
    def watcher(context: Any, first: int) -> None:
        watching.set()
        if context.wait_for_cancel(WAIT):
            seen_cancel.set()

    ops = [*_cancelable_job(started, release).ops.values(), watcher]
    job = rc.job("cancelable_pool", ops, executor=rc.ThreadPoolExecutor(3))
    with rc.Instance.ephemeral() as inst:
        try:
            run = inst.submit_run(job)
            assert started.wait(WAIT) and watching.wait(WAIT)
            assert inst.cancel_run(run.run_id)
            assert seen_cancel.wait(WAIT)  # the op saw the cancel through its context
        finally:
            release.set()
        final = inst.wait_for_run(run.run_id, timeout=WAIT)
        assert final.status is rc.RunStatus.CANCELED
        events = inst.get_events(run.run_id)
    assert _types(events, "later") == ["STEP_SKIPPED"]
    assert _types(events, "watcher")[-1] == "STEP_SUCCESS"
    assert "RUN_CANCELING" in _types(events)


def test_cancel_during_a_retry_wait_stops_the_retries() -> None:
    calls: list[int] = []
    first_failed = threading.Event()

    @rc.op(retry_policy=rc.RetryPolicy(max_retries=5, delay=WAIT))
    def retrying(context: Any) -> None:
        calls.append(context.attempt)
        first_failed.set()
        raise ConnectionError("down")

    job = rc.job("retry_cancel", [retrying])
    inst = rc.Instance.ephemeral()
    run = _starting_run(inst, job)
    cancel = threading.Event()
    canceller = threading.Thread(target=lambda: first_failed.wait(WAIT) and cancel.set())
    canceller.start()
    final, _ = execute_run(
        run, job, storage=inst.storage, output_store=InMemoryOutputStore(), cancel=cancel
    )
    canceller.join(WAIT)
    assert calls == [1]
    assert final.status is rc.RunStatus.CANCELED
    assert _types(inst.get_events(run.run_id), "retrying") == [
        "STEP_START",
        "STEP_UP_FOR_RETRY",
        "STEP_FAILURE",
    ]


def test_a_run_canceled_before_it_starts_runs_nothing() -> None:
    ran: list[str] = []

    @rc.op
    def never() -> None:
        ran.append("never")

    job = rc.job("never", [never])
    inst = rc.Instance.ephemeral()
    run = _starting_run(inst, job)
    inst.storage.transition(run.run_id, [rc.RunStatus.STARTING], rc.RunStatus.CANCELING)
    final, execution = execute_run(
        run, job, storage=inst.storage, output_store=InMemoryOutputStore()
    )
    assert execution is None
    assert final.status is rc.RunStatus.CANCELED
    assert ran == []


# --- storage --------------------------------------------------------------------------------


def test_execute_in_process_with_a_sqlite_instance_stores_run_and_events(tmp_path: Path) -> None:
    config = {"storage": {"sqlite": {"path": str(tmp_path / "runs.db")}}}
    with rc.Instance.from_config(config) as inst:
        result = etl.execute_in_process(instance=inst, tags={"env": "test"})
        assert result.success and result.output_for("load") == 6
        failed = rc.job("fails_sql", [rc.op(name="boom")(lambda: 1 / 0)])
        bad = failed.execute_in_process(instance=inst, raise_on_error=False)
        expected = _types(result.events)

    with rc.Instance.from_config(config) as reader:
        run = reader.get_run(result.run_id)
        assert run.status is rc.RunStatus.SUCCESS
        assert run.tags == {"team": "data", "env": "test"}
        events = reader.get_events(result.run_id)
        assert _types(events) == expected
        log = next(e for e in events if e.event_type is T.LOG)
        assert (log.step_key, log.data) == ("load", {"rows": 3})

        failed_run = reader.get_run(bad.run_id)
        assert failed_run.status is rc.RunStatus.FAILURE
        assert (
            failed_run.failure_reason == "step 'boom' failed: ZeroDivisionError: division by zero"
        )
        step_failure = [e for e in reader.get_events(bad.run_id) if e.event_type is T.STEP_FAILURE]
        assert step_failure[0].error is not None
        assert "ZeroDivisionError" in step_failure[0].error.traceback
        records = reader.get_run_records(rc.RunsFilter(job_name="etl"))
        assert [r.run.run_id for r in records] == [result.run_id]


def test_a_run_id_cannot_be_reused_on_one_instance() -> None:
    inst = rc.Instance.ephemeral()
    etl.execute_in_process(instance=inst, run_id="0f1e2d3c-0000-4000-8000-00000000005a")
    with pytest.raises(rc.DuplicateRunError, match="'0f1e2d3c-0000-4000-8000-00000000005a'"):
        etl.execute_in_process(instance=inst, run_id="0f1e2d3c-0000-4000-8000-00000000005a")
