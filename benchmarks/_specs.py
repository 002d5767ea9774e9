"""The benchmark catalogue: which cases run, with which sizes, and the targets they are held to.

A :class:`Case` is one worker invocation per implementation (``worker.py IMPL CASE PARAMS``);
a :class:`Row` is one line of RESULTS.md, reading one metric of one case. Several rows may read
the same case (the concurrent-writer case yields both a rate and a locked-error count).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

TargetKind = Literal["speedup", "max", "min", "zero", "none"]


@dataclass(frozen=True)
class Target:
    """What a row must show: a speedup over Dagster, or a bound on runcore's own figure
    (``none``: nothing, the row is for information).

    ``binding=False`` marks an informational row: its check is shown in parentheses and does
    not count as a miss.
    """

    kind: TargetKind
    value: float = 0.0
    unit: str = ""
    binding: bool = True

    def text(self) -> str:
        """The target as shown in the table."""
        if self.kind == "speedup":
            body = f">= {self.value:g}x faster"
        elif self.kind == "max":
            body = f"< {self.value:g} {self.unit}"
        elif self.kind == "min":
            body = f">= {self.value:,.0f}{self.unit}"
        elif self.kind == "none":
            return "none (info)"
        else:
            body = "0"
        return body if self.binding else f"{body} (info)"

    def met(self, runcore: float | None, ratio: float | None) -> bool | None:
        """Whether the figures meet the target; ``None`` when a needed figure is missing or
        there is no target."""
        if self.kind == "none":
            return None
        if self.kind == "speedup":
            return None if ratio is None else ratio >= self.value
        if runcore is None:
            return None
        if self.kind == "max":
            return runcore < self.value
        if self.kind == "min":
            return runcore >= self.value
        return runcore == 0


@dataclass(frozen=True)
class Side:
    """How one implementation runs a case: its parameters, and the ``--quick`` overrides."""

    params: dict[str, Any]
    quick: dict[str, Any] = field(default_factory=dict)

    def resolve(self, quick: bool) -> dict[str, Any]:
        """The parameters for this run mode (``quick`` is passed on to the worker too)."""
        return {**self.params, **(self.quick if quick else {}), "quick": quick}


@dataclass(frozen=True)
class SlowPlan:
    """What ``--dagster-skip-slow`` does to a Dagster case.

    With ``params`` the case runs at that smaller size and its time is scaled linearly by
    ``scale_key`` (full size / small size) and labelled as extrapolated; without, it is skipped.
    """

    params: dict[str, Any] | None = None
    scale_key: str = "n_ops"


@dataclass(frozen=True)
class Case:
    """One benchmark case, run once per implementation in a fresh worker process."""

    key: str
    case: str
    runcore: Side | None
    dagster: Side | None
    dagster_slow: SlowPlan | None = None
    note: str = ""


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    ``baseline``: the case whose Dagster side the row compares with, when not its own (a
    Dagster measurement shared by several rows, measured once).
    """

    name: str
    case: Case
    metric: str
    target: Target
    baseline: Case | None = None

    @property
    def dagster_case(self) -> Case:
        """The case whose Dagster outcome fills the row's Dagster column."""
        return self.baseline or self.case


#: Storage rate cases run several trials and report the median (one with ``--quick``).
TRIALS = {"trials": 3}
TRIAL = {"trials": 1}


def _import_case() -> Case:
    return Case(
        key="import",
        case="import",
        runcore=Side({"module": "runcore", "reps": 20}, quick={"reps": 5}),
        dagster=Side({"module": "dagster", "reps": 10}, quick={"reps": 3}),
    )


#: Library-free context figures, always measured and listed with the machine: the
#: interpreter's own start-up, and what a bare sqlite3 single-commit loop does on this disk.
#: They run in a worker like the rest (the "runcore" side is just the slot they use).
BARE_PYTHON = Case(
    key="python",
    case="import",
    runcore=Side({"module": None, "reps": 20}, quick={"reps": 5}),
    dagster=None,
)
BARE_SQLITE = Case(
    key="sqlite",
    case="sqlite_baseline",
    runcore=Side({"count": 5_000}, quick={"count": 1_000}),
    dagster=None,
)
CONTEXT_CASES = (BARE_PYTHON, BARE_SQLITE)

_SHAPES = (
    ("1 op", "single", 1, 200),
    ("20-op chain", "chain", 20, 100),
    ("100-op fan-out", "fanout", 100, 100),
)


def _execute_rows() -> list[Row]:
    rows = []
    for label, shape, n_ops, speedup in _SHAPES:
        for storage, storage_label in (("memory", "in-memory"), ("sqlite", "SQLite")):
            params = {"shape": shape, "n_ops": n_ops, "storage": storage}
            case = Case(f"execute/{shape}{n_ops}/{storage}", "execute", Side(params), Side(params))
            rows.append(
                Row(
                    f"execute_in_process, {label}, {storage_label}",
                    case,
                    "time",
                    Target("speedup", speedup),
                )
            )
    return rows


def _multiprocess_row() -> Row:
    case = Case(
        key="multiprocess/fanout100",
        case="multiprocess",
        runcore=Side({"n_ops": 100, "warmup": 1, "reps": 5}),
        dagster=Side({"n_ops": 100}),
        dagster_slow=SlowPlan({"n_ops": 10}),
    )
    return Row(
        "multiprocess executor (2 workers), 100-op fan-out, SQLite",
        case,
        "time",
        Target("speedup", 50),
    )


def _runs_rows() -> list[Row]:
    single = Case(
        key="storage/add_run",
        case="add_runs",
        runcore=Side({"count": 10_000, "batch": 0, **TRIALS}, quick={"count": 2_000, **TRIAL}),
        dagster=Side({"count": 500, **TRIALS}, quick={"count": 100, **TRIAL}),
    )
    batched = Case(
        key="storage/add_runs",
        case="add_runs",
        runcore=Side({"count": 50_000, "batch": 100, **TRIALS}, quick={"count": 5_000, **TRIAL}),
        dagster=None,
        note="Dagster has no batch run insert",
    )
    return [
        Row(
            "runs created/s, add_run (1 per transaction)",
            single,
            "rate",
            Target("min", 5_000, "/s"),
        ),
        Row(
            "runs created/s, add_runs (batches of 100)",
            batched,
            "rate",
            Target("min", 5_000, "/s", binding=False),
        ),
    ]


def _event_rows() -> list[Row]:
    rows = []
    for batch, how in (
        (0, "store_event (1 per transaction)"),
        (100, "store_events (batches of 100)"),
    ):
        binding = batch == 0
        single = Case(
            key=f"storage/events/1/{batch}",
            case="store_events",
            runcore=Side(
                {"count": 20_000, "batch": batch, **TRIALS}, quick={"count": 2_000, **TRIAL}
            ),
            dagster=Side({"count": 1_000, "batch": batch, **TRIALS}, quick={"count": 200, **TRIAL}),
        )
        many = Case(
            key=f"storage/events/8/{batch}",
            case="writers",
            runcore=Side(
                {"writers": 8, "count": 5_000, "batch": batch, **TRIALS},
                quick={"count": 500, **TRIAL},
            ),
            dagster=Side(
                {"writers": 8, "count": 100, "batch": batch, **TRIALS},
                quick={"count": 20, **TRIAL},
            ),
        )
        rows += [
            Row(
                f"events/s, 1 writer, {how}",
                single,
                "rate",
                Target("min", 20_000, "/s", binding=binding),
            ),
            Row(
                f"events/s, 8 writer processes, {how}",
                many,
                "rate",
                Target("min", 20_000, "/s", binding=binding),
            ),
            Row(
                f"'database is locked' errors, 8 writers, {how}",
                many,
                "locked_errors",
                Target("zero"),
            ),
        ]
    return rows


def _query_rows() -> list[Row]:
    rows = []
    for n_runs, limit_ms in ((10_000, 5), (100_000, 10)):
        case = Case(
            key=f"storage/query/{n_runs}",
            case="query",
            runcore=Side({"n_runs": n_runs}),
            dagster=Side({"n_runs": n_runs}),
            dagster_slow=SlowPlan() if n_runs > 10_000 else None,
        )
        rows.append(
            Row(
                f"query runs by status + tag, limit 100, {n_runs:,} runs",
                case,
                "time",
                Target("max", limit_ms, "ms"),
            )
        )
    return rows


#: Dagster's queued-run daemon launches a few dozen runs a second at best: its drain runs on
#: this many queued runs (created and submitted one by one, ~10/s, before the timed drain).
DAGSTER_DRAIN_RUNS = 200


def _queue_rows() -> list[Row]:
    enqueue = Case(
        key="queue/enqueue",
        case="enqueue",
        runcore=Side({"count": 2_000, **TRIALS}, quick={"count": 300, **TRIAL}),
        dagster=Side({"count": 40, **TRIALS}, quick={"count": 10, **TRIAL}),
    )
    rows = [
        Row(
            "queued: runs enqueued/s (create + submit), SQLite",
            enqueue,
            "rate",
            Target("min", 500, "/s", binding=False),
        )
    ]
    for n_queued in (10_000, 1_000):
        big = n_queued > 1_000
        case = Case(
            key=f"queue/blocked/{n_queued}",
            case="dequeue_blocked",
            runcore=Side({"n_queued": n_queued, "blocker": "limits"}),
            dagster=Side(
                {"n_queued": n_queued, "blocker": "limits", **({"reps": 3} if big else {})},
                quick={"reps": 1},
            ),
            dagster_slow=SlowPlan() if big else None,
        )
        what = f"queued: dequeue pass, {n_queued:,} runs all held by 50 tag limits + 20 pools"
        rows += [
            Row(f"{what}, steady pass", case, "steady", Target("max", 50, "ms", binding=big)),
            Row(f"{what}, first pass", case, "first", Target("max", 50, "ms", binding=False)),
        ]
    held_by_global = Case(
        key="queue/blocked/10000/global",
        case="dequeue_blocked",
        runcore=Side({"n_queued": 10_000, "blocker": "global"}),
        dagster=Side({"n_queued": 10_000, "blocker": "global"}, quick={"reps": 1}),
    )
    what = "queued: dequeue pass, 10,000 runs held by max_concurrent_runs"
    rows += [
        Row(f"{what}, steady pass", held_by_global, "steady", Target("max", 50, "ms")),
        Row(
            f"{what}, first pass",
            held_by_global,
            "first",
            Target("max", 50, "ms", binding=False),
        ),
    ]
    drain = Case(
        key="queue/drain",
        case="drain",
        runcore=Side({"n_queued": 10_000, **TRIALS}, quick={"n_queued": 2_000, **TRIAL}),
        dagster=Side({"n_queued": DAGSTER_DRAIN_RUNS, **TRIAL}, quick={"n_queued": 20}),
    )
    rows.append(
        Row(
            "queued: runs launched/s draining the queue, no limits, no-op launcher "
            f"(runcore 10,000 runs, Dagster {DAGSTER_DRAIN_RUNS})",
            drain,
            "rate",
            Target("min", 500, "/s"),
        )
    )
    return rows


#: Runs per launcher in the launch-latency cases (one at a time, each waited for).
LAUNCH_RUNS = 50
#: Runs the code server holds at once in the memory case (its ``--max-workers`` too).
MEMORY_RUNS = 200


def _launch_case(launcher: str) -> Case:
    return Case(
        key=f"launch/{launcher}",
        case="launch",
        runcore=Side(
            {"launcher": launcher, "runs": LAUNCH_RUNS, "warmup": 2},
            quick={"runs": 10, "warmup": 1},
        ),
        dagster=None,
    )


def _launch_rows() -> list[Row]:
    dagster = Side({"runs": 5, "warmup": 1}, quick={"runs": 2})
    dagster_launcher = Case("launch/dagster/default-run-launcher", "launch_launcher", None, dagster)
    dagster_cli = Case("launch/dagster/job-execute", "launch_cli", None, dagster)
    rows = []
    by_launcher = "Dagster: DefaultRunLauncher, code server up"
    for launcher, label, limit_ms, baseline, versus in (
        ("thread", "thread pool", 5, dagster_launcher, by_launcher),
        ("code_server", "code server", 5, dagster_launcher, by_launcher),
        ("warm", "subprocess warm", 30, dagster_launcher, by_launcher),
        ("cold", "subprocess cold", 300, dagster_cli, "Dagster: `dagster job execute`"),
    ):
        case = _launch_case(launcher)
        what = f"launch: submit -> first step, {label}"
        rows += [
            Row(
                f"{what}, median ({versus})",
                case,
                "median",
                Target("max", limit_ms, "ms"),
                baseline,
            ),
            Row(f"{what}, p99", case, "p99", Target("max", limit_ms, "ms", binding=False)),
        ]
    rows.append(
        Row(
            "launch: subprocess cold vs Dagster's cold path (`dagster job execute`), median",
            _launch_case("cold"),
            "median",
            Target("speedup", 10),
            dagster_cli,
        )
    )
    memory = Case(
        key="launch/code_server/memory",
        case="code_server_memory",
        runcore=Side({"runs": MEMORY_RUNS}),
        dagster=None,
        note="runcore only",
    )
    rows.append(
        Row(
            f"code server: resident memory per run thread, {MEMORY_RUNS} sleeping non-isolated "
            f"runs (max_workers={MEMORY_RUNS})",
            memory,
            "rss_per_run",
            Target("none"),
        )
    )
    return rows


# --- PostgreSQL: runcore's PostgresStorage beside dagster-postgres, on one server -----------

#: The parameter that puts a storage case on the benchmark PostgreSQL server.
PG = {"backend": "postgres"}
#: What the label of every PostgreSQL row ends with (``--only postgres`` selects them).
PG_LABEL = ", PostgreSQL"


def is_postgres(row: Row) -> bool:
    """Whether ``row`` is one of the PostgreSQL rows (their own section of RESULTS.md)."""
    return row.case.key.startswith("postgres/")


def _pg_side(params: dict[str, Any], quick: dict[str, Any]) -> Side:
    return Side({**params, **PG}, quick=quick)


def _pg_storage_rows() -> list[Row]:
    add_run = Case(
        "postgres/add_run",
        "add_runs",
        runcore=_pg_side({"count": 2_000, "batch": 0, **TRIALS}, {"count": 300, **TRIAL}),
        dagster=_pg_side({"count": 200, **TRIALS}, {"count": 30, **TRIAL}),
    )
    add_runs = Case(
        "postgres/add_runs",
        "add_runs",
        runcore=_pg_side({"count": 20_000, "batch": 100, **TRIALS}, {"count": 2_000, **TRIAL}),
        dagster=None,
    )
    single_commit = Target("speedup", 5, binding=False)  # bound by fsync for both
    rows = [
        Row(
            f"runs created/s, add_run (1 per transaction){PG_LABEL}", add_run, "rate", single_commit
        ),
        Row(
            "runs created/s, add_runs (batches of 100) vs Dagster's add_run (it has no batch "
            f"insert){PG_LABEL}",
            add_runs,
            "rate",
            Target("speedup", 5),
            baseline=add_run,
        ),
    ]
    for batch, how in (
        (0, "store_event (1 per transaction)"),
        (100, "store_events (batches of 100; Dagster: store_event each)"),
    ):
        target = single_commit if batch == 0 else Target("speedup", 5)
        count, writer_count = (5_000, 500) if batch == 0 else (20_000, 2_000)
        one = Case(
            f"postgres/events/1/{batch}",
            "store_events",
            runcore=_pg_side({"count": count, "batch": batch, **TRIALS}, {"count": 500, **TRIAL}),
            dagster=_pg_side({"count": 200, "batch": batch, **TRIALS}, {"count": 30, **TRIAL}),
        )
        many = Case(
            f"postgres/events/8/{batch}",
            "writers",
            runcore=_pg_side(
                {"writers": 8, "count": writer_count, "batch": batch, **TRIALS},
                {"count": 100, **TRIAL},
            ),
            dagster=_pg_side(
                {"writers": 8, "count": 25, "batch": batch, **TRIALS}, {"count": 5, **TRIAL}
            ),
        )
        rows += [
            Row(f"events/s, 1 writer, {how}{PG_LABEL}", one, "rate", target),
            Row(f"events/s, 8 writer processes, {how}{PG_LABEL}", many, "rate", target),
        ]
    for n_runs, quick_runs in ((100_000, 10_000), (1_000_000, 20_000)):
        case = Case(
            f"postgres/query/{n_runs}",
            "query",
            runcore=_pg_side({"n_runs": n_runs}, {"n_runs": quick_runs}),
            dagster=_pg_side({"n_runs": n_runs}, {"n_runs": quick_runs}),
            dagster_slow=SlowPlan() if n_runs > 100_000 else None,
        )
        what = f"query runs by status + tag, limit 100, {n_runs:,} runs"
        rows.append(Row(f"{what}{PG_LABEL}", case, "time", Target("speedup", 5)))
        if n_runs == 1_000_000:
            bound = Target("max", 2, "ms")
            rows.append(Row(f"{what}, absolute bound{PG_LABEL}", case, "time", bound))
    return rows


#: Queued runs the two racing daemons drain in the admissions case.
ADMISSION_RUNS = 10_000


def _pg_queue_rows() -> list[Row]:
    rows = []
    for n_queued, quick_queued in ((10_000, 1_000), (100_000, 2_000)):
        big = n_queued > 10_000
        case = Case(
            f"postgres/queue/blocked/{n_queued}",
            "dequeue_blocked",
            runcore=_pg_side(
                {"n_queued": n_queued, "blocker": "limits"}, {"n_queued": quick_queued}
            ),
            dagster=_pg_side(
                {"n_queued": n_queued, "blocker": "limits", "reps": 3},
                {"n_queued": quick_queued, "reps": 1},
            ),
            dagster_slow=SlowPlan() if big else None,
        )
        what = f"queued: dequeue pass, {n_queued:,} runs all held by 50 tag limits + 20 pools"
        rows += [
            Row(f"{what}, steady pass{PG_LABEL}", case, "steady", Target("speedup", 5)),
            Row(
                f"{what}, first pass{PG_LABEL}",
                case,
                "first",
                Target("speedup", 5, binding=False),
            ),
        ]
    admissions = Case(
        "postgres/queue/admissions",
        "admissions",
        runcore=_pg_side(
            {"n_queued": ADMISSION_RUNS, "daemons": 2, **TRIALS}, {"n_queued": 2_000, **TRIAL}
        ),
        dagster=None,
        note="Dagster supports one daemon per deployment: see the notes",
    )
    rows.append(
        Row(
            f"queued: admissions/s, 2 daemon processes racing over {ADMISSION_RUNS:,} queued "
            f"runs, RecordingLauncher{PG_LABEL}",
            admissions,
            "rate",
            Target("min", 1_000, "/s"),
        )
    )
    return rows


#: A library-free context figure for the PostgreSQL rows: one-row commits/s of a bare psycopg
#: loop on the benchmark server (what fsync allows a single-commit writer there).
BARE_POSTGRES = Case(
    key="postgres/bare",
    case="postgres_baseline",
    runcore=Side({"count": 2_000}, quick={"count": 300}),
    dagster=None,
)


def all_rows() -> list[Row]:
    """Every row of the results table, in table order."""
    import_row = Row(
        "import (\"python -c 'import X'\")", _import_case(), "time", Target("speedup", 5)
    )
    return [
        import_row,
        *_execute_rows(),
        _multiprocess_row(),
        *_runs_rows(),
        *_event_rows(),
        *_query_rows(),
        *_queue_rows(),
        *_launch_rows(),
        *_pg_storage_rows(),
        *_pg_queue_rows(),
    ]
