"""Run the runcore vs Dagster benchmark suite and write RESULTS.md.

Every measurement runs in a fresh ``python benchmarks/worker.py IMPL CASE PARAMS`` process, so
imports, caches and open databases never leak from one measurement into another; this parent
imports neither runcore nor Dagster.

    python benchmarks/run.py                      # everything, writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick              # smoke test: fewer repetitions, smaller sizes
    python benchmarks/run.py --only execute       # rows whose name or case key contains it
    python benchmarks/run.py --dagster-skip-slow  # extrapolate / skip the slowest Dagster cases
    python benchmarks/run.py --only postgres      # the PostgreSQL rows: their section only

The PostgreSQL rows (runcore's ``PostgresStorage`` beside dagster-postgres, on the server
``$RUNCORE_BENCH_POSTGRES_URL`` or ``$RUNCORE_TEST_POSTGRES_URL`` names) have their own section
of RESULTS.md, between ``<!-- postgres:start -->`` and ``<!-- postgres:end -->``: a run that
selects none of them keeps it as it is, and a run selecting only them rewrites only it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from _harness import postgres_server, postgres_url
from _report import Line, Outcome, evaluate, render, verdict
from _specs import (
    ADMISSION_RUNS,
    BARE_POSTGRES,
    BARE_PYTHON,
    BARE_SQLITE,
    CONTEXT_CASES,
    DAGSTER_DRAIN_RUNS,
    LAUNCH_RUNS,
    MEMORY_RUNS,
    Case,
    Row,
    Side,
    all_rows,
    is_postgres,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_SRC = BENCH_DIR.parent / "src"
WORKER = BENCH_DIR / "worker.py"
RESULT_PREFIX = "BENCH_RESULT "
WORKER_TIMEOUT = 1800.0
IMPLS = ("runcore", "dagster")

NOTES = [
    "Each figure comes from a fresh worker process; times are medians over the repetitions "
    "listed under *Measurement details*, taken after warm-up calls (imports excluded); storage "
    "rates are the median of 3 trials (min and max listed there too).",
    "*ratio* is how many times better runcore is: Dagster time / runcore time, or runcore "
    "rate / Dagster rate. Speed-up targets are judged on it; other targets on runcore's figure.",
    "*import* is the wall time of a fresh `python -c 'import X'`, nothing subtracted; the bare "
    "interpreter start-up (`python -c pass`) is listed under *machine*.",
    "Job shapes: *1 op*; *20-op chain* `op_0 -> ... -> op_19`; *100-op fan-out* = one `source` "
    "op plus 99 ops that each take `source`'s output. Op bodies return a constant or add one.",
    "*in-memory*: `job.execute_in_process()` with no instance (runcore: ephemeral in-memory "
    "instance; Dagster: ephemeral instance). *SQLite*: one SQLite-backed instance on a temp dir, "
    "created once and reused for every repetition (runcore: "
    "`Instance.from_config({'storage': {'sqlite': ...}})`; Dagster: `DagsterInstance.local_temp`, "
    "its default SQLite run/event storage).",
    "*multiprocess*: runcore `MultiprocessExecutor(max_concurrent=2)` via "
    "`execute_in_process(instance=<sqlite instance>)`, median of 5 after a warm-up (its workers "
    "are forked per run); Dagster `multiprocess_executor` (`max_concurrent: 2`) via `execute_job` "
    "on a persistent SQLite instance, one cold execution (a step process costs ~1 s).",
    "With `--dagster-skip-slow`, Dagster's multiprocess fan-out runs on 10 ops and its time is "
    "scaled x10 (per step, linear), marked *extrapolated*; Dagster's 100,000-run query is skipped.",
    "Storage: runcore `SqliteStorage` vs Dagster's default SQLite storages through "
    "`DagsterInstance` (`add_run`, `store_event`, `get_run_records`). Events are LOG events "
    "of one run. The events/s target applies to `store_event`, one event per transaction "
    "(Dagster's figure is the same call); batch rows are informational, Dagster's "
    "`store_event_batch` on SQLite stores events one by one.",
    "Durability differs: runcore's SQLite connections use WAL with `synchronous=NORMAL` (no "
    "fsync per commit: safe across process crashes, the last commits can be lost on power loss "
    "or an OS crash); Dagster's keep SQLite's default `synchronous=FULL`. Single-commit write "
    "rates depend on it: see *bare sqlite3* under *machine* for what this disk allows each way.",
    "8 writers: 8 processes (spawned, then released together by a barrier) write events of "
    "the same run, so all share one SQLite file (runcore's `runs.db`, Dagster's per-run event "
    "shard). A call failing with 'database is locked' is counted, not retried.",
    "Query: the run table is filled with N runs over 10 job names, statuses cycling "
    "SUCCESS/FAILURE/STARTED/CANCELED and tag `team` cycling a..e (plus `env`), so 1 run in 20 "
    "matches `RunsFilter(statuses=[SUCCESS], tags={'team': 'a'})`; the query takes limit 100. "
    "runcore fills with `add_runs`; Dagster's fill inserts rows built by its own run storage "
    "into its tables in large transactions (untimed: `add_run` would take minutes).",
    "Queued coordination, both on SQLite. runcore: `Instance.from_config` with "
    "`runcore.coordinators:QueuedRunCoordinator` and `runcore.testing:RecordingLauncher` "
    "(launches nothing; a launched run stays STARTING), passes by `Daemon(instance)."
    "dequeue_once()`. Dagster: `QueuedRunCoordinator` and a `RunLauncher` whose `launch_run` "
    "does nothing (`dagster_jobs.NoopRunLauncher`), limits under `concurrency:` in "
    "`dagster.yaml`, passes by `QueuedRunCoordinatorDaemon.run_iteration` (defaults: page size "
    "100, no threads) on a workspace built as Dagster's daemon tests build it "
    "(`create_test_daemon_workspace_context`) over an in-process code location holding the "
    "jobs. Jobs: `plain` (one op, no pool) and one one-op job per pool.",
    "Enqueue: runcore `Instance.submit_run(job, tags)` (stores the run, then moves it to "
    "QUEUED); Dagster `create_run_for_job` with the job's origins, then "
    "`instance.submit_run(run_id, workspace)` (its enqueued event opens a new per-run event "
    "shard, a SQLite file). The issue sets no enqueue target: 500/s (informational) is the "
    "launch-rate target, so enqueueing keeps pace with launching.",
    "Blocked queue: 50 tag limits (20 on a key alone, limit 2; 20 on key=value, limit 2; 10 "
    "per unique value, limit 1, 5 values each) and 20 pools (limit 2, granularity `run`); 170 "
    "in-progress runs fill every limit, every unique-value bucket and every pool (runcore: "
    "submitted and launched by a dequeue pass; Dagster: inserted in bulk as STARTING, copies "
    "of runs made by `create_run_for_job`); then N queued runs, each held by one full key-only "
    "limit, key=value limit, unique-value bucket or pool in turn, and carrying 3 free-form "
    "tags besides (one names a limited key with a value its limit does not cover). "
    "`max_concurrent_runs` is -1, so every queued run goes through the tag and pool checks. "
    "Each pass must launch nothing; afterwards one free run is submitted and must start on the "
    "next pass. The daemon's instance is opened after the fill: the *first pass* loads the "
    "queue (runcore caches each queued run's admission data; Dagster caches nothing but logs "
    "each pool-held run once), *steady pass* is the median of the passes after it.",
    "The target (< 50 ms) binds the steady pass at 10,000 queued runs: the daemon repeats it "
    "every interval; the first pass, once per daemon start, is shown against it for "
    "information. Dagster's 10,000-run pass is the median of 3 after a warm-up; "
    "`--dagster-skip-slow` skips it.",
    "Held by `max_concurrent_runs`: the same 10,000-run queue with `max_concurrent_runs` = 170, "
    "the in-progress count. Dagster returns before it reads the queue; runcore reads the "
    "queue's ids (and, on its first pass, every queued run's admission data) before its "
    "admission stops at the first run.",
    f"Drain: N queued runs of `plain` with free-form tags only, no limits; passes until none is "
    f"left (one pass launches them all, in both). runcore: 10,000 runs, median of 3 fills and "
    f"drains; Dagster: {DAGSTER_DRAIN_RUNS} runs, created and submitted one by one beforehand "
    "(untimed, ~10/s), one drain. Runs launched / drain time.",
    "Launch latency (*launch:* rows): per run, the wall clock just before "
    "`instance.submit_run(job)`, and the timestamp of the run's STEP_START event, read back "
    "from storage once the run has ended; the latency is the difference. SQLite instance on a "
    "temp dir; job `runcore_launch_jobs.single` (one op returning 1), code location "
    "`runcore_launch_jobs:defs` (a module importing only runcore); 2 untimed warm-up runs, "
    f"then {LAUNCH_RUNS} runs one at a time, each waited for (and its worker process reaped) "
    "before the next. p99 is interpolated between the two nearest ranks (of 50: the 49th and "
    "50th smallest); the p99 rows are informational, "
    "shown against the median's bound. *submit_ms* under *Measurement details*: the median "
    "`submit_run` call itself.",
    "Launchers: *thread pool* `runcore.launchers:ThreadPoolRunLauncher` (8 threads); *code "
    "server* a `python -m runcore code-server --location runcore_launch_jobs:defs --port 0 "
    "--max-workers 8` process started by the case (its port read from its 'listening on' "
    "line, stopped by its Shutdown RPC), the instance sending non-isolated runs to it "
    "(`non_isolated_runs`: `CodeServerRunLauncher`, `max_concurrent_runs: -1`), runs tagged "
    "`runcore/isolation: non_isolated`; *subprocess warm* `SubprocessRunLauncher(warm_workers=2, "
    "preload=['runcore_launch_jobs:defs'])`: before each submit the case waits until both warm "
    "workers are ready (imports, preload and storage done, asleep reading their run id; "
    "`/proc/PID/wchan`) and checks that the run went to one of them, so every run measures a "
    "ready warm worker; *subprocess cold* the SQLite default, `SubprocessRunLauncher()`: a fresh "
    "`python -m runcore worker execute-run` process per run.",
    "Dagster's launch figures, same 1-op job (`dagster_launch_jobs.single`), same latency "
    "definition (STEP_START timestamp minus the clock before the launch), 1 untimed warm-up "
    "then 5 runs, median. Cold path: `python -m dagster job execute -f dagster_launch_jobs.py "
    "-j single` (a fresh process; Dagster's default multiprocess executor runs the op in a "
    "step process), persistent `DAGSTER_HOME` in a temp dir with defaults; *wall_ms* is the "
    "whole command. It faces runcore's cold subprocess (target >= 10x). DefaultRunLauncher, "
    "code server up: `DefaultRunCoordinator` (1.13 defaults to the queued coordinator, which "
    "waits for a daemon) and the default `DefaultRunLauncher`, a workspace "
    "(`WorkspaceProcessContext`) whose code location is served by a gRPC code server process "
    "it starts; per run `create_run_for_job` + `instance.submit_run(run_id, workspace)`, and "
    "the code server starts one run process per run. Dagster has no launcher that runs a run "
    "on a thread of a running process: this, its launch path with the code already loaded, "
    "is the figure beside the thread pool, code server and warm rows (their targets are "
    "absolute; the ratio is for information).",
    f"Code server memory: a code server with `--max-workers {MEMORY_RUNS}`; one run through "
    "`CodeServerRunLauncher` as a warm-up, then its resident set size (psutil, 0.5 s after); "
    f"then {MEMORY_RUNS} non-isolated runs of `runcore_launch_jobs.sleepy` (its op waits for "
    "a cancel); once all have started their step, its RSS again (0.5 s after). (RSS with - RSS "
    f"idle) / {MEMORY_RUNS}, in KiB; then every run is canceled and must end CANCELED. "
    "runcore only: a Dagster run is a process of its own.",
]


PG_NOTES = [
    "Same server for both: runcore `PostgresStorage` (psycopg 3, its pool) in a fresh schema "
    "per measurement, dropped afterwards; Dagster `DagsterInstance` whose `dagster.yaml` puts "
    "its run, event log and schedule storages on dagster-postgres (`storage: postgres: "
    "postgres_url`, through psycopg2, the driver dagster-postgres is written for) in a fresh "
    "database per measurement, dropped afterwards. Both with their defaults: Dagster's "
    "storages open a connection per operation (SQLAlchemy `NullPool`, its default outside the "
    "webserver), runcore's keep a pool.",
    "The server's fsync is on and `synchronous_commit` is `on`: every commit waits for the "
    "disk, so single-commit rates (`add_run`, `store_event`: one transaction per call) are "
    "bound by what the disk allows (see *bare psycopg* under *machine*, measured in the same "
    "run) for both libraries; their speed-up target (>= 5x) is informational. The binding "
    "targets are the batched and per-call figures: >= 5x dagster-postgres, query < 2 ms at "
    "1,000,000 runs, >= 1,000 admissions/s with two daemons.",
    "Batched rows: runcore `add_runs` / `store_events` with 100 per call (one transaction, "
    "rows sent pipelined) against Dagster's own way to write the same things: it has no batch "
    "run insert (its figure is `add_run`'s), and dagster-postgres's `store_event_batch` takes "
    "asset materializations and observations only, so LOG events go through `store_event` one "
    "by one (what a Dagster user writing them gets).",
    "8 writers: 8 processes (spawned, released together by a barrier) write LOG events of the "
    "same run into the same schema / database. Total events over the time from the first "
    "start to the last end; median of 3 trials.",
    "Query: the SQLite rows' fill (N runs over 10 job names, statuses cycling "
    "SUCCESS/FAILURE/STARTED/CANCELED, tag `team` cycling a..e, plus `env`), then `VACUUM "
    "ANALYZE` and a `CHECKPOINT` (untimed, both sides: what autovacuum and the checkpointer do "
    "soon after a bulk load, so the timed calls meet a settled server); "
    "`get_run_records(RunsFilter(statuses=[SUCCESS], tags={'team': 'a'}), limit=100)`, median "
    "after warm-ups. runcore fills with `add_runs`, 1,000 a call; Dagster's fill writes rows "
    "built by its own run storage (`_get_run_insertion_values`, reused for runs of the same "
    "job with their own id, status and body) in transactions of 5,000 runs. With "
    "`--dagster-skip-slow` Dagster's 1,000,000-run query is skipped (its fill alone takes "
    "over ten minutes).",
    "Dequeue pass: the SQLite rows' blocked-queue workload (50 tag limits, 20 pools, 170 runs "
    "in progress filling them, N queued runs each held). The in-progress runs are submitted "
    "and launched by a pass as on SQLite; the N queued runs are bulk-inserted as QUEUED "
    "(runcore: copies of one run per job made by `Instance.create_run`, through `add_runs`; "
    "Dagster: copies of runs made by `create_run_for_job`, as on SQLite), since submitting "
    "100,000 runs one commit each would take many minutes. Steady pass: median after the first "
    "pass; Dagster's passes: 3 after a warm-up. `--dagster-skip-slow` skips Dagster's "
    "100,000-run pass.",
    f"Admissions: {ADMISSION_RUNS:,} runs of `plain` (no limits) bulk-inserted as QUEUED; "
    "then 2 processes, each with its own runcore instance on the schema (queued "
    "coordinator, `runcore.testing:RecordingLauncher`), released together, each run "
    "`Daemon(instance).dequeue_once()` until a pass finds the queue empty. Admitted runs / "
    "time from the first start to the last end, median of 3 fills and races. Checked: every "
    "run STARTING and launched by exactly one daemon. A pass starts its runs 100 per "
    "transaction (`start_runs`: each still a compare-and-set; rows another daemon is moving "
    "are skipped, not waited for) and writes the launcher's placeholder worker records in one "
    "more. *lost_races* counts the starts that found a run already taken by the other daemon.",
    "Dagster's admissions figure is n/a: Dagster supports one `dagster-daemon` per deployment "
    "(a second one logs 'multiple daemon processes running at once, which is not "
    "supported'), and its queued-run daemon checks a run is QUEUED and then launches it with "
    "no lock or compare-and-set between, so two racing would be an unsupported setup that "
    "can launch a run twice, not a figure to compare with. Its one-daemon launch rate is the "
    "SQLite table's *drain* row.",
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only rows whose name or case key contains this")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sizes")
    parser.add_argument(
        "--dagster-skip-slow",
        action="store_true",
        help="measure Dagster's multiprocess fan-out on 10 ops and extrapolate; "
        "skip Dagster's 100,000-run query",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    return parser.parse_args(argv)


def worker_env() -> dict[str, str]:
    """The workers' environment: ours, plus ``src/`` on the path if runcore is not installed."""
    env = dict(os.environ)
    if _probe_runcore(env) is None and REPO_SRC.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_SRC), env.get("PYTHONPATH")]))
    return env


def _probe_runcore(env: dict[str, str]) -> str | None:
    """runcore's version and location as the workers see them, or None if it does not import."""
    code = "import runcore; print(runcore.__version__, runcore.__file__)"
    probe = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def _git_commit() -> str:
    """The repository's current commit (with ``+dirty`` for local changes), if any."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no commit yet)"
    return head + ("+dirty" if dirty else "")


def run_worker(impl: str, case: str, params: dict[str, Any], env: dict[str, str]) -> Outcome:
    """Run one worker process and parse its result line."""
    cmd = [sys.executable, str(WORKER), impl, case, json.dumps(params)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            cwd=BENCH_DIR,
            timeout=WORKER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Outcome(error=f"timed out after {WORKER_TIMEOUT:.0f} s", seconds=WORKER_TIMEOUT)
    seconds = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return Outcome(metrics=json.loads(line[len(RESULT_PREFIX) :]), seconds=seconds)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
    return Outcome(error=f"exit code {proc.returncode}\n{tail}", seconds=seconds)


def scale(outcome: Outcome, factor: float, small: int) -> Outcome:
    """Extrapolate a small run's figures linearly by ``factor``."""
    for measurement in outcome.metrics.values():
        measurement["value"] *= factor
        measurement["measured_value"] = measurement["value"] / factor
    outcome.extrapolated_from = small
    return outcome


def run_side(
    case: Case, impl: str, side: Side, args: argparse.Namespace, env: dict[str, str]
) -> Outcome:
    """Run one implementation of a case, honouring ``--dagster-skip-slow``."""
    params = side.resolve(args.quick)
    plan = case.dagster_slow if impl == "dagster" and args.dagster_skip_slow else None
    if plan is None:
        return run_worker(impl, case.case, params, env)
    if plan.params is None:
        return Outcome(skipped="--dagster-skip-slow")
    small = {**params, **plan.params}
    outcome = run_worker(impl, case.case, small, env)
    if outcome.error:
        return outcome
    factor = params[plan.scale_key] / small[plan.scale_key]
    return scale(outcome, factor, small[plan.scale_key])


def log(text: str) -> None:
    """Progress on stderr."""
    print(text, file=sys.stderr, flush=True)


def run_cases(
    cases: list[Case], args: argparse.Namespace, env: dict[str, str]
) -> dict[tuple[str, str], Outcome]:
    """Run every case for runcore, then Dagster; return outcomes by (case key, impl)."""
    outcomes: dict[tuple[str, str], Outcome] = {}
    for number, case in enumerate(cases, 1):
        for impl in IMPLS:
            side: Side | None = getattr(case, impl)
            if side is None:
                continue
            log(f"[{number}/{len(cases)}] {case.key} / {impl} ...")
            outcome = run_side(case, impl, side, args, env)
            outcomes[case.key, impl] = outcome
            if outcome.skipped:
                log(f"    skipped ({outcome.skipped})")
                continue
            status = "ERROR" if outcome.error else "ok"
            log(f"    {status} in {outcome.seconds:.1f} s {json.dumps(outcome.metrics)}")
            if outcome.error:
                log(outcome.error)
    return outcomes


def select(rows: list[Row], only: str | None) -> list[Row]:
    """Rows matching ``--only`` (case-insensitive substring of the name or case key)."""
    if not only:
        return rows
    needle = only.lower()
    return [r for r in rows if needle in r.name.lower() or needle in r.case.key.lower()]


def unique_cases(rows: list[Row]) -> list[Case]:
    """The context cases the rows need, then the cases the rows read, in order, each once."""
    contexts = [*(CONTEXT_CASES if any(not is_postgres(r) for r in rows) else ())]
    contexts += [BARE_POSTGRES] if any(is_postgres(r) for r in rows) else []
    cases = {case.key: case for case in contexts}
    for row in rows:
        cases.setdefault(row.case.key, row.case)
        cases.setdefault(row.dagster_case.key, row.dagster_case)
    return list(cases.values())


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> str:
    """The 1/5/15-minute load averages, to show whether other work shared the machine."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_info(
    args: argparse.Namespace,
    outcomes: dict[tuple[str, str], Outcome],
    env: dict[str, str],
    load_before: str,
) -> dict[str, str]:
    """The machine and software the figures were taken on."""
    info = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu count": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "dagster": _version("dagster"),
        "runcore": _probe_runcore(env) or "does not import",
        "runcore commit": _git_commit(),
        "load average 1/5/15 min": f"{load_before} before, {_load()} after",
        "command": " ".join(["python benchmarks/run.py", *sys.argv[1:]]),
    }
    bare = outcomes.get((BARE_PYTHON.key, "runcore"))
    if bare and bare.metrics:
        info["`python -c pass`"] = f"{bare.metrics['time']['value']:.1f} ms (median)"
    disk = outcomes.get((BARE_SQLITE.key, "runcore"))
    if disk and disk.metrics:
        info["bare sqlite3, 1-row commits, WAL"] = (
            f"{disk.metrics['normal']['value']:,.0f}/s with `synchronous=NORMAL`, "
            f"{disk.metrics['full']['value']:,.0f}/s with `synchronous=FULL`"
        )
    if args.quick:
        info["mode"] = "--quick: smoke-test sizes and repetitions, not for comparison"
    return info


def postgres_info(
    args: argparse.Namespace,
    outcomes: dict[tuple[str, str], Outcome],
    env: dict[str, str],
    load_before: str,
) -> dict[str, str]:
    """The machine, the PostgreSQL server and the drivers the PostgreSQL rows ran with."""
    info = machine_info(args, outcomes, env, load_before)
    server = postgres_server()
    info["postgresql server"] = (
        f"{server.get('server_version', '?')} at {postgres_url()} (same machine, loopback)"
    )
    info["server settings"] = ", ".join(
        f"`{key}={server[key]}`"
        for key in ("fsync", "synchronous_commit", "wal_sync_method", "commit_delay")
        if key in server
    )
    info["drivers"] = ", ".join(
        f"{dist} {_version(dist)}"
        for dist in ("dagster-postgres", "psycopg", "psycopg-pool", "psycopg2-binary")
    )
    bare = outcomes.get((BARE_POSTGRES.key, "runcore"))
    if bare and bare.metrics:
        info["bare psycopg, 1-row commits"] = f"{bare.metrics['commits']['value']:,.0f}/s"
    return info


def main(argv: list[str]) -> int:
    """Run the selected benchmarks, write the report; exit 1 if a worker failed."""
    args = parse_args(argv)
    rows = select(all_rows(), args.only)
    if not rows:
        log(f"no benchmark matches --only {args.only!r}")
        return 2
    load_before = _load()
    env = worker_env()
    outcomes = run_cases(unique_cases(rows), args, env)
    lines: list[Line] = []
    for row in rows:
        runcore = outcomes.get((row.case.key, "runcore"))
        dagster = outcomes.get((row.dagster_case.key, "dagster"))
        lines.append(evaluate(row, runcore, dagster))
    errors = {
        f"{key} / {impl}": outcome.error
        for (key, impl), outcome in outcomes.items()
        if outcome.error
    }
    main_lines = [line for line in lines if not is_postgres(line.row)]
    pg_lines = [line for line in lines if is_postgres(line.row)]
    main = postgres = None
    if main_lines:
        main_errors = {k: v for k, v in errors.items() if not k.startswith("postgres/")}
        main = render(
            main_lines, machine_info(args, outcomes, env, load_before), main_errors, NOTES
        )
    if pg_lines:
        pg_errors = {k: v for k, v in errors.items() if k.startswith("postgres/")}
        postgres = render(
            pg_lines,
            postgres_info(args, outcomes, env, load_before),
            pg_errors,
            PG_NOTES,
            title="## PostgreSQL: runcore `PostgresStorage` vs dagster-postgres",
        )
    args.out.write_text(compose(args.out, main, postgres))
    for line in lines:
        log(f"{verdict(line):>8}  {line.row.name}: {line.runcore_cell} vs {line.dagster_cell}")
    log(f"wrote {args.out}")
    return 1 if errors else 0


#: Sections of RESULTS.md between markers, after the main report, in this order: the
#: PostgreSQL rows (written by this script) and the ECS calls (``ecs_calls.py``).
SECTIONS = ("postgres", "ecs_calls")


def _marked(name: str, body: str) -> str:
    return f"<!-- {name}:start -->\n{body.strip()}\n<!-- {name}:end -->"


def _section(text: str, name: str) -> str:
    """The marked section ``name`` of ``text`` (markers included), or ``""``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        return ""
    return text[text.index(start) : text.index(end) + len(end)]


def compose(path: Path, main: str | None, postgres: str | None) -> str:
    """RESULTS.md with the parts this run wrote (``None``: not run) and the rest kept as it
    was: the main report before the first marked section, then the marked sections."""
    old = path.read_text() if path.exists() else ""
    if main is None:
        first = min(
            (old.index(f"<!-- {n}:start -->") for n in SECTIONS if _section(old, n)),
            default=len(old),
        )
        main = old[:first]
    sections = {name: _section(old, name) for name in SECTIONS}
    if postgres is not None:
        sections["postgres"] = _marked("postgres", postgres)
    parts = [main.strip(), *(body for body in sections.values() if body)]
    return "\n\n".join(part for part in parts if part) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
