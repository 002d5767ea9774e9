"""End to end: runs as ECS tasks on moto's server, executed by a test agent (ecs_harness).

The agent plays the container runtime: it starts each task's command override as a local
process (the run worker, on the test instance's SQLite storage and moto's S3 for outputs) and
stops the task with the process's exit code. It kills and signals processes, so the whole
scenario runs as pid 1 of a new pid namespace (``unshare``), one process for all cases.
"""

from __future__ import annotations

import json
import os
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

SCENARIO = """
import json, sys
import ecs_harness
print(json.dumps(ecs_harness.e2e_scenario(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
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
    assert case["exit_code"] == 0
    assert case["output"] == 6  # read back from S3


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
