"""The ``runcore`` command, run as a user would: a real process, a real SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PIPELINE = textwrap.dedent(
    """
    import runcore as rc

    @rc.op
    def numbers() -> list[int]:
        return [1, 2, 3]

    @rc.op
    def total(context, numbers: list[int]) -> int:
        context.log.info("adding", count=len(numbers))
        return sum(numbers)

    @rc.op
    def explode() -> None:
        raise RuntimeError("the disk is full")

    defs = rc.Definitions(jobs=[
        rc.job("sums", [numbers, total], description="adds numbers"),
        rc.job("fails", [explode]),
    ])
    """
)


def runcore(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runcore", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    return tmp_path


def test_job_list_and_execute_then_runs_list_and_show(project: Path) -> None:
    listed = runcore(project, "job", "list", "pipeline.py:defs")
    assert listed.returncode == 0, listed.stderr
    assert "sums\t2 ops\tadds numbers" in listed.stdout

    ok = runcore(project, "job", "execute", "pipeline.py:defs", "sums", "--tag", "env=dev")
    assert ok.returncode == 0, ok.stderr
    assert "SUCCESS" in ok.stdout
    assert (project / ".runcore" / "runs.db").exists()

    failed = runcore(project, "job", "execute", "pipeline.py:defs", "fails")
    assert failed.returncode == 1
    assert "FAILURE" in failed.stdout and "the disk is full" in failed.stdout

    runs = runcore(project, "runs", "list", "--json")
    assert runs.returncode == 0, runs.stderr
    data = json.loads(runs.stdout)
    assert [r["job_name"] for r in data] == ["fails", "sums"]
    assert data[1]["tags"]["env"] == "dev"
    assert not any(key.startswith("runcore/worker") for key in data[1]["tags"])

    only_ok = runcore(project, "runs", "list", "--status", "success", "--tag", "env=dev")
    assert "sums" in only_ok.stdout and "fails" not in only_ok.stdout

    shown = runcore(project, "runs", "show", data[1]["run_id"])
    assert shown.returncode == 0, shown.stderr
    assert "STEP_SUCCESS" in shown.stdout and "adding count=3" in shown.stdout


def test_config_file_is_used(project: Path) -> None:
    (project / "runcore.yaml").write_text("storage:\n  sqlite: {path: state/runs.db}\n")
    ok = runcore(project, "job", "execute", "pipeline.py:defs", "sums")
    assert ok.returncode == 0, ok.stderr
    assert (project / "state" / "runs.db").exists()
    other = project / "other.yaml"
    other.write_text("storage:\n  sqlite: {path: elsewhere.db}\n")
    listed = runcore(project, "--config", str(other), "runs", "list")
    assert listed.returncode == 2  # read-only: no database is created for a wrong config
    assert f"no runcore database at {project / 'elsewhere.db'}" in listed.stderr
    assert not (project / "elsewhere.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("job", "execute", "pipeline.py:defs", "nope"),
            "no job named 'nope'; the jobs defined are: fails, sums",
        ),
        (("job", "execute", "missing.py:defs", "sums"), "does not exist"),
        (
            ("job", "execute", "pipeline.py:defs", "sums", "--tag", "novalue"),
            "--tag takes KEY=VALUE",
        ),
        (("runs", "list", "--status", "DONE"), "statuses are: NOT_STARTED"),
        (("runs", "show", "no-such-run"), "MissingDatabaseError: no runcore database at"),
        (("--config", "absent.yaml", "runs", "list"), "cannot read the instance config file"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    project: Path, args: tuple[str, ...], message: str
) -> None:
    result = runcore(project, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_import_error_in_user_module_shows_its_traceback(project: Path) -> None:
    (project / "broken.py").write_text("import runcore\nvalue = 1 / 0\n")
    result = runcore(project, "job", "list", "broken.py:defs")
    assert result.returncode == 2
    assert "failed to import: ZeroDivisionError: division by zero" in result.stderr
    assert 'broken.py", line 2' in result.stderr


def test_demo_runs_the_main_job_on_sqlite(tmp_path: Path) -> None:
    result = runcore(tmp_path, "demo", "--plain", env={"RUNCORE_DEMO_PACE": "0.01"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STEP_UP_FOR_RETRY" in result.stdout  # the flaky op is retried
    assert "SUCCESS" in result.stdout and "revenue by region" in result.stdout
    listed = runcore(tmp_path, "runs", "list", "--json")
    (run,) = json.loads(listed.stdout)
    assert run["job_name"] == "daily_sales" and run["status"] == "SUCCESS"


QUEUED_CONFIG = """\
storage:
  sqlite: {path: state/runs.db}
run_coordinator:
  class: runcore.coordinators:QueuedRunCoordinator
concurrency:
  runs:
    max_concurrent_runs: 1
"""


def test_daemon_process_starts_queued_runs_and_reports_status(project: Path) -> None:
    (project / "runcore.yaml").write_text(QUEUED_CONFIG)
    no_database = runcore(project, "daemon", "status")
    assert no_database.returncode == 2  # read-only: it does not create the database
    assert "no runcore database at" in no_database.stderr
    submit_from_another_process(project)
    no_daemon = runcore(project, "daemon", "status")
    assert no_daemon.returncode == 1
    assert "no daemon has ever run" in no_daemon.stdout
    daemon = subprocess.Popen(
        [sys.executable, "-m", "runcore", "daemon", "--interval", "0.05"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        assert "started" in daemon.stdout.readline()
        ok = runcore(project, "job", "execute", "pipeline.py:defs", "sums", "--timeout", "60")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "SUCCESS" in ok.stdout
        status = runcore(project, "daemon", "status")
        assert status.returncode == 0, status.stdout
        assert "alive" in status.stdout
    finally:
        daemon.terminate()
        out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert "runcore daemon stopped" in out
    stopped = runcore(project, "daemon", "status")
    assert stopped.returncode == 1
    assert "stopped" in stopped.stdout


def submit_from_another_process(project: Path) -> str:
    """Submit a run of `sums` through runcore.yaml from a fresh process; its run id."""
    script = (
        "import runcore as rc\n"
        "inst = rc.Instance.from_config('runcore.yaml')\n"
        "print(inst.submit_run('sums', code_location='pipeline.py:defs').run_id)\n"
        "inst.close()\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", script],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return made.stdout.strip()


def test_runs_why_and_pool_commands(project: Path) -> None:
    (project / "runcore.yaml").write_text(QUEUED_CONFIG)
    run_id = submit_from_another_process(project)
    why = runcore(project, "runs", "why", run_id)
    assert why.returncode == 0, why.stderr
    assert f"run {run_id} is queued, position 1 of 1 (0 queued ahead of it)" in why.stdout
    assert "no daemon is alive" in why.stdout

    assert runcore(project, "instance", "concurrency", "set", "db", "2").returncode == 0
    got = runcore(project, "instance", "concurrency", "get", "db")
    assert "pool db: limit 2; 0 slots held" in got.stdout
    listed = runcore(project, "instance", "concurrency", "list")
    assert "db" in listed.stdout and "2" in listed.stdout
    assert runcore(project, "instance", "concurrency", "delete", "db").returncode == 0
    assert "no limit" in runcore(project, "instance", "concurrency", "get", "db").stdout
    bad = runcore(project, "instance", "concurrency", "set", "db", "-1")
    assert bad.returncode == 2 and "argument limit: must be an int >= 0" in bad.stderr


def test_runs_cancel(project: Path) -> None:
    (project / "runcore.yaml").write_text(QUEUED_CONFIG)
    run_id = submit_from_another_process(project)
    first = runcore(project, "runs", "cancel", run_id)
    assert first.returncode == 0, first.stderr
    assert f"run {run_id}: CANCELED" in first.stdout
    again = runcore(project, "runs", "cancel", run_id)
    assert again.returncode == 1 and "had already ended CANCELED" in again.stdout


def test_job_execute_says_when_no_daemon_will_start_a_queued_run(project: Path) -> None:
    (project / "runcore.yaml").write_text(QUEUED_CONFIG)
    result = runcore(project, "job", "execute", "pipeline.py:defs", "sums", "--timeout", "0.5")
    assert result.returncode == 2
    assert "no daemon is alive to start it" in result.stdout
    assert "RunTimeoutError" in result.stderr
