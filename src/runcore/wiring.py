"""Wiring: from an instance config to the components an :class:`~runcore.instance.Instance`
holds. The one place that decides which class a config means.

:mod:`runcore.config` parses the config and instantiates one plug-in from its ``{class,
config}``; this module builds every component from a parsed config: the storage (the
``sqlite``/``in_memory`` short forms, or any plug-in), the output store, the coordinator, the
launchers and the run hooks. Worker processes use it too, to open the storage and outputs from
the config their instance handed them. Nothing here does I/O: components open their resources
when started.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from runcore import config as _config
from runcore.errors import ConfigError
from runcore.storage.base import InstanceStorage
from runcore.worker.execution import StepPools
from runcore.worker.hooks import RunHooks
from runcore.worker.outputs import FileOutputStore, InMemoryOutputStore, OutputStore

if TYPE_CHECKING:
    from runcore.coordinators.base import RunCoordinator
    from runcore.launchers.base import RunLauncher

# A run worker process builds only its storage, outputs and hooks from here: the coordinator
# and launcher classes are imported by the functions that build them (an instance's), so a
# worker's start-up does not pay for them.


def build_storage(cfg: _config.StorageConfig, base_dir: str) -> InstanceStorage:
    """The (unstarted) storage ``cfg`` names; a relative SQLite path is from ``base_dir``.

    A plug-in (``class``) gets its ``config`` as written: its paths are its own business.
    """
    if cfg.class_name is not None:
        plugin = _config.PluginConfig(cfg.class_name, dict(cfg.config or {}))
        storage: InstanceStorage = _config.build_plugin(plugin, InstanceStorage, where="storage")
        return storage
    if cfg.sqlite is not None:
        from runcore.storage.sqlite import SqliteStorage

        return SqliteStorage(
            os.path.join(base_dir, os.path.expanduser(cfg.sqlite.path)),
            auto_migrate=cfg.sqlite.auto_migrate,
        )
    if cfg.postgres is not None:
        try:
            from runcore.storage.postgres import PostgresStorage
        except ImportError as exc:
            raise ConfigError(f"storage.postgres: {exc}") from exc
        pg = cfg.postgres
        return PostgresStorage(
            pg.url,
            schema=pg.schema,
            pool_min=pg.pool.min,
            pool_max=pg.pool.max,
            auto_migrate=pg.auto_migrate,
        )
    from runcore.storage.memory import InMemoryStorage

    return InMemoryStorage()


def build_output_store(
    cfg: _config.OutputsConfig, storage: InstanceStorage, base_dir: str
) -> OutputStore:
    """``outputs.class`` if set (a plug-in store, e.g. ``S3OutputStore``), else
    ``outputs.path`` (relative to ``base_dir``), else the storage's default directory
    (``outputs/`` beside a SQLite file), else memory."""
    if cfg.class_name is not None:
        plugin = _config.PluginConfig(cfg.class_name, dict(cfg.config))
        store: OutputStore = _config.build_plugin(plugin, OutputStore, where="outputs")
        return store
    if cfg.path is not None:
        return FileOutputStore(os.path.join(base_dir, os.path.expanduser(cfg.path)))
    default = storage.default_outputs_dir()
    return FileOutputStore(default) if default is not None else InMemoryOutputStore()


def build_storage_and_outputs(
    cfg: _config.InstanceConfig, base_dir: str
) -> tuple[InstanceStorage, OutputStore]:
    """The storage and output store a config names (unstarted); relative paths from
    ``base_dir``."""
    storage = build_storage(cfg.storage, base_dir)
    return storage, build_output_store(cfg.outputs, storage, base_dir)


def build_coordinator(cfg: _config.InstanceConfig) -> RunCoordinator:
    """``run_coordinator`` if configured, else the default coordinator (starts runs at once)."""
    from runcore.coordinators.base import RunCoordinator
    from runcore.coordinators.default import DefaultRunCoordinator

    if cfg.run_coordinator is None:
        return DefaultRunCoordinator()
    coordinator: RunCoordinator = _config.build_plugin(
        cfg.run_coordinator, RunCoordinator, where="run_coordinator"
    )
    return coordinator


def build_launchers(
    cfg: _config.InstanceConfig, storage: InstanceStorage
) -> tuple[RunLauncher, RunLauncher | None]:
    """The isolated launcher and, if different, the non-isolated one.

    Isolated: ``run_launcher`` if configured, else worker processes when other processes can
    open the storage (SQLite, PostgreSQL), else threads (in-memory storage is invisible to
    other processes). Non-isolated: ``non_isolated_runs.launcher`` if configured, else the
    configured ``run_launcher`` (the user chose where runs go), else a thread pool sized by
    ``non_isolated_runs.max_concurrent_runs``.
    """
    from runcore.launchers.base import RunLauncher
    from runcore.launchers.thread_pool import ThreadPoolRunLauncher

    if cfg.run_launcher is not None:
        isolated: RunLauncher = _config.build_plugin(
            cfg.run_launcher, RunLauncher, where="run_launcher"
        )
    elif storage.shareable:
        from runcore.launchers.subprocess import SubprocessRunLauncher

        isolated = SubprocessRunLauncher()
    else:
        return ThreadPoolRunLauncher(), None
    ni = cfg.non_isolated_runs
    if ni.launcher is not None:
        return isolated, _config.build_plugin(
            ni.launcher, RunLauncher, where="non_isolated_runs.launcher"
        )
    if cfg.run_launcher is not None:
        return isolated, None
    threads = ni.max_concurrent_runs if ni.max_concurrent_runs > 0 else (os.cpu_count() or 1) * 5
    return isolated, ThreadPoolRunLauncher(max_workers=threads)


def build_run_hooks(cfg: _config.InstanceConfig) -> list[RunHooks]:
    """The ``run_hooks`` the config names, built (the instance's, and every run worker's)."""
    return [
        _config.build_plugin(plugin, RunHooks, where=f"run_hooks[{i}]")
        for i, plugin in enumerate(cfg.run_hooks)
    ]


def step_pools_for(cfg: _config.InstanceConfig | None) -> StepPools | None:
    """Op-granularity pool settings of a config (None at run granularity)."""
    pools = (cfg or _config.InstanceConfig()).concurrency.pools
    return StepPools(default_limit=pools.default_limit) if pools.granularity == "op" else None


@attrs.frozen(kw_only=True)
class Components:
    """Everything a config names, built and unstarted: the fields of an ``Instance``."""

    storage: InstanceStorage
    run_coordinator: RunCoordinator
    run_launcher: RunLauncher
    non_isolated_launcher: RunLauncher | None
    output_store: OutputStore
    config: _config.InstanceConfig


def build_components(source: Mapping[str, Any] | str | os.PathLike[str]) -> Components:
    """Parse a config mapping or YAML file and build its components (no I/O beyond reading
    the file). Raises :class:`~runcore.errors.ConfigError` naming the key."""
    from runcore.coordinators.queued import limits_from_config

    cfg, base_dir = _config.load_instance_config(source)
    limits_from_config(cfg.concurrency, cfg.non_isolated_runs)  # bad limits fail here
    storage, output_store = build_storage_and_outputs(cfg, base_dir)
    coordinator = build_coordinator(cfg)
    launcher, non_isolated = build_launchers(cfg, storage)
    return Components(
        storage=storage,
        run_coordinator=coordinator,
        run_launcher=launcher,
        non_isolated_launcher=non_isolated,
        output_store=output_store,
        config=cfg,
    )


__all__ = [
    "Components",
    "build_components",
    "build_coordinator",
    "build_launchers",
    "build_output_store",
    "build_run_hooks",
    "build_storage",
    "build_storage_and_outputs",
    "step_pools_for",
]
