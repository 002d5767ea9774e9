"""Run hooks observe every stored event and step boundary; worker processes store their
resource metrics before the run ends."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import runcore as rc
from runcore.worker.hooks import RunHooks

LOCATION = "runcore.testing.contract_jobs:defs"


@rc.op
def first() -> int:
    return 1


@rc.op
def second(first: int) -> int:
    return first + 1


@rc.op
def broken() -> None:
    raise ValueError("no")


pipeline = rc.job("pipeline", [first, second])
failing = rc.job("failing", [broken])


class Recorder(RunHooks):
    """Writes down everything it is told (a test's stand-in for metrics or profiles)."""

    calls: list[tuple[str, Any]]

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.calls = []
        self.lock = threading.Lock()

    def _note(self, *call: Any) -> None:
        with self.lock:
            self.calls.append(call)

    def on_run_start(self, run: rc.Run) -> None:
        self._note("run_start", run.status)

    def on_event(self, run: rc.Run, event: rc.Event) -> None:
        self._note("event", event.event_type)

    def on_step_start(self, run: rc.Run, step_key: str) -> None:
        self._note("step_start", step_key)

    def on_step_end(self, run: rc.Run, step_key: str, event: rc.Event) -> None:
        self._note("step_end", step_key, event.event_type)

    def on_run_end(self, run: rc.Run) -> None:
        self._note("run_end", run.status)


class Exploding(RunHooks):
    def on_event(self, run: rc.Run, event: rc.Event) -> None:
        raise RuntimeError("a broken hook")


def test_hooks_see_the_run_its_steps_and_every_stored_event() -> None:
    hooks = Recorder()
    with rc.Instance(run_hooks=[hooks, Exploding()]) as inst:
        run = inst.submit_run(pipeline)
        done = inst.wait_for_run(run.run_id, timeout=30)
        assert done.status is rc.RunStatus.SUCCESS  # a hook that raises never fails the run
        stored = [e.event_type for e in inst.get_events(run.run_id)]
    calls = hooks.calls
    assert calls[0] == ("run_start", rc.RunStatus.STARTED)
    assert calls[-1] == ("run_end", rc.RunStatus.SUCCESS)
    seen = [c[1] for c in calls if c[0] == "event"]
    # Every event stored while the run executed, in order (the status events around it are
    # the coordinator's and the final transition's).
    assert seen == [t for t in stored if t in seen]
    assert rc.EventType.STEP_START in seen and rc.EventType.STEP_SUCCESS in seen
    assert [c for c in calls if c[0] == "step_start"] == [
        ("step_start", "first"),
        ("step_start", "second"),
    ]
    assert ("step_end", "second", rc.EventType.STEP_SUCCESS) in calls


def test_hooks_from_config_are_built_by_every_worker(tmp_path: Path) -> None:
    cfg = {
        "storage": {"sqlite": {"path": str(tmp_path / "runs.db")}},
        "run_hooks": [{"class": f"{__name__}:Recorder", "config": {"name": "x"}}],
    }
    with rc.Instance.from_config(cfg) as inst:
        assert [type(h).__name__ for h in inst._config_hooks()] == ["Recorder"]
        result = failing.execute_in_process(instance=inst, raise_on_error=False)
        assert not result.success


def test_a_worker_process_stores_its_resource_metrics_before_the_run_ends(
    tmp_path: Path,
) -> None:
    with rc.Instance.from_config(
        {"storage": {"sqlite": {"path": str(tmp_path / "runs.db")}}}
    ) as inst:
        run = inst.submit_run("pid", code_location=LOCATION)
        done = inst.wait_for_run(run.run_id, timeout=60)
        assert done.status is rc.RunStatus.SUCCESS
        events = inst.get_events(run.run_id)
    types = [e.event_type for e in events]
    assert rc.EventType.RESOURCE_METRICS in types
    assert types.index(rc.EventType.RESOURCE_METRICS) < types.index(rc.EventType.RUN_SUCCESS)
    (metrics,) = [e for e in events if e.event_type is rc.EventType.RESOURCE_METRICS]
    assert metrics.data["scope"] == "process"
    assert metrics.data["peak_rss_bytes"] > 10 * 1024 * 1024  # a Python interpreter, at least
    assert metrics.data["cpu_user_seconds"] >= 0 and metrics.data["wall_seconds"] > 0
