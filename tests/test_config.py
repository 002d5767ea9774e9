"""Instance configuration: defaults, YAML, and a clear error for each malformed key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import runcore as rc
from runcore import config
from runcore.launchers.subprocess import SubprocessRunLauncher
from runcore.storage.memory import InMemoryStorage
from runcore.storage.sqlite import SqliteStorage


def test_defaults_are_the_embedded_sqlite() -> None:
    inst = rc.Instance.from_config({})
    assert isinstance(inst.storage, SqliteStorage)
    assert inst.storage.path.endswith(".runcore/runs.db")
    assert isinstance(inst.run_coordinator, rc.DefaultRunCoordinator)
    # SQLite can be opened by other processes: runs are isolated in worker processes, and
    # runs tagged non_isolated go to threads of this process.
    assert isinstance(inst.run_launcher, SubprocessRunLauncher)
    assert isinstance(inst.non_isolated_launcher, rc.ThreadPoolRunLauncher)
    assert isinstance(inst.output_store, rc.FileOutputStore)


def test_in_memory_keeps_outputs_in_memory() -> None:
    inst = rc.Instance.from_config({"storage": {"in_memory": {}}})
    assert isinstance(inst.storage, rc.InMemoryStorage)
    assert isinstance(inst.run_launcher, rc.ThreadPoolRunLauncher)
    assert inst.non_isolated_launcher is None  # no other process could see the runs
    assert isinstance(inst.output_store, rc.InMemoryOutputStore)


def test_full_config_parses() -> None:
    cfg, _ = config.load_instance_config(
        {
            "storage": {"sqlite": {"path": "x.db"}},
            "run_coordinator": {"class": "runcore.coordinators:DefaultRunCoordinator"},
            "run_launcher": {
                "class": "runcore.launchers:ThreadPoolRunLauncher",
                "config": {"max_workers": 2},
            },
            "non_isolated_runs": {"enabled": True, "max_concurrent_runs": 1},
            "concurrency": {
                "runs": {
                    "max_concurrent_runs": 15,
                    "tag_concurrency_limits": [
                        {"key": "runcore/backfill", "limit": 10},
                        {"key": "team", "value": {"applyLimitPerUniqueValue": True}, "limit": 2},
                        {"key": "runcore/sensor_name", "value": "my_sensor", "limit": 5},
                    ],
                },
                "pools": {"default_limit": 1, "granularity": "op"},
            },
            "run_monitoring": {"enabled": True, "start_timeout_seconds": 180},
            "run_retries": {"enabled": True, "max_retries": 0, "retry_on_op_failure": True},
        }
    )
    limits = cfg.concurrency.runs.tag_concurrency_limits
    assert limits[1].value == config.UniqueValue(apply_limit_per_unique_value=True)
    assert limits[2].value == "my_sensor"
    assert cfg.run_launcher is not None and cfg.run_launcher.config == {"max_workers": 2}
    assert config.to_dict(cfg)["run_launcher"]["class"] == "runcore.launchers:ThreadPoolRunLauncher"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"storage": {"sqlte": {}}},
            "storage: unknown key 'sqlte'; expected one of: class, config, in_memory",
        ),
        ({"storage": {"sqlite": {"path": 3}}}, "storage.sqlite.path: expected a string, got 3"),
        ({"storage": {}}, "storage: give exactly one of sqlite, in_memory, postgres, class"),
        (
            {"storage": {"sqlite": {}, "in_memory": {}}},
            "give exactly one of sqlite, in_memory, postgres, class (got sqlite, in_memory)",
        ),
        (
            {"storage": {"class": "runcore.storage:InMemoryStorage", "sqlite": {}}},
            "give exactly one of sqlite, in_memory, postgres, class (got sqlite, class)",
        ),
        ({"storage": {"class": 3}}, "storage.class: expected a string, got 3"),
        (
            {"storage": {"sqlite": {}, "config": {"path": "x"}}},
            "storage.config: settings of a storage plug-in go beside its class",
        ),
        (
            {"concurrency": {"runs": {"max_concurrent_runs": "15"}}},
            "concurrency.runs.max_concurrent_runs: expected an integer, got '15'",
        ),
        (
            {"concurrency": {"pools": {"granularity": "step"}}},
            "concurrency.pools.granularity: expected one of 'op', 'run', got 'step'",
        ),
        (
            {"concurrency": {"runs": {"tag_concurrency_limits": [{"key": "team"}]}}},
            "concurrency.runs.tag_concurrency_limits[0].limit: this key is required",
        ),
        (
            {
                "concurrency": {
                    "runs": {"tag_concurrency_limits": [{"key": "a", "limit": 1, "value": 3}]}
                }
            },
            "[0].value: expected a string or {applyLimitPerUniqueValue: true}",
        ),
        ({"run_monitoring": {"enabled": "yes"}}, "run_monitoring.enabled: expected true or false"),
        (
            {"run_launcher": {"klass": "x"}},
            "run_launcher: unknown key 'klass'; expected one of: class",
        ),
        ({"bogus": 1}, "unknown key 'bogus'"),
        (
            {
                "run_launcher": {
                    "class": "runcore.launchers:ThreadPoolRunLauncher",
                    "config": {"max_wrkers": 3},
                }
            },
            "ThreadPoolRunLauncher has no setting 'max_wrkers' (it accepts: max_workers)",
        ),
        (
            {
                "run_launcher": {
                    "class": "runcore.launchers:ThreadPoolRunLauncher",
                    "config": {"max_workers": 0},
                }
            },
            "max_workers must be an int >= 1, got 0",
        ),
        ({"run_launcher": {"class": "no_such_module:X"}}, "cannot import module 'no_such_module'"),
        (
            {"run_launcher": {"class": "runcore:NoSuchClass"}},
            "module 'runcore' has no class 'NoSuchClass'",
        ),
        ({"run_launcher": {"class": "nocolon"}}, "expected 'module:Class'"),
        (
            {"storage": {"postgres": {"url": "postgresql://x", "schema": "a-b"}}},
            "storage.postgres.schema: 'a-b' is not a plain SQL identifier",
        ),
        (
            {"storage": {"postgres": {"url": "postgresql://x", "pool": {"min": 3, "max": 2}}}},
            "storage.postgres.pool: need 0 <= min <= max",
        ),
        (
            {"run_monitoring": {"poll_interval_seconds": 0}},
            "run_monitoring.poll_interval_seconds: must be > 0",
        ),
        (
            {"run_monitoring": {"max_runtime_seconds": -5}},
            "run_monitoring.max_runtime_seconds: must be > 0",
        ),
        ({"run_retries": {"max_retries": -1}}, "run_retries.max_retries: must be an int >= 0"),
        ({"run_retries": {"delay_seconds": -1}}, "run_retries.delay_seconds: must be >= 0"),
    ],
)
def test_malformed_config_names_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(rc.ConfigError) as info:
        rc.Instance.from_config(data)
    assert message in str(info.value)


def test_yaml_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(rc.ConfigError, match="cannot read the instance config file"):
        rc.Instance.from_config(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: [unclosed\n")
    with pytest.raises(rc.ConfigError, match="not valid YAML"):
        rc.Instance.from_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("storage:\n  sqlite:\n    path: 5\n")
    with pytest.raises(rc.ConfigError, match=r"wrong.yaml: storage.sqlite.path: expected a string"):
        rc.Instance.from_config(wrong)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(rc.ConfigError, match="expected a mapping"):
        rc.Instance.from_config(scalar)


def test_config_is_data_not_code(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("storage: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(rc.ConfigError, match="not valid YAML"):
        rc.Instance.from_config(evil)


class _CountingStorage(InMemoryStorage):
    """A third-party storage: counts the runs it stored."""

    def __init__(self, start_at: int = 0) -> None:
        super().__init__()
        self.added = start_at

    def add_run(self, run: rc.Run) -> rc.Run:
        self.added += 1
        return super().add_run(run)


class _NamedSqliteStorage(SqliteStorage):
    """A subclass of SqliteStorage taking the same settings."""


def test_storage_plugin_by_class_path() -> None:
    inst = rc.Instance.from_config(
        {"storage": {"class": f"{__name__}:_CountingStorage", "config": {"start_at": 5}}}
    )
    assert isinstance(inst.storage, _CountingStorage)
    assert isinstance(inst.output_store, rc.InMemoryOutputStore)
    assert isinstance(inst.run_launcher, rc.ThreadPoolRunLauncher), "not shareable: threads"

    @rc.op
    def one() -> int:
        return 1

    with inst:
        run = inst.submit_run(rc.job("counted", [one]))
        assert inst.wait_for_run(run.run_id, timeout=10).status is rc.RunStatus.SUCCESS
    assert inst.storage.added == 6


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (
            {"class": "runcore.launchers:ThreadPoolRunLauncher"},
            "storage.class: runcore.launchers:ThreadPoolRunLauncher is not a InstanceStorage",
        ),
        (
            {"class": "runcore.storage:SqliteStorage", "config": {"pth": "x.db"}},
            "storage.config: SqliteStorage has no setting 'pth'",
        ),
        ({"class": "no_such_module_xyz:Storage"}, "storage.class: cannot import module"),
    ],
)
def test_storage_plugin_errors_name_the_key(storage: dict[str, Any], message: str) -> None:
    with pytest.raises(rc.ConfigError) as info:
        rc.Instance.from_config({"storage": storage})
    assert message in str(info.value)


def test_storage_to_config_round_trips_for_workers(tmp_path: Path) -> None:
    db = str(tmp_path / "runs.db")
    cases = [
        ({"sqlite": {"path": db}}, {"sqlite": {"path": db}}),
        (
            {"class": "runcore.storage:SqliteStorage", "config": {"path": db}},
            {"sqlite": {"path": db}},
        ),
        ({"in_memory": {}}, {"in_memory": {}}),
        (
            {"class": f"{__name__}:_NamedSqliteStorage", "config": {"path": db}},
            {
                "class": f"{__name__}:_NamedSqliteStorage",
                "config": {"path": db, "busy_timeout": 30.0},
            },
        ),
        (
            {"class": f"{__name__}:_CountingStorage"},
            {"class": f"{__name__}:_CountingStorage", "config": {}},
        ),
    ]
    for given, handed in cases:
        inst = rc.Instance.from_config({"storage": given})
        assert inst.storage.to_config() == handed
        assert inst.config_for_workers()["storage"] == handed
        again = rc.Instance.from_config(inst.config_for_workers())
        assert type(again.storage) is type(inst.storage)
        assert again.storage.to_config() == handed
    inst = rc.Instance.from_config(
        {"storage": {"class": f"{__name__}:_NamedSqliteStorage", "config": {"path": db}}}
    )
    assert isinstance(inst.output_store, rc.FileOutputStore)
    assert inst.output_store.base_dir == str(tmp_path / "outputs")
