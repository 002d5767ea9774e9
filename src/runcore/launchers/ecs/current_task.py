"""``use_current_ecs_task_config``: what the ECS task this process runs in says about itself.

ECS gives every container the URL of its task metadata endpoint (version 4) in
``$ECS_CONTAINER_METADATA_URI_V4``: ``GET $URL`` describes the container, ``GET $URL/task`` the
task (cluster and task ARN). ``DescribeTasks`` then gives the task definition, launch type or
capacity provider, and the awsvpc network interface (subnet); ``DescribeNetworkInterfaces``
(EC2) its security groups and whether it has a public IP. Run tasks start like the launching
task unless the launcher's config says otherwise.
"""

from __future__ import annotations

import json
import os
from typing import Any

from runcore import _aws
from runcore.errors import RunLaunchError

#: The environment variable of the ECS task metadata endpoint (version 4).
METADATA_ENV = "ECS_CONTAINER_METADATA_URI_V4"


def current_task_config(ecs: Any, ec2: Any) -> dict[str, Any]:
    """The launching task's settings: ``cluster``, ``task_definition``, ``container_name``,
    ``launch_type``, ``capacity_provider`` and, for an awsvpc task, ``subnets``,
    ``security_groups`` and ``assign_public_ip``. ``ecs`` is a boto3 ECS client; ``ec2`` a
    callable returning a boto3 EC2 client (only awsvpc tasks need one)."""
    base = os.environ.get(METADATA_ENV)
    if not base:
        raise RunLaunchError(
            f"EcsRunLauncher use_current_ecs_task_config: ${METADATA_ENV} is not set (is "
            "this process running in an ECS task?)"
        )
    try:
        own = _get_json(base)
        task_meta = _get_json(base.rstrip("/") + "/task")
    except (OSError, ValueError) as exc:
        raise RunLaunchError(
            f"EcsRunLauncher: cannot read the ECS task metadata at {base}: {exc}"
        ) from exc
    cluster = str(task_meta["Cluster"])
    task_arn = str(task_meta["TaskARN"])
    answer = _aws.call(
        RunLaunchError,
        f"EcsRunLauncher: DescribeTasks {task_arn}",
        ecs.describe_tasks,
        cluster=cluster,
        tasks=[task_arn],
    )
    if not answer.get("tasks"):
        raise RunLaunchError(f"EcsRunLauncher: ECS does not know this task ({task_arn})")
    task = answer["tasks"][0]
    out: dict[str, Any] = {
        "cluster": cluster,
        "task_definition": task["taskDefinitionArn"],
        "container_name": own.get("Name"),
        "launch_type": task.get("launchType"),
        "capacity_provider": task.get("capacityProviderName"),
    }
    eni_id = None
    for attachment in task.get("attachments") or []:
        if attachment.get("type") != "ElasticNetworkInterface":
            continue
        details = {d["name"]: d["value"] for d in attachment.get("details") or []}
        if "subnetId" in details:
            out["subnets"] = [details["subnetId"]]
        eni_id = details.get("networkInterfaceId")
    if eni_id:
        enis = _aws.call(
            RunLaunchError,
            f"EcsRunLauncher: DescribeNetworkInterfaces {eni_id}",
            ec2().describe_network_interfaces,
            NetworkInterfaceIds=[eni_id],
        )["NetworkInterfaces"]
        if enis:
            out["security_groups"] = [g["GroupId"] for g in enis[0].get("Groups") or []]
            out["assign_public_ip"] = bool(enis[0].get("Association", {}).get("PublicIp"))
    return out


def _get_json(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        data = json.loads(response.read().decode())
    if not isinstance(data, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return data
