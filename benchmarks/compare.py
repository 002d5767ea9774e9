"""Compare runcore with an earlier runcore, side by side on this machine: did a change slow it?

    python benchmarks/compare.py --base b1b0f1f                 # every runcore row, base vs HEAD
    python benchmarks/compare.py --base b1b0f1f --only queued   # rows matching, as run.py --only
    python benchmarks/compare.py --base b1b0f1f --head main     # two commits, neither the tree
    python benchmarks/compare.py --base v0.1.0 --rounds 3 --out benchmarks/COMPARE.md

Figures recorded on another day are not comparable: this machine's speed drifts with its load
by more than the 10 % a regression check needs. So this script checks the base commit out into
a temporary git worktree and runs each runcore case of ``run.py``'s catalogue for the base and
for the working tree, alternately (base, head, base, head, ...), each in a fresh
``worker.py runcore CASE`` process, with the tree's ``src/`` first on ``PYTHONPATH``. Both sides
run today's benchmark code, so only the library differs. A figure's value is the median of its
rounds; a row is *slower* when head is more than ``--tolerance`` (10 %) worse than base.

Dagster is not run. Exits 1 if a row is slower or a case fails for head, 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _report import Outcome, fmt_value
from _specs import all_rows
from run import REPO_SRC, _git_commit, _load, log, run_worker, select, unique_cases

BENCH_DIR = Path(__file__).resolve().parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit (or tag) to compare with")
    parser.add_argument(
        "--head", default=None, help="the commit to compare (default: the working tree)"
    )
    parser.add_argument("--only", help="run only rows whose name or case key contains this")
    parser.add_argument(
        "--exclude", action="append", default=[], help="leave out rows containing this"
    )
    parser.add_argument("--rounds", type=int, default=2, help="runs of each case per side (2)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sizes")
    parser.add_argument(
        "--tolerance", type=float, default=0.10, help="how much worse counts as slower (0.10)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write a Markdown report")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.tolerance < 0:
        parser.error("--rounds must be >= 1 and --tolerance >= 0")
    return args


@contextmanager
def base_tree(commit: str) -> Iterator[Path]:
    """A temporary worktree of ``commit`` (so edits made meanwhile change nothing); yields its
    ``src/``."""
    top = BENCH_DIR.parent
    with tempfile.TemporaryDirectory(prefix="runcore-base-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(tree), commit],
            cwd=top,
            check=True,
        )
        try:
            yield tree / "src"
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=top, check=False
            )


def env_for(src: Path) -> dict[str, str]:
    """The workers' environment with ``src`` first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def worse_by(base: dict[str, Any], head: dict[str, Any]) -> float | None:
    """How much worse head is than base, as a fraction (negative: better); ``None`` if the
    figures are not a time or a rate."""
    unit, b, h = base["unit"], base["value"], head["value"]
    if unit != head["unit"] or b <= 0 or h <= 0:
        return None
    if unit in ("ms", "KiB"):
        return float(h / b - 1)
    if unit == "/s":
        return float(b / h - 1)
    return None


def median_measurement(outcomes: list[Outcome], metric: str) -> dict[str, Any] | None:
    """The median of one metric over the rounds that measured it."""
    found = [o.metrics[metric] for o in outcomes if not o.error and metric in o.metrics]
    if not found:
        return None
    return {"value": statistics.median(m["value"] for m in found), "unit": found[0]["unit"]}


def compare(args: argparse.Namespace) -> tuple[list[str], bool]:
    """Run the cases for both trees; the report's lines and whether head held."""
    rows = [
        r
        for r in select(all_rows(), args.only)
        if r.case.runcore is not None
        and not any(x.lower() in f"{r.name} {r.case.key}".lower() for x in args.exclude)
    ]
    cases = [c for c in unique_cases(rows) if c.runcore is not None]
    outcomes: dict[tuple[str, str], list[Outcome]] = {}
    with contextlib.ExitStack() as stack:
        base_src = stack.enter_context(base_tree(args.base))
        head_src = REPO_SRC if args.head is None else stack.enter_context(base_tree(args.head))
        trees = {"base": env_for(base_src), "head": env_for(head_src)}
        for number, case in enumerate(cases, 1):
            assert case.runcore is not None
            params = case.runcore.resolve(args.quick)
            for round_ in range(args.rounds):
                for side, env in trees.items():
                    log(f"[{number}/{len(cases)}] {case.key} / {side} round {round_ + 1} ...")
                    outcome = run_worker("runcore", case.case, params, env)
                    if outcome.error:
                        log(outcome.error)
                    outcomes.setdefault((case.key, side), []).append(outcome)
    lines = [
        "| benchmark | base | head | change | result |",
        "|---|---:|---:|---:|---|",
    ]
    ok = True
    for row in rows:
        base = median_measurement(outcomes.get((row.case.key, "base"), []), row.metric)
        head = median_measurement(outcomes.get((row.case.key, "head"), []), row.metric)
        if head is None:
            ok = False
            lines.append(f"| {row.name} | {_cell(base)} | ERROR | - | FAIL |")
            continue
        change = None if base is None else worse_by(base, head)
        if change is None:
            verdict, shown = "-", "-"
        else:
            slower = change > args.tolerance
            ok = ok and not slower
            verdict = "SLOWER" if slower else "ok"
            shown = f"{change:+.0%} {'worse' if change > 0 else 'better'}"
        lines.append(f"| {row.name} | {_cell(base)} | {fmt_value(head)} | {shown} | {verdict} |")
    return lines, ok


def _cell(measurement: dict[str, Any] | None) -> str:
    return "n/a (base cannot run this case)" if measurement is None else fmt_value(measurement)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    before = _load()
    table, ok = compare(args)
    head = args.head or f"{_git_commit()} (working tree)"
    header = [
        "# runcore: base vs head, side by side",
        "",
        f"`python benchmarks/compare.py {' '.join(argv)}` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cpus, Python "
        f"{platform.python_version()}; base `{args.base}`, head `{head}`; "
        f"{args.rounds} alternating rounds per side, medians; load average {before} before, "
        f"{_load()} after. *change*: how much worse head is than base (time: head/base - 1; "
        f"rate: base/head - 1); *SLOWER* beyond {args.tolerance:.0%}.",
        "",
    ]
    report = "\n".join([*header, *table, ""])
    print(report)
    if args.out:
        args.out.write_text(report)
    print("PASS" if ok else "FAIL: a row is slower or failed", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
