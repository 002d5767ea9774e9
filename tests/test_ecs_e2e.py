"""End to end: runs as ECS tasks on moto's server, executed by a test agent (ecs_harness).

The agent plays the container runtime: it starts each task's command override as a local
process and stops the task with the process's exit code. The run worker in the task reaches
the instance's PostgreSQL storage, a test-owned cluster that wants a password
(``tests/_pg_cluster.py``), from the config in its command, which carries no password: the
password reaches it only as the ECS secret ``RUNCORE_POSTGRES_URL`` of the task definition,
read from moto's Secrets Manager by the agent as ECS's agent does. Outputs go to moto's S3.
The agent kills and signals processes, so the whole scenario runs as pid 1 of a new pid
namespace (``unshare``), one process for all cases (about 25 s).

Needs ``unshare``, PostgreSQL's server binaries (and ``runuser`` when run as root): skipped
without them, except on CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI"):  # on CI a skip would hide a missing dependency: fail instead
    import moto  # noqa: F401
else:
    pytest.importorskip("moto", reason="the ECS tests need moto[server] (the test extra)")

pytestmark = pytest.mark.slow


def _missing() -> str | None:
    from _pg_cluster import missing

    if shutil.which("unshare") is None:
        return "no unshare"
    return missing()


SCENARIO = """
import json, sys
import ecs_harness
print(json.dumps(ecs_harness.e2e_scenario(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the ECS end-to-end test cannot run on CI: {missing}")
        pytest.skip(missing)
    tmp = tmp_path_factory.mktemp("ecs_e2e")
    proc = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", SCENARIO, str(tmp)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        cwd=Path(__file__).parent,
    )
    assert proc.returncode == 0, (
        f"scenario failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_a_queued_run_succeeds_as_an_ecs_task(seen: dict[str, Any]) -> None:
    case = seen["success"]
    assert case["submitted"] == "QUEUED"
    assert case["final"] == "SUCCESS"
    events = case["events"]
    for earlier, later in [
        ("RUN_ENQUEUED", "RUN_STARTING"),
        ("RUN_STARTING", "RUN_START"),
        ("RUN_START", "RUN_SUCCESS"),
    ]:
        assert events.index(earlier) < events.index(later), events
    assert case["record_kind"] == "ecs"
    assert case["record_handle"] == ["cluster", "task_arn"]
    assert case["record_is_the_task"]
    assert case["exit_code"] == 0
    assert case["output"] == 6  # read back from S3
    # Submitted by this host's file path: the task imports the module code_location_map names.
    command = case["command"]
    assert command[command.index("--code-location") + 1] == "fixtures_defs.ecs_jobs:defs"


def test_a_killed_task_fails_its_run_with_the_stopped_reason_and_is_retried(
    seen: dict[str, Any],
) -> None:
    case = seen["killed"]
    assert case["final"] == "FAILURE"
    text = "\n".join(case["messages"])
    assert "OutOfMemoryError: Container killed due to memory usage" in text
    assert "exited with code 137" in text
    assert case["retry_final"] == "SUCCESS"
    assert case["retry_output"] == 60
    assert not case["retry_ran_extract"]  # from the failure: extract's output came from S3


def test_cancel_stops_the_task(seen: dict[str, Any]) -> None:
    case = seen["canceled"]
    assert case["final"] == "CANCELED"
    assert case["exit_code"] == 3  # the worker canceled its run on the task's SIGTERM
    assert case["run_id"] in case["stopped_reason"]
    assert "--code-location" not in case["command"]  # a module path goes as it is


def test_run_task_throttling_and_failures_are_retried(seen: dict[str, Any]) -> None:
    case = seen["throttled"]
    assert case["final"] == "SUCCESS"
    assert case["run_task_calls"] == 5  # 2 throttled, 1 failures, 1 empty, 1 task


def test_a_launch_that_keeps_failing_fails_the_run_with_aws_reason(seen: dict[str, Any]) -> None:
    case = seen["launch_failed"]
    assert case["final"] == "FAILURE"
    assert case["run_task_calls"] == 5  # run_task_attempts
    assert any("RESOURCE:MEMORY" in m for m in case["messages"]), case["messages"]


def test_the_agent_saw_no_error(seen: dict[str, Any]) -> None:
    assert seen["agent_errors"] == []


def test_the_worker_reaches_postgres_with_the_password_only_as_an_ecs_secret(
    seen: dict[str, Any],
) -> None:
    case = seen["postgres"]
    # The cluster wants a password: without one it refuses, and so it refuses the task's own
    # command run without the task's secrets.
    assert "no password supplied" in case["without_password"]
    assert case["command_without_secrets_exit"] != 0
    assert "no password supplied" in case["command_without_secrets_said"]
    # The command carries the storage config, with the URL but not the password...
    assert case["command_storage"]["postgres"]["url"] == case["url_shown"]
    # ...which the task got as ECS secrets of its definition (one by name, one by ARN).
    assert case["secret_names"] == ["ECS_TEST_TOKEN", "RUNCORE_POSTGRES_URL"]
    by_name = {s["name"]: s["valueFrom"] for s in case["definition_secrets"]}
    assert by_name["ECS_TEST_TOKEN"] == case["token_arn"]
    assert by_name["RUNCORE_POSTGRES_URL"].startswith("arn:aws:secretsmanager:")
    # And every run above succeeded or failed on that storage: the secret was passed.
    assert seen["success"]["final"] == "SUCCESS"


def test_no_password_in_describe_tasks_the_event_log_or_the_logs(seen: dict[str, Any]) -> None:
    case = seen["postgres"]
    assert case["leaks"] == {
        "runcore logs": [],
        "task output": [],
        "DescribeTasks": [],
        "task definitions": [],
        "event log": [],
    }
    looked = case["looked_at"]
    assert looked["DescribeTasks"] > 1000 and looked["event log"] > 1000, looked
    assert looked["runcore logs"] > 0, looked
    assert seen["tasks_described"] >= 5
