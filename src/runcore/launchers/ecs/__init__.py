"""Each run in its own AWS ECS task (the ``ecs`` extra: ``pip install 'runcore[ecs]'``).

:class:`EcsRunLauncher` (configured as ``runcore.launchers.ecs:EcsRunLauncher``) starts a run
with one ``RunTask`` whose container override is the run worker command (``python -m runcore
worker execute-run RUN_ID --instance CONFIG --attempt ATTEMPT``), tags the task
(``runcore/run_id``, ``runcore/job_name``, the configured tags) and records the task as the
run's worker (kind ``ecs``, handle ``{"task_arn", "cluster"}``). Only this launcher reads that
handle:

* **Health.** :meth:`EcsRunLauncher.check_workers_health` reads every worker record in one
  storage call and asks ``DescribeTasks`` about up to 100 tasks per call, per cluster: a pass
  over N running runs costs ``ceil(N / 100)`` calls. A STOPPED task is a dead worker, with the
  container's exit code and ECS's ``stoppedReason``; a task ECS answers MISSING for is
  unknown, and its run is judged by its heartbeats (see :mod:`~runcore.launchers.ecs.health`).
  Heartbeats in storage are judged by run monitoring as for every launcher.
* **Terminate.** ``StopTask`` with a reason naming the run. ECS sends the container SIGTERM
  (the worker cancels its run) and SIGKILL after the task's stop timeout; ``force`` cannot
  shorten that.
* **Launch failures.** Throttling, server errors, ``failures`` in the answer (no capacity,
  agent problems) and an empty ``tasks`` list are retried with tenacity
  (``run_task_attempts``, exponential waits); then :class:`~runcore.errors.RunLaunchError` with
  AWS's reason, which the coordinator records on the run (:mod:`~runcore.launchers.ecs.run_task`).

The task has neither this process's files nor its paths. Its worker opens the storage and the
output store named by the instance config passed in the command (secrets are left out of it,
see :func:`runcore.config.without_secrets`; a PostgreSQL URL travels without its password):
give the instance a storage every task reaches and an output store such as
:class:`~runcore.worker.outputs_s3.S3OutputStore`. Code locations must be importable in the
image: module paths, or paths remapped by ``code_location_map``. Credentials go to the task as
ECS ``secrets`` (ARNs or Secrets Manager names) in the task definition this launcher registers
(:mod:`~runcore.launchers.ecs.definitions`), e.g. ``RUNCORE_POSTGRES_URL`` with the password,
never in the command or environment overrides, which ``DescribeTasks`` shows to anyone who may
describe the task.

No AWS call is made before the first launch or health check: the client is injected or built
then (boto3, the usual credential chain). Threads: none of its own; the AWS client is used
from the coordinator's and the monitor's threads (boto3 clients are thread-safe).

Modules: :mod:`~runcore.launchers.ecs.launcher` (the class), ``settings`` (config checks),
``definitions`` (the registered task definition), ``current_task``
(``use_current_ecs_task_config``), ``run_task`` (the request and its retries), ``health``
(DescribeTasks answers as worker health). None imports boto3 at import time.
"""

from __future__ import annotations

from runcore.launchers.ecs.current_task import METADATA_ENV
from runcore.launchers.ecs.definitions import DEFINITION_TAG, TaskDefinitionSpec
from runcore.launchers.ecs.health import DESCRIBE_BATCH, task_health
from runcore.launchers.ecs.launcher import EcsRunLauncher
from runcore.launchers.ecs.run_task import TRANSIENT_CODES
from runcore.launchers.ecs.settings import (
    CPU_TAG,
    ECS,
    JOB_NAME_TAG,
    LAUNCH_TYPES,
    MEMORY_TAG,
    RUN_ID_TAG,
)

__all__ = [
    "CPU_TAG",
    "DEFINITION_TAG",
    "DESCRIBE_BATCH",
    "ECS",
    "JOB_NAME_TAG",
    "LAUNCH_TYPES",
    "MEMORY_TAG",
    "METADATA_ENV",
    "RUN_ID_TAG",
    "TRANSIENT_CODES",
    "EcsRunLauncher",
    "TaskDefinitionSpec",
    "task_health",
]
