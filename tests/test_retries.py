"""Run retries by the daemon: policy, strategies, and exactly one retry per failed run."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import runcore as rc
from runcore.config import RunRetriesConfig
from runcore.daemon.retries import RunRetrier, retry_run_id
from runcore.errors import StorageError
from runcore.storage.sqlite import SqliteStorage

calls: dict[str, int] = {}
fail_until: dict[str, int] = {}


def _count(name: str) -> int:
    calls[name] = calls.get(name, 0) + 1
    return calls[name]


@rc.op
def extract() -> list[int]:
    _count("extract")
    return [1, 2, 3]


@rc.op
def load(extract: list[int]) -> int:
    if _count("load") <= fail_until.get("load", 0):
        raise ConnectionError("warehouse unreachable")
    return sum(extract)


etl = rc.job("etl", [extract, load])


@rc.op
def refuses() -> None:
    raise rc.Failure("bad credentials: retrying will not help", allow_retry=False)


hopeless = rc.job("hopeless", [refuses])


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    fail_until.clear()


def make(tmp_path: Path, **retries: Any) -> rc.Instance:
    return rc.Instance.from_config(
        {
            "storage": {"sqlite": {"path": str(tmp_path / "runs.db")}},
            "run_launcher": {"class": "runcore.launchers:ThreadPoolRunLauncher"},
            "run_retries": {"enabled": True, "max_retries": 2, **retries},
        }
    )


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[rc.Instance]:
    with make(tmp_path) as inst:
        yield inst


def failed_run(inst: rc.Instance, job: rc.Job = etl, **tags: str) -> rc.Run:
    run = inst.submit_run(job, tags=tags)
    done = inst.wait_for_run(run.run_id, timeout=20)
    assert done.status is rc.RunStatus.FAILURE
    return done


def test_from_failure_reruns_only_what_failed_and_reuses_outputs(instance: rc.Instance) -> None:
    fail_until["load"] = 1
    first = failed_run(instance)
    assert first.failure_kind is rc.FailureKind.USER_CODE
    result = rc.Daemon(instance).retry_once()
    assert result is not None and result.submitted == (retry_run_id(first.run_id),)
    retry = instance.wait_for_run(retry_run_id(first.run_id), timeout=20)
    assert retry.status is rc.RunStatus.SUCCESS
    assert retry.parent_run_id == first.run_id and retry.root_run_id == first.run_id
    assert retry.tags["runcore/retry_number"] == "1"
    assert retry.tags["runcore/retry_of"] == first.run_id
    assert retry.step_keys_to_execute == ["load"]
    assert calls == {"extract": 1, "load": 2}  # extract's stored output was reused
    assert instance.output_store.get(retry.run_id, "load") == 6


def test_all_steps_strategy_reruns_everything(instance: rc.Instance) -> None:
    fail_until["load"] = 1
    first = failed_run(instance, **{"runcore/retry_strategy": "all_steps"})
    rc.Daemon(instance).retry_once()
    retry = instance.wait_for_run(retry_run_id(first.run_id), timeout=20)
    assert retry.status is rc.RunStatus.SUCCESS
    assert calls == {"extract": 2, "load": 2}


def test_retries_stop_at_max_retries_and_chain_roots(instance: rc.Instance) -> None:
    fail_until["load"] = 10
    first = failed_run(instance)
    daemon = rc.Daemon(instance)
    runs = [first]
    for _ in range(3):
        daemon.retry_once()
        nxt = instance.get_runs(rc.RunsFilter(parent_run_id=runs[-1].run_id))
        if not nxt:
            break
        runs.append(instance.wait_for_run(nxt[0].run_id, timeout=20))
    assert len(runs) == 3  # the first run and max_retries=2 retries
    assert [r.tags.get("runcore/retry_number") for r in runs] == [None, "1", "2"]
    assert {r.root_run_id for r in runs[1:]} == {first.run_id}
    skipped = daemon.retry_once()
    assert skipped is not None and skipped.submitted == ()


def test_the_max_retries_tag_wins_over_the_config(instance: rc.Instance) -> None:
    fail_until["load"] = 1
    first = failed_run(instance, **{"runcore/max_retries": "0"})
    result = rc.Daemon(instance).retry_once()
    assert result is not None and result.submitted == ()
    assert instance.storage.get_run(retry_run_id(first.run_id)) is None


def test_failure_without_retry_is_not_retried(instance: rc.Instance) -> None:
    first = failed_run(instance, hopeless)
    result = rc.Daemon(instance).retry_once()
    assert result is not None and result.submitted == ()
    assert (first.run_id, "a step raised Failure(allow_retry=False)") in result.skipped


def test_op_failures_are_not_retried_when_told_so(tmp_path: Path) -> None:
    fail_until["load"] = 1
    with make(tmp_path, retry_on_op_failure=False) as inst:
        first = failed_run(inst)
        result = rc.Daemon(inst).retry_once()
        assert result is not None and result.submitted == ()
        assert "retry_on_op_failure is false" in dict(result.skipped)[first.run_id]


def test_two_daemons_create_one_retry(instance: rc.Instance, tmp_path: Path) -> None:
    fail_until["load"] = 1
    first = failed_run(instance)
    with make(tmp_path) as other:  # a second daemon's instance on the same file
        a = RunRetrier(instance, instance.config.run_retries, clock=time.time)  # type: ignore[union-attr]
        b = RunRetrier(other, other.config.run_retries, clock=time.time)  # type: ignore[union-attr]
        passes = [a.run_once(), b.run_once(), a.run_once()]
        assert sum(len(p.submitted) for p in passes) == 1
        retries = instance.get_runs(rc.RunsFilter(parent_run_id=first.run_id))
        assert [r.run_id for r in retries] == [retry_run_id(first.run_id)]
        instance.wait_for_run(retries[0].run_id, timeout=20)


def test_a_retry_created_but_not_submitted_is_submitted_later(instance: rc.Instance) -> None:
    fail_until["load"] = 1
    first = failed_run(instance)
    retrier = RunRetrier(instance, instance.config.run_retries, clock=time.time)  # type: ignore[union-attr]
    retrier._create(first, retry_run_id(first.run_id))  # the daemon "crashed" right here
    assert instance.get_run(retry_run_id(first.run_id)).status is rc.RunStatus.NOT_STARTED
    result = RunRetrier(instance, instance.config.run_retries, clock=time.time).run_once()  # type: ignore[union-attr]
    assert result.submitted == (retry_run_id(first.run_id),)
    assert instance.wait_for_run(result.submitted[0], timeout=20).status is rc.RunStatus.SUCCESS


def test_delay_seconds_waits_before_retrying(tmp_path: Path) -> None:
    fail_until["load"] = 1
    with make(tmp_path, delay_seconds=60) as inst:
        first = failed_run(inst)
        now = [first.ended_at or 0.0]
        retrier = RunRetrier(inst, inst.config.run_retries, clock=lambda: now[0])  # type: ignore[union-attr]
        assert retrier.run_once().submitted == ()
        now[0] += 61
        assert retrier.run_once().submitted == (retry_run_id(first.run_id),)
        inst.wait_for_run(retry_run_id(first.run_id), timeout=20)


def test_retries_go_through_the_coordinator(tmp_path: Path) -> None:
    fail_until["load"] = 1
    config = {
        "storage": {"sqlite": {"path": str(tmp_path / "runs.db")}},
        "run_launcher": {"class": "runcore.launchers:ThreadPoolRunLauncher"},
        "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
        "run_retries": {"enabled": True, "max_retries": 1},
    }
    with rc.Instance.from_config(config) as inst:
        run = inst.submit_run(etl)
        daemon = rc.Daemon(inst)
        daemon.dequeue_once()
        assert inst.wait_for_run(run.run_id, timeout=20).status is rc.RunStatus.FAILURE
        daemon.retry_once()
        retry_id = retry_run_id(run.run_id)
        assert inst.get_run(retry_id).status is rc.RunStatus.QUEUED  # limits apply to retries
        daemon.dequeue_once()
        assert inst.wait_for_run(retry_id, timeout=20).status is rc.RunStatus.SUCCESS


def test_retries_are_off_unless_enabled(tmp_path: Path) -> None:
    with rc.Instance.from_config({"storage": {"sqlite": {"path": str(tmp_path / "r.db")}}}) as inst:
        daemon = rc.Daemon(inst)
        assert daemon.retry_once() is None
        assert "retries" not in daemon.duties


class _FailsOnce(SqliteStorage):
    """The storage failing once, past its retries, as a database server going away would: on
    creating a retry run (``create``) or on submitting it (``submit``). The fault at the
    edge; the retrier under test is the real one."""

    fail: str | None = None

    def add_runs(self, runs: Sequence[rc.Run]) -> None:
        if self.fail == "create":
            self.fail = None
            raise StorageError("the database server went away (injected)")
        super().add_runs(runs)

    def transition(self, run_id: str, from_statuses: Any, to_status: Any, **kw: Any) -> Any:
        if self.fail == "submit" and list(from_statuses) == [rc.RunStatus.NOT_STARTED]:
            self.fail = None
            raise StorageError("the database server went away (injected)")
        return super().transition(run_id, from_statuses, to_status, **kw)


@pytest.mark.parametrize("where", ["create", "submit"])
def test_a_storage_error_mid_pass_leaves_the_failed_run_for_the_next_pass(
    tmp_path: Path, where: str
) -> None:
    """The older of two failed runs hits the storage error: the pass ends there, its cursor
    not moved past it, and the next pass retries it (it used to be logged and skipped for
    good, or its retry left NOT_STARTED, once a newer failure had moved the cursor on)."""
    storage = _FailsOnce(str(tmp_path / "runs.db"))
    with rc.Instance(storage=storage) as inst:
        fail_until["load"] = 2  # each original fails once
        older = failed_run(inst)
        time.sleep(1.1)  # past the pass's one-second overlap for writers' clocks
        newer = failed_run(inst)
        retrier = RunRetrier(inst, RunRetriesConfig(enabled=True, max_retries=1), clock=time.time)
        storage.fail = where
        with pytest.raises(StorageError):
            retrier.run_once()
        retrier.run_once()
        for failed in (older, newer):
            retry = inst.get_run(retry_run_id(failed.run_id))
            assert retry is not None, f"the retry of {failed.run_id} was missed"
            assert inst.wait_for_run(retry.run_id, timeout=20).status is rc.RunStatus.SUCCESS
