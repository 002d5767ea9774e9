""":class:`EcsRunLauncher`: config, the AWS clients, launch, terminate and the health check.

The pieces it wires live beside it: :mod:`~runcore.launchers.ecs.settings` (config checks),
:mod:`~runcore.launchers.ecs.definitions` (the registered task definition),
:mod:`~runcore.launchers.ecs.current_task` (``use_current_ecs_task_config``),
:mod:`~runcore.launchers.ecs.run_task` (the RunTask request and its retries) and
:mod:`~runcore.launchers.ecs.health` (DescribeTasks answers as worker health).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import runcore.launchers.ecs.definitions as _definitions
import runcore.launchers.ecs.settings as _settings
from runcore import _aws
from runcore.errors import ConfigError, RunLaunchError
from runcore.launchers.base import LaunchContext, RunLauncher, WorkerHealth
from runcore.launchers.ecs.current_task import current_task_config
from runcore.launchers.ecs.health import describe_health
from runcore.launchers.ecs.run_task import Overrides, Target, build_request, run_task
from runcore.launchers.ecs.settings import ECS
from runcore.storage.base import WorkerRecord

if TYPE_CHECKING:
    from runcore.runs import Run

log = logging.getLogger("runcore.launchers.ecs")


class EcsRunLauncher(RunLauncher):
    """Runs each run in its own ECS task (see the :mod:`runcore.launchers.ecs` docstring).

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
    ``use_current_ecs_task_config``; a Secrets Manager client, built the same way, turns
    secret names into ARNs); ``run_task_attempts``, ``retry_initial_wait``,
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
        if cluster is None and not use_current_ecs_task_config:
            raise ConfigError(
                "EcsRunLauncher needs a cluster (or use_current_ecs_task_config: true)"
            )
        if cluster is not None and (not isinstance(cluster, str) or not cluster):
            raise ConfigError(f"EcsRunLauncher cluster must be a name or ARN, got {cluster!r}")
        self.cluster = cluster
        self.definition_spec: _definitions.TaskDefinitionSpec | None = None
        self.task_definition: str | None = None
        if isinstance(task_definition, Mapping):
            self.definition_spec = _definitions.TaskDefinitionSpec.parse(task_definition)
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
        self.container_name = _settings.optional_name("container_name", container_name)
        self.launch_type = _settings.launch_type(launch_type)
        self.capacity_provider_strategy = _settings.capacity_provider_strategy(
            capacity_provider_strategy
        )
        if self.launch_type is not None and self.capacity_provider_strategy:
            raise ConfigError(
                "EcsRunLauncher: give launch_type or capacity_provider_strategy, not both"
            )
        self.subnets = _settings.strings("subnets", subnets)
        self.security_groups = _settings.strings("security_groups", security_groups)
        self.assign_public_ip = (
            None
            if assign_public_ip is None
            else _settings.flag("assign_public_ip", assign_public_ip)
        )
        self.run_resources = _settings.run_resources(run_resources)
        self.env = _settings.string_map("env", env)
        self.secrets = _settings.string_map("secrets", secrets)
        if self.secrets and self.definition_spec is None:
            raise ConfigError(
                "EcsRunLauncher secrets go into the task definition it registers: give "
                "task_definition as {family, image, ...} (a definition named by ARN keeps "
                "its own secrets)"
            )
        self.task_tags = _settings.string_map("task_tags", task_tags)
        reserved = [key for key in self.task_tags if key.startswith("runcore/")]
        if reserved:
            raise ConfigError(f"EcsRunLauncher task_tags: {reserved} are runcore's own tags")
        self.use_current_ecs_task_config = _settings.flag(
            "use_current_ecs_task_config", use_current_ecs_task_config
        )
        self.code_location_map = _settings.string_map("code_location_map", code_location_map)
        self.command = _settings.strings("command", command)
        if not self.command:
            raise ConfigError("EcsRunLauncher command must not be empty")
        self.region_name = _settings.optional_name("region_name", region_name)
        self.endpoint_url = _settings.optional_name("endpoint_url", endpoint_url)
        self.retry = _settings.retry(run_task_attempts, retry_initial_wait, retry_max_wait)
        self._client = client
        self._ec2_client = ec2_client
        self._secrets_client: Any = None
        self._lock = threading.Lock()
        self._target: Target | None = None
        self._config_json: str | None = None

    def __repr__(self) -> str:
        return f"EcsRunLauncher(cluster={self.cluster!r})"

    # --- AWS --------------------------------------------------------------------------------

    def _lazy_client(self, attr: str, service: str) -> Any:
        with self._lock:
            if getattr(self, attr) is None:
                setattr(
                    self,
                    attr,
                    _aws.make_client(
                        service, region_name=self.region_name, endpoint_url=self.endpoint_url
                    ),
                )
            return getattr(self, attr)

    @property
    def client(self) -> Any:
        """The boto3 ECS client (injected, or built on first use)."""
        return self._lazy_client("_client", "ecs")

    @property
    def ec2_client(self) -> Any:
        """The boto3 EC2 client (``use_current_ecs_task_config`` reads security groups)."""
        return self._lazy_client("_ec2_client", "ec2")

    def start(self, context: LaunchContext) -> None:
        super().start(context)
        self._config_json = json.dumps(dict(context.instance_config), separators=(",", ":"))

    # --- where run tasks start ------------------------------------------------------------

    def target(self) -> Target:
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

    def _resolve(self) -> Target:
        current: dict[str, Any] = {}
        if self.use_current_ecs_task_config:
            current = current_task_config(self.client, lambda: self.ec2_client)
        cluster = self.cluster or current.get("cluster")
        if not cluster:
            raise RunLaunchError("EcsRunLauncher: no cluster configured or found")
        container: str | None = self.container_name
        definition: str | None
        spec = self.definition_spec
        if spec is not None:
            secret_arns = {
                name: _definitions.secret_arn(
                    value, lambda: self._lazy_client("_secrets_client", "secretsmanager")
                )
                for name, value in self.secrets.items()
            }
            definition = _definitions.register(
                self.client, spec.request(secret_arns, self.region_name)
            )
            container = container or spec.container_name
        else:
            definition = self.task_definition or current.get("task_definition")
            if not definition:
                raise RunLaunchError("EcsRunLauncher: no task definition configured or found")
            container = container or current.get("container_name")
            if container is None:
                container = _definitions.first_container(self.client, definition)
        launch_type = self.launch_type
        strategy = self.capacity_provider_strategy
        if launch_type is None and not strategy:
            if current.get("capacity_provider"):
                strategy = ({"capacityProvider": current["capacity_provider"]},)
            else:
                launch_type = current.get("launch_type") or "EC2"
        return Target(
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

    # --- the interface ----------------------------------------------------------------------

    def run_task_request(self, run: Run) -> dict[str, Any]:
        """The RunTask request that starts ``run`` (without its ``clientToken``)."""
        if self._config_json is None:
            raise RunLaunchError("EcsRunLauncher has not been started")
        overrides = Overrides(
            command=self.command,
            instance_config=self._config_json,
            env=self.env,
            run_resources=self.run_resources,
            task_tags=self.task_tags,
            code_location_map=self.code_location_map,
        )
        return build_request(self.target(), overrides, run)

    def launch_run(self, run: Run) -> None:
        request = self.run_task_request(run)
        attempt = run.attempt_id or ""
        task = run_task(self.client, request, run.run_id, attempt, self.retry)
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
        """Every run's task, described in ``ceil(n / 100)`` DescribeTasks calls per cluster
        (see :mod:`runcore.launchers.ecs.health`): one storage read for all worker records."""
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
        out.update(describe_health(self.client, by_cluster))
        return out
