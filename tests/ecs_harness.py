"""A real AWS API server for the ECS tests, and an agent that plays the ECS container runtime.

* :func:`start_moto` starts moto's server (``ThreadedMotoServer``) on a free loopback port;
  everything runcore does goes to it over HTTP through boto3 (``endpoint_url``).
* :func:`manual_task_transitions` freezes moto's task states (state-manager endpoint), so a
  task stays RUNNING until :class:`EcsAgent` or StopTask stops it.
* :class:`EcsAgent` polls ListTasks/DescribeTasks (over HTTP) for the tasks it has not run,
  starts each task's command override as a local process, and stops the task with the
  process's exit code when it ends. Moto has no API to set a container's exit code, so that
  one write goes to moto's in-process backend. A task stopped by StopTask gets SIGTERM (as
  ECS's agent sends), its exit code recorded once it exits.
* :class:`RunTaskFaults` injects throttling and ``failures`` answers into moto's RunTask,
  server side (moto never throttles and never fails a RunTask on its own).
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


class EcsAgent:
    """Plays the container runtime of one cluster: a thread polling the API (see module doc).

    Threads: one poller, started by :meth:`start`, stopped and joined by :meth:`stop`, which
    also kills every process still running.
    """

    def __init__(self, endpoint: str, cluster: str, interval: float = 0.05) -> None:
        self.ecs = client("ecs", endpoint)
        self.cluster = cluster
        self.interval = interval
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
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

    def _run(self, task: dict[str, Any]) -> None:
        overrides = task.get("overrides", {}).get("containerOverrides", [])
        command = next((o.get("command") for o in overrides if o.get("command")), None)
        if not command:
            self.errors.append(f"task {task['taskArn']} has no command override")
            return
        env = dict(os.environ)
        for override in overrides:
            env.update({e["name"]: e["value"] for e in override.get("environment", [])})
        tags = {t["key"]: t["value"] for t in task.get("tags", [])}
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with self._lock:
            self.procs[task["taskArn"]] = proc
            self.run_ids[task["taskArn"]] = tags.get("runcore/run_id", "")

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


class RunTaskFaults:
    """Server-side faults in moto's RunTask: ``throttles`` ThrottlingException answers, then
    ``failures`` answers with a capacity failure, then ``empty`` answers with no task and no
    failure, then moto's own behaviour. Counts every RunTask the server received."""

    def __init__(self, throttles: int = 0, failures: int = 0, empty: int = 0) -> None:
        self.throttles = throttles
        self.failures = failures
        self.empty = empty
        self.calls = 0
        self._original: Any = None

    def __enter__(self) -> RunTaskFaults:
        from moto.core.exceptions import JsonRESTError
        from moto.core.responses import ActionResult
        from moto.ecs.responses import EC2ContainerServiceResponse

        self._original = original = EC2ContainerServiceResponse.run_task
        faults = self

        def run_task(response: Any) -> Any:
            faults.calls += 1
            if faults.throttles > 0:
                faults.throttles -= 1
                raise JsonRESTError("ThrottlingException", "Rate exceeded")
            if faults.failures > 0:
                faults.failures -= 1
                return ActionResult(
                    {
                        "tasks": [],
                        "failures": [
                            {
                                "arn": "arn:aws:ecs:us-east-1:123456789012:container-instance/x",
                                "reason": "RESOURCE:MEMORY",
                            }
                        ],
                    }
                )
            if faults.empty > 0:
                faults.empty -= 1
                return ActionResult({"tasks": [], "failures": []})
            return original(response)

        EC2ContainerServiceResponse.run_task = run_task  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        from moto.ecs.responses import EC2ContainerServiceResponse

        EC2ContainerServiceResponse.run_task = self._original  # type: ignore[method-assign]


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
