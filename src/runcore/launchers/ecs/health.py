"""Run tasks' health, from ``DescribeTasks``: one call per 100 tasks of a cluster.

* A task whose ``lastStatus`` is STOPPED is a dead worker; the reason carries ECS's stop code
  and ``stoppedReason`` and each container's exit code (``137 (SIGKILL ...)``) and reason.
* Any other status (PROVISIONING, PENDING, ACTIVATING, RUNNING, DEACTIVATING, STOPPING,
  DEPROVISIONING) is a running worker: it may still write its run's end.
* A task ECS answers ``MISSING`` for is *unknown*, not dead: ECS's API is eventually
  consistent, so a task RunTask has just started may be missing for a moment, and ECS forgets
  a stopped task about an hour after it stopped. Run monitoring then judges the run by its
  worker's heartbeats in storage: dead once it has been silent for
  ``run_monitoring.worker_heartbeat_timeout_seconds``, with the MISSING in its reason; a run
  that never started is failed by ``start_timeout_seconds``. (Dagster's ECS launcher likewise
  reports a task it cannot find as unknown rather than failing the run at once.)
* A failed call, or a task the answer leaves out, is unknown too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runcore import _aws
from runcore.launchers.base import WorkerHealth

#: DescribeTasks takes at most this many tasks per call.
DESCRIBE_BATCH = 100


def task_health(task: Mapping[str, Any]) -> WorkerHealth:
    """A described ECS task as a worker's health: STOPPED is dead (exit code and reason)."""
    from runcore.worker.process import EXIT_MEANINGS

    if task.get("lastStatus") != "STOPPED":
        return WorkerHealth.running()
    reason = f"its ECS task {task.get('taskArn')} stopped"
    if task.get("stopCode"):
        reason += f" ({task['stopCode']})"
    if task.get("stoppedReason"):
        reason += f": {task['stoppedReason']}"
    for container in task.get("containers") or []:
        code = container.get("exitCode")
        if code is None:
            continue
        meaning = EXIT_MEANINGS.get(code)
        reason += f"; container {container.get('name')!r} exited with code {code}"
        reason += f" ({meaning})" if meaning else ""
        if container.get("reason"):
            reason += f": {container['reason']}"
    return WorkerHealth.dead(reason)


def missing_health(task_arn: str) -> WorkerHealth:
    """A task ECS answers MISSING for (see the module docstring)."""
    return WorkerHealth.unknown(
        f"ECS does not know the run's task {task_arn} (DescribeTasks: MISSING; just started, "
        "or stopped and forgotten)"
    )


def describe_health(client: Any, tasks: Mapping[str, Mapping[str, str]]) -> dict[str, WorkerHealth]:
    """The health of every task in ``tasks`` (cluster -> task ARN -> run id), by run id, in
    ``ceil(n / 100)`` DescribeTasks calls per cluster."""
    out: dict[str, WorkerHealth] = {}
    for cluster, runs in tasks.items():
        arns = list(runs)
        for start in range(0, len(arns), DESCRIBE_BATCH):
            batch = arns[start : start + DESCRIBE_BATCH]
            try:
                answer = client.describe_tasks(cluster=cluster, tasks=batch)
            except Exception as exc:
                if not _aws.is_botocore_error(exc):
                    raise
                reason = f"ECS DescribeTasks failed: {_aws.describe(exc)}"
                out.update({runs[arn]: WorkerHealth.unknown(reason) for arn in batch})
                continue
            for task in answer.get("tasks") or []:
                run_id = runs.get(task.get("taskArn", ""))
                if run_id is not None:
                    out[run_id] = task_health(task)
            for failure in answer.get("failures") or []:
                arn = failure.get("arn", "")
                run_id = runs.get(arn)
                if run_id is None:
                    continue
                if failure.get("reason") == "MISSING":
                    out[run_id] = missing_health(arn)
                else:
                    out[run_id] = WorkerHealth.unknown(
                        f"ECS DescribeTasks: {failure.get('reason')}"
                        + (f" ({failure['detail']})" if failure.get("detail") else "")
                    )
            for arn in batch:
                out.setdefault(runs[arn], WorkerHealth.unknown(f"ECS did not describe task {arn}"))
    return out
