"""Instructions runcore executes on its hot paths, base commit vs head: a CPU check that the
machine's load cannot move.

    python benchmarks/instructions.py --base b1b0f1f            # base vs the working tree
    python benchmarks/instructions.py --base b1b0f1f --head main --out /tmp/instructions.md

Wall-clock figures on a small shared machine drift by more than the 10 % a regression check
needs (``compare.py`` shows +-25 % between rounds). valgrind's callgrind counts the user-space
instructions a process executes, the same on a busy machine as on an idle one, so a CPU-bound
path can be compared exactly: each probe runs once with ``N`` repetitions and once with none,
under ``valgrind --tool=callgrind``, and the difference divided by ``N`` is the cost of one.
Time spent in the kernel (fsync, pipes) and waiting (threads, locks) is not counted: those
show in ``compare.py``'s wall-clock rows.

Probes: ``import runcore`` (a fresh interpreter, nothing subtracted), ``execute_in_process`` of
a one-op job on the in-memory storage, one ``store_event`` on SQLite, one cold run worker
(``python -m runcore worker execute-run`` of a one-op job on SQLite, start to exit), and a
freshly started daemon's first dequeue pass over 2,000 queued runs all held by limits (the
database is filled natively by each side's own runcore, then copied for each valgrind run;
the pass is measured as the run with it minus the run without). Needs
``valgrind`` on the PATH (Debian: ``apt-get install valgrind``); both versions run today's
probe code from the temporary worktree ``compare.py`` uses.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from compare import base_tree, env_for
from run import REPO_SRC, _git_commit

BENCH_DIR = Path(__file__).resolve().parent

#: name -> (script, repetitions, what one repetition is). The script takes the repetition
#: count as its first argument.
PROBES: dict[str, tuple[str, int, str]] = {
    "import": ("import runcore\n", 0, "`python -c 'import runcore'`, whole process"),
    "execute_in_process": (
        """
        import sys
        import runcore as rc

        def one():
            return 1

        job = rc.job("single", [rc.op(name="op_0")(one)])
        for _ in range(20 + int(sys.argv[1])):
            job.execute_in_process()
        """,
        300,
        "one `execute_in_process()`, 1 op, in-memory storage",
    ),
    "store_event": (
        """
        import sys, tempfile
        import runcore as rc
        from runcore.storage.sqlite import SqliteStorage
        storage = SqliteStorage(tempfile.mkdtemp() + "/runs.db")
        storage.start()
        run = rc.Run(job_name="x")
        storage.add_run(run)
        for i in range(10 + int(sys.argv[1])):
            storage.store_event(rc.Event(run_id=run.run_id, event_type=rc.EventType.LOG))
        """,
        2000,
        "one `store_event` on SQLite (its own transaction)",
    ),
}

#: Prepares a STARTING run for a cold worker; prints the worker's arguments as JSON.
_PREPARE_COLD = """
import json, sys
import runcore as rc
import runcore_launch_jobs as jobs
home = sys.argv[1]
config = {"storage": {"sqlite": {"path": home + "/runs.db"}},
          "run_launcher": {"class": "runcore.testing:RecordingLauncher"}}
with rc.Instance.from_config(config) as inst:
    run = inst.submit_run(jobs.single, code_location=jobs.LOCATION)
    run = inst.storage.get_run(run.run_id)
args = ["worker", "execute-run", run.run_id, "--instance",
        json.dumps({"storage": {"sqlite": {"path": home + "/runs.db"}}})]
if getattr(run, "attempt_id", None):
    args += ["--attempt", run.attempt_id]
print(json.dumps(args))
"""


#: Fills a SQLite database with the blocked queue of ``bench_runcore``'s dequeue case.
_PREPARE_QUEUE = """
import sys
import bench_runcore as b
b._fill_blocked_queue({"sqlite": {"path": sys.argv[1]}}, int(sys.argv[2]))
"""

#: One first dequeue pass (argument 1) or none (0) on a copy of the prepared database.
_FIRST_PASS = """
import shutil, sys, tempfile
import orjson  # loaded by whatever read a run first (the fill does, in compare.py's case)
import runcore as rc
import bench_runcore as b
path = tempfile.mkdtemp() + "/runs.db"
shutil.copy(sys.argv[2], path)
with b._queued_instance({"sqlite": {"path": path}}, limits=True) as inst:
    daemon = rc.Daemon(inst)
    if int(sys.argv[1]):
        result = daemon.dequeue_once()
        assert result is not None and not result.launched, result
"""

#: Queued runs in the first-pass probe.
QUEUED = 2000


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit (or tag) to compare with")
    parser.add_argument(
        "--head", default=None, help="the commit to compare (default: the working tree)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.10, help="how much more counts as slower (0.10)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write a Markdown report")
    return parser.parse_args(argv)


def _callgrind(args: list[str], env: dict[str, str]) -> int:
    """The instructions ``args`` (a Python command line) executes, per callgrind."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *args],
        env=env,
        cwd=BENCH_DIR,
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(args)} failed under valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def measure(src: Path) -> dict[str, int]:
    """Instructions per repetition of each probe, for the runcore at ``src``."""
    env = env_for(src)
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(BENCH_DIR)])
    out: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="runcore-instructions-") as tmp:
        for name, (script, reps, _) in PROBES.items():
            path = Path(tmp) / f"{name}.py"
            path.write_text(textwrap.dedent(script))
            full = _callgrind([sys.executable, str(path), str(reps)], env)
            bare = _callgrind([sys.executable, str(path), "0"], env) if reps else 0
            out[name] = (full - bare) // max(reps, 1)
        prepare = Path(tmp) / "prepare_cold.py"
        prepare.write_text(_PREPARE_COLD)
        home = Path(tmp) / "cold"
        home.mkdir()
        worker_args = json.loads(
            subprocess.run(
                [sys.executable, str(prepare), str(home)],
                env=env,
                cwd=BENCH_DIR,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        out["cold_worker"] = _callgrind([sys.executable, "-m", "runcore", *worker_args], env)
        out["first_pass"] = _first_pass(Path(tmp), env)
    return out


def _first_pass(tmp: Path, env: dict[str, str]) -> int:
    """Instructions of a fresh daemon's first dequeue pass over :data:`QUEUED` held runs."""
    (tmp / "prepare_queue.py").write_text(_PREPARE_QUEUE)
    (tmp / "first_pass.py").write_text(_FIRST_PASS)
    db = tmp / "queue.db"
    subprocess.run(
        [sys.executable, str(tmp / "prepare_queue.py"), str(db), str(QUEUED)],
        env=env,
        cwd=BENCH_DIR,
        capture_output=True,
        check=True,
    )
    script = str(tmp / "first_pass.py")
    return _callgrind([sys.executable, script, "1", str(db)], env) - _callgrind(
        [sys.executable, script, "0", str(db)], env
    )


WHAT = {name: what for name, (_, _, what) in PROBES.items()}
WHAT["cold_worker"] = "one cold run worker, 1-op job on SQLite, start to exit"
WHAT["first_pass"] = f"a fresh daemon's first dequeue pass, {QUEUED:,} runs held by limits, SQLite"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    with base_tree(args.base) as base_src:
        base = measure(base_src)
    if args.head is None:
        head_name = f"{_git_commit()} (working tree)"
        head = measure(REPO_SRC)
    else:
        head_name = args.head
        with base_tree(args.head) as head_src:
            head = measure(head_src)
    lines = [
        "# runcore: instructions, base vs head",
        "",
        f"`python benchmarks/instructions.py --base {args.base}`; base `{args.base}`, head "
        f"`{head_name}`; valgrind callgrind, user-space instructions per repetition.",
        "",
        "| probe | base | head | change | result |",
        "|---|---:|---:|---:|---|",
    ]
    held = True
    for name, what in WHAT.items():
        change = head[name] / base[name] - 1
        slower = change > args.tolerance
        held = held and not slower
        lines.append(
            f"| {what} | {base[name]:,} | {head[name]:,} | {change:+.0%} | "
            f"{'SLOWER' if slower else 'ok'} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())
