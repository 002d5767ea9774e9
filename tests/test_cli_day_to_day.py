"""Day-to-day use of the ``runcore`` command (issue 11): real processes, real SQLite files.

Ctrl-C tests drive a real terminal (a pty) and send SIGINT through it; run them inside a
child pid namespace (``unshare --pid --fork --mount-proc``), as every signal-sending test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runcore.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent

PIPELINE = textwrap.dedent(
    """
    import asyncio
    import os
    import signal
    import subprocess
    import sys
    import time

    import runcore as rc

    @rc.op
    def talk() -> int:
        print("hello on stdout")
        print("oops on stderr", file=sys.stderr)
        subprocess.run([sys.executable, "-c", "print('from a child process')"], check=True)
        return 1

    @rc.op
    async def later(talk: int) -> int:
        await asyncio.sleep(0.01)
        print("async op done")
        return talk + 1

    @rc.op
    def loud() -> None:
        line = "x" * 999
        for _ in range(1200):  # 1.2 MB: past the 1 MiB a run keeps
            print(line)

    @rc.op
    def slow() -> None:
        print("slow started", flush=True)
        time.sleep(120)

    @rc.op
    def stubborn() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stubborn started", flush=True)
        time.sleep(120)

    @rc.op
    def explode() -> None:
        raise RuntimeError("the disk is full")

    defs = rc.Definitions(jobs=[
        rc.job("talk", [talk, later]),
        rc.job("talk_threads", [talk, later], executor=rc.ThreadPoolExecutor()),
        rc.job("talk_procs", [talk, later], executor=rc.MultiprocessExecutor(2)),
        rc.job("loud", [loud]),
        rc.job("slow", [slow]),
        rc.job("stubborn", [stubborn]),
        rc.job("fails", [explode]),
    ])
    """
)


def runcore(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runcore", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    return tmp_path


def run_ids(project: Path) -> list[str]:
    listed = runcore(project, "runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return [r["run_id"] for r in json.loads(listed.stdout)]


# --- live output --------------------------------------------------------------------------------


@pytest.mark.parametrize("job", ["talk", "talk_threads", "talk_procs"])
@pytest.mark.parametrize("isolation", ["isolated", "non_isolated"])
def test_output_is_captured_with_its_stream(project: Path, job: str, isolation: str) -> None:
    tags = ["--tag", "runcore/isolation=non_isolated"] if isolation == "non_isolated" else []
    done = runcore(project, "job", "execute", "pipeline.py:defs", job, *tags)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_id,) = run_ids(project)
    logs = runcore(project, "runs", "logs", run_id[:6], "--json")
    assert logs.returncode == 0, logs.stderr
    events = [json.loads(line) for line in logs.stdout.splitlines()]
    lines = {
        (e["data"]["stream"], e["message"])
        for e in events
        if e["event_type"] == "LOG" and "stream" in e.get("data", {})
    }
    assert ("stdout", "hello on stdout") in lines
    assert ("stderr", "oops on stderr") in lines
    assert ("stdout", "async op done") in lines  # the async op ran, and its print was caught
    if isolation == "isolated":  # the whole process's output, children included
        assert ("stdout", "from a child process") in lines
    # The output is stored before the run's end.
    kinds = [e["event_type"] for e in events]
    assert kinds[-1] == "RUN_SUCCESS"


def test_captured_output_is_bounded_and_the_truncation_marked(project: Path) -> None:
    done = runcore(project, "job", "execute", "pipeline.py:defs", "loud")
    assert done.returncode == 0, done.stderr
    (run_id,) = run_ids(project)
    logs = runcore(project, "runs", "logs", run_id, "--json")
    events = [json.loads(line) for line in logs.stdout.splitlines()]
    stored = [e for e in events if e["event_type"] == "LOG" and e["message"].startswith("xxx")]
    assert sum(len(e["message"]) + 1 for e in stored) <= 1024 * 1024
    assert len(stored) < 1200
    marks = [e for e in events if e.get("data", {}).get("truncated")]
    assert len(marks) == 2  # where it was cut, and how much was dropped
    assert "output truncated" in marks[0]["message"]
    assert "lines" in marks[1]["message"] and "were dropped" in marks[1]["message"]


def test_runs_logs_follow_streams_until_the_run_ends(project: Path) -> None:
    (project / "runcore.yaml").write_text(
        "storage:\n  sqlite: {path: state/runs.db}\n"
        "run_coordinator:\n  class: runcore.coordinators:QueuedRunCoordinator\n"
    )
    submitted = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runcore as rc\n"
            "inst = rc.Instance.from_config('runcore.yaml')\n"
            "print(inst.submit_run('talk', code_location='pipeline.py:defs').run_id)\n"
            "inst.close()\n",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )
    run_id = submitted.stdout.strip()
    follower = subprocess.Popen(
        [sys.executable, "-m", "runcore", "runs", "logs", run_id[:8], "--follow"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "runcore", "daemon", "--interval", "0.05"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, err = follower.communicate(timeout=60)
    finally:
        daemon.terminate()
        daemon_out, _ = daemon.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert "RUN_ENQUEUED" in out and "hello on stdout" in out and "RUN_SUCCESS" in out
    # The daemon logs one structured line per admission, launch and finish.
    assert f"event=run_admitted run_id={run_id}" in daemon_out
    assert f"event=run_launched run_id={run_id}" in daemon_out
    assert f"event=run_finished run_id={run_id} job=talk status=SUCCESS" in daemon_out


def test_job_execute_prints_one_line_per_event_when_not_a_terminal(project: Path) -> None:
    ok = runcore(project, "job", "execute", "pipeline.py:defs", "talk")
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"STEP_START\s+talk", ok.stdout)
    assert re.search(r"stdout\s+talk\s+hello on stdout", ok.stdout)
    assert " SUCCESS in " in ok.stdout
    failed = runcore(project, "job", "execute", "pipeline.py:defs", "fails", "--plain")
    assert failed.returncode == 1
    assert "STEP_FAILURE" in failed.stdout and "the disk is full" in failed.stdout


# --- a real terminal: live progress and Ctrl-C ---------------------------------------------------


def _spawn_on_pty(project: Path, *args: str) -> tuple[int, int]:
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(project)
        os.environ["COLUMNS"] = "100"
        os.execv(sys.executable, [sys.executable, "-m", "runcore", *args])
    return pid, fd


def _read_until(fd: int, pattern: str, timeout: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536).decode(errors="replace")
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            if re.search(pattern, seen):
                return seen
    raise AssertionError(f"{pattern!r} did not appear; the terminal showed:\n{seen}")


def _exit_code(pid: int, fd: int, timeout: float = 60) -> tuple[int, str]:
    rest = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            with contextlib.suppress(OSError):
                rest += os.read(fd, 65536).decode(errors="replace")
        if done:
            return os.waitstatus_to_exitcode(status), rest
    os.kill(pid, 9)
    raise AssertionError(f"the command did not exit; it showed:\n{rest}")


def test_live_progress_on_a_terminal(project: Path) -> None:
    pid, fd = _spawn_on_pty(project, "job", "execute", "pipeline.py:defs", "talk")
    code, shown = _exit_code(pid, fd)
    assert code == 0, shown
    assert "SUCCESS" in shown


@pytest.mark.slow
def test_ctrl_c_cancels_and_waits_exit_130(project: Path) -> None:
    pid, fd = _spawn_on_pty(project, "job", "execute", "pipeline.py:defs", "slow")
    shown = _read_until(fd, "steps:", 60)  # the live view of steps is drawn
    shown += _read_until(fd, "slow started", 60)
    os.write(fd, b"\x03")  # Ctrl-C, through the terminal
    shown += _read_until(fd, "canceling run", 30)
    code, rest = _exit_code(pid, fd)
    assert code == 130, shown + rest
    assert "CANCELED" in rest
    (run_id,) = run_ids(project)
    shown_run = runcore(project, "runs", "show", run_id[:8], "--json")
    assert json.loads(shown_run.stdout)["run"]["status"] == "CANCELED"


@pytest.mark.slow
def test_second_ctrl_c_forces_exit_137(project: Path) -> None:
    pid, fd = _spawn_on_pty(project, "job", "execute", "pipeline.py:defs", "stubborn")
    shown = _read_until(fd, "stubborn started", 60)
    os.write(fd, b"\x03")
    shown += _read_until(fd, "Ctrl-C again to force", 30)
    time.sleep(0.3)
    os.write(fd, b"\x03")
    shown += _read_until(fd, "forcing run", 30)
    code, rest = _exit_code(pid, fd)
    assert code == 137, shown + rest
    (run_id,) = run_ids(project)
    run = json.loads(runcore(project, "runs", "show", run_id, "--json").stdout)["run"]
    assert run["status"] == "CANCELED"


# --- ids, tables, JSON ----------------------------------------------------------------------------


def _submit_with_ids(project: Path, *ids: str, tags: str = "{}") -> None:
    (project / "runcore.yaml").write_text(
        "storage:\n  sqlite: {path: .runcore/runs.db}\n"
        "run_coordinator:\n  class: runcore.coordinators:QueuedRunCoordinator\n"
    )
    script = (
        "import runcore as rc\n"
        "inst = rc.Instance.from_config('runcore.yaml')\n"
        f"for run_id in {list(ids)!r}:\n"
        f"    inst.submit_run('talk', {tags}, code_location='pipeline.py:defs', run_id=run_id)\n"
        "inst.close()\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=project, check=True, timeout=60)


def test_run_id_prefixes(project: Path) -> None:
    first = "abcd1111-0000-4000-8000-000000000001"
    second = "abcd2222-0000-4000-8000-000000000002"
    _submit_with_ids(project, first, second)
    for command in (["runs", "show"], ["runs", "logs"], ["runs", "why"], ["runs", "cancel"]):
        ambiguous = runcore(project, *command, "abcd")
        assert ambiguous.returncode == 2, ambiguous.stdout
        assert "AmbiguousRunIdError" in ambiguous.stderr
        assert first in ambiguous.stderr and second in ambiguous.stderr
    unknown = runcore(project, "runs", "show", "ffff")
    assert unknown.returncode == 2 and "no run with id 'ffff'" in unknown.stderr
    short = runcore(project, "runs", "show", "abc")
    assert short.returncode == 2 and "at least 4" in short.stderr
    unique = runcore(project, "runs", "show", "abcd1")
    assert unique.returncode == 0, unique.stderr
    assert f"run {first}" in unique.stdout
    why = runcore(project, "runs", "why", "ABCD2222")  # any case
    assert "position 2 of 2 (1 queued ahead of it)" in why.stdout
    cancel = runcore(project, "runs", "cancel", "abcd2")
    assert cancel.returncode == 0 and f"run {second}: CANCELED" in cancel.stdout


def test_runs_list_fits_100_columns_and_hides_runcore_tags(project: Path) -> None:
    _submit_with_ids(
        project,
        "abcd1111-0000-4000-8000-000000000001",
        tags="{'team': 'data', 'runcore/priority': '5', 'owner': 'someone-with-a-long-name'}",
    )
    listed = runcore(project, "runs", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["RUN", "STATUS", "JOB", "STARTED", "TOOK", "TAGS"]
    assert all(len(line) <= 100 for line in lines)
    assert lines[1].startswith("abcd1111 ") and "QUEUED" in lines[1]
    assert "team=data" in listed.stdout and "runcore/priority" not in listed.stdout
    every = runcore(project, "runs", "list", "--all-tags")
    assert "runcore/priority=5" in every.stdout


def test_every_read_command_speaks_json(project: Path) -> None:
    run_id = "abcd1111-0000-4000-8000-000000000001"
    _submit_with_ids(project, run_id)
    assert runcore(project, "instance", "concurrency", "set", "db", "1").returncode == 0
    for args in (
        ["job", "list", "pipeline.py:defs"],
        ["runs", "list"],
        ["runs", "show", run_id],
        ["runs", "why", run_id],
        ["instance", "concurrency", "get", "db"],
        ["instance", "concurrency", "list"],
    ):
        result = runcore(project, *args, "--json")
        assert result.returncode == 0, (args, result.stderr)
        json.loads(result.stdout)
    logs = runcore(project, "runs", "logs", run_id, "--json")
    assert [json.loads(line)["event_type"] for line in logs.stdout.splitlines()] == ["RUN_ENQUEUED"]
    status = runcore(project, "daemon", "status", "--json")
    assert status.returncode == 1 and json.loads(status.stdout) == []
    why = json.loads(runcore(project, "runs", "why", run_id, "--json").stdout)
    assert why["position"] == 1 and why["status"] == "QUEUED"


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["runs", "list", "--limit", "-3"], "--limit"),
        (["runs", "list", "--limit", "0"], "--limit"),
        (["runs", "list", "--limit", "ten"], "--limit"),
        (["job", "execute", "pipeline.py:defs", "talk", "--timeout", "nan"], "--timeout"),
        (["job", "execute", "pipeline.py:defs", "talk", "--timeout", "inf"], "--timeout"),
        (["job", "execute", "pipeline.py:defs", "talk", "--timeout", "-1"], "--timeout"),
        (["instance", "concurrency", "set", "db", "-1"], "limit"),
        (["instance", "concurrency", "set", "db", "1e3"], "limit"),
        (["code-server", "--location", "pipeline.py:defs", "--port", "70000"], "--port"),
        (["code-server", "--location", "pipeline.py:defs", "--max-workers", "0"], "--max-workers"),
        (
            ["code-server", "--location", "pipeline.py:defs", "--log-interval", "nan"],
            "--log-interval",
        ),
        (["worker", "warm", "--instance", "{}", "--ready-fd", "-2"], "--ready-fd"),
    ],
)
def test_number_flags_are_checked(project: Path, args: list[str], flag: str) -> None:
    result = runcore(project, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"argument {flag}" in result.stderr
    assert "Traceback" not in result.stderr


def test_deleting_a_pool_without_a_limit_is_an_error(project: Path) -> None:
    assert runcore(project, "instance", "concurrency", "set", "db", "1").returncode == 0
    assert runcore(project, "instance", "concurrency", "delete", "db").returncode == 0
    again = runcore(project, "instance", "concurrency", "delete", "db")
    assert again.returncode == 2
    assert "pool 'db' has no limit to delete" in again.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["runs", "list"],
        ["runs", "show", "abcd1111"],
        ["runs", "logs", "abcd1111"],
        ["runs", "why", "abcd1111"],
        ["runs", "cancel", "abcd1111"],
        ["daemon", "status"],
        ["instance", "concurrency", "get", "db"],
        ["instance", "concurrency", "list"],
        ["instance", "concurrency", "delete", "db"],
    ],
)
def test_read_only_commands_never_create_a_database(tmp_path: Path, args: list[str]) -> None:
    result = runcore(tmp_path, *args)
    assert result.returncode == 2
    assert f"no runcore database at {tmp_path / '.runcore' / 'runs.db'}" in result.stderr
    assert "runcore job execute" in result.stderr  # how to create one
    assert not (tmp_path / ".runcore").exists()


# --- code locations ----------------------------------------------------------------------------


def test_relative_code_locations_are_stored_absolute(project: Path, tmp_path: Path) -> None:
    script = (
        "import runcore as rc\n"
        "defs = rc.load_code_location('pipeline.py:defs')\n"
        "inst = rc.Instance.from_config({'storage': {'sqlite': {'path': 'runs.db'}},"
        " 'run_coordinator': {'class': 'runcore.coordinators:QueuedRunCoordinator'}})\n"
        "run = inst.submit_run(defs.get_job('talk'))\n"
        "print(run.code_location)\n"
        "inst.close()\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", script], cwd=project, capture_output=True, text=True, check=True
    )
    assert made.stdout.strip() == f"{project / 'pipeline.py'}:defs"
    # A daemon in another working directory finds the file.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = elsewhere / "runcore.yaml"
    config.write_text(
        f"storage:\n  sqlite: {{path: {project / 'runs.db'}}}\n"
        "run_coordinator:\n  class: runcore.coordinators:QueuedRunCoordinator\n"
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "runcore", "daemon", "--interval", "0.05"],
        cwd=elsewhere,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = runcore(elsewhere, "runs", "list", "--json")
            if listed.returncode == 0 and json.loads(listed.stdout)[0]["status"] == "SUCCESS":
                break
            time.sleep(0.2)
        else:
            raise AssertionError(listed.stdout + listed.stderr)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


# --- docs ---------------------------------------------------------------------------------------


def _commands(parser: object, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    import argparse

    found: dict[tuple[str, ...], object] = {}
    assert isinstance(parser, argparse.ArgumentParser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found[(*prefix, name)] = child
                found.update(_commands(child, (*prefix, name)))
    return found


def test_docs_cli_md_matches_the_parser() -> None:
    """Every command and every option of the real parser is in docs/cli.md, and every
    command of its synopsis exists, so the page cannot drift from the code."""
    import argparse

    text = (ROOT / "docs" / "cli.md").read_text()
    synopsis = text.split("```text", 1)[1].split("```", 1)[0]
    readme = (ROOT / "README.md").read_text()
    commands = _commands(build_parser())
    leaves = {
        path: p
        for path, p in commands.items()
        if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)  # type: ignore[attr-defined]
        or path == ("daemon",)
    }
    for path, sub in leaves.items():
        words = " ".join(path)
        assert f"runcore [--config FILE] {words}" in synopsis or f"runcore {words}" in synopsis, (
            f"`runcore {words}` is missing from docs/cli.md's synopsis"
        )
        assert f"runcore {words}" in readme or f"runcore [--config FILE] {words}" in readme, (
            f"`runcore {words}` is missing from the README's command list"
        )
        for action in sub._actions:  # type: ignore[attr-defined]
            for option in action.option_strings:
                if option in ("-h", "--help") or not option.startswith("--"):
                    continue
                assert option in text, f"{option} of `runcore {words}` is not in docs/cli.md"
    for line in synopsis.splitlines():
        if not line.startswith("runcore "):
            continue
        words = []
        for token in line.removeprefix("runcore ").removeprefix("[--config FILE] ").split():
            if not re.fullmatch(r"[a-z][a-z-]*", token):
                break
            words.append(token)
        assert tuple(words) in commands, f"docs/cli.md lists `runcore {' '.join(words)}`"
