"""The ``Instance``: the facade that holds storage, coordinator and launcher together.

It only wires: each component gets its collaborators through ``start(context)`` and never holds
a reference back to the instance. Which components a config means is decided in
:mod:`runcore.wiring`. The instance starts its components on first use (the constructor does no
I/O) and closes them in :meth:`Instance.close` or at the end of a ``with``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import attrs

from runcore import _validate
from runcore import config as _config
from runcore.coordinators.base import CoordinatorContext, QueuingCoordinator, RunCoordinator
from runcore.coordinators.default import DefaultRunCoordinator
from runcore.coordinators.queued import QueueExplanation
from runcore.daemon import daemon_statuses
from runcore.definitions import (
    Job,
    absolute_location,
    importing_code_location,
    infer_code_location,
)
from runcore.errors import (
    ConfigError,
    DefinitionError,
    InstanceClosedError,
    RunNotFoundError,
    RunTimeoutError,
    UnknownJobError,
)
from runcore.events import Event, EventType
from runcore.launchers.base import LaunchContext, RunLauncher
from runcore.launchers.routing import IsolationRouter
from runcore.launchers.thread_pool import ThreadPoolRunLauncher
from runcore.runs import (
    ISOLATION_TAG,
    Run,
    RunRecord,
    RunsFilter,
    RunStatus,
    check_user_tags,
)
from runcore.storage.base import InstanceStorage, StorageNotifier
from runcore.storage.memory import InMemoryStorage
from runcore.wiring import build_components, build_run_hooks, step_pools_for
from runcore.worker.execution import StepPools
from runcore.worker.outputs import FileOutputStore, InMemoryOutputStore, OutputStore
from runcore.worker.plan import build_plan, resolve_op_selection
from runcore.worker.registry import WORKER_ENV, JobRegistry

if TYPE_CHECKING:
    from runcore.coordinators.queued import QueueExplanation
    from runcore.worker.hooks import RunHooks


def validate_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    """Check run tags a user gives (see :func:`runcore.runs.check_user_tags`); a copy."""
    return check_user_tags(tags)


@attrs.define(eq=False)
class Instance:
    """Runs jobs and remembers them. The components are its fields.

    Build one with :meth:`ephemeral` (in memory, runs on threads here) or :meth:`from_config`
    (a dict or a YAML file), or pass components yourself.

    Threads: none of its own; its launcher's (see the launcher's docstring). Close the
    instance (or use it as a context manager) to wait for in-flight runs and free them.
    """

    storage: InstanceStorage = attrs.field(factory=InMemoryStorage)
    run_coordinator: RunCoordinator = attrs.field(factory=DefaultRunCoordinator)
    run_launcher: RunLauncher = attrs.field(factory=ThreadPoolRunLauncher)
    non_isolated_launcher: RunLauncher | None = None
    output_store: OutputStore = attrs.field(factory=InMemoryOutputStore)
    config: _config.InstanceConfig | None = None
    jobs: JobRegistry = attrs.field(factory=JobRegistry)
    #: Hooks observing runs executed in this process, added to the config's ``run_hooks``.
    run_hooks: list[RunHooks] = attrs.field(factory=list)
    _router: IsolationRouter | None = attrs.field(default=None, init=False, repr=False)
    _started: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def ephemeral(cls) -> Instance:
        """An in-memory instance: nothing is written to disk, runs execute on threads here."""
        return cls()

    @classmethod
    def from_config(cls, source: Mapping[str, Any] | str | os.PathLike[str]) -> Instance:
        """An instance built from a config mapping or YAML file (see ``docs/configuration.md``).

        Raises :class:`~runcore.errors.ConfigError` naming the key for malformed config.
        No I/O happens until the instance is first used.
        """
        parts = build_components(source)
        return cls(
            storage=parts.storage,
            run_coordinator=parts.run_coordinator,
            run_launcher=parts.run_launcher,
            non_isolated_launcher=parts.non_isolated_launcher,
            output_store=parts.output_store,
            config=parts.config,
        )

    # --- lifecycle --------------------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start the components now (the first use of the instance does this by itself)."""
        if self._started:
            return
        with self._lock:
            if self._closed:
                raise InstanceClosedError("this Instance is closed; create a new one")
            if not self._started:
                self._start_components()
                self._started = True

    def _start_components(self) -> None:
        self.storage.start()
        cfg = self.config or _config.InstanceConfig()
        self.launcher.start(
            LaunchContext(
                storage=self.storage,
                resolve_job=self.jobs.resolve,
                output_store=self.output_store,
                instance_config=self.config_for_workers(),
                pools=self.step_pools,
                heartbeat_interval=cfg.run_monitoring.worker_heartbeat_interval_seconds,
                heartbeat_timeout=cfg.run_monitoring.worker_heartbeat_timeout_seconds,
                hooks=(*self._config_hooks(), *self.run_hooks),
            )
        )
        self.run_coordinator.start(
            CoordinatorContext(
                storage=self.storage,
                launcher=self.launcher,
                concurrency=cfg.concurrency,
                non_isolated_runs=cfg.non_isolated_runs,
            )
        )

    def _config_hooks(self) -> list[RunHooks]:
        return build_run_hooks(self.config) if self.config is not None else []

    @property
    def launcher(self) -> RunLauncher:
        """The launcher coordinators hand runs to: ``run_launcher``, or a router that sends
        runs tagged ``runcore/isolation: non_isolated`` to ``non_isolated_launcher``."""
        router = self._router
        if router is None:
            if (
                self.non_isolated_launcher is None
                or self.non_isolated_launcher is self.run_launcher
            ):
                return self.run_launcher
            router = self._router = IsolationRouter(self.run_launcher, self.non_isolated_launcher)
        return router

    @property
    def step_pools(self) -> StepPools | None:
        """How steps claim pool slots here: at op granularity (the default), each step with a
        pool claims a slot before it runs; at run granularity, None (the queue does it)."""
        return step_pools_for(self.config)

    def config_for_workers(self) -> dict[str, Any]:
        """The instance config as plain JSON-able data, with absolute paths: what another
        process (a run worker, a code server) needs to open the same storage and outputs.
        Secrets (a launcher's ``token``) are left out: workers get it on their command line."""
        data: dict[str, Any] = _config.to_dict(self.config) if self.config is not None else {}
        storage_cfg = self.storage.to_config()
        if storage_cfg is not None:
            data["storage"] = storage_cfg
        if isinstance(self.output_store, FileOutputStore):
            data["outputs"] = {"path": os.path.abspath(self.output_store.base_dir)}
        return dict(_config.without_secrets(data))

    def migrate(self) -> tuple[int, int] | None:
        """Upgrade the storage's schema to this runcore's (``runcore instance migrate``);
        returns the (from, to) schema versions, or ``None`` for a storage without a schema.
        Needs no started instance: it is what makes an older database openable."""
        return self.storage.migrate()

    def close(self) -> None:
        """Wait for runs executing in this process, then close launcher, coordinator, storage."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._started
        if started:
            self.run_coordinator.close()
            self.launcher.close()
        self.storage.close()

    def __enter__(self) -> Self:
        self.ensure_started()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- runs -------------------------------------------------------------------------------

    def create_run(
        self,
        job: Job | str,
        tags: Mapping[str, str] | None = None,
        *,
        code_location: str | None = None,
        op_selection: Sequence[str] | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        root_run_id: str | None = None,
        step_keys: Sequence[str] | None = None,
    ) -> Run:
        """Store a NOT_STARTED run of ``job`` without submitting it (see :meth:`submit_run`).

        ``step_keys`` (instead of ``op_selection``) names the exact steps to execute; with
        ``parent_run_id``, steps outside them read their outputs from the parent run.
        Tags are the user's: under ``runcore/`` only the documented control tags are accepted.
        """
        return self._create_run(
            job,
            validate_tags(tags),
            code_location=code_location,
            op_selection=op_selection,
            run_id=None if run_id is None else _validate.run_id(run_id),
            parent_run_id=None if parent_run_id is None else _validate.run_id(parent_run_id),
            root_run_id=None if root_run_id is None else _validate.run_id(root_run_id),
            step_keys=step_keys,
        )

    def _create_run(
        self,
        job: Job | str,
        tags: Mapping[str, str],
        *,
        code_location: str | None = None,
        op_selection: Sequence[str] | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        root_run_id: str | None = None,
        step_keys: Sequence[str] | None = None,
    ) -> Run:
        """:meth:`create_run` with ``tags`` already trusted: runcore's own path (run retries
        write ``runcore/retry_*`` tags through it), never reachable with user input."""
        self.ensure_started()
        if os.environ.get(WORKER_ENV) and importing_code_location():
            raise DefinitionError(
                "a code location submitted a run while a run worker was importing it: every "
                "worker would start more runs, without end. Put the code that submits runs "
                "under `if __name__ == '__main__':` in that module"
            )
        if isinstance(code_location, str):
            code_location = absolute_location(code_location)
        job_obj = self._job_for(job, code_location)
        location = code_location or infer_code_location(job_obj)
        self.jobs.register(job_obj, location)
        if op_selection:
            step_keys = resolve_op_selection(job_obj, op_selection)
        elif step_keys is not None:
            step_keys = list(step_keys)
        plan = build_plan(job_obj, step_keys, allow_external=parent_run_id is not None)
        run_tags = {**job_obj.tags, **tags}
        self._check_isolation(run_tags)
        extra: dict[str, Any] = {"run_id": run_id} if run_id is not None else {}
        root_pools = [step.op.pool for step in plan.roots()]
        run = Run(
            job_name=job_obj.name,
            tags=run_tags,
            pools=sorted({s.op.pool for s in plan.steps if s.op.pool is not None}),
            root_pools=None if None in root_pools else sorted(p for p in root_pools if p),
            code_location=location,
            step_keys_to_execute=step_keys,
            parent_run_id=parent_run_id,
            root_run_id=root_run_id or parent_run_id,
            **extra,
        )
        return self.storage.add_run(run)

    def _check_isolation(self, tags: Mapping[str, str]) -> None:
        cfg = self.config or _config.InstanceConfig()
        if tags.get(ISOLATION_TAG) == "non_isolated" and not cfg.non_isolated_runs.enabled:
            raise ConfigError(
                f"tag {ISOLATION_TAG}: non_isolated is refused because non_isolated_runs.enabled "
                "is false in the instance config; drop the tag or enable non-isolated runs"
            )

    def _job_for(self, job: Job | str, code_location: str | None) -> Job:
        if isinstance(job, Job):
            return job
        if not isinstance(job, str):
            raise UnknownJobError(f"submit_run takes a Job or a job name, got {job!r}")
        if code_location is None:
            raise UnknownJobError(
                f"to submit job {job!r} by name, give code_location='pkg.module:defs'"
            )
        return self.jobs.load(code_location).get_job(job)

    def submit_run(
        self,
        job: Job | str,
        tags: Mapping[str, str] | None = None,
        *,
        code_location: str | None = None,
        op_selection: Sequence[str] | None = None,
        run_id: str | None = None,
    ) -> Run:
        """Create a run of ``job`` and hand it to the coordinator; returns the run as it is now.

        ``job`` is a :class:`Job` or, with ``code_location``, a job name. Tags are merged over
        the job's own. Under the default coordinator the run starts at once; under a queued one
        it is QUEUED until the daemon starts it.
        """
        run = self.create_run(
            job, tags, code_location=code_location, op_selection=op_selection, run_id=run_id
        )
        return self.run_coordinator.submit_run(run)

    def get_run(self, run_id: str) -> Run:
        """The run with this id; :class:`~runcore.errors.RunNotFoundError` if there is none
        (:class:`~runcore.errors.InvalidRunIdError`, one of those, if ``run_id`` is not a run
        id at all)."""
        _validate.run_id(run_id)
        self.ensure_started()
        run = self.storage.get_run(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        return run

    def get_run_records(
        self,
        filters: RunsFilter | None = None,
        limit: int | None = None,
        *,
        ascending: bool = False,
        after_storage_id: int | None = None,
    ) -> list[RunRecord]:
        """Stored runs matching ``filters``, newest first (see :class:`RunsFilter`)."""
        if limit is not None:
            _validate.integer("limit", limit, minimum=0)
        if after_storage_id is not None:
            _validate.integer("after_storage_id", after_storage_id)
        self.ensure_started()
        return self.storage.get_run_records(
            filters, limit, ascending=ascending, after_storage_id=after_storage_id
        )

    def get_runs(self, filters: RunsFilter | None = None, limit: int | None = None) -> list[Run]:
        """Like :meth:`get_run_records`, the runs only."""
        return [r.run for r in self.get_run_records(filters, limit)]

    def get_events(
        self,
        run_id: str,
        *,
        after_storage_id: int | None = None,
        event_types: Sequence[EventType] | None = None,
    ) -> list[Event]:
        """A run's events in order. Raises :class:`RunNotFoundError` for an unknown run."""
        _validate.run_id(run_id)
        if after_storage_id is not None:
            _validate.integer("after_storage_id", after_storage_id)
        self.ensure_started()
        records = self.storage.get_event_records(
            run_id, after_storage_id=after_storage_id, event_types=event_types
        )
        if not records and self.storage.get_run(run_id) is None:
            raise RunNotFoundError(run_id)
        return [r.event for r in records]

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> Run:
        """Block until the run ends; returns it. :class:`RunTimeoutError` after ``timeout`` s.

        ``timeout``: seconds, finite and > 0 (at most 1e9), or None to wait without end.
        """
        _validate.run_id(run_id)
        if timeout is not None:
            timeout = _validate.duration("wait_for_run(timeout=...)", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        # A storage that notifies ends of runs (PostgreSQL) wakes the wait at once: then a
        # poll a second is the fallback, not one every 50 ms on the shared database.
        ended = threading.Event()
        unsubscribe = None
        if isinstance(self.storage, StorageNotifier):
            with contextlib.suppress(Exception):
                unsubscribe = self.storage.subscribe(lambda kind: ended.set())
        cap = 0.05 if unsubscribe is None else 1.0
        try:
            while True:
                ended.clear()
                run = self.get_run(run_id)
                if run.status.is_terminal:
                    return run
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise RunTimeoutError(
                        f"run {run_id} is still {run.status.value} after {timeout} s"
                    )
                ended.wait(delay if left is None else min(delay, left))
                delay = min(delay * 2, cap)
        finally:
            if unsubscribe is not None:
                unsubscribe()

    def cancel_run(self, run_id: str) -> bool:
        """Cancel a run; False if it had already ended. See :class:`RunCoordinator`."""
        _validate.run_id(run_id)
        self.ensure_started()
        return self.run_coordinator.cancel_run(run_id)

    def explain_queued(self, run_id: str) -> QueueExplanation:
        """Why a queued run has not started: each limit that holds it, with who holds it.

        ``str()`` of the answer is a readable report. Under a coordinator that does not queue,
        the explanation says so.
        """

        _validate.run_id(run_id)
        self.ensure_started()
        coordinator = self.run_coordinator
        if not isinstance(coordinator, QueuingCoordinator):
            run = self.get_run(run_id)
            return QueueExplanation(
                run_id,
                run.status,
                None,
                0,
                (f"the instance's coordinator ({type(coordinator).__name__}) does not queue runs",),
            )
        answer = coordinator.explain(run_id)
        if answer.status is RunStatus.QUEUED and not any(
            s.alive for s in daemon_statuses(self.storage)
        ):
            answer = attrs.evolve(
                answer,
                reasons=(
                    *answer.reasons,
                    "no daemon is alive: start one (`runcore daemon`, or "
                    "`with runcore.Daemon(instance):` in your program)",
                ),
            )
        return answer

    # --- pools ------------------------------------------------------------------------------

    def set_pool_limit(self, pool: str, limit: int) -> None:
        """Give ``pool`` ``limit`` slots (an int >= 0)."""
        _check_pool(pool)
        _validate.integer(f"pool {pool!r}: the limit", limit, minimum=0)
        self.ensure_started()
        self.storage.set_pool_limit(pool, limit)

    def get_pool_limit(self, pool: str) -> int | None:
        """The explicit limit of ``pool``, or ``None`` if it has none."""
        _check_pool(pool)
        self.ensure_started()
        return self.storage.get_pool_limits().get(pool)

    def delete_pool_limit(self, pool: str) -> None:
        """Remove the explicit limit of ``pool``."""
        _check_pool(pool)
        self.ensure_started()
        self.storage.delete_pool_limit(pool)


def _check_pool(pool: str) -> None:
    if not isinstance(pool, str) or not pool.strip():
        raise ConfigError(f"a pool name must be a non-empty string, got {pool!r}")


__all__ = ["Instance", "JobRegistry", "validate_tags"]
