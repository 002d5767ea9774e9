"""The RunTask request that starts a run, and RunTask's retries.

The request: the run worker command as the container's command override (``... worker
execute-run RUN_ID --instance CONFIG --attempt ATTEMPT [--code-location LOCATION]``), the
configured ``env`` as the container's environment override, the task-level ``cpu`` and
``memory`` (``run_resources``, a run's ``ecs/cpu`` / ``ecs/memory`` tags), the task's tags, and
where it starts (launch type or capacity provider strategy, awsvpc network). Nothing secret
goes into it: ``DescribeTasks`` shows the overrides to anyone who may describe the task.

Retries: throttling, AWS's server errors, connection failures, ``failures`` in the answer (no
capacity, agent trouble) and an answer with no task are tried again with tenacity; other
errors (a bad parameter, missing permissions) fail at once. Each try carries its own
``clientToken``, so a retried request never starts a second task for the same try.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from runcore import _aws
from runcore.errors import ConfigError, RunLaunchError
from runcore.launchers.ecs.settings import CPU_TAG, JOB_NAME_TAG, MEMORY_TAG, RUN_ID_TAG, size

if TYPE_CHECKING:
    from runcore._retry import RetrySettings
    from runcore.runs import Run

log = logging.getLogger("runcore.launchers.ecs")

#: RunTask error codes worth another try (throttling, capacity, AWS's own trouble).
TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServerException",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
    }
)


@attrs.frozen
class Target:
    """Where and how run tasks start, once resolved (on first use)."""

    cluster: str
    task_definition: str
    container_name: str
    launch_type: str | None
    capacity_provider_strategy: tuple[dict[str, Any], ...]
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    assign_public_ip: bool | None


@attrs.frozen
class Overrides:
    """What the launcher's config adds to every run task's request."""

    command: tuple[str, ...]
    instance_config: str
    env: Mapping[str, str]
    run_resources: Mapping[str, str]
    task_tags: Mapping[str, str]
    code_location_map: Mapping[str, str]


def build_request(target: Target, settings: Overrides, run: Run) -> dict[str, Any]:
    """The RunTask request that starts ``run`` (without its ``clientToken``)."""
    if run.code_location is None:
        raise RunLaunchError(
            f"run {run.run_id}: job {run.job_name!r} has no code location, so no ECS task "
            "can import it; define it in a module the task's image holds"
        )
    command = [*settings.command, "worker", "execute-run", run.run_id, "--instance"]
    command += [settings.instance_config, "--attempt", run.attempt_id or ""]
    mapped = settings.code_location_map.get(run.code_location)
    if mapped is not None:
        command += ["--code-location", mapped]
    container: dict[str, Any] = {"name": target.container_name, "command": command}
    if settings.env:
        container["environment"] = [{"name": k, "value": v} for k, v in settings.env.items()]
    overrides: dict[str, Any] = {"containerOverrides": [container]}
    sizes = dict(settings.run_resources)
    for key, tag in (("cpu", CPU_TAG), ("memory", MEMORY_TAG)):
        if tag in run.tags:
            try:
                sizes[key] = size(f"run {run.run_id}: tag {tag}", run.tags[tag])
            except ConfigError as exc:
                raise RunLaunchError(str(exc)) from exc
    overrides.update(sizes)
    tags = {**settings.task_tags, RUN_ID_TAG: run.run_id, JOB_NAME_TAG: run.job_name}
    request: dict[str, Any] = {
        "cluster": target.cluster,
        "taskDefinition": target.task_definition,
        "count": 1,
        "overrides": overrides,
        "tags": [{"key": k, "value": v[:256]} for k, v in tags.items()],
        "startedBy": "runcore",
    }
    if target.capacity_provider_strategy:
        request["capacityProviderStrategy"] = [
            dict(item) for item in target.capacity_provider_strategy
        ]
    elif target.launch_type:
        request["launchType"] = target.launch_type
    if target.subnets:
        awsvpc: dict[str, Any] = {"subnets": list(target.subnets)}
        if target.security_groups:
            awsvpc["securityGroups"] = list(target.security_groups)
        if target.assign_public_ip is not None:
            awsvpc["assignPublicIp"] = "ENABLED" if target.assign_public_ip else "DISABLED"
        request["networkConfiguration"] = {"awsvpcConfiguration": awsvpc}
    return request


class _TransientLaunchError(Exception):
    """A RunTask try that may succeed when tried again; its message is AWS's reason."""


def _failures(failures: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(
        f"{f.get('reason', 'unknown')}"
        + (f" ({f['detail']})" if f.get("detail") else "")
        + (f" [{f['arn']}]" if f.get("arn") else "")
        for f in failures
    )


def run_task(
    client: Any, request: Mapping[str, Any], run_id: str, attempt: str, retry: RetrySettings
) -> dict[str, Any]:
    """RunTask, retried while AWS says try again; the started task, or
    :class:`~runcore.errors.RunLaunchError` with AWS's last reason."""
    import tenacity

    tries = [0]

    def attempt_once() -> dict[str, Any]:
        tries[0] += 1
        token = hashlib.sha256(f"{run_id}/{attempt}/{tries[0]}".encode()).hexdigest()[:64]
        try:
            answer = client.run_task(**request, clientToken=token)
        except Exception as exc:
            if not _aws.is_botocore_error(exc):
                raise
            code = _aws.error_code(exc)
            # No code: a connection failure; a bare HTTP 5xx: AWS's own trouble.
            if code in TRANSIENT_CODES or not code or code.startswith("5"):
                raise _TransientLaunchError(_aws.describe(exc)) from exc
            raise RunLaunchError(f"run {run_id}: ECS RunTask failed: {_aws.describe(exc)}") from exc
        failures = answer.get("failures") or []
        tasks = answer.get("tasks") or []
        if failures:
            raise _TransientLaunchError(_failures(failures))
        if not tasks:
            raise _TransientLaunchError("RunTask started no task and gave no reason")
        return dict(tasks[0])

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "run %s: ECS RunTask try %d failed (%s); retrying in %.1f s",
            run_id,
            state.attempt_number,
            exc,
            state.upcoming_sleep,
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(retry.attempts),
        wait=tenacity.wait_exponential(multiplier=retry.initial_wait, max=retry.max_wait)
        + tenacity.wait_random(0, retry.initial_wait),
        retry=tenacity.retry_if_exception_type(_TransientLaunchError),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(attempt_once)
    except _TransientLaunchError as exc:
        raise RunLaunchError(
            f"run {run_id}: ECS RunTask failed {tries[0]} times; AWS's last reason: {exc}"
        ) from exc
