"""EcsRunLauncher and S3OutputStore against moto's AWS API server, over HTTP.

The tests here send no signal and run in this process: the S3 output store contract, the
request shapes (FARGATE, awsvpc, sizes, tags), ``use_current_ecs_task_config`` against a
metadata endpoint served by the test, the registered task definition, and the batched health
check. The end-to-end runs (a test agent playing the container runtime, killing and stopping
processes) are in ``test_ecs_e2e.py``, in a pid namespace.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

if os.environ.get("CI"):  # on CI a skip would hide a missing dependency: fail instead
    import moto  # noqa: F401
else:
    pytest.importorskip("moto", reason="the ECS tests need moto[server] (the test extra)")

import ecs_harness as h
import runcore as rc
from runcore.errors import ConfigError, RunLaunchError
from runcore.launchers.base import HealthStatus, LaunchContext
from runcore.launchers.ecs import EcsRunLauncher
from runcore.runs import RunStatus
from runcore.storage.base import WorkerRecord
from runcore.testing import OutputStoreContract
from runcore.worker.outputs import InMemoryOutputStore
from runcore.worker.outputs_s3 import S3OutputStore

LOCATION = "fixtures_defs.ecs_jobs:defs"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with h.start_moto() as url:
        h.manual_task_transitions(url)
        yield url


@pytest.fixture(scope="module")
def network(endpoint: str) -> tuple[list[str], list[str]]:
    return h.default_network(endpoint)


@pytest.fixture(scope="module")
def fargate_cluster(endpoint: str) -> str:
    h.client("ecs", endpoint).create_cluster(clusterName="fargate")
    return "fargate"


@pytest.fixture(scope="module")
def bucket(endpoint: str) -> str:
    h.client("s3", endpoint).create_bucket(Bucket="runcore-outputs")
    return "runcore-outputs"


# --- S3OutputStore -----------------------------------------------------------------------------


class TestS3OutputStore(OutputStoreContract):
    @pytest.fixture
    def output_store(self, endpoint: str, bucket: str) -> rc.OutputStore:
        return S3OutputStore(
            bucket, prefix=f"t/{uuid.uuid4()}", endpoint_url=endpoint, region_name=h.REGION
        )

    @pytest.fixture
    def output_store_factory(
        self, output_store: S3OutputStore, endpoint: str
    ) -> Callable[[], rc.OutputStore]:
        """Another store on the same bucket and prefix, with its own client."""
        return lambda: S3OutputStore(
            output_store.bucket,
            prefix=output_store.prefix,
            endpoint_url=endpoint,
            region_name=h.REGION,
        )


def test_s3_outputs_are_keyed_by_prefix_run_and_step(endpoint: str, bucket: str) -> None:
    store = S3OutputStore(bucket, prefix="keys/", endpoint_url=endpoint, region_name=h.REGION)
    run_id = str(uuid.uuid4())
    store.put(run_id, "extract", [1, 2])
    keys = [
        o["Key"]
        for o in h.client("s3", endpoint).list_objects_v2(Bucket=bucket, Prefix="keys/")["Contents"]
    ]
    assert keys == [f"keys/{run_id}/extract/result"]
    with pytest.raises(ConfigError):
        store.put(run_id, "../escape", 1)


def test_s3_output_store_is_an_instance_config_plugin(
    endpoint: str, bucket: str, tmp_path: Any
) -> None:
    config = {
        "storage": {"sqlite": {"path": str(tmp_path / "runs.db")}},
        "outputs": {
            "class": "runcore.worker.outputs_s3:S3OutputStore",
            "config": {"bucket": bucket, "endpoint_url": endpoint, "region_name": h.REGION},
        },
    }
    with rc.Instance.from_config(config) as inst:
        assert isinstance(inst.output_store, S3OutputStore)
        assert inst.config_for_workers()["outputs"]["class"].endswith(":S3OutputStore")
    with pytest.raises(ConfigError, match="outputs"):
        rc.Instance.from_config({**config, "outputs": {"path": "x", "class": "a:B"}})


def test_a_missing_bucket_is_an_output_store_error(endpoint: str) -> None:
    store = S3OutputStore("no-such-bucket", endpoint_url=endpoint, region_name=h.REGION)
    with pytest.raises(rc.OutputStoreError, match="no-such-bucket"):
        store.put(str(uuid.uuid4()), "step", 1)


# --- the launcher, driven directly -------------------------------------------------------------


def _started(launcher: EcsRunLauncher, tmp_path: Any) -> rc.InMemoryStorage:
    storage = rc.InMemoryStorage()
    storage.start()
    launcher.start(
        LaunchContext(
            storage=storage,
            resolve_job=lambda run: pytest.fail("the ECS launcher never resolves jobs"),
            output_store=InMemoryOutputStore(),
            instance_config={"storage": {"sqlite": {"path": str(tmp_path / "runs.db")}}},
        )
    )
    return storage


def _starting_run(storage: rc.InMemoryStorage, **tags: str) -> rc.Run:
    run = storage.add_run(
        rc.Run(job_name="quick", code_location=LOCATION, tags=tags, status=RunStatus.NOT_STARTED)
    )
    moved = storage.transition(
        run.run_id, [RunStatus.NOT_STARTED], RunStatus.STARTING, attempt_id=str(uuid.uuid4())
    )
    assert moved is not None
    return moved


def test_constructing_the_launcher_makes_no_aws_call() -> None:
    launcher = EcsRunLauncher(
        cluster="c", task_definition="job:1", endpoint_url="http://127.0.0.1:9"
    )
    assert launcher._client is None
    with pytest.raises(ConfigError, match="cluster"):
        EcsRunLauncher(task_definition="job:1")
    with pytest.raises(ConfigError, match="secrets"):
        EcsRunLauncher(cluster="c", task_definition="job:1", secrets={"DB": "arn:x"})
    with pytest.raises(ConfigError, match="launch_type"):
        EcsRunLauncher(cluster="c", task_definition="job:1", launch_type="LAMBDA")
    with pytest.raises(ConfigError, match="runcore's own"):
        EcsRunLauncher(cluster="c", task_definition="job:1", task_tags={"runcore/x": "1"})


def test_fargate_request_shape_is_accepted_by_ecs(
    endpoint: str, fargate_cluster: str, network: tuple[list[str], list[str]], tmp_path: Any
) -> None:
    subnets, groups = network
    ecs = h.client("ecs", endpoint)
    launcher = EcsRunLauncher(
        cluster=fargate_cluster,
        task_definition={
            "family": "runcore-run",
            "image": "example/etl:1",
            "container_name": "run",
            "cpu": 256,
            "memory": "512",
            "network_mode": "awsvpc",
            "requires_compatibilities": ["FARGATE"],
        },
        launch_type="FARGATE",
        subnets=subnets,
        security_groups=groups,
        assign_public_ip=False,
        run_resources={"cpu": 512, "memory": 1024},
        env={"STAGE": "test"},
        task_tags={"team": "data"},
        code_location_map={LOCATION: "etl.defs:defs"},
        client=h.client("ecs", endpoint),
    )
    storage = _started(launcher, tmp_path)
    run = _starting_run(storage, **{"ecs/memory": "2048"})
    launcher.launch_run(run)

    record = storage.get_worker_record(run.run_id)
    assert record is not None and record.kind == "ecs"
    assert record.attempt_id == run.attempt_id
    assert record.handle["cluster"] == fargate_cluster
    task = ecs.describe_tasks(
        cluster=fargate_cluster, tasks=[record.handle["task_arn"]], include=["TAGS"]
    )["tasks"][0]
    assert task["launchType"] == "FARGATE"
    assert any(a["type"] == "ElasticNetworkInterface" for a in task["attachments"])
    tags = {t["key"]: t["value"] for t in task["tags"]}
    assert tags == {"team": "data", "runcore/run_id": run.run_id, "runcore/job_name": "quick"}
    overrides = task["overrides"]
    assert overrides["cpu"] == "512" and overrides["memory"] == "2048"  # the tag wins
    container = overrides["containerOverrides"][0]
    assert container["name"] == "run"
    assert container["environment"] == [{"name": "STAGE", "value": "test"}]
    command = container["command"]
    assert command[:6] == ["python", "-m", "runcore", "worker", "execute-run", run.run_id]
    assert command[command.index("--attempt") + 1] == run.attempt_id
    assert command[command.index("--code-location") + 1] == "etl.defs:defs"
    assert json.loads(command[command.index("--instance") + 1])["storage"]["sqlite"]

    # The definition is registered once and reused while unchanged.
    arns = ecs.list_task_definitions(familyPrefix="runcore-run")["taskDefinitionArns"]
    again = EcsRunLauncher(
        cluster=fargate_cluster,
        task_definition={
            "family": "runcore-run",
            "image": "example/etl:1",
            "cpu": "256",
            "memory": 512,
            "network_mode": "awsvpc",
            "requires_compatibilities": ["FARGATE"],
        },
        launch_type="FARGATE",
        subnets=subnets,
        security_groups=groups,
        client=h.client("ecs", endpoint),
    )
    _started(again, tmp_path)
    assert again.target().task_definition == arns[-1]
    assert ecs.list_task_definitions(familyPrefix="runcore-run")["taskDefinitionArns"] == arns

    assert launcher.terminate(run.run_id)
    stopped = ecs.describe_tasks(cluster=fargate_cluster, tasks=[record.handle["task_arn"]])
    assert stopped["tasks"][0]["lastStatus"] == "STOPPED"
    assert run.run_id in stopped["tasks"][0]["stoppedReason"]
    health = launcher.check_run_worker_health(run)
    assert health.status is HealthStatus.DEAD and run.run_id in health.reason


def test_secrets_go_into_the_task_definition_only(
    endpoint: str, fargate_cluster: str, network: tuple[list[str], list[str]], tmp_path: Any
) -> None:
    sm = h.client("secretsmanager", endpoint)
    arn = sm.create_secret(Name="runcore/db-password", SecretString="hunter2")["ARN"]
    ecs = h.client("ecs", endpoint)
    launcher = EcsRunLauncher(
        cluster=fargate_cluster,
        task_definition={
            "family": "runcore-secret",
            "image": "example/etl:1",
            "cpu": 256,
            "memory": 512,
            "network_mode": "awsvpc",
            "requires_compatibilities": ["FARGATE"],
        },
        launch_type="FARGATE",
        subnets=network[0],
        security_groups=network[1],
        secrets={"DB_PASSWORD": "runcore/db-password"},  # a name, resolved to its ARN
        endpoint_url=endpoint,
        region_name=h.REGION,
    )
    storage = _started(launcher, tmp_path)
    run = _starting_run(storage)
    request = launcher.run_task_request(run)
    assert "hunter2" not in json.dumps(request) and "DB_PASSWORD" not in json.dumps(request)
    definition = ecs.describe_task_definition(taskDefinition=request["taskDefinition"])
    assert definition["taskDefinition"]["containerDefinitions"][0]["secrets"] == [
        {"name": "DB_PASSWORD", "valueFrom": arn}
    ]


def _register_fargate(ecs: Any, family: str, containers: list[dict[str, Any]]) -> str:
    """A FARGATE task definition registered by hand (not by runcore): its ARN."""
    answer = ecs.register_task_definition(
        family=family,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=containers,
    )
    return str(answer["taskDefinition"]["taskDefinitionArn"])


class _Metadata(http.server.BaseHTTPRequestHandler):
    docs: dict[str, dict[str, Any]] = {}

    def do_GET(self) -> None:
        doc = self.docs.get(self.path.rstrip("/"))
        body = json.dumps(doc).encode()
        self.send_response(200 if doc is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_use_current_ecs_task_config_reads_the_metadata_endpoint(
    endpoint: str,
    fargate_cluster: str,
    network: tuple[list[str], list[str]],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    subnets, groups = network
    ecs = h.client("ecs", endpoint)
    definition = _register_fargate(
        ecs, "daemon", [{"name": "daemon", "image": "example/etl:1", "memory": 512}]
    )
    current = ecs.run_task(
        cluster=fargate_cluster,
        taskDefinition=definition,
        launchType="FARGATE",
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": subnets[:1], "securityGroups": groups}
        },
    )["tasks"][0]
    cluster_arn = ecs.describe_clusters(clusters=[fargate_cluster])["clusters"][0]["clusterArn"]
    _Metadata.docs = {
        "/v4": {"Name": "daemon", "Image": "example/etl:1"},
        "/v4/task": {"Cluster": cluster_arn, "TaskARN": current["taskArn"], "Family": "daemon"},
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv(
            "ECS_CONTAINER_METADATA_URI_V4", f"http://127.0.0.1:{server.server_port}/v4"
        )
        launcher = EcsRunLauncher(
            use_current_ecs_task_config=True,
            run_resources={"cpu": 1024, "memory": 4096},
            client=h.client("ecs", endpoint),
            ec2_client=h.client("ec2", endpoint),
        )
        storage = _started(launcher, tmp_path)
        run = _starting_run(storage)
        request = launcher.run_task_request(run)
        assert request["cluster"] == cluster_arn
        assert request["taskDefinition"] == definition
        # The daemon's task is 256/512; its run tasks are sized by run_resources.
        assert (request["overrides"]["cpu"], request["overrides"]["memory"]) == ("1024", "4096")
        assert request["launchType"] == "FARGATE"
        assert request["overrides"]["containerOverrides"][0]["name"] == "daemon"
        awsvpc = request["networkConfiguration"]["awsvpcConfiguration"]
        assert awsvpc["subnets"] == subnets[:1]
        assert awsvpc["securityGroups"] == groups
        launcher.launch_run(run)  # and moto accepts it
        assert storage.get_worker_record(run.run_id) is not None
    finally:
        server.shutdown()
        thread.join()
    monkeypatch.delenv("ECS_CONTAINER_METADATA_URI_V4")
    no_metadata = EcsRunLauncher(use_current_ecs_task_config=True, client=h.client("ecs", endpoint))
    _started(no_metadata, tmp_path)
    with pytest.raises(RunLaunchError, match="ECS_CONTAINER_METADATA_URI_V4"):
        no_metadata.target()


def test_health_checks_describe_at_most_100_tasks_per_call(
    endpoint: str, fargate_cluster: str, network: tuple[list[str], list[str]], tmp_path: Any
) -> None:
    ecs = h.client("ecs", endpoint)
    launcher = EcsRunLauncher(
        cluster=fargate_cluster,
        task_definition={
            "family": "runcore-batch",
            "image": "example/etl:1",
            "cpu": 256,
            "memory": 512,
            "network_mode": "awsvpc",
            "requires_compatibilities": ["FARGATE"],
        },
        launch_type="FARGATE",
        subnets=network[0],
        security_groups=network[1],
        client=ecs,
    )
    calls = h.ApiCalls(ecs)
    storage = _started(launcher, tmp_path)
    runs = [_starting_run(storage) for _ in range(230)]
    for run in runs:
        launcher.launch_run(run)
    assert calls["RunTask"] == 230
    unrecorded = _starting_run(storage)
    other = _starting_run(storage)
    storage.record_worker(
        WorkerRecord(
            run_id=other.run_id, attempt_id=other.attempt_id or "", kind="process", host="elsewhere"
        )
    )
    victim = storage.get_worker_record(runs[7].run_id)
    assert victim is not None
    h.stop_in_backend(
        fargate_cluster,
        victim.handle["task_arn"],
        137,
        "OutOfMemoryError: Container killed due to memory usage",
    )

    healths = launcher.check_workers_health([*runs, unrecorded, other])
    assert calls["DescribeTasks"] == 3
    assert calls.describe_sizes == [100, 100, 30]
    dead = {rid for rid, hl in healths.items() if hl.status is HealthStatus.DEAD}
    assert dead == {runs[7].run_id}
    reason = healths[runs[7].run_id].reason
    assert "OutOfMemoryError" in reason and "exited with code 137" in reason
    assert healths[unrecorded.run_id].status is HealthStatus.UNKNOWN
    assert healths[other.run_id].status is HealthStatus.UNKNOWN
    assert not launcher.terminate(other.run_id)  # not an ECS task: nothing to stop
    for run in runs:
        launcher.terminate(run.run_id)
    assert calls["StopTask"] == 230


def test_run_task_failures_are_retried_then_fail_with_aws_reason(
    endpoint: str, fargate_cluster: str, network: tuple[list[str], list[str]], tmp_path: Any
) -> None:
    launcher = EcsRunLauncher(
        cluster=fargate_cluster,
        task_definition={
            "family": "runcore-retry",
            "image": "example/etl:1",
            "cpu": 256,
            "memory": 512,
            "network_mode": "awsvpc",
            "requires_compatibilities": ["FARGATE"],
        },
        launch_type="FARGATE",
        subnets=network[0],
        security_groups=network[1],
        endpoint_url=endpoint,  # its own client: botocore retries nothing, runcore retries
        region_name=h.REGION,
        run_task_attempts=4,
        retry_initial_wait=0.01,
        retry_max_wait=0.05,
    )
    storage = _started(launcher, tmp_path)
    launcher.target()  # register the definition before faults are injected
    with h.RunTaskFaults(throttles=1, failures=1, empty=1) as faults:
        run = _starting_run(storage)
        launcher.launch_run(run)
    assert faults.calls == 4
    assert storage.get_worker_record(run.run_id) is not None
    with h.RunTaskFaults(throttles=2, failures=2) as faults:
        run = _starting_run(storage)
        with pytest.raises(RunLaunchError, match=r"failed 4 times.*RESOURCE:MEMORY"):
            launcher.launch_run(run)
    assert faults.calls == 4
    assert storage.get_worker_record(run.run_id) is None


# --- capacity providers, the registered definition, MISSING tasks, bad config -----------------


def _fargate_definition(family: str, **changes: Any) -> dict[str, Any]:
    return {
        "family": family,
        "image": "example/etl:1",
        "cpu": 256,
        "memory": 512,
        "network_mode": "awsvpc",
        "requires_compatibilities": ["FARGATE"],
        **changes,
    }


def _fargate_launcher(
    cluster: str, network: tuple[list[str], list[str]], **config: Any
) -> EcsRunLauncher:
    """A launcher of FARGATE tasks in moto's default VPC."""
    if "capacity_provider_strategy" not in config:
        config.setdefault("launch_type", "FARGATE")
    return EcsRunLauncher(cluster=cluster, subnets=network[0], security_groups=network[1], **config)


def test_capacity_provider_strategy_request_shape_is_accepted_by_ecs(
    endpoint: str, fargate_cluster: str, network: tuple[list[str], list[str]], tmp_path: Any
) -> None:
    ecs = h.client("ecs", endpoint)
    strategy = [
        {"capacityProvider": "FARGATE", "weight": 1, "base": 1},
        {"capacityProvider": "FARGATE_SPOT", "weight": 3},
    ]
    launcher = _fargate_launcher(
        fargate_cluster,
        network,
        task_definition=_fargate_definition("runcore-cp"),
        capacity_provider_strategy=strategy,
        assign_public_ip=True,
        client=ecs,
    )
    storage = _started(launcher, tmp_path)
    run = _starting_run(storage, **{"ecs/cpu": "1024"})
    request = launcher.run_task_request(run)
    assert request["capacityProviderStrategy"] == strategy
    assert "launchType" not in request  # RunTask refuses both
    assert request["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "ENABLED"
    assert request["overrides"]["cpu"] == "1024"  # the run's tag
    launcher.launch_run(run)
    record = storage.get_worker_record(run.run_id)
    assert record is not None
    task = ecs.describe_tasks(cluster=fargate_cluster, tasks=[record.handle["task_arn"]])
    assert task["tasks"][0]["capacityProviderName"] == "FARGATE"
    assert task["tasks"][0]["overrides"]["cpu"] == "1024"
    launcher.terminate(run.run_id)


def test_a_task_definition_named_by_arn_is_used_as_it_is(
    endpoint: str, fargate_cluster: str, network: tuple[list[str], list[str]], tmp_path: Any
) -> None:
    ecs = h.client("ecs", endpoint)
    arn = _register_fargate(
        ecs,
        "handmade",
        [
            {"name": "etl", "image": "example/etl:1", "memoryReservation": 256},
            {"name": "sidecar", "image": "example/proxy:1", "memoryReservation": 64},
        ],
    )
    calls = h.ApiCalls(ecs)
    launcher = _fargate_launcher(fargate_cluster, network, task_definition=arn, client=ecs)
    storage = _started(launcher, tmp_path)
    run = _starting_run(storage)
    launcher.launch_run(run)
    assert calls["RegisterTaskDefinition"] == 0
    request = launcher.run_task_request(run)
    assert request["taskDefinition"] == arn
    assert request["overrides"]["containerOverrides"][0]["name"] == "etl"  # the first
    named = EcsRunLauncher(
        cluster=fargate_cluster, task_definition=arn, container_name="sidecar", client=ecs
    )
    _started(named, tmp_path)
    assert named.run_task_request(run)["overrides"]["containerOverrides"][0]["name"] == "sidecar"
    launcher.terminate(run.run_id)


def test_the_task_definition_is_registered_again_only_when_its_config_changes(
    endpoint: str, fargate_cluster: str, network: tuple[list[str], list[str]], tmp_path: Any
) -> None:
    ecs = h.client("ecs", endpoint)
    calls = h.ApiCalls(ecs)
    family = f"runcore-reg-{uuid.uuid4().hex[:6]}"
    sm = h.client("secretsmanager", endpoint)
    secret = sm.create_secret(Name=f"{family}/token", SecretString="s3cr3t-token")["ARN"]

    def resolve(**config: Any) -> str:
        """A new launcher (a daemon restarting with this config): its run tasks' definition."""
        config.setdefault("task_definition", _fargate_definition(family))
        launcher = _fargate_launcher(
            fargate_cluster,
            network,
            client=ecs,
            endpoint_url=endpoint,
            region_name=h.REGION,
            **config,
        )
        storage = _started(launcher, tmp_path)
        run = _starting_run(storage)
        definition = str(launcher.run_task_request(run)["taskDefinition"])
        assert launcher.target().task_definition == definition  # resolved once per launcher
        return definition

    first = resolve()
    assert first.endswith(f"{family}:1") and calls["RegisterTaskDefinition"] == 1
    assert resolve() == first  # unchanged: reused
    assert calls["RegisterTaskDefinition"] == 1
    changes: list[tuple[str, dict[str, Any]]] = [
        ("image", {"task_definition": _fargate_definition(family, image="example/etl:2")}),
        ("container", {"task_definition": _fargate_definition(family, container_name="main")}),
        ("size", {"task_definition": _fargate_definition(family, memory=1024)}),
        ("secrets", {"secrets": {"TOKEN": secret}}),
    ]
    seen = {first}
    for what, config in changes:
        arn = resolve(**dict(config))
        assert arn not in seen, f"a changed {what} registered no new revision"
        seen.add(arn)
        assert resolve(**dict(config)) == arn, f"an unchanged {what} was registered again"
    assert calls["RegisterTaskDefinition"] == 1 + len(changes)
    latest = ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]
    assert latest["containerDefinitions"][0]["secrets"] == [{"name": "TOKEN", "valueFrom": secret}]
    assert latest["containerDefinitions"][0]["name"] == "run"
    # The container's name goes into the run's override; a new family is a new definition.
    other = resolve(task_definition=_fargate_definition(family + "-b", container_name="main"))
    assert other.endswith(f"{family}-b:1")
    # A revision someone else registered later is not runcore's: runcore registers its own.
    ecs.register_task_definition(
        family=family,
        containerDefinitions=[{"name": "run", "image": "hand/made:1", "memoryReservation": 64}],
    )
    again = resolve(secrets={"TOKEN": secret})
    assert again not in seen and again.startswith(latest["taskDefinitionArn"].rsplit(":", 1)[0])


def test_a_missing_task_is_unknown_then_dead_once_its_worker_stops_heartbeating(
    endpoint: str, fargate_cluster: str, network: tuple[list[str], list[str]], tmp_path: Any
) -> None:
    """ECS answers MISSING for a task it does not know (eventual consistency right after
    RunTask; a task stopped long ago). That alone fails no run: the run's heartbeats decide,
    as they do for a task ECS reports RUNNING whose worker went silent."""
    from tests.test_worker_records import Clock

    config = {
        "storage": {"sqlite": {"path": str(tmp_path / "runs.db")}},
        "run_launcher": {
            "class": "runcore.launchers.ecs:EcsRunLauncher",
            "config": {
                "cluster": fargate_cluster,
                "task_definition": _fargate_definition("runcore-missing"),
                "launch_type": "FARGATE",
                "subnets": network[0],
                "security_groups": network[1],
                "endpoint_url": endpoint,
                "region_name": h.REGION,
            },
        },
        "run_monitoring": {
            "worker_heartbeat_interval_seconds": 1,
            "worker_heartbeat_timeout_seconds": 5,
        },
    }
    with rc.Instance.from_config(config) as inst, h.MissingTasks():
        launcher = inst.run_launcher
        assert isinstance(launcher, EcsRunLauncher)
        started = []
        for _ in range(2):  # launched at once (no queue); the worker's part done by hand
            run = inst.submit_run("quick", code_location=LOCATION)
            moved = inst.storage.transition(
                run.run_id, [RunStatus.STARTING], RunStatus.STARTED, attempt_id=run.attempt_id
            )
            assert moved is not None
            assert inst.storage.worker_heartbeat(run.run_id, run.attempt_id or "")
            started.append(moved)
        forgotten, silent = started
        record = inst.storage.get_worker_record(forgotten.run_id)
        assert record is not None
        h.forget_task(fargate_cluster, record.handle["task_arn"])

        healths = launcher.check_workers_health(started)
        assert healths[forgotten.run_id].status is HealthStatus.UNKNOWN
        assert "MISSING" in healths[forgotten.run_id].reason
        assert record.handle["task_arn"] in healths[forgotten.run_id].reason
        assert healths[silent.run_id].status is HealthStatus.RUNNING

        clock = Clock()
        daemon = rc.Daemon(inst, clock=clock)
        calls = h.ApiCalls(launcher.client)
        first = daemon.monitor_once()
        assert first is not None and first.dead_workers == ()
        assert calls.describe_sizes == [2]  # one batched call for both runs
        assert inst.get_run(forgotten.run_id).status is RunStatus.STARTED
        clock.offset = 6  # past worker_heartbeat_timeout_seconds
        later = daemon.monitor_once()
        assert later is not None
        assert set(later.dead_workers) == {forgotten.run_id, silent.run_id}
        gone = inst.get_run(forgotten.run_id)
        assert gone.status is RunStatus.FAILURE and gone.failure_kind is rc.FailureKind.WORKER_DIED
        assert "sent no heartbeat" in (gone.failure_reason or "")
        assert "MISSING" in (gone.failure_reason or "")
        quiet = inst.get_run(silent.run_id)  # ECS said RUNNING; the heartbeats still count
        assert quiet.status is RunStatus.FAILURE
        assert "sent no heartbeat" in (quiet.failure_reason or "")


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"cluster": ""}, "cluster"),
        ({"task_definition": 7}, "task_definition"),
        ({"task_definition": {"family": "f"}}, "image"),
        (
            {"task_definition": {"family": "f", "image": "i", "cpu": "lots"}},
            r"task_definition\.cpu",
        ),
        ({"launch_type": "fargate"}, "launch_type"),
        (
            {"launch_type": "EC2", "capacity_provider_strategy": [{"capacityProvider": "A"}]},
            "not both",
        ),
        ({"capacity_provider_strategy": "FARGATE"}, "capacity_provider_strategy"),
        ({"capacity_provider_strategy": []}, "capacity_provider_strategy"),
        ({"capacity_provider_strategy": [{"weight": 1}]}, r"\[0\]\.capacityProvider"),
        ({"capacity_provider_strategy": [{"capacityProvider": "A", "wieght": 1}]}, "wieght"),
        (
            {"capacity_provider_strategy": [{"capacityProvider": "A", "weight": 1001}]},
            r"\[0\]\.weight",
        ),
        ({"capacity_provider_strategy": [{"capacityProvider": "A", "base": -1}]}, r"\[0\]\.base"),
        (
            {
                "capacity_provider_strategy": [
                    {"capacityProvider": "A", "base": 1},
                    {"capacityProvider": "B", "base": 2},
                ]
            },
            "only one capacity provider may have a base",
        ),
        ({"subnets": "subnet-1"}, "subnets"),
        ({"security_groups": [""]}, "security_groups"),
        ({"assign_public_ip": "yes"}, "assign_public_ip"),
        ({"retry_initial_wait": -1}, "retry_initial_wait"),
        ({"run_resources": {"cpu": 0}}, r"run_resources\.cpu"),
        ({"run_resources": {"gpu": 1}}, "run_resources"),
        ({"run_resources": 512}, "run_resources"),
        ({"env": {"A": 1}}, "env"),
        ({"secrets": ["arn:x"]}, "secrets"),
        ({"task_tags": {"runcore/run_id": "x"}}, "task_tags"),
        ({"code_location_map": {"a": None}}, "code_location_map"),
        ({"command": []}, "command"),
        ({"run_task_attempts": 0}, "run_task_attempts"),
        ({"retry_max_wait": "x"}, "retry_max_wait"),
        ({"container_name": ""}, "container_name"),
        ({"region_name": 5}, "region_name"),
        ({"endpoint_url": ""}, "endpoint_url"),
        ({"use_current_ecs_task_config": "yes"}, "use_current_ecs_task_config"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_field(config: dict[str, Any], named: str) -> None:
    settings = {
        "cluster": "c",
        "task_definition": {"family": "f", "image": "i"},
        **config,
    }
    with pytest.raises(ConfigError, match=named):
        EcsRunLauncher(**settings)
    with pytest.raises(rc.RuncoreError, match=named):  # and through the instance config
        rc.Instance.from_config(
            {
                "storage": {"in_memory": {}},
                "run_launcher": {
                    "class": "runcore.launchers.ecs:EcsRunLauncher",
                    "config": settings,
                },
            }
        )
