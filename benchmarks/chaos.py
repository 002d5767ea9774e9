"""Chaos test of runcore's run layer: nothing stuck, nothing leaked, nothing lost.

    python benchmarks/chaos.py                     # 500 runs on SQLite: benchmarks/CHAOS.md
    python benchmarks/chaos.py --storage postgres  # on PostgreSQL: CHAOS-postgres.md
    python benchmarks/chaos.py --quick --out /tmp/c.md  # 60 runs, a smoke test
    python benchmarks/chaos.py --runs 2000 --seed 7 --poll 0.5

One instance with a queued coordinator (8 runs at a time), a pool of 2 slots at op
granularity, isolated runs (one worker process per run, warm workers optional), run
monitoring polling every ``--poll`` seconds and run retries (``max_retries: 1``). Its storage
is SQLite in a temporary directory (``--storage sqlite``, the default) or a PostgreSQL cluster
of the script's own (``--storage postgres``: ``initdb`` into a temporary directory, ``pg_ctl``
on a free port of 127.0.0.1; never the machine's shared server). Two ``runcore daemon``
processes serve it and race for every queued run. This script submits runs of
``chaos_jobs.py`` over time (some fail in op code, on cue) while two chaos threads:

* kill -9 random run worker processes (their pid is read from the run's worker record in
  storage, and checked to be a live run worker) at random points of their runs, recording
  when;
* kill -9 a random daemon now and then and start a new one. A daemon is the host of the
  launcher: the workers it started survive it, and the other daemon's monitoring has to find
  their death by the worker record in storage. Some of the orphaned workers are killed too.

On PostgreSQL a third one restarts the server once half of the runs are submitted (``pg_ctl
stop -m fast``, ``--outage`` seconds down, start again on the same port), while runs, daemons
and workers are live: every component has to ride through it on its retries.

When every run is submitted, the chaos stops and the script waits (bounded) for every run,
retries included, to end; then it checks from storage:

* **runs lost**: runs not in a terminal status;
* **slots leaked**: pool slots held at the end, or (sampled during the chaos) held by a run
  that had already ended;
* **double starts**: runs with more than one RUN_START event, more RUN_STARTING events than
  launch attempts (one, plus one per attempt monitoring gave up and requeued), or a step with
  more than one STEP_START (no op here has a retry policy);
* **limits exceeded**: from the event log, in storage order, more than
  ``max_concurrent_runs`` runs in progress at once (RUN_STARTING to the run's end), or more
  steps of pool ops holding a slot (STEP_START to the step's end) than the pool's limit;
* **missed retries**: failed runs the policy retries (``retry_number < max_retries`` and no
  ``Failure(allow_retry=False)``) with no child run; **duplicate retries**: runs with more than
  one child; **unwanted retries**: children of runs the policy does not retry;
* **killed runs not failed**: runs whose worker was killed while they were in progress but
  that did not end FAILURE;
* **death -> FAILURE latency**: RUN_FAILURE event time minus kill time, for killed runs that
  had not ended when the kill landed; its p99 must be under 2 poll intervals. Kills whose
  detection window overlaps the PostgreSQL outage are reported apart (nothing can be written
  while the server is down) and left out of the bound.

Prints a table, writes a Markdown report (``--out``), and exits 1 if any count above is not 0
or the latency bound is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

import runcore as rc
from runcore.runs import IN_PROGRESS_STATUSES, RETRY_NUMBER_TAG

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import _pgcluster  # noqa: E402 - found beside this script
import chaos_jobs  # noqa: E402

LOCATION = f"{BENCH_DIR / 'chaos_jobs.py'}:defs"
JOB_WEIGHTS = {"etl": 3, "pair": 2, "diamond": 3, "chain5": 2}
MAX_RETRIES = 1
MAX_CONCURRENT_RUNS = 8
POOL_LIMIT = 2
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Settings:
    """What one chaos run does (from the command line)."""

    runs: int
    seed: int
    poll: float
    out: Path
    rate: float  # submissions per second
    max_queued: int  # submission pauses while this many runs are queued
    warm_workers: int
    kill_probability: float  # chance that a started run gets its worker killed
    kill_window: float  # the kill lands within this many seconds of the run being seen STARTED
    daemon_kill_every: tuple[float, float]  # seconds between daemon kills (uniform)
    orphan_kill_probability: float  # chance that a dead daemon's running worker is killed
    stranded_probability: float  # chance that a new daemon dies mid-launch (a fault point)
    fail_probability: float  # chance that a run has an op that fails on cue
    drain_timeout: float
    keep: bool
    storage: str = "sqlite"  # or "postgres" (a test-owned cluster, restarted mid-run)
    outage: float = 3.0  # seconds the PostgreSQL server stays down in its restart


@dataclass(frozen=True)
class Kill:
    """One SIGKILL of a run's worker process."""

    run_id: str
    pid: int
    before: float  # time.time() just before os.kill
    after: float  # and just after
    status: str  # the run's status when it was chosen
    orphan: bool  # its daemon (the launcher's host) was dead at the time


@dataclass
class Tally:
    """Counters the chaos threads keep."""

    kills: list[Kill] = field(default_factory=list)
    kill_skips: Counter[str] = field(default_factory=Counter)
    daemon_kills: int = 0
    daemons_started: int = 0
    faults_armed: Counter[str] = field(default_factory=Counter)  # daemons started to die mid-launch
    fault_deaths: int = 0  # ... that did (SIGKILLed themselves at the fault point)
    daemon_exits: Counter[int] = field(default_factory=Counter)  # other deaths, by exit code
    orphans_chosen: int = 0
    lease_samples: int = 0
    sampled_leaks: set[tuple[str, str, str]] = field(default_factory=set)
    submit_errors: list[str] = field(default_factory=list)
    thread_errors: list[str] = field(default_factory=list)
    submitted: int = 0  # runs submitted so far
    restart: Restart | None = None


@dataclass(frozen=True)
class Restart:
    """The PostgreSQL server's restart in the middle of the chaos (``time.time()`` values)."""

    began: float  # pg_ctl stop called
    stopped: float  # the server is down
    up: float  # pg_ctl start returned: the server accepts connections again
    at_submitted: int  # runs submitted when it began
    in_progress: int  # runs in progress just before it


# --- processes --------------------------------------------------------------------------------


def worker_pids(storage: rc.InstanceStorage, run_ids: list[str]) -> dict[str, int]:
    """The pids of the runs' worker processes, from their worker records (the test harness
    reads them to play the attacker's kill -9; runcore itself signals only through its
    launcher, after checking the process's identity)."""
    records = storage.get_worker_records(run_ids)
    return {
        run_id: record.handle["pid"]
        for run_id, record in records.items()
        if record.kind == "process" and isinstance(record.handle.get("pid"), int)
    }


def worker_process(pid: int) -> psutil.Process | None:
    """The live (not zombie) run worker process ``pid``, or None."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = proc.cmdline()
    except psutil.Error:
        return None
    if "runcore" not in cmdline or "worker" not in cmdline:
        return None  # not a run worker (a reused pid)
    return proc


@dataclass
class DaemonLife:
    """One daemon process's life (``time.time()`` values), for the latency analysis."""

    number: int
    fault: str | None  # the fault point it dies at, if armed
    log: Path
    started: float
    booted: float | None = None  # first seen to have opened the instance (its "started" line)
    ended: float | None = None  # killed, or first seen dead

    def up_at(self, when: float) -> bool:
        """Booted and alive at ``when``: its duties (monitoring among them) were running."""
        return (
            self.booted is not None
            and self.booted <= when
            and (self.ended is None or self.ended > when)
        )


class Daemons:
    """The ``runcore daemon`` processes: start, kill -9, stop."""

    def __init__(self, config_path: Path, log_dir: Path, tally: Tally) -> None:
        self.config_path = config_path
        self.log_dir = log_dir
        self.tally = tally
        self.procs: list[subprocess.Popen[bytes]] = []
        self.lives: dict[subprocess.Popen[bytes], DaemonLife] = {}
        self._lock = threading.Lock()

    def start(self, fault: str | None = None) -> subprocess.Popen[bytes]:
        """Start one more daemon; with ``fault``, one that SIGKILLs itself at that point of
        its first launch (see ``runcore._faults``): a run stranded in STARTING."""
        with self._lock:
            number = self.tally.daemons_started = self.tally.daemons_started + 1
            if fault is not None:
                self.tally.faults_armed[fault] += 1
        log_path = self.log_dir / f"daemon-{number}.log"
        log = log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if fault is not None:
            env["RUNCORE_FAULT"] = fault
        cmd = [sys.executable, "-m", "runcore", "--config", str(self.config_path)]
        proc = subprocess.Popen(
            [*cmd, "daemon", "--interval", "0.05"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        with self._lock:
            self.procs.append(proc)
            self.lives[proc] = DaemonLife(number, fault, log_path, time.time())
        return proc

    def watch_boots(self) -> None:
        """Note the daemons that have booted since the last look (their log's first line is
        written once the instance is open, just before the duties start)."""
        with self._lock:
            waiting = [self.lives[p] for p in self.procs if self.lives[p].booted is None]
        for life in waiting:
            with contextlib.suppress(OSError):
                if b" started (" in life.log.read_bytes()[:4096]:
                    life.booted = time.time()

    def settled(self, age: float = 1.0) -> int:
        """How many daemons are alive, booted at least ``age`` seconds ago, and not armed to
        die at a fault point: the daemons whose monitoring will find a dead worker."""
        self.watch_boots()
        now = time.time()
        with self._lock:
            return sum(
                1
                for p in self.procs
                if p.poll() is None
                and (life := self.lives[p]).fault is None
                and life.booted is not None
                and now - life.booted >= age
            )

    def up_at(self, when: float) -> int:
        """How many daemons were booted and alive at ``when``."""
        with self._lock:
            return sum(1 for life in self.lives.values() if life.up_at(when))

    def reap_fault_deaths(self) -> int:
        """Forget daemons that died by themselves (at a fault point, or of an error such as a
        storage unreachable past its retries); how many."""
        with self._lock:
            dead = [p for p in self.procs if p.poll() is not None]
            self.procs = [p for p in self.procs if p.returncode is None]
            for proc in dead:
                self.lives[proc].ended = time.time()
                if proc.returncode == -signal.SIGKILL:
                    self.tally.fault_deaths += 1
                else:
                    self.tally.daemon_exits[proc.returncode] += 1
        return len(dead)

    def pids(self) -> set[int]:
        with self._lock:
            return {p.pid for p in self.procs}

    def kill(self, pid: int | None, rng: random.Random) -> int | None:
        """kill -9 daemon ``pid`` (None: a random one); its pid (None if there is none)."""
        with self._lock:
            if not self.procs:
                return None
            pids = [p.pid for p in self.procs]
            index = pids.index(pid) if pid in pids else rng.randrange(len(pids))
            victim = self.procs.pop(index)
            self.tally.daemon_kills += 1
            self.lives[victim].ended = time.time()
        victim.kill()
        victim.wait()
        return victim.pid

    def stop(self) -> None:
        """SIGTERM every daemon (a clean stop), SIGKILL the ones that do not stop."""
        with self._lock:
            procs, self.procs = self.procs, []
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.lives[proc].ended = time.time()

    def log_errors(self) -> int:
        """Tracebacks the daemons wrote (a duty that failed and went on)."""
        return sum(
            path.read_text(errors="replace").count("Traceback")
            for path in self.log_dir.glob("daemon-*.log")
        )


# --- the chaos --------------------------------------------------------------------------------


class WorkerKiller(threading.Thread):
    """Kills run workers at random points of their runs; samples the pool slots too."""

    def __init__(
        self,
        *,
        storage: rc.InstanceStorage,
        daemons: Daemons,
        settings: Settings,
        tally: Tally,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="chaos-worker-killer", daemon=True)
        self.storage = storage
        self.daemons = daemons
        self.settings = settings
        self.tally = tally
        self.stop_event = stop
        self.rng = random.Random(settings.seed + 1)
        self._seen: set[str] = set()
        self._due: list[tuple[float, str]] = []
        self._armed: dict[str, float] = {}  # run -> when chosen, to be killed once STARTED
        self._lock = threading.Lock()

    def schedule(self, run_id: str, at: float) -> None:
        """Kill ``run_id``'s worker at ``at`` (time.monotonic()), if the run is still going."""
        with self._lock:
            self._seen.add(run_id)
            self._due.append((at, run_id))

    def run(self) -> None:
        next_sample = 0.0
        while not self.stop_event.wait(0.02):
            try:
                self._pick()
                self._kill_due()
                if time.monotonic() >= next_sample:
                    self._sample_leases()
                    next_sample = time.monotonic() + 0.25
            except Exception as exc:
                self.tally.thread_errors.append(f"worker killer: {type(exc).__name__}: {exc}")

    def _pick(self) -> None:
        """Choose the runs to kill as they start: a kill lands while the worker loads the run
        (STARTING) or, more often, at a random point of its steps (STARTED)."""
        running = self.storage.get_run_records(rc.RunsFilter(statuses=list(IN_PROGRESS_STATUSES)))
        recorded = worker_pids(self.storage, [record.run.run_id for record in running])
        now = time.monotonic()
        settings = self.settings
        with self._lock:
            for record in running:
                run = record.run
                if run.run_id in self._armed and run.status is rc.RunStatus.STARTED:
                    del self._armed[run.run_id]
                    self._due.append((now + self.rng.uniform(0, settings.kill_window), run.run_id))
                if run.run_id in self._seen or run.run_id not in recorded:
                    continue
                self._seen.add(run.run_id)
                if self.rng.random() >= settings.kill_probability:
                    continue
                if run.status is rc.RunStatus.STARTING and self.rng.random() < 0.25:
                    self._due.append((now + self.rng.uniform(0, 0.1), run.run_id))
                else:
                    self._armed[run.run_id] = now
            in_progress = {record.run.run_id for record in running}
            for run_id in [r for r in self._armed if r not in in_progress]:
                del self._armed[run_id]
                self.tally.kill_skips["the run ended before it was seen STARTED"] += 1

    def _kill_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [run_id for at, run_id in self._due if at <= now]
            self._due = [(at, run_id) for at, run_id in self._due if at > now]
        for run_id in due:
            self.kill(run_id)

    def kill(self, run_id: str) -> None:
        """kill -9 the worker of ``run_id`` now, if the run is in progress and it is alive."""
        run = self.storage.get_run(run_id)
        if run is None or not run.status.is_in_progress:
            self.tally.kill_skips["the run had ended"] += 1
            return
        pid = worker_pids(self.storage, [run_id]).get(run_id)
        proc = worker_process(pid) if pid is not None else None
        if proc is None:
            self.tally.kill_skips["the worker was not alive"] += 1
            return
        try:
            orphan = proc.ppid() not in self.daemons.pids()
        except psutil.Error:
            self.tally.kill_skips["the worker was not alive"] += 1
            return
        before = time.time()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            self.tally.kill_skips["the worker was not alive"] += 1
            return
        after = time.time()
        self.tally.kills.append(Kill(run_id, pid, before, after, run.status.value, orphan))

    def _sample_leases(self) -> None:
        """Leases held by runs that had ended: their status is read before the leases, and a
        terminal transition frees a run's slots in the same write, so any is a leak."""
        holders = {lease.run_id for lease in self.storage.get_pool_leases()}
        ended = {
            run_id
            for run_id in holders
            if (run := self.storage.get_run(run_id)) is None or run.status.is_terminal
        }
        self.tally.lease_samples += 1
        for lease in self.storage.get_pool_leases():
            if lease.run_id in ended:
                self.tally.sampled_leaks.add((lease.pool, lease.run_id, lease.step_key or ""))


class DaemonKiller(threading.Thread):
    """Now and then: kill -9 a daemon, start another, and kill some of the orphaned workers."""

    def __init__(
        self,
        *,
        storage: rc.InstanceStorage,
        daemons: Daemons,
        killer: WorkerKiller,
        settings: Settings,
        tally: Tally,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="chaos-daemon-killer", daemon=True)
        self.storage = storage
        self.daemons = daemons
        self.killer = killer
        self.settings = settings
        self.tally = tally
        self.stop_event = stop
        self.rng = random.Random(settings.seed + 2)

    def run(self) -> None:
        low, high = self.settings.daemon_kill_every
        next_kill = time.monotonic() + self.rng.uniform(low, high)
        while not self.stop_event.wait(0.1):
            try:
                self.daemons.watch_boots()
                # A daemon that died at its fault point is replaced at once (two keep serving).
                for _ in range(self.daemons.reap_fault_deaths()):
                    self.daemons.start(self.fault())
                # Kill only while two daemons are up (booted, and not armed to die at a fault
                # point): a replacement still booting, or one about to die mid-launch, would
                # leave no daemon to find the orphans.
                if time.monotonic() >= next_kill and self.daemons.settled() >= 2:
                    self._once()
                    next_kill = time.monotonic() + self.rng.uniform(low, high)
            except Exception as exc:
                self.tally.thread_errors.append(f"daemon killer: {type(exc).__name__}: {exc}")

    def fault(self) -> str | None:
        """The fault point a new daemon is to die at, if any (stranding a run in STARTING)."""
        if self.rng.random() >= self.settings.stranded_probability:
            return None
        return self.rng.choice(["after_starting", "after_spawn"])

    def _once(self) -> None:
        parents: dict[str, int] = {}  # in-progress run -> the parent pid of its worker
        in_progress = self.storage.get_run_ids(rc.RunsFilter(statuses=list(IN_PROGRESS_STATUSES)))
        for run_id, worker_pid in worker_pids(self.storage, in_progress).items():
            proc = worker_process(worker_pid)
            with contextlib.suppress(psutil.Error):
                if proc is not None:
                    parents[run_id] = proc.ppid()
        # A random daemon, among those hosting running workers if any do, so that every
        # daemon kill leaves orphans for the other daemon's monitoring to find.
        hosts = sorted(self.daemons.pids() & set(parents.values()))
        pid = self.daemons.kill(self.rng.choice(hosts) if hosts else None, self.rng)
        orphans = sorted(run_id for run_id, parent in parents.items() if parent == pid)
        chosen = [r for r in orphans if self.rng.random() < self.settings.orphan_kill_probability]
        if orphans and not chosen:
            chosen = [self.rng.choice(orphans)]
        now = time.monotonic()
        for run_id in chosen:
            self.killer.schedule(run_id, now + self.rng.uniform(0.0, 0.15))
        self.tally.orphans_chosen += len(chosen)
        self.daemons.start(self.fault())


class ServerRestarter(threading.Thread):
    """Once half of the runs are submitted: stop the PostgreSQL server (``pg_ctl stop -m
    fast``: open transactions roll back, every connection is cut), keep it down for
    ``settings.outage`` seconds, start it again on the same port."""

    def __init__(
        self,
        *,
        cluster: _pgcluster.TestCluster,
        storage: rc.InstanceStorage,
        settings: Settings,
        tally: Tally,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="chaos-server-restarter", daemon=True)
        self.cluster = cluster
        self.storage = storage
        self.settings = settings
        self.tally = tally
        self.stop_event = stop

    def run(self) -> None:
        half = max(1, self.settings.runs // 2)
        while self.tally.submitted < half:
            if self.stop_event.wait(0.05):
                return
        try:
            in_progress = self.storage.count_runs(
                rc.RunsFilter(statuses=list(IN_PROGRESS_STATUSES))
            )
            submitted = self.tally.submitted
            began = time.time()
            self.cluster.stop("fast")
            stopped = time.time()
            time.sleep(self.settings.outage)
            self.cluster.start_server()
            self.tally.restart = Restart(began, stopped, time.time(), submitted, in_progress)
        except Exception as exc:
            self.tally.thread_errors.append(f"server restarter: {type(exc).__name__}: {exc}")


def submit_all(
    instance: rc.Instance, settings: Settings, tally: Tally, rng: random.Random
) -> list[str]:
    """Submit ``settings.runs`` runs at ``settings.rate`` per second (pausing while the queue
    is long); returns their ids."""
    names = list(JOB_WEIGHTS)
    weights = [JOB_WEIGHTS[n] for n in names]
    submitted: list[str] = []
    interval = 1.0 / settings.rate
    next_at = time.monotonic()
    queued_filter = rc.RunsFilter(statuses=[rc.RunStatus.QUEUED])
    while len(submitted) < settings.runs:
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        if instance.storage.count_runs(queued_filter) >= settings.max_queued:
            next_at = time.monotonic() + interval
            continue
        job_name = rng.choices(names, weights)[0]
        tags = {"chaos/seq": str(len(submitted))}
        if rng.random() < settings.fail_probability:
            tags[chaos_jobs.FAIL_OP_TAG] = rng.choice(chaos_jobs.OPS[job_name])
            tags[chaos_jobs.FAIL_MODE_TAG] = rng.choices(chaos_jobs.FAIL_MODES, [6, 3, 1])[0]
        if rng.random() < 0.2:
            tags["runcore/retry_strategy"] = "all_steps"
        try:
            run = instance.submit_run(job_name, tags=tags, code_location=LOCATION)
            submitted.append(run.run_id)
            tally.submitted = len(submitted)
        except Exception as exc:
            tally.submit_errors.append(f"{type(exc).__name__}: {exc}")
            if len(tally.submit_errors) > 20:
                raise
        next_at += interval
    return submitted


# --- the checks -------------------------------------------------------------------------------


class Checker:
    """Reads the outcome from storage (terminal runs never change, so facts are cached)."""

    def __init__(self, storage: rc.InstanceStorage) -> None:
        self.storage = storage
        self._retry_allowed: dict[str, bool] = {}

    def runs(self) -> list[rc.Run]:
        return [r.run for r in self.storage.get_run_records(ascending=True)]

    def retry_expected(self, run: rc.Run) -> bool:
        """Whether the policy retries ``run`` (a FAILURE)."""
        if run.status is not rc.RunStatus.FAILURE:
            return False
        if int(run.tags.get(RETRY_NUMBER_TAG, "0") or 0) >= MAX_RETRIES:
            return False
        allowed = self._retry_allowed.get(run.run_id)
        if allowed is None:
            events = self.storage.get_event_records(
                run.run_id, event_types=[rc.EventType.RUN_FAILURE]
            )
            allowed = not any(r.event.data.get("allow_retry") is False for r in events)
            self._retry_allowed[run.run_id] = allowed
        return allowed

    def pending(self, runs: Sequence[rc.Run]) -> tuple[list[rc.Run], list[rc.Run]]:
        """Runs not ended, and failed runs still waiting for their retry to be created."""
        parents = {r.parent_run_id for r in runs if r.parent_run_id}
        open_runs = [r for r in runs if not r.status.is_terminal]
        awaiting = [r for r in runs if r.run_id not in parents and self.retry_expected(r)]
        return open_runs, awaiting


def drain(checker: Checker, timeout: float) -> float:
    """Wait until every run has ended and every retry is made, or ``timeout``; seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        open_runs, awaiting = checker.pending(checker.runs())
        if not open_runs and not awaiting:
            break
        time.sleep(0.25)
    return time.monotonic() - start


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Outcome:
    """Everything the report shows."""

    settings: Settings
    wall: float
    submit_seconds: float
    drain_seconds: float
    statuses: Counter[str]
    failure_kinds: Counter[str]
    originals: int
    retries: int
    invariants: dict[str, int]
    examples: dict[str, list[str]]
    kills: int
    orphan_kills: int
    orphans_chosen: int
    starting_kills: int
    kill_skips: Counter[str]
    excluded_kills: int
    latencies: list[float]
    latency_by_detector: dict[str, list[float]]
    daemon_kills: int
    daemons_started: int
    faults_armed: Counter[str]
    fault_deaths: int
    daemon_exits: Counter[int]
    requeued_launches: int
    daemon_tracebacks: int
    lease_samples: int
    notes: list[str]
    restart: Restart | None = None
    during_outage: list[float] = field(default_factory=list)
    by_daemons_up: dict[int, list[float]] = field(default_factory=dict)

    @property
    def bound(self) -> float:
        return 2 * self.settings.poll

    @property
    def latency_ok(self) -> bool:
        return bool(self.latencies) and percentile(self.latencies, 99) < self.bound

    @property
    def ok(self) -> bool:
        return self.latency_ok and not any(self.invariants.values())


def detector(event: rc.Event) -> str:
    """Who failed a killed run: the launcher that started the worker, or a monitor."""
    if "exit_code" in event.data:
        return "launcher (its own worker exited)"
    if event.message.startswith("the run's worker died"):
        return "run monitoring (the worker record in storage)"
    return "other"


@dataclass
class Facts:
    """What :func:`analyse` reads from storage."""

    runs: list[rc.Run]
    invariants: dict[str, int]
    examples: dict[str, list[str]]
    latencies: list[float]
    by_detector: dict[str, list[float]]
    excluded: int
    during_outage: list[float]
    by_daemons_up: dict[int, list[float]]


def start_events(
    storage: rc.InstanceStorage, runs: Sequence[rc.Run]
) -> tuple[list[str], dict[str, rc.Event]]:
    """Runs started twice (described), and each failed run's first RUN_FAILURE event."""
    starts = [
        rc.EventType.RUN_STARTING,
        rc.EventType.RUN_START,
        rc.EventType.STEP_START,
        rc.EventType.RUN_ENQUEUED,
    ]
    double: list[str] = []
    first_failure: dict[str, rc.Event] = {}
    for run in runs:
        counts: Counter[tuple[str, str]] = Counter()
        requeues = 0
        for record in storage.get_event_records(run.run_id, event_types=starts):
            event = record.event
            if event.event_type is rc.EventType.RUN_ENQUEUED:
                # A launch attempt given up by monitoring: one more RUN_STARTING is allowed.
                requeues += "recorded no worker" in event.message
                continue
            counts[(event.event_type.value, event.step_key or "")] += 1
        allowed = {rc.EventType.RUN_STARTING.value: 1 + requeues}
        twice = [
            f"{kind}{'/' + step if step else ''} x{n}"
            for (kind, step), n in counts.items()
            if n > allowed.get(kind, 1)
        ]
        if twice:
            double.append(f"{run.run_id}: {', '.join(twice)}")
        if run.status is rc.RunStatus.FAILURE:
            failures = storage.get_event_records(run.run_id, event_types=[rc.EventType.RUN_FAILURE])
            if failures:
                first_failure[run.run_id] = failures[0].event
    return double, first_failure


_RUN_ENDS = (rc.EventType.RUN_SUCCESS, rc.EventType.RUN_FAILURE, rc.EventType.RUN_CANCELED)
_STEP_ENDS = (rc.EventType.STEP_SUCCESS, rc.EventType.STEP_FAILURE)
_POOL_OPS = frozenset({"transform", "fetch", "right", "c3"})


def limits_exceeded(storage: rc.InstanceStorage) -> list[str]:
    """Replays the event log in storage order (the order writes committed in): a run is in
    progress from its RUN_STARTING until its end (or RUN_ENQUEUED: a launch given up and
    requeued); a step of a pool op holds its slot from its STEP_START until its end or its
    run's. Every moment at which more runs were in progress than ``max_concurrent_runs``, or
    more steps held the pool than its limit, is described."""
    in_progress: set[str] = set()
    holding: dict[str, set[str]] = defaultdict(set)  # run -> pool steps holding a slot
    over: list[str] = []
    cursor = None
    while records := storage.get_events_after(cursor, 2000):
        for record in records:
            event = record.event
            kind = event.event_type
            if kind is rc.EventType.RUN_STARTING:
                in_progress.add(event.run_id)
                if len(in_progress) > MAX_CONCURRENT_RUNS:
                    over.append(f"event {record.storage_id}: {len(in_progress)} runs in progress")
            elif kind in _RUN_ENDS or kind is rc.EventType.RUN_ENQUEUED:
                in_progress.discard(event.run_id)
                holding.pop(event.run_id, None)
            elif kind is rc.EventType.STEP_START and (event.step_key or "") in _POOL_OPS:
                holding[event.run_id].add(event.step_key or "")
                held = sum(len(steps) for steps in holding.values())
                if held > POOL_LIMIT:
                    over.append(f"event {record.storage_id}: {held} slots of {chaos_jobs.POOL}")
            elif kind in _STEP_ENDS:
                holding[event.run_id].discard(event.step_key or "")
        cursor = records[-1].storage_id
    return over


@dataclass
class KillOutcomes:
    """The killed runs' fates: latency samples (all, and by who found the death), the kills
    left out (the run had ended before), those whose detection overlapped the server's outage
    (reported apart), and killed runs that did not fail."""

    latencies: list[float] = field(default_factory=list)
    by_detector: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    excluded: int = 0
    not_failed: list[str] = field(default_factory=list)
    during_outage: list[float] = field(default_factory=list)
    by_daemons_up: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))


def kill_outcomes(
    kills: Sequence[Kill],
    by_id: dict[str, rc.Run],
    first_failure: dict[str, rc.Event],
    restart: Restart | None = None,
    daemons_up: Callable[[float], int] = lambda when: 0,
) -> KillOutcomes:
    result = KillOutcomes()
    for kill in kills:
        run = by_id.get(kill.run_id)
        if run is None or run.ended_at is None:
            continue  # counted as lost
        if run.ended_at <= kill.after:
            result.excluded += 1  # it ended before the kill landed
            continue
        event = first_failure.get(kill.run_id)
        if run.status is not rc.RunStatus.FAILURE or event is None:
            result.not_failed.append(f"{kill.run_id} {run.status.value} (pid {kill.pid})")
            continue
        latency = event.timestamp - kill.before
        if restart is not None and kill.before < restart.up and event.timestamp > restart.began:
            result.during_outage.append(latency)  # nothing could be written meanwhile
            continue
        result.latencies.append(latency)
        result.by_detector[detector(event)].append(latency)
        result.by_daemons_up[daemons_up(kill.before)].append(latency)
    return result


def analyse(storage: rc.InstanceStorage, tally: Tally, daemons: Daemons) -> Facts:
    """The invariant counts, examples, and the latency samples, from storage."""
    checker = Checker(storage)
    runs = checker.runs()
    by_id = {r.run_id: r for r in runs}
    children: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        if run.parent_run_id:
            children[run.parent_run_id].append(run.run_id)
    lost = [r for r in runs if not r.status.is_terminal]
    leases = storage.get_pool_leases()
    leaks = {(x.pool, x.run_id, x.step_key or "") for x in leases} | tally.sampled_leaks
    double, first_failure = start_events(storage, runs)
    missed = [r for r in runs if checker.retry_expected(r) and not children.get(r.run_id)]
    duplicate = {p: c for p, c in children.items() if len(c) > 1}
    unwanted = [p for p in children if p in by_id and not checker.retry_expected(by_id[p])]
    killed = kill_outcomes(tally.kills, by_id, first_failure, tally.restart, daemons.up_at)
    examples = {
        "runs lost": [f"{r.run_id} {r.status.value}" for r in lost],
        "slots leaked": [f"{p} {run_id}/{step}" for p, run_id, step in sorted(leaks)],
        "double starts": double,
        "limits exceeded": limits_exceeded(storage),
        "missed retries": [f"{r.run_id} ({r.failure_kind})" for r in missed],
        "duplicate retries": [f"{p}: {c}" for p, c in duplicate.items()],
        "unwanted retries": [f"{p} ({by_id[p].status.value})" for p in unwanted],
        "killed runs not failed": killed.not_failed,
        "submit errors": tally.submit_errors,
        "chaos thread errors": tally.thread_errors,
    }
    return Facts(
        runs=runs,
        invariants={name: len(items) for name, items in examples.items()},
        examples={k: v[:5] for k, v in examples.items() if v},
        latencies=killed.latencies,
        by_detector=dict(killed.by_detector),
        excluded=killed.excluded,
        during_outage=killed.during_outage,
        by_daemons_up=dict(killed.by_daemons_up),
    )


# --- the report -------------------------------------------------------------------------------


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def latency_row(name: str, values: Sequence[float]) -> str:
    if not values:
        return f"| {name} | 0 | - | - | - |"
    return (
        f"| {name} | {len(values)} | {fmt_ms(statistics.median(values))} | "
        f"{fmt_ms(percentile(values, 99))} | {fmt_ms(max(values))} |"
    )


def result_table(outcome: Outcome) -> list[str]:
    """The headline table (printed and in the report)."""
    lines = ["| check | result | must be |", "|---|---:|---|"]
    for name, count in outcome.invariants.items():
        lines.append(f"| {name} | {count} | 0 |")
    p50 = statistics.median(outcome.latencies) if outcome.latencies else None
    p99 = percentile(outcome.latencies, 99) if outcome.latencies else None
    bound = fmt_ms(outcome.bound)
    lines.append(f"| death -> FAILURE median | {fmt_ms(p50)} | < {bound} |")
    lines.append(f"| death -> FAILURE p99 | {fmt_ms(p99)} | < {bound} |")
    return lines


def storage_words(outcome: Outcome) -> str:
    """The headline's words on the storage (and the server's restart)."""
    restart = outcome.restart
    if outcome.settings.storage == "sqlite":
        return "on SQLite"
    if restart is None:
        return "on PostgreSQL (the server restart did not happen)"
    return (
        f"on PostgreSQL, whose server was restarted once in the middle "
        f"({restart.up - restart.began:.1f} s without a server)"
    )


def command_args(s: Settings) -> str:
    words = f"--runs {s.runs} --seed {s.seed} --poll {s.poll:g}"
    if s.storage != "sqlite":
        words += f" --storage {s.storage} --outage {s.outage:g}"
    return words


def setup_storage(outcome: Outcome) -> str:
    """The Setup section's storage line."""
    if outcome.settings.storage == "sqlite":
        return "Storage: SQLite in a temporary directory"
    line = (
        "Storage: PostgreSQL, a cluster of the script's own (`initdb` into a temporary "
        "directory, `pg_ctl` on a free port of 127.0.0.1, `fsync=off`), schema `runcore`"
    )
    restart = outcome.restart
    if restart is not None:
        line += (
            f". Restarted once when {restart.at_submitted} runs had been submitted and "
            f"{restart.in_progress} were in progress: `pg_ctl stop -m fast` took "
            f"{restart.stopped - restart.began:.2f} s, the server stayed down "
            f"{outcome.settings.outage:g} s, and accepted connections again "
            f"{restart.up - restart.began:.2f} s after the stop began"
        )
    return line


def render(outcome: Outcome) -> str:
    s = outcome.settings
    verdict = "PASS" if outcome.ok else "FAIL"
    low, high = s.daemon_kill_every
    orphan = sum(len(v) for k, v in outcome.latency_by_detector.items() if "monitoring" in k)
    lines = [
        "# runcore chaos report",
        "",
        f"**{verdict}**: {s.runs} runs submitted, {outcome.kills} workers and "
        f"{outcome.daemon_kills} daemons killed with SIGKILL, "
        f"{storage_words(outcome)}. Generated by `python benchmarks/chaos.py "
        f"{command_args(s)}` on {dt.date.today().isoformat()}.",
        "",
        *result_table(outcome),
        "",
        "## Runs",
        "",
        "| | count |",
        "|---|---:|",
        f"| runs submitted | {outcome.originals} |",
        f"| retry runs (made by the daemons) | {outcome.retries} |",
    ]
    for status, count in sorted(outcome.statuses.items()):
        lines.append(f"| ended {status} | {count} |")
    for kind, count in sorted(outcome.failure_kinds.items()):
        lines.append(f"| FAILURE of kind {kind} | {count} |")
    lines += [
        f"| worker processes killed | {outcome.kills} |",
        f"| ... of runs still STARTING (the worker was loading the job) | "
        f"{outcome.starting_kills} |",
        f"| ... of them orphaned (their daemon was dead) | {outcome.orphan_kills} |",
        f"| orphaned workers chosen for a kill (just after their daemon's) | "
        f"{outcome.orphans_chosen} |",
        f"| ... excluded from latency (the run ended before the kill landed) | "
        f"{outcome.excluded_kills} |",
    ]
    for why, count in sorted(outcome.kill_skips.items()):
        lines.append(f"| kills not made: {why} | {count} |")
    lines += [
        f"| daemons killed / started | {outcome.daemon_kills} / {outcome.daemons_started} |",
        "| daemons started to die mid-launch (after_starting / after_spawn) / that did | "
        f"{outcome.faults_armed['after_starting']} / {outcome.faults_armed['after_spawn']} / "
        f"{outcome.fault_deaths} |",
        "| daemons that exited by themselves (an error; by exit code) | "
        f"{dict(outcome.daemon_exits) or 0} |",
        f"| stranded launches given up by monitoring and requeued | {outcome.requeued_launches} |",
        f"| tracebacks in daemon logs | {outcome.daemon_tracebacks} |",
        f"| pool lease samples taken during the chaos | {outcome.lease_samples} |",
        "",
        "## Time from a worker's death to its run's FAILURE",
        "",
        f"Bound: p99 under 2 poll intervals = {fmt_ms(outcome.bound)} "
        f"(`run_monitoring.poll_interval_seconds: {s.poll:g}`). {orphan} of the failures were "
        "found by the other daemon's monitoring (worker orphaned by a killed daemon).",
        "",
        "| found by | n | median | p99 | max |",
        "|---|---:|---:|---:|---:|",
        latency_row("all", outcome.latencies),
    ]
    for name, values in sorted(outcome.latency_by_detector.items()):
        lines.append(latency_row(name, values))
    for up, values in sorted(outcome.by_daemons_up.items()):
        lines.append(latency_row(f"killed with {up} daemon(s) booted and alive", values))
    if outcome.restart is not None:
        lines.append(
            latency_row("left out: detection overlapped the outage", outcome.during_outage)
        )
    lines += [
        "",
        "## Timing",
        "",
        f"Wall time {outcome.wall:.1f} s: submitting {outcome.submit_seconds:.1f} s "
        f"(target {s.rate:g} runs/s), then {outcome.drain_seconds:.1f} s until every run "
        "and retry had ended.",
        "",
        "## Setup",
        "",
        f"- {setup_storage(outcome)}; `QueuedRunCoordinator`, "
        f"`max_concurrent_runs: {MAX_CONCURRENT_RUNS}`; pool `{chaos_jobs.POOL}` with "
        f"{POOL_LIMIT} slots at op granularity.",
        f"- Isolated runs: `SubprocessRunLauncher` (`warm_workers: {s.warm_workers}`), one "
        "worker process per run.",
        f"- `run_monitoring`: poll {s.poll:g} s, start timeout {START_TIMEOUT:g} s; "
        f"`run_retries`: `max_retries: {MAX_RETRIES}` (strategy `from_failure`, 20% of runs "
        "`all_steps`).",
        "- Two `runcore daemon --interval 0.05` processes on the storage; every "
        f"{low:g}-{high:g} s (once two have booted, for 1 s, and are not armed to die "
        "mid-launch, so that one is left to monitor) one (at random among those "
        "hosting running workers) is killed "
        "with SIGKILL, each running worker it had started is killed within 0.15 s with "
        f"probability {s.orphan_kill_probability:g} (at least one), and a new daemon is "
        "started. With probability "
        f"{s.stranded_probability:g} a new daemon is one that SIGKILLs itself in the middle "
        "of its first launch (`RUNCORE_FAULT=after_starting`: the run moved to STARTING, the "
        "launcher not called; or `after_spawn`: the worker process started, not recorded), "
        "and is replaced at once: the run it leaves in STARTING must be requeued (or started "
        "by its orphan worker), never lost or started twice.",
        f"- Jobs of `benchmarks/chaos_jobs.py` (2-5 steps of 10-60 ms), submitted at "
        f"{s.rate:g}/s while fewer than {s.max_queued} runs are queued; "
        f"{s.fail_probability:.0%} have an op that fails on cue (once, always, or with "
        "`Failure(allow_retry=False)`).",
        f"- The worker of a run is killed with probability {s.kill_probability:g}: a quarter "
        "of those as the worker loads the run (STARTING, within 0.1 s of its pid being "
        "recorded), the rest at a random time within "
        f"{s.kill_window:g} s of the run being seen STARTED (its steps take 70-300 ms).",
        "",
        "## Definitions",
        "",
        "- *runs lost*: runs not in a terminal status after the wait "
        f"(bounded by {s.drain_timeout:g} s).",
        "- *slots leaked*: pool leases held at the end, plus leases seen (sampled every "
        "0.25 s) held by a run whose status, read before the leases, was terminal.",
        "- *double starts*: runs with more than one RUN_START event, more RUN_STARTING events "
        "than launch attempts (one, plus one per attempt monitoring gave up and requeued), or "
        "a step with more than one STEP_START.",
        "- *limits exceeded*: replaying the event log in storage order, a moment with more "
        f"than {MAX_CONCURRENT_RUNS} runs in progress (RUN_STARTING to the run's end or "
        f"requeue) or more than {POOL_LIMIT} steps of pool ops between their STEP_START and "
        "their end (or their run's).",
        "- *missed / duplicate / unwanted retries*: a FAILURE run the policy retries with no "
        "child run; a run with more than one child; a child of a run the policy does not retry.",
        "- *killed runs not failed*: runs whose worker was killed before they ended that did "
        "not end FAILURE.",
        "- *death -> FAILURE*: timestamp of the run's RUN_FAILURE event minus the time just "
        "before `os.kill`; runs that ended before the kill landed are left out"
        + (
            ", and so are kills whose window (kill to RUN_FAILURE) overlaps the server's "
            "outage, reported on their own row."
            if s.storage != "sqlite"
            else "."
        ),
    ]
    if outcome.examples:
        lines += ["", "## Violations (first examples)", ""]
        for name, items in outcome.examples.items():
            lines.append(f"- {name}:")
            lines += [f"  - `{item}`" for item in items]
    if outcome.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in outcome.notes]]
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------


def instance_config(
    tmp: Path, settings: Settings, postgres_url: str | None = None
) -> dict[str, Any]:
    storage: dict[str, Any] = {"sqlite": {"path": str(tmp / "runs.db")}}
    if postgres_url is not None:
        storage = {"postgres": {"url": postgres_url, "schema": "runcore"}}
    config: dict[str, Any] = {
        "storage": storage,
        # Step outputs where every process finds them (a from_failure retry reuses them);
        # SQLite's default is this very directory, a server's is memory.
        "outputs": {"path": str(tmp / "outputs")},
        "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
        "concurrency": {
            "runs": {"max_concurrent_runs": MAX_CONCURRENT_RUNS},
            "pools": {"granularity": "op"},
        },
        "run_monitoring": {
            "enabled": True,
            "poll_interval_seconds": settings.poll,
            "start_timeout_seconds": START_TIMEOUT,
            "cancel_timeout_seconds": START_TIMEOUT,
        },
        "run_retries": {"enabled": True, "max_retries": MAX_RETRIES},
    }
    if settings.warm_workers:
        config["run_launcher"] = {
            "class": "runcore.launchers:SubprocessRunLauncher",
            "config": {"warm_workers": settings.warm_workers, "preload": [LOCATION]},
        }
    return config


def run_chaos(settings: Settings) -> Outcome:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="runcore-chaos-"))
    cluster: _pgcluster.TestCluster | None = None
    if settings.storage == "postgres":
        cluster = _pgcluster.TestCluster(prefix="runcore-chaos-pg-").start()
    try:
        return _run_chaos(settings, started, tmp, cluster)
    finally:
        if cluster is not None:
            cluster.close(remove=not settings.keep)


def chaos_threads(
    *,
    storage: rc.InstanceStorage,
    daemons: Daemons,
    settings: Settings,
    tally: Tally,
    stop: threading.Event,
    cluster: _pgcluster.TestCluster | None,
) -> list[threading.Thread]:
    """The chaos threads (not started): the worker killer, the daemon killer and, on
    PostgreSQL, the server restarter."""
    killer = WorkerKiller(
        storage=storage, daemons=daemons, settings=settings, tally=tally, stop=stop
    )
    threads: list[threading.Thread] = [
        killer,
        DaemonKiller(
            storage=storage,
            daemons=daemons,
            killer=killer,
            settings=settings,
            tally=tally,
            stop=stop,
        ),
    ]
    if cluster is not None:
        threads.append(
            ServerRestarter(
                cluster=cluster, storage=storage, settings=settings, tally=tally, stop=stop
            )
        )
    return threads


def _run_chaos(
    settings: Settings, started: float, tmp: Path, cluster: _pgcluster.TestCluster | None
) -> Outcome:
    config = instance_config(tmp, settings, cluster.url if cluster is not None else None)
    config_path = tmp / "runcore.yaml"
    config_path.write_text(yaml.safe_dump(config))
    tally = Tally()
    daemons = Daemons(config_path, tmp, tally)
    # The submitter's instance: the same storage, and no warm workers of its own.
    submitter_config = {k: v for k, v in config.items() if k != "run_launcher"}
    instance = rc.Instance.from_config(submitter_config)
    stop = threading.Event()
    outcome: Outcome | None = None
    try:
        instance.set_pool_limit(chaos_jobs.POOL, POOL_LIMIT)
        daemons.start()
        daemons.start()
        storage = instance.storage
        threads = chaos_threads(
            storage=storage,
            daemons=daemons,
            settings=settings,
            tally=tally,
            stop=stop,
            cluster=cluster,
        )
        for thread in threads:
            thread.start()
        t0 = time.monotonic()
        try:
            submitted = submit_all(instance, settings, tally, random.Random(settings.seed))
        finally:
            submit_seconds = time.monotonic() - t0
            stop.set()
            deadline = time.monotonic() + 120  # a restart under way is let finish
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        # The chaos is over: daemons that died at their fault point since are replaced by
        # plain ones, so that two daemons serve the drain.
        for _ in range(daemons.reap_fault_deaths()):
            daemons.start()
        drained = drain(Checker(storage), settings.drain_timeout)
        facts = analyse(storage, tally, daemons)
        runs = facts.runs
        outcome = Outcome(
            settings=settings,
            wall=0.0,
            submit_seconds=submit_seconds,
            drain_seconds=drained,
            statuses=Counter(r.status.value for r in runs),
            failure_kinds=Counter(
                r.failure_kind.value if r.failure_kind else "?"
                for r in runs
                if r.status is rc.RunStatus.FAILURE
            ),
            originals=len(submitted),
            retries=sum(1 for r in runs if r.parent_run_id),
            invariants=facts.invariants,
            examples=facts.examples,
            kills=len(tally.kills),
            orphan_kills=sum(1 for k in tally.kills if k.orphan),
            orphans_chosen=tally.orphans_chosen,
            starting_kills=sum(1 for k in tally.kills if k.status == "STARTING"),
            kill_skips=tally.kill_skips,
            excluded_kills=facts.excluded,
            latencies=facts.latencies,
            latency_by_detector=facts.by_detector,
            daemon_kills=tally.daemon_kills,
            daemons_started=tally.daemons_started,
            faults_armed=tally.faults_armed,
            fault_deaths=tally.fault_deaths,
            daemon_exits=tally.daemon_exits,
            requeued_launches=sum(
                1
                for r in runs
                for e in instance.get_events(r.run_id, event_types=[rc.EventType.RUN_ENQUEUED])
                if "recorded no worker" in e.message
            ),
            daemon_tracebacks=0,
            lease_samples=tally.lease_samples,
            notes=[],
            restart=tally.restart,
            during_outage=facts.during_outage,
            by_daemons_up=facts.by_daemons_up,
        )
        if cluster is not None and tally.restart is None:
            outcome.invariants["chaos thread errors"] += 1
            outcome.examples.setdefault("chaos thread errors", []).append(
                "the PostgreSQL server was not restarted"
            )
    finally:
        stop.set()
        daemons.stop()
        instance.close()
    outcome.daemon_tracebacks = daemons.log_errors()
    outcome.wall = time.monotonic() - started
    if outcome.ok and not settings.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        outcome.notes.append(f"The instance and the daemon logs were kept in `{tmp}`.")
    return outcome


def parse_args(argv: Iterable[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=None, help="runs to submit (default 500)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--poll", type=float, default=0.5, help="run_monitoring.poll_interval_seconds (0.5)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the Markdown report (default benchmarks/CHAOS.md, on PostgreSQL CHAOS-postgres.md)",
    )
    parser.add_argument(
        "--storage",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="SQLite in a temporary directory (default), or a PostgreSQL cluster of the "
        "script's own (initdb/pg_ctl on a free port), restarted once mid-run",
    )
    parser.add_argument(
        "--outage",
        type=float,
        default=3.0,
        help="seconds the PostgreSQL server stays down in its restart (3)",
    )
    parser.add_argument("--quick", action="store_true", help="60 runs, daemon kills more often")
    parser.add_argument("--rate", type=float, default=6.0, help="submissions per second (6)")
    parser.add_argument("--warm", type=int, default=2, help="warm workers per daemon (2)")
    parser.add_argument(
        "--drain-timeout", type=float, default=90.0, help="seconds to wait for the runs to end"
    )
    parser.add_argument("--keep", action="store_true", help="keep the instance directory")
    parser.add_argument(
        "--stranded",
        type=float,
        default=0.3,
        help="chance that a new daemon dies mid-launch, stranding a run in STARTING (0.3)",
    )
    args = parser.parse_args(None if argv is None else list(argv))
    runs = args.runs if args.runs is not None else (60 if args.quick else 500)
    if runs < 1 or args.poll <= 0 or args.rate <= 0 or args.warm < 0 or args.outage < 0:
        parser.error("--runs, --poll and --rate must be > 0, --warm and --outage >= 0")
    if args.storage == "postgres" and (problem := _pgcluster.missing()) is not None:
        parser.error(f"--storage postgres needs a PostgreSQL cluster of its own: {problem}")
    out = args.out
    if out is None:
        out = BENCH_DIR / ("CHAOS.md" if args.storage == "sqlite" else f"CHAOS-{args.storage}.md")
    return Settings(
        runs=runs,
        seed=args.seed,
        poll=args.poll,
        out=out,
        rate=args.rate,
        max_queued=16,
        warm_workers=args.warm,
        kill_probability=0.3,
        kill_window=0.25,
        daemon_kill_every=(1.0, 2.5) if args.quick else (3.0, 8.0),
        orphan_kill_probability=0.75,
        stranded_probability=args.stranded,
        fail_probability=0.15,
        drain_timeout=args.drain_timeout,
        keep=args.keep,
        storage=args.storage,
        outage=args.outage,
    )


def main(argv: Iterable[str] | None = None) -> int:
    settings = parse_args(argv)
    # The connection pool's warnings while the server is down: the report counts what matters.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    print(
        f"chaos: {settings.runs} runs on {settings.storage}, seed {settings.seed}, "
        f"poll {settings.poll:g} s, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs",
        flush=True,
    )
    outcome = run_chaos(settings)
    print("\n".join(result_table(outcome)))
    print(
        f"runs: {outcome.originals} submitted + {outcome.retries} retries; kills: "
        f"{outcome.kills} workers ({outcome.orphan_kills} orphaned), {outcome.daemon_kills} "
        f"daemons; wall {outcome.wall:.1f} s"
    )
    if settings.storage != "sqlite":
        print(storage_words(outcome))
    for name, items in outcome.examples.items():
        print(f"  {name}: {'; '.join(items)}")
    for note in outcome.notes:
        print(note)
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(render(outcome))
    print(f"{'PASS' if outcome.ok else 'FAIL'}: report written to {settings.out}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
