"""The public contract suite for run coordinators.

Subclass :class:`CoordinatorContract` in a pytest module and provide a
``coordinator_factory`` fixture: a zero-argument callable that returns a new, unstarted
coordinator (the class itself, often)::

    import pytest
    from runcore.testing import CoordinatorContract

    class TestMyCoordinator(CoordinatorContract):
        @pytest.fixture
        def coordinator_factory(self):
            return MyCoordinator

The suite builds :class:`~runcore.Instance` objects around your coordinator, on a real SQLite
file by default, with a :class:`~runcore.testing.RecordingLauncher` (which executes nothing),
and checks what :mod:`runcore.coordinators.base` asks of a coordinator:

* ``submit_run`` returns the run as it is now: QUEUED (not yet handed to the launcher), or
  STARTING or later (handed to the launcher once); a queued run is launched by a later pass;
* a run the launcher refuses ends FAILURE with the launcher's reason (kind
  ``launch_failure``); a coordinator that launches in ``submit_run`` raises
  :class:`~runcore.errors.RunLaunchError` too;
* ``cancel_run`` cancels a run not yet launched at once (it is never launched after), asks the
  launcher to terminate a launched one, finishes the cancel itself when no worker holds the
  run, returns False for a run that had ended and raises
  :class:`~runcore.errors.RunNotFoundError` for an unknown one;
* a run is never launched twice, however many coordinators on the same storage submit it and
  pass over the queue at once.

A coordinator that queues runs is driven by :meth:`CoordinatorContract.advance`: by default one
dequeue pass of a :class:`~runcore.Daemon`, as in production. Override it if your coordinator
is driven some other way.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runcore.coordinators.base import RunCoordinator
from runcore.daemon import Daemon
from runcore.errors import RunLaunchError, RunNotFoundError
from runcore.instance import Instance
from runcore.launchers.base import RunLauncher, WorkerHealth
from runcore.runs import FailureKind, Run, RunStatus
from runcore.storage.base import InstanceStorage
from runcore.testing.recording import RecordingLauncher

#: How long a concurrency test waits for its threads before it fails (seconds).
THREAD_TIMEOUT = 60.0

_S = RunStatus
_LAUNCHED = (_S.STARTING, _S.STARTED)


class RefusingLauncher(RunLauncher):
    """A launcher that refuses every run with :class:`RunLaunchError`, saying so."""

    REASON = "no capacity, refused on purpose"

    def launch_run(self, run: Run) -> None:
        raise RunLaunchError(self.REASON)

    def terminate(self, run_id: str, *, force: bool = False) -> bool:
        return False

    def check_run_worker_health(self, run: Run) -> WorkerHealth:
        return WorkerHealth.unknown("this launcher starts nothing")


class CoordinatorContract:
    """Checks that a coordinator keeps the contract of :mod:`runcore.coordinators.base`.

    Not collected by itself (no ``Test`` prefix); subclass it as
    ``class TestX(CoordinatorContract)``.

    Fixtures the subclass provides:

    ``coordinator_factory`` (required)
        A zero-argument callable returning a new, unstarted
        :class:`~runcore.coordinators.base.RunCoordinator`. The suite starts several on the
        same storage, as several processes would.

    ``storage_factory`` (optional)
        A zero-argument callable returning a new, unstarted
        :class:`~runcore.storage.InstanceStorage` handle on the *same* data each time (the
        instance it is given to starts and closes it). Default: a SQLite file in
        ``tmp_path``, each handle with its own connections, as another process's would be.

    The suite's own fixture ``make_instance`` builds (and at teardown closes) the instances;
    do not override it.
    """

    @pytest.fixture
    def storage_factory(self, tmp_path: Path) -> Callable[[], InstanceStorage]:
        from runcore.storage.sqlite import SqliteStorage

        path = tmp_path / "coordinator-contract.db"
        return lambda: SqliteStorage(path)

    @pytest.fixture
    def make_instance(
        self,
        coordinator_factory: Callable[[], RunCoordinator],
        storage_factory: Callable[[], InstanceStorage],
    ) -> Iterator[Callable[..., Instance]]:
        opened: list[Instance] = []

        def make(launcher: RunLauncher | None = None) -> Instance:
            instance = Instance(
                storage=storage_factory(),
                run_coordinator=coordinator_factory(),
                run_launcher=launcher if launcher is not None else RecordingLauncher(),
            )
            opened.append(instance)
            instance.ensure_started()
            return instance

        yield make
        for instance in reversed(opened):
            instance.close()

    def advance(self, instance: Instance) -> None:
        """Let the coordinator start what it would start now.

        The default is one dequeue pass of a :class:`~runcore.Daemon` (nothing for a
        coordinator the daemon does not dequeue for). Override it for a coordinator that
        something else drives.
        """

        Daemon(instance).dequeue_once()

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _stored(instance: Instance, job_name: str = "contract_job") -> Run:
        return instance.storage.add_run(Run(job_name=job_name))

    @staticmethod
    def _status(instance: Instance, run_id: str) -> RunStatus:
        run = instance.storage.get_run(run_id)
        assert run is not None, f"run {run_id} vanished"
        return run.status

    @staticmethod
    def _recording(instance: Instance) -> RecordingLauncher:
        launcher = instance.run_launcher
        assert isinstance(launcher, RecordingLauncher)
        return launcher

    def _launched(self, instance: Instance) -> Run:
        """A run submitted and, after a pass if it queued, handed to the launcher."""
        run = instance.run_coordinator.submit_run(self._stored(instance))
        if run.status is _S.QUEUED:
            self.advance(instance)
        assert self._recording(instance).launched_ids == [run.run_id], (
            "a submitted run was not launched (is advance() right for this coordinator?)"
        )
        return instance.storage.get_run(run.run_id) or run

    # --- submit -----------------------------------------------------------------------------

    def test_submit_returns_the_run_queued_or_handed_to_the_launcher(
        self, make_instance: Callable[..., Instance]
    ) -> None:
        instance = make_instance()
        launcher = self._recording(instance)
        run = self._stored(instance)
        submitted = instance.run_coordinator.submit_run(run)
        assert submitted.run_id == run.run_id
        assert submitted.status in (_S.QUEUED, *_LAUNCHED), submitted.status
        assert self._status(instance, run.run_id) is submitted.status, (
            "submit_run must return the run as it is now in storage"
        )
        if submitted.status is _S.QUEUED:
            assert launcher.launched_ids == [], "a QUEUED run was handed to the launcher"
        else:
            assert launcher.launched_ids == [run.run_id]

    def test_a_submitted_run_is_launched_once(self, make_instance: Callable[..., Instance]) -> None:
        instance = make_instance()
        run = self._launched(instance)
        assert run.status in _LAUNCHED
        for _ in range(3):
            self.advance(instance)
        assert self._recording(instance).launched_ids == [run.run_id]

    def test_a_refused_launch_fails_the_run_with_the_reason(
        self, make_instance: Callable[..., Instance]
    ) -> None:
        instance = make_instance(RefusingLauncher())
        run = self._stored(instance)
        try:
            submitted = instance.run_coordinator.submit_run(run)
        except RunLaunchError as exc:
            assert RefusingLauncher.REASON in str(exc)
        else:
            assert submitted.status is _S.QUEUED, (
                f"submit_run returned a run {submitted.status.value} whose launch failed; "
                "it must raise RunLaunchError"
            )
            self.advance(instance)
        failed = instance.storage.get_run(run.run_id)
        assert failed is not None
        assert failed.status is _S.FAILURE
        assert RefusingLauncher.REASON in (failed.failure_reason or "")
        assert failed.failure_kind is FailureKind.LAUNCH_FAILURE

    # --- cancel -----------------------------------------------------------------------------

    def test_cancel_of_a_run_not_yet_launched_is_immediate(
        self, make_instance: Callable[..., Instance]
    ) -> None:
        instance = make_instance()
        coordinator = instance.run_coordinator
        stored = self._stored(instance)
        assert coordinator.cancel_run(stored.run_id) is True
        assert self._status(instance, stored.run_id) is _S.CANCELED
        submitted = coordinator.submit_run(self._stored(instance))
        if submitted.status is _S.QUEUED:
            assert coordinator.cancel_run(submitted.run_id) is True
            assert self._status(instance, submitted.run_id) is _S.CANCELED
            self.advance(instance)
            assert self._status(instance, submitted.run_id) is _S.CANCELED
        assert stored.run_id not in self._recording(instance).launched_ids
        assert self._recording(instance).terminated == []

    def test_cancel_of_a_launched_run_asks_the_launcher_to_terminate_it(
        self, make_instance: Callable[..., Instance]
    ) -> None:
        instance = make_instance()
        run = self._launched(instance)
        assert instance.run_coordinator.cancel_run(run.run_id) is True
        assert self._recording(instance).terminated == [run.run_id]
        assert self._status(instance, run.run_id) is _S.CANCELED  # RecordingLauncher ends it

    def test_cancel_of_a_run_no_worker_holds_finishes_the_cancel(
        self, make_instance: Callable[..., Instance]
    ) -> None:
        instance = make_instance()
        run = self._stored(instance)
        # STARTING, but no launcher was ever given it (its process died before the launch).
        assert instance.storage.transition(run.run_id, [_S.NOT_STARTED], _S.STARTING)
        assert instance.run_coordinator.cancel_run(run.run_id) is True
        assert self._status(instance, run.run_id) is _S.CANCELED, (
            "a cancel left a run CANCELING that no worker will ever finish"
        )

    def test_cancel_of_an_ended_run_is_false(self, make_instance: Callable[..., Instance]) -> None:
        instance = make_instance()
        run = self._launched(instance)
        self._recording(instance).finish(run.run_id)
        assert instance.run_coordinator.cancel_run(run.run_id) is False
        assert self._status(instance, run.run_id) is _S.SUCCESS
        assert self._recording(instance).terminated == []

    def test_cancel_of_an_unknown_run_raises(self, make_instance: Callable[..., Instance]) -> None:
        instance = make_instance()
        with pytest.raises(RunNotFoundError):
            instance.run_coordinator.cancel_run(str(uuid.uuid4()))

    # --- concurrency ------------------------------------------------------------------------

    def test_a_run_is_never_launched_twice(self, make_instance: Callable[..., Instance]) -> None:
        """Several coordinators (each on its own storage handle, as in several processes)
        submit the same runs and pass over the queue at the same time."""
        instances = [make_instance() for _ in range(4)]
        runs = [self._stored(instances[0]) for _ in range(6)]
        barrier = threading.Barrier(len(instances))
        errors: list[BaseException] = []

        def work(instance: Instance) -> None:
            try:
                barrier.wait(timeout=THREAD_TIMEOUT)
                for run in runs:
                    instance.run_coordinator.submit_run(run)
                for _ in range(3):
                    self.advance(instance)
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=work, args=(instance,), daemon=True) for instance in instances
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + THREAD_TIMEOUT
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            pytest.fail(f"coordinators did not finish within {THREAD_TIMEOUT} s (a deadlock?)")
        if errors:
            raise errors[0]
        for _ in runs:  # a coordinator that launches a few runs per pass: drain the queue
            self.advance(instances[0])
        launched = [run_id for i in instances for run_id in self._recording(i).launched_ids]
        for run in runs:
            count = launched.count(run.run_id)
            assert count == 1, f"run {run.run_id} was launched {count} times"
            assert self._status(instances[0], run.run_id) in _LAUNCHED
