"""The Instance facade end to end: submit, wait, query, cancel, close; on memory and SQLite."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import runcore as rc
from runcore.launchers import LaunchContext


@rc.op
def extract() -> list[int]:
    return [1, 2, 3]


@rc.op(retry_policy=rc.RetryPolicy(max_retries=2, delay=0.01), tags={"kind": "sql"})
def load(context: rc.OpContext, extract: list[int]) -> int:
    context.log.info("loading", rows=len(extract))
    return sum(extract)


etl = rc.job("etl", [extract, load], tags={"team": "data"})


@rc.op
def explode() -> int:
    raise ValueError("bad row 7")


broken = rc.job("broken", [explode])

gate = threading.Event()
entered = threading.Event()


@rc.op
def wait_for_gate(context: rc.OpContext) -> str:
    entered.set()
    while not gate.wait(0.01):
        if context.is_canceled:
            return "stopped"
    return "opened"


@rc.op
def after_gate(wait_for_gate: str) -> str:
    return wait_for_gate + "!"


gated = rc.job("gated", [wait_for_gate, after_gate])


# These tests gate ops on threading.Events of this process, so runs execute on threads here;
# the worker-process launcher has tests of its own (test_launchers.py).
THREADS = {"class": "runcore.launchers:ThreadPoolRunLauncher"}


@pytest.fixture(params=["memory", "sqlite"])
def instance(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[rc.Instance]:
    if request.param == "memory":
        inst = rc.Instance.ephemeral()
    else:
        inst = rc.Instance.from_config(
            {"storage": {"sqlite": {"path": str(tmp_path / "r.db")}}, "run_launcher": THREADS}
        )
    with inst:
        yield inst


@pytest.fixture(autouse=True)
def _reset_gate() -> Iterator[None]:
    gate.clear()
    entered.clear()
    yield
    gate.set()


def test_submit_wait_query(instance: rc.Instance) -> None:
    run = instance.submit_run(etl, tags={"env": "test"})
    user_tags = {k: v for k, v in run.tags.items() if not k.startswith("runcore/")}
    assert user_tags == {"team": "data", "env": "test"}
    done = instance.wait_for_run(run.run_id, timeout=30)
    assert done.status is rc.RunStatus.SUCCESS
    assert done.started_at is not None and done.ended_at is not None
    assert done.started_at <= done.ended_at
    records = instance.get_run_records(
        rc.RunsFilter(job_name="etl", statuses=[rc.RunStatus.SUCCESS]), limit=10
    )
    assert [r.run.run_id for r in records] == [run.run_id]
    types = [e.event_type for e in instance.get_events(run.run_id)]
    assert types[0] is rc.EventType.RUN_STARTING
    assert types[-1] is rc.EventType.RUN_SUCCESS
    assert rc.EventType.LOG in types
    log = next(e for e in instance.get_events(run.run_id) if e.event_type is rc.EventType.LOG)
    assert log.step_key == "load" and log.data == {"rows": 3} and log.timestamp > 0


def test_failed_run_names_the_step(instance: rc.Instance) -> None:
    run = instance.submit_run(broken)
    done = instance.wait_for_run(run.run_id, timeout=30)
    assert done.status is rc.RunStatus.FAILURE
    assert done.failure_reason is not None
    assert "explode" in done.failure_reason and "bad row 7" in done.failure_reason
    failure = instance.get_events(run.run_id, event_types=[rc.EventType.STEP_FAILURE])[0]
    assert failure.error is not None and failure.error.type == "ValueError"
    assert "bad row 7" in failure.error.traceback


def test_cancel_running_run(instance: rc.Instance) -> None:
    run = instance.submit_run(gated)
    assert entered.wait(10)
    assert instance.cancel_run(run.run_id) is True
    done = instance.wait_for_run(run.run_id, timeout=30)
    assert done.status is rc.RunStatus.CANCELED
    types = [e.event_type for e in instance.get_events(run.run_id)]
    assert rc.EventType.RUN_CANCELING in types
    skipped = instance.get_events(run.run_id, event_types=[rc.EventType.STEP_SKIPPED])
    assert [e.step_key for e in skipped] == ["after_gate"]
    assert instance.cancel_run(run.run_id) is False  # already ended


def test_wait_for_run_times_out_and_the_run_goes_on(instance: rc.Instance) -> None:
    run = instance.submit_run(gated)
    with pytest.raises(rc.RunTimeoutError, match="still STARTED"):
        assert entered.wait(10)
        instance.wait_for_run(run.run_id, timeout=0.05)
    gate.set()
    assert instance.wait_for_run(run.run_id, timeout=30).status is rc.RunStatus.SUCCESS


def test_unknown_ids(instance: rc.Instance) -> None:
    unknown = "0f1e2d3c-0000-4000-8000-000000000000"
    with pytest.raises(rc.RunNotFoundError, match=f"no run with id '{unknown}'"):
        instance.get_run(unknown)
    with pytest.raises(rc.RunNotFoundError):
        instance.get_events(unknown)
    with pytest.raises(rc.RunNotFoundError):
        instance.cancel_run(unknown)


def test_ids_that_are_not_run_ids(instance: rc.Instance) -> None:
    calls = [
        instance.get_run,
        instance.get_events,
        instance.cancel_run,
        instance.wait_for_run,
        instance.explain_queued,
    ]
    for call in calls:
        for bad in ("nope", "../x", "3F2A9C1E-0B7D-4E55-9A21-6C8F0D4B7E12", 7):
            with pytest.raises(rc.InvalidRunIdError, match="is not a run id") as info:
                call(bad)  # type: ignore[operator]
            # Both a malformed input and a run that cannot exist.
            assert isinstance(info.value, rc.ConfigError)
            assert isinstance(info.value, rc.RunNotFoundError)


@pytest.mark.parametrize(
    ("tags", "match"),
    [
        ({"team": 3}, "tag 'team' has a int value 3"),
        ({"runcore/priority": "high"}, "tag runcore/priority: expected an integer"),
        ({"runcore/isolation": "sometimes"}, "must be one of isolated, non_isolated"),
        ({"runcore/max_runtime": "-1"}, "runcore/max_runtime: must be > 0"),
        ({"": "x"}, "non-empty strings"),
    ],
)
def test_bad_tags_are_refused_before_anything_is_stored(
    instance: rc.Instance, tags: dict[str, object], match: str
) -> None:
    with pytest.raises(rc.ConfigError, match=match):
        instance.submit_run(etl, tags=tags)  # type: ignore[arg-type]
    assert instance.get_run_records() == []


def test_submit_by_name_from_a_code_location(instance: rc.Instance, tmp_path: Path) -> None:
    module = tmp_path / "pipelines.py"
    module.write_text(
        textwrap.dedent(
            """
            import runcore as rc

            @rc.op
            def one() -> int:
                return 1

            defs = rc.Definitions(jobs=[rc.job("numbers", [one])])
            """
        )
    )
    location = f"{module}:defs"
    run = instance.submit_run("numbers", code_location=location)
    assert run.code_location == location
    assert instance.wait_for_run(run.run_id, timeout=30).status is rc.RunStatus.SUCCESS
    with pytest.raises(rc.UnknownJobError, match="the jobs defined are: numbers"):
        instance.submit_run("letters", code_location=location)
    with pytest.raises(rc.UnknownJobError, match="code_location"):
        instance.submit_run("numbers")
    with pytest.raises(rc.CodeLocationError, match="no module named 'no_such_pkg'"):
        instance.submit_run("numbers", code_location="no_such_pkg.mod:defs")


def test_code_location_is_inferred_from_the_module() -> None:
    with rc.Instance.ephemeral() as inst:
        run = inst.submit_run(etl)
        assert run.code_location == f"{__name__}:etl"
        inst.wait_for_run(run.run_id, timeout=30)


def test_op_selection(instance: rc.Instance) -> None:
    run = instance.submit_run(etl, op_selection=["extract"])
    assert run.step_keys_to_execute == ["extract"]
    assert instance.wait_for_run(run.run_id, timeout=30).status is rc.RunStatus.SUCCESS
    steps = {e.step_key for e in instance.get_events(run.run_id) if e.step_key}
    assert steps == {"extract"}
    with pytest.raises(rc.DefinitionError, match="not in the selection"):
        instance.submit_run(etl, op_selection=["load"])


def test_pool_limits(instance: rc.Instance) -> None:
    assert instance.get_pool_limit("warehouse") is None
    instance.set_pool_limit("warehouse", 2)
    assert instance.get_pool_limit("warehouse") == 2
    instance.delete_pool_limit("warehouse")
    assert instance.get_pool_limit("warehouse") is None
    with pytest.raises(rc.ConfigError, match="non-empty string"):
        instance.set_pool_limit(" ", 1)
    with pytest.raises(rc.ConfigError, match="int >= 0"):
        instance.set_pool_limit("warehouse", -1)
    with pytest.raises(rc.ConfigError, match="int >= 0"):
        instance.set_pool_limit("warehouse", "3")  # type: ignore[arg-type]


def test_closed_instance_refuses_work() -> None:
    inst = rc.Instance.ephemeral()
    inst.close()
    with pytest.raises(rc.InstanceClosedError, match="closed"):
        inst.submit_run(etl)


def test_close_waits_for_in_flight_runs(tmp_path: Path) -> None:
    inst = rc.Instance.from_config(
        {"storage": {"sqlite": {"path": str(tmp_path / "r.db")}}, "run_launcher": THREADS}
    )
    run = inst.submit_run(gated)
    assert entered.wait(10)
    threading.Timer(0.05, gate.set).start()
    inst.close()
    with rc.Instance.from_config(
        {"storage": {"sqlite": {"path": str(tmp_path / "r.db")}}}
    ) as again:
        assert again.get_run(run.run_id).status is rc.RunStatus.SUCCESS


class ExplodingLauncher(rc.RunLauncher):
    """A launcher whose platform is down."""

    def launch_run(self, run: rc.Run) -> None:
        raise ConnectionError("cluster unreachable")

    def terminate(self, run_id: str, *, force: bool = False) -> bool:
        return False

    def check_run_worker_health(self, run: rc.Run) -> rc.WorkerHealth:
        return rc.WorkerHealth.unknown()


def test_launch_failure_fails_the_run_and_raises() -> None:
    with rc.Instance(run_launcher=ExplodingLauncher()) as inst:
        with pytest.raises(rc.RunLaunchError, match="cluster unreachable"):
            inst.submit_run(etl)
        (record,) = inst.get_run_records()
        assert record.run.status is rc.RunStatus.FAILURE
        assert record.run.failure_reason is not None
        assert "cluster unreachable" in record.run.failure_reason


def test_custom_launcher_from_config(tmp_path: Path) -> None:
    inst = rc.Instance.from_config(
        {
            "storage": {"in_memory": {}},
            "run_launcher": {"class": f"{__name__}:ExplodingLauncher"},
        }
    )
    assert isinstance(inst.run_launcher, ExplodingLauncher)
    with pytest.raises(rc.ConfigError, match="not a RunLauncher subclass"):
        rc.Instance.from_config({"run_launcher": {"class": "runcore:Instance"}})


def test_launcher_gets_collaborators_not_the_instance() -> None:
    with rc.Instance.ephemeral() as inst:
        context = inst.run_launcher.context
        assert isinstance(context, LaunchContext)
        assert context.storage is inst.storage
        assert not any(value is inst for value in vars(inst.run_launcher).values())


def test_another_process_sees_the_same_runs_and_events(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with rc.Instance.from_config({"storage": {"sqlite": {"path": str(db)}}}) as inst:
        run = inst.submit_run(etl)
        inst.wait_for_run(run.run_id, timeout=30)
        expected = [e.event_type.value for e in inst.get_events(run.run_id)]
    script = textwrap.dedent(
        f"""
        import json, runcore as rc
        with rc.Instance.from_config({{"storage": {{"sqlite": {{"path": {str(db)!r}}}}}}}) as i:
            run = i.get_run({run.run_id!r})
            types = [e.event_type.value for e in i.get_events(run.run_id)]
            print(json.dumps([run.status.value, types]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    status, events = json.loads(out.stdout)
    assert status == "SUCCESS"
    assert events == expected


def test_yaml_config_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "runcore.yaml").write_text("storage:\n  sqlite: {path: data/runs.db}\n")
    with rc.Instance.from_config(conf_dir / "runcore.yaml") as inst:
        run = inst.submit_run(etl)
        inst.wait_for_run(run.run_id, timeout=30)
    assert (conf_dir / "data" / "runs.db").exists()
    assert (conf_dir / "data" / "outputs" / run.run_id / "load.pkl").exists()


def test_newer_schema_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with rc.Instance.from_config({"storage": {"sqlite": {"path": str(db)}}}) as inst:
        inst.get_run_records()
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("UPDATE runcore_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    inst = rc.Instance.from_config({"storage": {"sqlite": {"path": str(db)}}})
    with pytest.raises(rc.SchemaVersionError, match="newer runcore"):
        inst.get_run_records()


def test_execute_in_process_on_an_instance_shows_up_in_its_storage(
    sqlite_instance: rc.Instance,
) -> None:
    result = etl.execute_in_process(instance=sqlite_instance, tags={"via": "test"})
    assert result.success and result.output_for("load") == 6
    run = sqlite_instance.get_run(result.run_id)
    assert run.tags["via"] == "test"
    assert run.status is rc.RunStatus.SUCCESS
