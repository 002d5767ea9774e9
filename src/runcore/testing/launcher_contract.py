"""The public contract suite for launchers.

Subclass :class:`LauncherContract` in a pytest module and provide an ``instance`` fixture: a
started :class:`~runcore.Instance` whose storage other processes can open (SQLite, for
example) and whose ``run_launcher`` is the launcher under test. The suite submits runs of
:mod:`runcore.testing.contract_jobs` and checks what every launcher must do:

* a launched run executes to SUCCESS and its events are stored; ``launch_run`` returns
  without waiting for the run;
* a failing op ends the run FAILURE with the reason;
* ``terminate`` stops a running run, which ends CANCELED; it returns False for runs the
  launcher does not hold;
* ``check_run_worker_health`` says RUNNING while the run executes, and not RUNNING after;
* a run whose code location cannot be loaded ends FAILURE with the reason, never stuck in
  STARTING.

Example::

    class TestMyLauncher(LauncherContract):
        @pytest.fixture
        def instance(self, tmp_path):
            config = {"storage": {"sqlite": {"path": str(tmp_path / "r.db")}},
                      "run_launcher": {"class": "mypkg:MyLauncher"}}
            with rc.Instance.from_config(config) as inst:
                yield inst
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import runcore as rc
from runcore.launchers.base import HealthStatus
from runcore.testing.contract_jobs import LOCATION

WAIT = 60.0


def _until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class LauncherContract:
    """What every :class:`~runcore.RunLauncher` must do (see the module docstring)."""

    def _submit(self, instance: rc.Instance, job: str, **tags: str) -> rc.Run:
        return instance.submit_run(job, tags=tags, code_location=LOCATION)

    def test_a_run_executes_to_success(self, instance: rc.Instance) -> None:
        run = self._submit(instance, "pid")
        done = instance.wait_for_run(run.run_id, timeout=WAIT)
        assert done.status is rc.RunStatus.SUCCESS, done.failure_reason
        types = [e.event_type for e in instance.get_events(run.run_id)]
        assert types[-1] is rc.EventType.RUN_SUCCESS
        assert rc.EventType.STEP_SUCCESS in types

    def test_launch_returns_without_waiting_for_the_run(
        self, instance: rc.Instance, tmp_path: Path
    ) -> None:
        gate = tmp_path / "gate"
        started = tmp_path / "started"
        run = self._submit(instance, "gated", gate=str(gate), started=str(started))
        assert not instance.get_run(run.run_id).status.is_terminal
        _until(started.exists, "the op to start")
        health = instance.run_launcher.check_run_worker_health(instance.get_run(run.run_id))
        assert health.status is HealthStatus.RUNNING, health.reason
        gate.touch()
        done = instance.wait_for_run(run.run_id, timeout=WAIT)
        assert done.status is rc.RunStatus.SUCCESS, done.failure_reason
        after = instance.run_launcher.check_run_worker_health(done)
        assert after.status is not HealthStatus.RUNNING or done.status.is_terminal

    def test_a_failing_op_fails_the_run_with_the_reason(self, instance: rc.Instance) -> None:
        run = self._submit(instance, "failing")
        done = instance.wait_for_run(run.run_id, timeout=WAIT)
        assert done.status is rc.RunStatus.FAILURE
        assert "boom on purpose" in (done.failure_reason or "")

    def test_terminate_cancels_a_running_run(self, instance: rc.Instance, tmp_path: Path) -> None:
        started = tmp_path / "started"
        run = self._submit(instance, "gated", gate=str(tmp_path / "never"), started=str(started))
        _until(started.exists, "the op to start")
        assert instance.cancel_run(run.run_id) is True
        done = instance.wait_for_run(run.run_id, timeout=WAIT)
        assert done.status is rc.RunStatus.CANCELED

    def test_terminate_of_an_unknown_run_is_false(self, instance: rc.Instance) -> None:
        assert instance.run_launcher.terminate("no-such-run") is False

    def test_an_unloadable_location_fails_the_run(self, instance: rc.Instance) -> None:
        # A run stored by another process, whose code location this host cannot import.
        run = instance.storage.add_run(
            rc.Run(job_name="orphan", code_location="runcore_no_such_module:defs")
        )
        with contextlib.suppress(rc.RunLaunchError):  # refusing at launch is fine too
            instance.run_coordinator.submit_run(run)
        done = instance.wait_for_run(run.run_id, timeout=WAIT)
        assert done.status is rc.RunStatus.FAILURE
        assert done.failure_reason, "a failed run must say why"

    @pytest.mark.parametrize("count", [4])
    def test_concurrent_runs_all_finish(self, instance: rc.Instance, count: int) -> None:
        runs = [self._submit(instance, "pid") for _ in range(count)]
        for run in runs:
            done = instance.wait_for_run(run.run_id, timeout=WAIT)
            assert done.status is rc.RunStatus.SUCCESS, done.failure_reason
