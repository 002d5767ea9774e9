"""Each run in its own AWS ECS task (the ``ecs`` extra: ``pip install 'runcore[ecs]'``).

:class:`EcsRunLauncher` starts a run with one ``RunTask`` whose container override is the run
worker command (``python -m runcore worker execute-run RUN_ID --instance CONFIG --attempt
ATTEMPT``), tags the task (``runcore/run_id``, ``runcore/job_name``, the configured tags) and
records the task as the run's worker (kind ``ecs``, handle ``{"task_arn", "cluster"}``). Only
this launcher reads that handle:

* **Health.** :meth:`EcsRunLauncher.check_workers_health` reads every worker record in one
  storage call and asks ``DescribeTasks`` about up to 100 tasks per call, per cluster: a pass
  over N running runs costs ``ceil(N / 100)`` calls. A STOPPED task is a dead worker, with the
  container's exit code and ECS's ``stoppedReason``; a task ECS no longer knows is dead too.
  Heartbeats in storage are judged by run monitoring as for every launcher.
* **Terminate.** ``StopTask`` with a reason naming the run. ECS sends the container SIGTERM
  (the worker cancels its run) and SIGKILL after the task's stop timeout; ``force`` cannot
  shorten that.
* **Launch failures.** Throttling, server errors, ``failures`` in the answer (no capacity,
  agent problems) and an empty ``tasks`` list are retried with tenacity
  (``run_task_attempts``, exponential waits); then :class:`~runcore.errors.RunLaunchError` with
  AWS's reason, which the coordinator records on the run. Each try carries its own
  ``clientToken`` so a retried request never starts a second task for the same try.

The task has neither this process's files nor its paths. Its worker opens the storage and the
output store named by the instance config passed in the command (secrets are left out of it,
see :func:`runcore.config.without_secrets`): give the instance a storage every task reaches and
an output store such as :class:`~runcore.worker.outputs_s3.S3OutputStore`. Code locations
must be importable in the image: module paths, or paths remapped by ``code_location_map``.
Credentials go to the task as ECS ``secrets`` (ARNs or Secrets Manager names) in the task
definition this launcher registers, never in the command or environment overrides, which
``DescribeTasks`` shows to anyone who may describe the task.

No AWS call is made before the first launch or health check: the client is injected or built
then (boto3, the usual credential chain). Threads: none of its own; the AWS client is used
from the coordinator's and the monitor's threads (boto3 clients are thread-safe).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from runcore import _aws
from runcore import config as _config
from runcore.errors import ConfigError, RunLaunchError
from runcore.launchers.base import LaunchContext, RunLauncher, WorkerHealth
from runcore.storage.base import WorkerRecord

if TYPE_CHECKING:
    from runcore.runs import Run

log = logging.getLogger("runcore.launchers.ecs")

#: The worker kind this launcher records.
ECS = "ecs"
#: Tags every run task carries.
RUN_ID_TAG = "runcore/run_id"
JOB_NAME_TAG = "runcore/job_name"
#: Run tags that size a run's task (task-level ``cpu`` units and ``memory`` MiB overrides).
CPU_TAG = "ecs/cpu"
MEMORY_TAG = "ecs/memory"
#: The task tag on definitions this launcher registers: a hash of what it registered.
DEFINITION_TAG = "runcore/definition"
#: The environment variable of the ECS task metadata endpoint (version 4).
METADATA_ENV = "ECS_CONTAINER_METADATA_URI_V4"
#: DescribeTasks takes at most this many tasks per call.
DESCRIBE_BATCH = 100
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
LAUNCH_TYPES = ("EC2", "FARGATE", "EXTERNAL")


class _TransientLaunchError(Exception):
    """A RunTask try that may succeed when tried again; its message is AWS's reason."""


@attrs.frozen
class TaskDefinitionSpec:
    """The task definition this launcher registers (``task_definition: {family, image, ...}``).

    Registered on first launch, then reused while unchanged: the registered revision carries a
    hash of the request (tag ``runcore/definition``), and the family's latest revision with the
    same hash is used instead of registering another.
    """

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
        """From config data; :class:`ConfigError` naming the bad key."""

        raw = dict(data)
        for key in ("cpu", "memory"):
            if raw.get(key) is not None:
                raw[key] = _size(f"EcsRunLauncher task_definition.{key}", raw[key])
        spec: TaskDefinitionSpec = _config.parse(raw, cls, where="EcsRunLauncher.task_definition")
        return spec


@attrs.frozen
class _Target:
    """Where and how run tasks start, once resolved (first launch)."""

    cluster: str
    task_definition: str
    container_name: str
    launch_type: str | None
    capacity_provider_strategy: tuple[dict[str, Any], ...]
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    assign_public_ip: bool | None


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"EcsRunLauncher {name} must be a list of strings, got {value!r}")
    if not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"EcsRunLauncher {name} must be a list of strings, got {value!r}")
    return tuple(value)


def _string_map(name: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"EcsRunLauncher {name} must map strings to strings, got {value!r}")
    return dict(value)


def _check_launch_type(
    launch_type: str | None, strategy: Sequence[Mapping[str, Any]] | None
) -> None:
    if launch_type is not None and launch_type not in LAUNCH_TYPES:
        raise ConfigError(
            f"EcsRunLauncher launch_type must be one of {', '.join(LAUNCH_TYPES)}, "
            f"got {launch_type!r}"
        )
    if launch_type is not None and strategy:
        raise ConfigError(
            "EcsRunLauncher: give launch_type or capacity_provider_strategy, not both"
        )


def _run_resources(value: Mapping[str, Any] | None) -> dict[str, str]:
    resources = dict(value or {})
    unknown = sorted(set(resources) - {"cpu", "memory"})
    if unknown:
        raise ConfigError(f"EcsRunLauncher run_resources takes cpu and memory, got {unknown}")
    return {
        key: _size(f"EcsRunLauncher run_resources.{key}", size)
        for key, size in resources.items()
        if size is not None
    }


def _size(name: str, value: Any) -> str:
    """A task size (cpu units or MiB) as ECS takes it: a string of digits."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isdigit() or int(text) <= 0:
        raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
    return text


class EcsRunLauncher(RunLauncher):
    """Runs each run in its own ECS task (see the module docstring).

    Where: ``cluster``; ``task_definition``, an ARN or ``family[:revision]`` used as it is, or
    ``{family, image, container_name, cpu, memory, execution_role_arn, task_role_arn,
    network_mode, requires_compatibilities, log_group}`` registered by the launcher;
    ``container_name``, the container to override (default: the task definition's first);
    ``launch_type`` (``EC2`` or ``FARGATE``) or ``capacity_provider_strategy``; ``subnets``,
    ``security_groups``, ``assign_public_ip`` (the awsvpc network configuration);
    ``use_current_ecs_task_config``: take the cluster, task definition, container, launch type
    and network settings not configured from the ECS task this process runs in (its metadata
    endpoint, ``$ECS_CONTAINER_METADATA_URI_V4``).

    What: ``run_resources: {cpu, memory}`` task-level sizes of run tasks (overridden per run by
    the tags ``ecs/cpu`` and ``ecs/memory``); ``env``, environment variables (visible in
    DescribeTasks: no credentials); ``secrets: {ENV_NAME: ARN or Secrets Manager name}``, put
    into the registered task definition as ECS secrets; ``task_tags``; ``code_location_map``,
    run code locations to the task's own (``{"/home/me/etl.py:defs": "etl.defs:defs"}``);
    ``command``, how the task starts runcore (default ``python -m runcore``).

    AWS: ``client`` (a boto3 ECS client; tests, custom sessions), else one built on first use
    from ``region_name`` and ``endpoint_url`` (``ec2_client`` likewise, for
    ``use_current_ecs_task_config``); ``run_task_attempts``, ``retry_initial_wait``,
    ``retry_max_wait``: RunTask's retries.
    """

    records_workers = True

    def __init__(
        self,
        *,
        cluster: str | None = None,
        task_definition: str | Mapping[str, Any] | None = None,
        container_name: str | None = None,
        launch_type: str | None = None,
        capacity_provider_strategy: Sequence[Mapping[str, Any]] | None = None,
        subnets: Sequence[str] = (),
        security_groups: Sequence[str] = (),
        assign_public_ip: bool | None = None,
        run_resources: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        task_tags: Mapping[str, str] | None = None,
        use_current_ecs_task_config: bool = False,
        code_location_map: Mapping[str, str] | None = None,
        command: Sequence[str] = ("python", "-m", "runcore"),
        region_name: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
        ec2_client: Any = None,
        run_task_attempts: int = 5,
        retry_initial_wait: float = 0.5,
        retry_max_wait: float = 10.0,
    ) -> None:
        from runcore._retry import RetrySettings

        if cluster is None and not use_current_ecs_task_config:
            raise ConfigError(
                "EcsRunLauncher needs a cluster (or use_current_ecs_task_config: true)"
            )
        if cluster is not None and (not isinstance(cluster, str) or not cluster):
            raise ConfigError(f"EcsRunLauncher cluster must be a name or ARN, got {cluster!r}")
        self.cluster = cluster
        self.definition_spec: TaskDefinitionSpec | None = None
        self.task_definition: str | None = None
        if isinstance(task_definition, Mapping):
            self.definition_spec = TaskDefinitionSpec.parse(task_definition)
        elif isinstance(task_definition, str) and task_definition:
            self.task_definition = task_definition
        elif task_definition is not None:
            raise ConfigError(
                "EcsRunLauncher task_definition must be an ARN, a family[:revision] or "
                f"{{family, image, ...}}, got {task_definition!r}"
            )
        elif not use_current_ecs_task_config:
            raise ConfigError(
                "EcsRunLauncher needs a task_definition (or use_current_ecs_task_config: true)"
            )
        self.container_name = container_name
        _check_launch_type(launch_type, capacity_provider_strategy)
        self.launch_type = launch_type
        self.capacity_provider_strategy = tuple(
            dict(item) for item in (capacity_provider_strategy or ())
        )
        self.subnets = _strings("subnets", subnets)
        self.security_groups = _strings("security_groups", security_groups)
        if assign_public_ip is not None and not isinstance(assign_public_ip, bool):
            raise ConfigError(
                f"EcsRunLauncher assign_public_ip must be true or false, got {assign_public_ip!r}"
            )
        self.assign_public_ip = assign_public_ip
        self.run_resources = _run_resources(run_resources)
        self.env = _string_map("env", env)
        self.secrets = _string_map("secrets", secrets)
        if self.secrets and self.definition_spec is None:
            raise ConfigError(
                "EcsRunLauncher secrets go into the task definition it registers: give "
                "task_definition as {family, image, ...} (a definition named by ARN keeps "
                "its own secrets)"
            )
        self.task_tags = _string_map("task_tags", task_tags)
        reserved = [key for key in self.task_tags if key.startswith("runcore/")]
        if reserved:
            raise ConfigError(f"EcsRunLauncher task_tags: {reserved} are runcore's own tags")
        self.use_current_ecs_task_config = bool(use_current_ecs_task_config)
        self.code_location_map = _string_map("code_location_map", code_location_map)
        self.command = _strings("command", command)
        if not self.command:
            raise ConfigError("EcsRunLauncher command must not be empty")
        self.region_name = region_name
        self.endpoint_url = endpoint_url
        self.retry = RetrySettings(
            attempts=run_task_attempts, initial_wait=retry_initial_wait, max_wait=retry_max_wait
        )
        self._client = client
        self._ec2_client = ec2_client
        self._lock = threading.Lock()
        self._target: _Target | None = None
        self._config_json: str | None = None

    def __repr__(self) -> str:
        return f"EcsRunLauncher(cluster={self.cluster!r})"

    # --- AWS --------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The boto3 ECS client (injected, or built on first use)."""
        with self._lock:
            if self._client is None:
                self._client = _aws.make_client(
                    "ecs", region_name=self.region_name, endpoint_url=self.endpoint_url
                )
            return self._client

    @property
    def ec2_client(self) -> Any:
        """The boto3 EC2 client (``use_current_ecs_task_config`` reads security groups)."""
        with self._lock:
            if self._ec2_client is None:
                self._ec2_client = _aws.make_client(
                    "ec2", region_name=self.region_name, endpoint_url=self.endpoint_url
                )
            return self._ec2_client

    def start(self, context: LaunchContext) -> None:
        super().start(context)
        self._config_json = json.dumps(dict(context.instance_config), separators=(",", ":"))

    # --- where run tasks start ------------------------------------------------------------

    def target(self) -> _Target:
        """Cluster, task definition, container and network of run tasks (resolved once, on
        first use: the current task's metadata, the registered definition)."""
        with self._lock:
            target = self._target
        if target is not None:
            return target
        target = self._resolve()
        with self._lock:
            if self._target is None:
                self._target = target
            return self._target

    def _resolve(self) -> _Target:
        current: dict[str, Any] = {}
        if self.use_current_ecs_task_config:
            current = self._current_task_config()
        cluster = self.cluster or current.get("cluster")
        if not cluster:
            raise RunLaunchError("EcsRunLauncher: no cluster configured or found")
        container: str | None = self.container_name
        definition: str | None
        if self.definition_spec is not None:
            definition = self._registered_definition(self.definition_spec)
            container = container or self.definition_spec.container_name
        else:
            definition = self.task_definition or current.get("task_definition")
            if not definition:
                raise RunLaunchError("EcsRunLauncher: no task definition configured or found")
            container = container or current.get("container_name")
            if container is None:
                container = self._first_container(definition)
        launch_type = self.launch_type
        strategy = self.capacity_provider_strategy
        if launch_type is None and not strategy:
            if current.get("capacity_provider"):
                strategy = ({"capacityProvider": current["capacity_provider"]},)
            else:
                launch_type = current.get("launch_type") or "EC2"
        return _Target(
            cluster=cluster,
            task_definition=definition,
            container_name=container,
            launch_type=launch_type,
            capacity_provider_strategy=strategy,
            subnets=self.subnets or tuple(current.get("subnets", ())),
            security_groups=self.security_groups or tuple(current.get("security_groups", ())),
            assign_public_ip=(
                self.assign_public_ip
                if self.assign_public_ip is not None
                else current.get("assign_public_ip")
            ),
        )

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:
            if not _aws.is_botocore_error(exc):
                raise
            raise RunLaunchError(f"EcsRunLauncher: {what} failed: {_aws.describe(exc)}") from exc

    def _first_container(self, definition: str) -> str:
        answer = self._call(
            f"DescribeTaskDefinition {definition}",
            self.client.describe_task_definition,
            taskDefinition=definition,
        )
        containers = answer["taskDefinition"].get("containerDefinitions") or []
        if not containers:
            raise RunLaunchError(f"EcsRunLauncher: task definition {definition} has no container")
        return str(containers[0]["name"])

    def _secret_arn(self, value: str) -> str:
        """An ECS ``valueFrom``: an ARN as it is; a Secrets Manager name resolved to its ARN."""
        if value.startswith("arn:"):
            return value
        client = _aws.make_client(
            "secretsmanager", region_name=self.region_name, endpoint_url=self.endpoint_url
        )
        answer = self._call("DescribeSecret", client.describe_secret, SecretId=value)
        return str(answer["ARN"])

    def _registered_definition(self, spec: TaskDefinitionSpec) -> str:
        """The ARN of a task definition as ``spec`` says: the family's latest revision if
        runcore registered it from the same spec, else a new revision."""
        container: dict[str, Any] = {
            "name": spec.container_name,
            "image": spec.image,
            "essential": True,
        }
        if spec.memory is not None:  # one container: it may use all of the task's memory
            container["memoryReservation"] = int(spec.memory)
        if self.secrets:
            container["secrets"] = [
                {"name": name, "valueFrom": self._secret_arn(value)}
                for name, value in sorted(self.secrets.items())
            ]
        if spec.log_group:
            container["logConfiguration"] = {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": spec.log_group,
                    "awslogs-region": self.region_name or os.environ.get("AWS_REGION", ""),
                    "awslogs-stream-prefix": "runcore",
                },
            }
        request: dict[str, Any] = {"family": spec.family, "containerDefinitions": [container]}
        optional = {
            "cpu": spec.cpu,
            "memory": spec.memory,
            "executionRoleArn": spec.execution_role_arn,
            "taskRoleArn": spec.task_role_arn,
            "networkMode": spec.network_mode,
        }
        request.update({k: v for k, v in optional.items() if v is not None})
        if spec.requires_compatibilities:
            request["requiresCompatibilities"] = list(spec.requires_compatibilities)
        digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:32]
        try:
            latest = self.client.describe_task_definition(
                taskDefinition=spec.family, include=["TAGS"]
            )
        except Exception as exc:
            if not _aws.is_botocore_error(exc):
                raise
            latest = None  # no such family yet
        if latest is not None:
            tags = {t["key"]: t["value"] for t in latest.get("tags") or []}
            if tags.get(DEFINITION_TAG) == digest:
                return str(latest["taskDefinition"]["taskDefinitionArn"])
        answer = self._call(
            f"RegisterTaskDefinition {spec.family}",
            self.client.register_task_definition,
            **request,
            tags=[{"key": DEFINITION_TAG, "value": digest}],
        )
        arn = str(answer["taskDefinition"]["taskDefinitionArn"])
        log.info("registered ECS task definition %s for runcore run tasks", arn)
        return arn

    def _current_task_config(self) -> dict[str, Any]:
        """What the task this process runs in says about itself: its metadata endpoint, then
        DescribeTasks (definition, launch type, network) and EC2 (security groups)."""
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
        answer = self._call(
            f"DescribeTasks {task_arn}",
            self.client.describe_tasks,
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
            enis = self._call(
                f"DescribeNetworkInterfaces {eni_id}",
                self.ec2_client.describe_network_interfaces,
                NetworkInterfaceIds=[eni_id],
            )["NetworkInterfaces"]
            if enis:
                out["security_groups"] = [g["GroupId"] for g in enis[0].get("Groups") or []]
                out["assign_public_ip"] = bool(enis[0].get("Association", {}).get("PublicIp"))
        return out

    # --- the interface ----------------------------------------------------------------------

    def _config(self) -> str:
        if self._config_json is None:
            raise RunLaunchError("EcsRunLauncher has not been started")
        return self._config_json

    def run_task_request(self, run: Run) -> dict[str, Any]:
        """The RunTask request that starts ``run`` (without its ``clientToken``)."""
        if run.code_location is None:
            raise RunLaunchError(
                f"run {run.run_id}: job {run.job_name!r} has no code location, so no ECS task "
                "can import it; define it in a module the task's image holds"
            )
        target = self.target()
        command = [*self.command, "worker", "execute-run", run.run_id, "--instance"]
        command += [self._config(), "--attempt", run.attempt_id or ""]
        mapped = self.code_location_map.get(run.code_location)
        if mapped is not None:
            command += ["--code-location", mapped]
        container: dict[str, Any] = {"name": target.container_name, "command": command}
        if self.env:
            container["environment"] = [{"name": k, "value": v} for k, v in self.env.items()]
        overrides: dict[str, Any] = {"containerOverrides": [container]}
        sizes = dict(self.run_resources)
        for key, tag in (("cpu", CPU_TAG), ("memory", MEMORY_TAG)):
            if tag in run.tags:
                try:
                    sizes[key] = _size(f"run {run.run_id}: tag {tag}", run.tags[tag])
                except ConfigError as exc:
                    raise RunLaunchError(str(exc)) from exc
        overrides.update(sizes)
        tags = {**self.task_tags, RUN_ID_TAG: run.run_id, JOB_NAME_TAG: run.job_name}
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

    def launch_run(self, run: Run) -> None:
        request = self.run_task_request(run)
        attempt = run.attempt_id or ""
        task = self._run_task(run.run_id, attempt, request)
        arn = str(task["taskArn"])
        record = WorkerRecord(
            run_id=run.run_id,
            attempt_id=attempt,
            kind=ECS,
            host=f"ecs:{request['cluster']}",
            handle={"task_arn": arn, "cluster": request["cluster"]},
        )
        log.info("run %s: started as ECS task %s", run.run_id, arn)
        if not self.context.storage.record_worker(record):
            log.warning(
                "run %s: launch attempt %s was given up; stopping its task", run.run_id, attempt
            )
            self._stop(
                request["cluster"], arn, f"runcore: launch attempt of run {run.run_id} was given up"
            )

    def _run_task(self, run_id: str, attempt: str, request: dict[str, Any]) -> dict[str, Any]:
        """RunTask, retried while AWS says try again; the task, or RunLaunchError."""
        import tenacity

        tries = [0]

        def attempt_once() -> dict[str, Any]:
            tries[0] += 1
            token = hashlib.sha256(f"{run_id}/{attempt}/{tries[0]}".encode()).hexdigest()[:64]
            try:
                answer = self.client.run_task(**request, clientToken=token)
            except Exception as exc:
                if not _aws.is_botocore_error(exc):
                    raise
                code = _aws.error_code(exc)
                # No code: a connection failure; a bare HTTP 5xx: AWS's own trouble.
                if code in TRANSIENT_CODES or not code or code.startswith("5"):
                    raise _TransientLaunchError(_aws.describe(exc)) from exc
                raise RunLaunchError(
                    f"run {run_id}: ECS RunTask failed: {_aws.describe(exc)}"
                ) from exc
            failures = answer.get("failures") or []
            tasks = answer.get("tasks") or []
            if failures:
                raise _TransientLaunchError(
                    "; ".join(
                        f"{f.get('reason', 'unknown')}"
                        + (f" ({f['detail']})" if f.get("detail") else "")
                        + (f" [{f['arn']}]" if f.get("arn") else "")
                        for f in failures
                    )
                )
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

        settings = self.retry
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(settings.attempts),
            wait=tenacity.wait_exponential(multiplier=settings.initial_wait, max=settings.max_wait)
            + tenacity.wait_random(0, settings.initial_wait),
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

    def _stop(self, cluster: str, task_arn: str, reason: str) -> bool:
        try:
            self.client.stop_task(cluster=cluster, task=task_arn, reason=reason[:255])
        except Exception as exc:
            if not _aws.is_botocore_error(exc):
                raise
            log.warning("ECS StopTask %s failed: %s", task_arn, _aws.describe(exc))
            return False
        return True

    def terminate(self, run_id: str, *, force: bool = False) -> bool:
        record = self.context.storage.get_worker_record(run_id)
        if record is None or record.kind != ECS:
            return False
        arn, cluster = record.handle.get("task_arn"), record.handle.get("cluster")
        if not isinstance(arn, str) or not isinstance(cluster, str):
            return False
        how = "by force" if force else "on request"
        return self._stop(cluster, arn, f"runcore: run {run_id} terminated {how}")

    def check_run_worker_health(self, run: Run) -> WorkerHealth:
        return self.check_workers_health([run])[run.run_id]

    def check_workers_health(self, runs: Sequence[Run]) -> dict[str, WorkerHealth]:
        out: dict[str, WorkerHealth] = {}
        records = self.context.storage.get_worker_records([run.run_id for run in runs])
        by_cluster: dict[str, dict[str, str]] = {}  # cluster -> task arn -> run id
        for run in runs:
            record = records.get(run.run_id)
            if record is None or record.attempt_id != (run.attempt_id or ""):
                out[run.run_id] = WorkerHealth.unknown(
                    "no ECS task is recorded for the run's attempt"
                )
                continue
            arn, cluster = record.handle.get("task_arn"), record.handle.get("cluster")
            if record.kind != ECS or not isinstance(arn, str) or not isinstance(cluster, str):
                out[run.run_id] = WorkerHealth.unknown(
                    f"the run's worker is a {record.kind!r}, not an ECS task"
                )
                continue
            by_cluster.setdefault(cluster, {})[arn] = run.run_id
        for cluster, tasks in by_cluster.items():
            arns = list(tasks)
            for start in range(0, len(arns), DESCRIBE_BATCH):
                batch = arns[start : start + DESCRIBE_BATCH]
                try:
                    answer = self.client.describe_tasks(cluster=cluster, tasks=batch)
                except Exception as exc:
                    if not _aws.is_botocore_error(exc):
                        raise
                    reason = f"ECS DescribeTasks failed: {_aws.describe(exc)}"
                    out.update({tasks[arn]: WorkerHealth.unknown(reason) for arn in batch})
                    continue
                for task in answer.get("tasks") or []:
                    run_id = tasks.get(task.get("taskArn", ""))
                    if run_id is not None:
                        out[run_id] = task_health(task)
                for failure in answer.get("failures") or []:
                    run_id = tasks.get(failure.get("arn", ""))
                    if run_id is None:
                        continue
                    if failure.get("reason") == "MISSING":
                        out[run_id] = WorkerHealth.dead(
                            f"ECS no longer knows the run's task {failure['arn']} (MISSING)"
                        )
                    else:
                        out[run_id] = WorkerHealth.unknown(
                            f"ECS DescribeTasks: {failure.get('reason')}"
                        )
                for arn in batch:
                    out.setdefault(
                        tasks[arn], WorkerHealth.unknown(f"ECS did not describe task {arn}")
                    )
        return out


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


def _get_json(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        data = json.loads(response.read().decode())
    if not isinstance(data, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return data
