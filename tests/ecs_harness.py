"""A real AWS API server for the ECS tests, and an agent that plays the ECS container runtime.

* :func:`start_moto` starts moto's server (``ThreadedMotoServer``) on a free loopback port;
  everything runcore does goes to it over HTTP through boto3 (``endpoint_url``).
* :func:`manual_task_transitions` freezes moto's task states (state-manager endpoint), so a
  task stays RUNNING until :class:`EcsAgent` or StopTask stops it.
* :class:`EcsAgent` polls ListTasks/DescribeTasks (over HTTP) for the tasks it has not run,
  starts each task's command override as a local process, and stops the task with the
  process's exit code when it ends. As ECS's agent, it reads the task definition's
  ``secrets`` from Secrets Manager (over HTTP) and gives them to the process as environment
  variables; the process inherits no database credential from the test
  (:func:`task_environment`). Moto has no API to set a container's exit code, so that one
  write goes to moto's in-process backend. A task stopped by StopTask gets SIGTERM (as ECS's
  agent sends), its exit code recorded once it exits.
* :class:`RunTaskFaults` injects throttling and ``failures`` answers into moto's RunTask, and
  :class:`MissingTasks` the ``MISSING`` failures AWS's DescribeTasks gives for tasks it does
  not know, server side (moto does neither on its own).
* :func:`e2e_scenario`: every end-to-end case, on a test-owned PostgreSQL cluster that wants
  a password (``_pg_cluster.py``), the password reaching run workers only as an ECS secret.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REGION = "us-east-1"
ACCOUNT = "123456789012"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def start_moto() -> Iterator[str]:
    """Moto's server on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # else a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def client(service: str, endpoint: str) -> Any:
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def manual_task_transitions(endpoint: str) -> None:
    """Tasks stay in their status until someone moves them (no step per DescribeTasks)."""
    body = {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}}
    request = urllib.request.Request(
        endpoint + "/moto-api/state-manager/set-transition",
        method="POST",
        data=json.dumps(body).encode(),
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def ec2_cluster(endpoint: str, name: str, instances: int = 1) -> None:
    """An ECS cluster with ``instances`` registered EC2 container instances."""
    ecs, ec2 = client("ecs", endpoint), client("ec2", endpoint)
    ecs.create_cluster(clusterName=name)
    for _ in range(instances):
        iid = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0][
            "InstanceId"
        ]
        ecs.register_container_instance(
            cluster=name, instanceIdentityDocument=json.dumps({"instanceId": iid})
        )


def default_network(endpoint: str) -> tuple[list[str], list[str]]:
    """Subnets and a security group of moto's default VPC (for awsvpc / FARGATE)."""
    ec2 = client("ec2", endpoint)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])
    group = ec2.describe_security_groups(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
            {"Name": "group-name", "Values": ["default"]},
        ]
    )["SecurityGroups"][0]
    return [s["SubnetId"] for s in subnets["Subnets"]][:2], [group["GroupId"]]


def backend_task(cluster: str, arn: str) -> Any:
    from moto.ecs.models import ecs_backends

    return ecs_backends[ACCOUNT][REGION].tasks[cluster][arn]


def stop_in_backend(cluster: str, arn: str, exit_code: int, reason: str | None) -> None:
    """Mark a task STOPPED with its container's exit code (what ECS's agent reports)."""
    task = backend_task(cluster, arn)
    if task.last_status != "STOPPED":
        task.last_status = task.desired_status = "STOPPED"
        task.stopped_reason = reason or "Essential container in task exited"
        task.stop_code = "EssentialContainerExited"
    for container in task.containers:
        container.last_status = "STOPPED"
        container.exitCode = exit_code
        container.reason = f"exited with code {exit_code}"


#: What a task's process must not inherit from the test: it gets credentials as ECS secrets only.
CREDENTIAL_ENV = ("RUNCORE_POSTGRES_URL", "PGPASSWORD", "PGPASSFILE", "PGSERVICEFILE")


def task_environment() -> dict[str, str]:
    """The environment a task's process starts from: the test's, without any database
    credential (and no ``~/.pgpass``)."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_ENV}
    env["PGPASSFILE"] = os.path.join(os.sep, "nonexistent", "pgpass")
    return env


class EcsAgent:
    """Plays the container runtime of one cluster: a thread polling the API (see module doc).

    Threads: one poller, started by :meth:`start`, stopped and joined by :meth:`stop`, which
    also kills every process still running.
    """

    def __init__(
        self, endpoint: str, cluster: str, interval: float = 0.05, log_dir: str | None = None
    ) -> None:
        self.ecs = client("ecs", endpoint)
        self.secretsmanager = client("secretsmanager", endpoint)
        self.cluster = cluster
        self.interval = interval
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.secret_names: dict[str, list[str]] = {}  # task arn -> the secrets it was given
        self._definitions: dict[str, dict[str, Any]] = {}
        self.run_ids: dict[str, str] = {}  # task arn -> runcore/run_id tag
        self.exit_codes: dict[str, int] = {}
        self.killed: set[str] = set()
        self.stop_requested: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ecs-test-agent", daemon=True)
        self.errors: list[str] = []

    def start(self) -> EcsAgent:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._pass()
            except Exception as exc:  # keep playing; the test reads the errors
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _pass(self) -> None:
        arns = self.ecs.list_tasks(cluster=self.cluster)["taskArns"]
        arns += self.ecs.list_tasks(cluster=self.cluster, desiredStatus="STOPPED")["taskArns"]
        with self._lock:
            known = set(self.procs)
        for start in range(0, len(arns), 100):
            batch = arns[start : start + 100]
            for task in self.ecs.describe_tasks(
                cluster=self.cluster, tasks=batch, include=["TAGS"]
            )["tasks"]:
                arn = task["taskArn"]
                if arn not in known:
                    if task["lastStatus"] in ("PENDING", "PROVISIONING", "RUNNING"):
                        self._run(task)
                    continue
                proc = self.procs[arn]
                stopped = task["lastStatus"] == "STOPPED" or task.get("desiredStatus") == "STOPPED"
                if stopped and arn not in self.stop_requested and proc.poll() is None:
                    self.stop_requested.add(arn)  # StopTask: SIGTERM, as ECS's agent does
                    proc.send_signal(signal.SIGTERM)
        for arn, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None or arn in self.exit_codes:
                continue
            self.exit_codes[arn] = code
            ecs_code = 128 - code if code < 0 else code  # a signal: 128 + its number
            reason = (
                "OutOfMemoryError: Container killed due to memory usage"
                if (arn in self.killed)
                else None
            )
            stop_in_backend(self.cluster, arn, ecs_code, reason)

    def _container(self, task: dict[str, Any], name: str | None) -> dict[str, Any]:
        """The task definition's container ``name`` (default: the first)."""
        arn = task["taskDefinitionArn"]
        if arn not in self._definitions:
            self._definitions[arn] = self.ecs.describe_task_definition(taskDefinition=arn)[
                "taskDefinition"
            ]
        containers = self._definitions[arn]["containerDefinitions"]
        return next((c for c in containers if c["name"] == name), containers[0])

    def _run(self, task: dict[str, Any]) -> None:
        overrides = task.get("overrides", {}).get("containerOverrides", [])
        override = next((o for o in overrides if o.get("command")), None)
        if override is None:
            self.errors.append(f"task {task['taskArn']} has no command override")
            return
        # As ECS's agent: the definition's secrets, read from Secrets Manager when the task
        # starts, become environment variables; then the environment overrides.
        env = task_environment()
        secrets = self._container(task, override.get("name")).get("secrets", [])
        for secret in secrets:
            value = self.secretsmanager.get_secret_value(SecretId=secret["valueFrom"])
            env[secret["name"]] = value["SecretString"]
        env.update({e["name"]: e["value"] for e in override.get("environment", [])})
        tags = {t["key"]: t["value"] for t in task.get("tags", [])}
        if self.log_dir is None:
            out: Any = subprocess.DEVNULL
        else:
            out = open(  # noqa: SIM115 - the child holds it; closed below once it is started
                os.path.join(self.log_dir, task["taskArn"].rsplit("/", 1)[-1] + ".log"), "wb"
            )
        try:
            proc = subprocess.Popen(override["command"], env=env, stdout=out, stderr=out)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        with self._lock:
            self.procs[task["taskArn"]] = proc
            self.run_ids[task["taskArn"]] = tags.get("runcore/run_id", "")
            self.secret_names[task["taskArn"]] = sorted(s["name"] for s in secrets)

    def task_of(self, run_id: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for arn, rid in self.run_ids.items():
                    if rid == run_id:
                        return arn
            time.sleep(0.02)
        raise AssertionError(f"no task ran for run {run_id}; agent errors: {self.errors}")

    def kill(self, run_id: str) -> str:
        """SIGKILL the process of the run's task (as the OOM killer would); its task ARN."""
        arn = self.task_of(run_id)
        self.killed.add(arn)
        self.procs[arn].kill()
        return arn


class _PatchedAction:
    """Replaces one action of moto's ECS responses in this process's server while in a
    ``with`` block (what AWS does and moto does not, injected server side)."""

    action = ""

    def __enter__(self) -> Any:
        from moto.ecs.responses import EC2ContainerServiceResponse

        original = getattr(EC2ContainerServiceResponse, self.action)
        self._original = original
        setattr(
            EC2ContainerServiceResponse,
            self.action,
            lambda response: self.answer(response, original),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        from moto.ecs.responses import EC2ContainerServiceResponse

        setattr(EC2ContainerServiceResponse, self.action, self._original)

    def answer(self, response: Any, original: Any) -> Any:
        raise NotImplementedError


class RunTaskFaults(_PatchedAction):
    """Server-side faults in moto's RunTask: ``throttles`` ThrottlingException answers, then
    ``failures`` answers with a capacity failure, then ``empty`` answers with no task and no
    failure, then moto's own behaviour. Counts every RunTask the server received."""

    action = "run_task"

    def __init__(self, throttles: int = 0, failures: int = 0, empty: int = 0) -> None:
        self.throttles = throttles
        self.failures = failures
        self.empty = empty
        self.calls = 0

    def answer(self, response: Any, original: Any) -> Any:
        from moto.core.exceptions import JsonRESTError
        from moto.core.responses import ActionResult

        self.calls += 1
        if self.throttles > 0:
            self.throttles -= 1
            raise JsonRESTError("ThrottlingException", "Rate exceeded")
        if self.failures > 0:
            self.failures -= 1
            failure = {
                "arn": "arn:aws:ecs:us-east-1:123456789012:container-instance/x",
                "reason": "RESOURCE:MEMORY",
            }
            return ActionResult({"tasks": [], "failures": [failure]})
        if self.empty > 0:
            self.empty -= 1
            return ActionResult({"tasks": [], "failures": []})
        return original(response)


class MissingTasks(_PatchedAction):
    """DescribeTasks as AWS answers it: a task the cluster does not know (never started, or
    stopped long ago and forgotten) is listed in ``failures`` with reason ``MISSING``; moto
    leaves it out of both lists."""

    action = "describe_tasks"

    def answer(self, response: Any, original: Any) -> Any:
        result = original(response)
        known = {task.task_arn for task in result.result["tasks"]}
        result.result["failures"] = [
            {"arn": arn, "reason": "MISSING"}
            for arn in response._get_param("tasks", [])
            if arn not in known
        ]
        return result


def forget_task(cluster: str, arn: str) -> None:
    """Make the server forget a task, as ECS forgets a task about an hour after it stopped."""
    from moto.ecs.models import ecs_backends

    del ecs_backends[ACCOUNT][REGION].tasks[cluster][arn]


class ApiCalls:
    """Counts a boto3 client's calls by operation (``RunTask``, ``DescribeTasks``, ...) and the
    task ARNs each DescribeTasks asked about."""

    def __init__(self, boto_client: Any) -> None:
        self.counts: dict[str, int] = {}
        self.describe_sizes: list[int] = []
        boto_client.meta.events.register("before-parameter-build.ecs.*", self._count)

    def _count(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.counts[model.name] = self.counts.get(model.name, 0) + 1
        if model.name == "DescribeTasks":
            self.describe_sizes.append(len(params.get("tasks", [])))

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)


# --- the end-to-end scenario (run as pid 1 of a pid namespace: the agent signals processes) ---

E2E_LOCATION = "fixtures_defs.ecs_jobs:defs"
E2E_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures_defs", "ecs_jobs.py")


def _wait(predicate: Any, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


#: The Secrets Manager secret (by name) holding the database URL with its password, and the
#: environment variable the run worker reads it from (PostgresStorage's ``URL_ENV``).
POSTGRES_SECRET = "runcore-e2e/postgres-url"


def e2e_instance_config(endpoint: str, database_url: str, token_arn: str) -> dict[str, Any]:
    """The daemon's instance config: PostgreSQL storage (``database_url`` carries the password:
    this process may know it), S3 outputs, the ECS launcher giving every task the URL with the
    password as the ECS secret ``RUNCORE_POSTGRES_URL`` (by name) and a token by ARN."""
    import sys

    return {
        "storage": {"postgres": {"url": database_url, "schema": "runcore_ecs", "pool": {"max": 4}}},
        "outputs": {
            "class": "runcore.worker.outputs_s3:S3OutputStore",
            "config": {"bucket": "outputs", "endpoint_url": endpoint, "region_name": REGION},
        },
        "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
        "run_launcher": {
            "class": "runcore.launchers.ecs:EcsRunLauncher",
            "config": {
                "cluster": "runs",
                "task_definition": {"family": "runcore-run", "image": "etl:1", "memory": 256},
                "launch_type": "EC2",
                # The agent runs the command on this machine: this interpreter, not "python".
                "command": [sys.executable, "-m", "runcore"],
                # A location by this host's file path is the module path in the task; a
                # module path goes as it is.
                "code_location_map": {f"{E2E_FILE}:defs": E2E_LOCATION},
                "secrets": {"RUNCORE_POSTGRES_URL": POSTGRES_SECRET, "ECS_TEST_TOKEN": token_arn},
                "endpoint_url": endpoint,
                "region_name": REGION,
                "retry_initial_wait": 0.01,
                "retry_max_wait": 0.05,
            },
        },
        "run_monitoring": {"enabled": True, "poll_interval_seconds": 0.2},
        "run_retries": {"enabled": True, "max_retries": 1},
    }


class _Lines(logging.Handler):
    """Every record of the ``runcore`` loggers, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def e2e_scenario(tmp: str) -> dict[str, Any]:
    """Every end-to-end case on one test-owned PostgreSQL cluster (password auth), one moto
    server, one instance and daemon, one agent; returns what the test checks."""
    import secrets

    from _pg_cluster import owned_cluster

    for name in CREDENTIAL_ENV:  # this process knows the password from its config only
        os.environ.pop(name, None)
    password = "pw-" + secrets.token_hex(12)
    token = "token-" + secrets.token_hex(12)
    lines = _Lines()
    logging.getLogger("runcore").addHandler(lines)
    logging.getLogger("runcore").setLevel(logging.DEBUG)
    task_logs = os.path.join(tmp, "tasks")
    os.mkdir(task_logs)
    with owned_cluster(password) as pg, start_moto() as endpoint:
        sm = client("secretsmanager", endpoint)
        sm.create_secret(Name=POSTGRES_SECRET, SecretString=pg.url_with_password)
        token_arn = sm.create_secret(Name="runcore-e2e/token", SecretString=token)["ARN"]
        config = e2e_instance_config(endpoint, pg.url_with_password, token_arn)
        out = _e2e_cases(tmp, endpoint, config, task_logs)
        out["postgres"] = _e2e_secrets(pg, endpoint, out.pop("_probe"))
    leaks = {
        "runcore logs": "\n".join(lines.lines),
        "task output": "\n".join(
            Path(task_logs, name).read_text(errors="replace")
            for name in sorted(os.listdir(task_logs))
        ),
        **out.pop("_shown"),
    }
    out["postgres"]["leaks"] = {
        where: [secret for secret in (password, token) if secret in text]
        for where, text in leaks.items()
    }
    out["postgres"]["looked_at"] = {where: len(text) for where, text in leaks.items()}
    return out


def _e2e_secrets(pg: Any, endpoint: str, probe: dict[str, Any]) -> dict[str, Any]:
    """That the password is needed (a connection without it is refused, and so is the task's
    own command run without its secrets) and that the task's command carries no password."""
    import psycopg

    try:
        psycopg.connect(pg.url, connect_timeout=5).close()
        refused = ""
    except psycopg.OperationalError as exc:
        refused = str(exc)
    rerun = subprocess.run(
        probe["command"],
        env=task_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    config = json.loads(probe["command"][probe["command"].index("--instance") + 1])
    return {
        "without_password": refused,
        "command_without_secrets_exit": rerun.returncode,
        "command_without_secrets_said": rerun.stderr[-2000:],
        "command_storage": config["storage"],
        "url_shown": pg.url,
        "secret_names": probe["secret_names"],
        "definition_secrets": probe["definition_secrets"],
        "token_arn": probe["token_arn"],
    }


def _e2e_cases(tmp: str, endpoint: str, config: dict[str, Any], task_logs: str) -> dict[str, Any]:
    """The cases on one instance and daemon and one agent: statuses, reasons, exit codes, call
    counts; under ``_probe`` and ``_shown`` what :func:`e2e_scenario` checks for secrets."""
    import runcore as rc
    from runcore.events import EventType
    from runcore.worker.outputs_s3 import S3OutputStore

    out: dict[str, Any] = {}
    gate = os.path.join(tmp, "gate")
    os.environ["ECS_TEST_GATE"] = gate
    manual_task_transitions(endpoint)
    ec2_cluster(endpoint, "runs", instances=2)
    client("s3", endpoint).create_bucket(Bucket="outputs")
    ecs = client("ecs", endpoint)
    agent = EcsAgent(endpoint, "runs", log_dir=task_logs).start()
    inst = rc.Instance.from_config(config)
    try:
        with (
            inst,
            rc.Daemon(inst, dequeue_interval=0.05, monitor_interval=0.2, retry_interval=0.2),
        ):

            def status(run_id: str) -> rc.RunStatus:
                return inst.get_run(run_id).status

            def messages(run_id: str) -> list[str]:
                return [e.message for e in inst.get_events(run_id)]

            def statuses(run_id: str) -> list[str]:
                return [
                    e.event_type.value
                    for e in inst.get_events(run_id)
                    if e.event_type.value.startswith("RUN_")
                ]

            def task_of(run_id: str) -> dict[str, Any]:
                arn = agent.task_of(run_id)
                return ecs.describe_tasks(cluster="runs", tasks=[arn])["tasks"][0]

            # 1. A queued run goes QUEUED -> STARTING -> STARTED -> SUCCESS as a task.
            run = inst.submit_run("quick", code_location=f"{E2E_FILE}:defs")
            queued = run.status.value
            done = inst.wait_for_run(run.run_id, timeout=60)
            record = inst.storage.get_worker_record(run.run_id)
            store = S3OutputStore("outputs", endpoint_url=endpoint, region_name=REGION)
            _wait(lambda: agent.task_of(run.run_id) in agent.exit_codes, what="exit")
            out["success"] = {
                "submitted": queued,
                "final": done.status.value,
                "events": statuses(run.run_id),
                "record_kind": record.kind if record else None,
                "record_handle": sorted(record.handle) if record else None,
                "record_is_the_task": bool(record)
                and record.handle.get("task_arn") == agent.task_of(run.run_id),
                "exit_code": agent.exit_codes[agent.task_of(run.run_id)],
                "output": store.get(run.run_id, "total"),
                "task_tags_run_id": run.run_id,
                "command": task_of(run.run_id)["overrides"]["containerOverrides"][0]["command"],
            }

            # 2. A task killed mid-run fails its run with the stopped reason; run
            #    retries run it again (from the failure, extract's output from S3).
            run = inst.submit_run("gated", code_location=E2E_LOCATION)
            _wait(lambda: status(run.run_id) is rc.RunStatus.STARTED, what="STARTED")
            _wait(
                lambda: any(
                    e.event_type is EventType.STEP_START and e.step_key == "gated_total"
                    for e in inst.get_events(run.run_id)
                ),
                what="the gated step to start",
            )
            agent.kill(run.run_id)
            failed = inst.wait_for_run(run.run_id, timeout=60)
            children = []

            def retried() -> bool:
                children[:] = [
                    r.run
                    for r in inst.get_run_records(rc.RunsFilter())
                    if r.run.parent_run_id == run.run_id
                ]
                return bool(children) and children[0].status is rc.RunStatus.STARTED

            _wait(retried, what="the retry to start")
            with open(gate, "w"):
                pass
            child = inst.wait_for_run(children[0].run_id, timeout=60)
            out["killed"] = {
                "final": failed.status.value,
                "messages": messages(run.run_id),
                "retry_final": child.status.value,
                "retry_output": inst.output_store.get(child.run_id, "gated_total"),
                "retry_ran_extract": any(
                    e.event_type is EventType.STEP_START and e.step_key == "extract"
                    for e in inst.get_events(child.run_id)
                ),
            }

            # 3. Cancel stops the task; the worker gets SIGTERM and cancels the run.
            os.remove(gate)
            run = inst.submit_run("gated", code_location=E2E_LOCATION)
            _wait(lambda: status(run.run_id) is rc.RunStatus.STARTED, what="STARTED")
            inst.cancel_run(run.run_id)
            canceled = inst.wait_for_run(run.run_id, timeout=60)
            arn = agent.task_of(run.run_id)
            _wait(lambda: arn in agent.exit_codes, what="the canceled worker's exit")
            task = task_of(run.run_id)
            out["canceled"] = {
                "final": canceled.status.value,
                "exit_code": agent.exit_codes[arn],
                "stopped_reason": task.get("stoppedReason", ""),
                "run_id": run.run_id,
                "command": task["overrides"]["containerOverrides"][0]["command"],
            }

            # 4. Throttling and `failures` are retried; the run succeeds.
            with open(gate, "w"):
                pass
            with RunTaskFaults(throttles=2, failures=1, empty=1) as faults:
                run = inst.submit_run("quick", code_location=E2E_LOCATION)
                done = inst.wait_for_run(run.run_id, timeout=60)
            out["throttled"] = {"final": done.status.value, "run_task_calls": faults.calls}

            # 5. RunTask failing every try fails the run with AWS's reason.
            with RunTaskFaults(failures=100) as faults:
                run = inst.submit_run(
                    "quick", tags={"runcore/max_retries": "0"}, code_location=E2E_LOCATION
                )
                done = inst.wait_for_run(run.run_id, timeout=60)
            out["launch_failed"] = {
                "final": done.status.value,
                "messages": messages(run.run_id),
                "run_task_calls": faults.calls,
            }

            # What anyone may see: every task as DescribeTasks shows it (overrides, tags),
            # the task definitions, every stored event.
            arns = ecs.list_tasks(cluster="runs")["taskArns"]
            arns += ecs.list_tasks(cluster="runs", desiredStatus="STOPPED")["taskArns"]
            tasks = [
                task
                for start in range(0, len(arns), 100)
                for task in ecs.describe_tasks(
                    cluster="runs", tasks=arns[start : start + 100], include=["TAGS"]
                )["tasks"]
            ]
            definitions = [
                ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"])
                for arn in sorted({t["taskDefinitionArn"] for t in tasks})
            ]
            events = inst.storage.get_events_after(None, 1_000_000)
            out["_shown"] = {
                "DescribeTasks": json.dumps(tasks, default=str),
                "task definitions": json.dumps(definitions, default=str),
                "event log": "\n".join(repr(record) for record in events),
            }
            first = agent.task_of(out["success"]["task_tags_run_id"])
            described = next(t for t in tasks if t["taskArn"] == first)
            out["_probe"] = {
                "command": described["overrides"]["containerOverrides"][0]["command"],
                "secret_names": agent.secret_names[first],
                "definition_secrets": definitions[0]["taskDefinition"]["containerDefinitions"][
                    0
                ].get("secrets", []),
                "token_arn": config["run_launcher"]["config"]["secrets"]["ECS_TEST_TOKEN"],
            }
            out["tasks_described"] = len(tasks)
            out["events_stored"] = len(events)
    finally:
        agent.stop()
    out["agent_errors"] = agent.errors
    return out
