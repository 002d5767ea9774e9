"""The task definition the ECS launcher registers (``task_definition: {family, image, ...}``).

Registered on first launch, then reused while unchanged: the request is hashed and the hash
recorded on the revision (task-definition tag ``runcore/definition``). The family's latest
revision is used when it carries the same hash; any change to what runcore would register (the
family, the image, the container's name, sizes, roles, network mode, compatibilities, log
group, the secrets) registers a new revision. Secrets are ECS ``secrets`` of the container
(``valueFrom`` an ARN), resolved by ECS when a task starts: their values never pass through
runcore.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from runcore import _aws
from runcore import config as _config
from runcore.errors import RunLaunchError
from runcore.launchers.ecs.settings import size

log = logging.getLogger("runcore.launchers.ecs")

#: The task-definition tag holding a hash of what runcore registered.
DEFINITION_TAG = "runcore/definition"


@attrs.frozen
class TaskDefinitionSpec:
    """What the launcher registers: ``{family, image, container_name, cpu, memory,
    execution_role_arn, task_role_arn, network_mode, requires_compatibilities, log_group}``."""

    family: str
    image: str
    container_name: str = "run"
    cpu: str | None = None
    memory: str | None = None
    execution_role_arn: str | None = None
    task_role_arn: str | None = None
    network_mode: str | None = None
    requires_compatibilities: tuple[str, ...] = ()
    log_group: str | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> TaskDefinitionSpec:
        """From config data; :class:`~runcore.errors.ConfigError` naming the bad key."""
        raw = dict(data)
        for key in ("cpu", "memory"):
            if raw.get(key) is not None:
                raw[key] = size(f"EcsRunLauncher task_definition.{key}", raw[key])
        spec: TaskDefinitionSpec = _config.parse(raw, cls, where="EcsRunLauncher.task_definition")
        return spec

    def request(self, secret_arns: Mapping[str, str], region: str | None) -> dict[str, Any]:
        """The RegisterTaskDefinition request (without tags); ``secret_arns``: env name to
        the ARN ECS reads the value from."""
        container: dict[str, Any] = {
            "name": self.container_name,
            "image": self.image,
            "essential": True,
        }
        if self.memory is not None:  # one container: it may use all of the task's memory
            container["memoryReservation"] = int(self.memory)
        if secret_arns:
            container["secrets"] = [
                {"name": name, "valueFrom": arn} for name, arn in sorted(secret_arns.items())
            ]
        if self.log_group:
            container["logConfiguration"] = {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": self.log_group,
                    "awslogs-region": region or os.environ.get("AWS_REGION", ""),
                    "awslogs-stream-prefix": "runcore",
                },
            }
        request: dict[str, Any] = {"family": self.family, "containerDefinitions": [container]}
        optional = {
            "cpu": self.cpu,
            "memory": self.memory,
            "executionRoleArn": self.execution_role_arn,
            "taskRoleArn": self.task_role_arn,
            "networkMode": self.network_mode,
        }
        request.update({k: v for k, v in optional.items() if v is not None})
        if self.requires_compatibilities:
            request["requiresCompatibilities"] = list(self.requires_compatibilities)
        return request


def digest(request: Mapping[str, Any]) -> str:
    """The hash of a RegisterTaskDefinition request (the ``runcore/definition`` tag)."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:32]


def secret_arn(value: str, secretsmanager: Callable[[], Any]) -> str:
    """An ECS ``valueFrom``: an ARN as it is; a Secrets Manager name resolved to its ARN
    (DescribeSecret, which reads no secret value)."""
    if value.startswith("arn:"):
        return value
    client = secretsmanager()
    answer = _aws.call(
        RunLaunchError,
        f"EcsRunLauncher secrets: DescribeSecret {value!r}",
        client.describe_secret,
        SecretId=value,
    )
    return str(answer["ARN"])


def register(client: Any, request: Mapping[str, Any]) -> str:
    """The ARN of a revision of ``request``'s family registered from the same request: the
    family's latest when its hash matches, else a new revision."""
    family = str(request["family"])
    wanted = digest(request)
    try:
        latest = client.describe_task_definition(taskDefinition=family, include=["TAGS"])
    except Exception as exc:
        if not _aws.is_botocore_error(exc):
            raise
        latest = None  # no such family yet
    if latest is not None:
        tags = {t["key"]: t["value"] for t in latest.get("tags") or []}
        if tags.get(DEFINITION_TAG) == wanted:
            return str(latest["taskDefinition"]["taskDefinitionArn"])
    answer = _aws.call(
        RunLaunchError,
        f"EcsRunLauncher: RegisterTaskDefinition {family}",
        client.register_task_definition,
        **request,
        tags=[{"key": DEFINITION_TAG, "value": wanted}],
    )
    arn = str(answer["taskDefinition"]["taskDefinitionArn"])
    log.info("registered ECS task definition %s for runcore run tasks", arn)
    return arn


def first_container(client: Any, definition: str) -> str:
    """The name of a task definition's first container (the one a run's command overrides
    when none is named)."""
    answer = _aws.call(
        RunLaunchError,
        f"EcsRunLauncher: DescribeTaskDefinition {definition}",
        client.describe_task_definition,
        taskDefinition=definition,
    )
    containers = answer["taskDefinition"].get("containerDefinitions") or []
    if not containers:
        raise RunLaunchError(f"EcsRunLauncher: task definition {definition} has no container")
    return str(containers[0]["name"])
