"""AWS API calls per run of EcsRunLauncher, at 10, 100 and 1,000 concurrent runs.

Moto's AWS API server (``ThreadedMotoServer``, loopback, free port) plays ECS; a SQLite
instance with the queued coordinator and ``EcsRunLauncher`` (FARGATE, awsvpc, the launcher's
own boto3 client pointed at moto) launches N runs of ``runcore_launch_jobs:single``. Nothing
executes the tasks: they stay RUNNING (moto's state manager set to manual), so every run stays
in progress while run monitoring passes over all N of them. Counted on the launcher's client
(botocore's ``before-parameter-build`` event): RunTask while dequeue passes launch the N runs,
DescribeTasks over ``--passes`` monitoring passes, StopTask while all N are canceled.

The claim checked: DescribeTasks calls per monitoring pass = ceil(N / 100), never N.

    pip install -e '.[ecs,test]'
    python benchmarks/ecs_calls.py                  # 10, 100, 1000; writes a RESULTS.md section
    python benchmarks/ecs_calls.py --sizes 10 100 --no-write

The section goes between the ``ecs_calls`` markers of ``RESULTS.md``; ``run.py`` keeps it
when it rewrites the rest of the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REGION = "us-east-1"
START, END = "<!-- ecs_calls:start -->", "<!-- ecs_calls:end -->"


class Calls:
    """ECS calls of one boto3 client by operation, and the tasks per DescribeTasks."""

    def __init__(self, client: Any) -> None:
        self.counts: dict[str, int] = {}
        self.describe_sizes: list[int] = []
        client.meta.events.register("before-parameter-build.ecs.*", self._count)

    def _count(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.counts[model.name] = self.counts.get(model.name, 0) + 1
        if model.name == "DescribeTasks":
            self.describe_sizes.append(len(params.get("tasks", [])))

    def take(self) -> tuple[dict[str, int], list[int]]:
        counts, sizes = self.counts, self.describe_sizes
        self.counts, self.describe_sizes = {}, []
        return counts, sizes


def _moto() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        os.environ.setdefault(key, value)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    body = {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}}
    request = urllib.request.Request(
        endpoint + "/moto-api/state-manager/set-transition",
        method="POST",
        data=json.dumps(body).encode(),
    )
    urllib.request.urlopen(request, timeout=10).read()
    return server, endpoint


def _network(endpoint: str) -> tuple[list[str], list[str]]:
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=REGION)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    vpc_filter = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=vpc_filter)["Subnets"]]
    group = ec2.describe_security_groups(
        Filters=[*vpc_filter, {"Name": "group-name", "Values": ["default"]}]
    )["SecurityGroups"][0]["GroupId"]
    return subnets[:2], [group]


def measure(
    endpoint: str, n: int, passes: int, network: tuple[list[str], list[str]]
) -> dict[str, Any]:
    import boto3

    import runcore as rc

    cluster = f"bench-{n}"
    boto3.client("ecs", endpoint_url=endpoint, region_name=REGION).create_cluster(
        clusterName=cluster
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "storage": {"sqlite": {"path": os.path.join(tmp, "runs.db")}},
            "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
            "run_launcher": {
                "class": "runcore.launchers.ecs:EcsRunLauncher",
                "config": {
                    "cluster": cluster,
                    "task_definition": {
                        "family": "runcore-bench",
                        "image": "etl:1",
                        "cpu": 256,
                        "memory": 512,
                        "network_mode": "awsvpc",
                        "requires_compatibilities": ["FARGATE"],
                    },
                    "launch_type": "FARGATE",
                    "subnets": network[0],
                    "security_groups": network[1],
                    "endpoint_url": endpoint,
                    "region_name": REGION,
                },
            },
            # Runs stay STARTING (no task executes): keep monitoring from timing them out.
            "run_monitoring": {"enabled": True, "start_timeout_seconds": 3600},
        }
        with rc.Instance.from_config(config) as inst:
            calls = Calls(inst.run_launcher.client)  # type: ignore[attr-defined]
            daemon = rc.Daemon(inst)
            for _ in range(n):
                inst.submit_run("single", code_location="runcore_launch_jobs:defs")
            started = time.perf_counter()
            while inst.get_run_records(rc.RunsFilter(statuses=[rc.RunStatus.QUEUED]), limit=1):
                daemon.dequeue_once()
            launch_s = time.perf_counter() - started
            launched, _ = calls.take()
            starting = inst.get_run_records(rc.RunsFilter(statuses=[rc.RunStatus.STARTING]))
            assert len(starting) == n, f"{len(starting)} of {n} runs launched"
            pass_times = []
            for _ in range(passes):
                t0 = time.perf_counter()
                result = daemon.monitor_once()
                pass_times.append(time.perf_counter() - t0)
                assert result is not None and not result.dead_workers, result
            monitored, sizes = calls.take()
            t0 = time.perf_counter()
            for record in starting:
                inst.cancel_run(record.run.run_id)
            cancel_s = time.perf_counter() - t0
            canceled, _ = calls.take()
    describe = monitored.get("DescribeTasks", 0)
    return {
        "runs": n,
        "run_task_per_run": launched.get("RunTask", 0) / n,
        "other_launch_calls": {k: v for k, v in launched.items() if k != "RunTask"},
        "describe_per_pass": describe / passes,
        "expected_per_pass": math.ceil(n / 100),
        "max_tasks_per_describe": max(sizes, default=0),
        "describe_per_run_per_pass": describe / passes / n,
        "stop_task_per_run": canceled.get("StopTask", 0) / n,
        "launch_s": launch_s,
        "monitor_pass_ms": sorted(pass_times)[len(pass_times) // 2] * 1000,
        "cancel_s": cancel_s,
    }


def render(rows: list[dict[str, Any]], passes: int) -> str:
    import boto3
    import moto

    lines = [
        START,
        "## ECS launcher: AWS API calls per run",
        "",
        f"`python benchmarks/ecs_calls.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        ", "
        f"{os.cpu_count()} cpus, Python {platform.python_version()}, moto {moto.__version__} "
        f"(server mode, loopback), boto3 {boto3.__version__}. FARGATE run tasks that nothing "
        f"executes, so all N runs stay in progress; {passes} monitoring passes. See the script's "
        "docstring for the method.",
        "",
        "| concurrent runs | RunTask / run | DescribeTasks / monitor pass | ceil(N/100) "
        "| tasks / DescribeTasks (max) | StopTask / run (cancel) | launch N runs | monitor pass "
        "(median) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['runs']:,} | {row['run_task_per_run']:.2f} | {row['describe_per_pass']:.0f} "
            f"| {row['expected_per_pass']} | {row['max_tasks_per_describe']} "
            f"| {row['stop_task_per_run']:.2f} | {row['launch_s']:.2f} s "
            f"| {row['monitor_pass_ms']:.1f} ms |"
        )
    ok = all(r["describe_per_pass"] == r["expected_per_pass"] for r in rows)
    lines += [
        "",
        f"DescribeTasks per monitoring pass {'grows as' if ok else 'does NOT grow as'} "
        "ceil(runs / 100): one call per 100 tasks, not one per run. The only other launch-time "
        "calls are the task definition's, once per launcher: "
        + "; ".join(f"{r['runs']:,} runs: {r['other_launch_calls'] or 'none'}" for r in rows)
        + ". Times are moto's and this machine's, not AWS's (a monitoring pass is mostly moto "
        "answering its DescribeTasks calls): the call counts are the figures.",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH_DIR))  # runcore_launch_jobs, the code location
    server, endpoint = _moto()
    try:
        network = _network(endpoint)
        rows = []
        for n in args.sizes:
            row = measure(endpoint, n, args.passes, network)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        server.stop()
    section = render(rows, args.passes)
    print(section)
    if not args.no_write:
        write_section(args.out, section)
    return 0 if all(r["describe_per_pass"] == r["expected_per_pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
