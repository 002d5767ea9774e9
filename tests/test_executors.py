"""Executors (in process, threads, processes) and the output stores they pass values through."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runcore as rc
from runcore.worker.execution import execute_run

T = rc.EventType
WAIT = 10.0  # bound for event waits; never reached when things work
FIXTURES_PARENT = Path(__file__).parent


def _types(events: list[rc.Event], step_key: str | None = None) -> list[str]:
    return [e.event_type.value for e in events if step_key is None or e.step_key == step_key]


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """Make SIGINT raise KeyboardInterrupt, as in a terminal.

    A process started in the background by a non-interactive shell (as CI starts the tests)
    inherits SIGINT ignored, and Python then keeps it ignored.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def fixtures_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``fixtures_defs`` importable here and, through sys.path, in spawned workers."""
    monkeypatch.syspath_prepend(str(FIXTURES_PARENT))
    yield


def _starting_run(inst: rc.Instance, job: rc.Job) -> rc.Run:
    run = inst.storage.add_run(rc.Run(job_name=job.name))
    moved = inst.storage.transition(run.run_id, [rc.RunStatus.NOT_STARTED], rc.RunStatus.STARTING)
    assert moved is not None
    return moved


# --- constructor checks ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", None])
def test_thread_pool_executor_rejects_bad_max_concurrent(bad: Any) -> None:
    with pytest.raises(rc.DefinitionError, match=r"ThreadPoolExecutor\(max_concurrent=\.\.\.\)"):
        rc.ThreadPoolExecutor(bad)


@pytest.mark.parametrize("bad", [0, -3, 2.0, "4"])
def test_multiprocess_executor_rejects_bad_max_concurrent(bad: Any) -> None:
    with pytest.raises(rc.DefinitionError, match=r"max_concurrent=\.\.\.\) must be an int >= 1"):
        rc.MultiprocessExecutor(bad)


def test_multiprocess_executor_rejects_unknown_start_method() -> None:
    with pytest.raises(rc.DefinitionError, match=r"start_method=\.\.\.\) must be one of"):
        rc.MultiprocessExecutor(2, start_method="threads")
    default = rc.MultiprocessExecutor()
    assert default.max_concurrent == (os.cpu_count() or 1)
    assert "start_method='fork'" in repr(default)


# --- in process -----------------------------------------------------------------------------


def test_in_process_executor_runs_steps_in_order_in_the_calling_thread() -> None:
    order: list[tuple[str, int]] = []

    def make(name: str, *inputs: str) -> rc.OpDefinition:
        def fn(**kwargs: Any) -> str:
            order.append((name, threading.get_ident()))
            return name

        namespace: dict[str, Any] = {"fn": fn}
        exec(f"def {name}({', '.join(inputs)}):\n    return fn()", namespace)
        return rc.op(namespace[name])

    job = rc.job("serial", [make("c", "b"), make("b", "a"), make("a")])
    assert job.execute_in_process(executor=rc.InProcessExecutor()).success
    assert order == [(n, threading.get_ident()) for n in ("a", "b", "c")]


# --- thread pool ----------------------------------------------------------------------------


def test_thread_pool_runs_independent_steps_concurrently() -> None:
    barrier = threading.Barrier(4, timeout=WAIT)  # breaks unless all four run at once

    def waits(index: int) -> rc.OpDefinition:
        def fn() -> int:
            barrier.wait()
            return threading.get_ident()

        return rc.op(name=f"w{index}")(fn)

    ops = [waits(i) for i in range(4)]

    @rc.op
    def gather(w0: int, w1: int, w2: int, w3: int) -> int:
        return len({w0, w1, w2, w3})

    job = rc.job("fan", [*ops, gather], executor=rc.ThreadPoolExecutor(4))
    result = job.execute_in_process()
    assert result.output_for("gather") == 4  # four distinct threads


def test_thread_pool_never_runs_more_than_max_concurrent_steps() -> None:
    lock = threading.Lock()
    active = [0]
    peak = [0]
    two_running = threading.Event()

    def tracked(index: int) -> rc.OpDefinition:
        def fn() -> None:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                if active[0] == 2:
                    two_running.set()
            two_running.wait(WAIT)  # hold until the pool is full at least once
            with lock:
                active[0] -= 1

        return rc.op(name=f"t{index}")(fn)

    job = rc.job("bounded", [tracked(i) for i in range(6)])
    assert job.execute_in_process(executor=rc.ThreadPoolExecutor(2)).success
    assert peak[0] == 2


def test_thread_pool_failure_skips_downstream_and_runs_other_branches() -> None:
    @rc.op
    def root() -> int:
        return 1

    @rc.op
    def broken(root: int) -> int:
        raise LookupError("missing key")

    @rc.op
    def after(broken: int) -> int:
        return broken

    @rc.op
    def fine(root: int) -> int:
        return root * 10

    @rc.op
    def fine_after(fine: int) -> int:
        return fine + 1

    job = rc.job("branches", [root, broken, after, fine, fine_after])
    result = job.execute_in_process(executor=rc.ThreadPoolExecutor(3), raise_on_error=False)
    assert result.status is rc.RunStatus.FAILURE
    assert result.output_for("fine_after") == 11
    assert _types(result.events, "after") == ["STEP_SKIPPED"]
    assert result.failure_reason == "step 'broken' failed: LookupError: missing key"


def test_thread_pool_keyboard_interrupt_propagates_and_fails_the_run() -> None:
    @rc.op
    def interrupted() -> None:
        raise KeyboardInterrupt

    inst = rc.Instance.ephemeral()
    job = rc.job("kb", [interrupted], executor=rc.ThreadPoolExecutor(2))
    with pytest.raises(KeyboardInterrupt):
        job.execute_in_process(instance=inst, run_id="0f1e2d3c-0000-4000-8000-0000000000cb")
    assert inst.get_run("0f1e2d3c-0000-4000-8000-0000000000cb").status is rc.RunStatus.FAILURE


def test_ctrl_c_while_thread_pool_steps_run_cancels_them_and_fails_the_run(
    sigint_raises: None,
) -> None:
    saw_cancel = threading.Event()

    @rc.op
    def interrupts_main(context: Any) -> None:
        # A real SIGINT to the main thread, which is waiting for this step to finish.
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        if context.wait_for_cancel(WAIT):
            saw_cancel.set()

    @rc.op
    def never_started(interrupts_main: None) -> None: ...

    inst = rc.Instance.ephemeral()
    job = rc.job("ctrl_c", [interrupts_main, never_started], executor=rc.ThreadPoolExecutor(2))
    with pytest.raises(KeyboardInterrupt):
        job.execute_in_process(instance=inst, run_id="0f1e2d3c-0000-4000-8000-0000000000cc")
    # The step was told to stop rather than waited for. (If the signal lands while the pool
    # is still starting the step's thread, that thread is not joined: hence wait, not is_set.)
    assert saw_cancel.wait(WAIT)
    run = inst.get_run("0f1e2d3c-0000-4000-8000-0000000000cc")
    assert run.status is rc.RunStatus.FAILURE
    assert "KeyboardInterrupt" in (run.failure_reason or "")
    assert "never_started" not in {
        e.step_key for e in inst.get_events("0f1e2d3c-0000-4000-8000-0000000000cc")
    }


# --- processes ------------------------------------------------------------------------------


def _pid_op(name: str, *inputs: str) -> rc.OpDefinition:
    namespace: dict[str, Any] = {"os": os}
    exec(f"def {name}({', '.join(inputs)}):\n    return os.getpid()", namespace)
    return rc.op(namespace[name])


def test_multiprocess_steps_run_in_reused_worker_processes() -> None:
    ops = [_pid_op(f"s{i}") for i in range(12)]

    @rc.op
    def collect(s0: int, s1: int, s2: int, s3: int, s4: int, s5: int) -> list[int]:
        return [s0, s1, s2, s3, s4, s5, os.getpid()]

    job = rc.job("many", [*ops, collect], executor=rc.MultiprocessExecutor(2))
    result = job.execute_in_process()
    assert result.success
    pids = {result.output_for(f"s{i}") for i in range(12)} | {result.output_for("collect")[-1]}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2  # workers are reused across the 13 steps
    # Outputs travelled between processes: collect got the pids the upstream steps returned.
    assert result.output_for("collect")[:6] == [result.output_for(f"s{i}") for i in range(6)]


def test_multiprocess_steps_log_and_retry_through_the_parent() -> None:
    @rc.op(retry_policy=rc.RetryPolicy(max_retries=2))
    def shaky(context: Any) -> int:
        context.log.warning("trying", attempt=context.attempt, pid=os.getpid())
        if context.attempt == 1:
            raise TimeoutError("first try fails")
        return context.attempt

    result = rc.job("shaky", [shaky]).execute_in_process(executor=rc.MultiprocessExecutor(1))
    assert result.output_for("shaky") == 2
    assert _types(result.events, "shaky") == [
        "STEP_START",
        "LOG",
        "STEP_UP_FOR_RETRY",
        "LOG",
        "STEP_OUTPUT",
        "STEP_SUCCESS",
    ]
    logs = [e for e in result.events if e.event_type is T.LOG]
    assert [e.data["attempt"] for e in logs] == [1, 2]
    assert logs[0].data["pid"] != os.getpid()


def test_a_worker_killed_by_a_signal_fails_its_step_and_the_run() -> None:
    @rc.op
    def start() -> int:
        return 1

    @rc.op
    def dies(start: int) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @rc.op
    def after_death(dies: None) -> None: ...

    @rc.op
    def survivor(start: int) -> int:
        return os.getpid()

    @rc.op
    def survivor_after(survivor: int) -> int:
        return survivor

    ops = [start, dies, after_death, survivor, survivor_after]
    job = rc.job("killed", ops, executor=rc.MultiprocessExecutor(2))
    result = job.execute_in_process(raise_on_error=False)
    assert result.status is rc.RunStatus.FAILURE
    failure = result.first_failure()
    assert failure is not None and failure.step_key == "dies"
    assert "killed by signal SIGKILL" in failure.message
    assert failure.error is not None and "SIGKILL" in failure.error.message
    assert failure.data["exit_code"] == -signal.SIGKILL
    assert result.failure_reason is not None
    assert "step 'dies' failed" in result.failure_reason
    assert "SIGKILL" in result.failure_reason
    assert _types(result.events, "after_death") == ["STEP_SKIPPED"]
    assert result.output_for("survivor_after") == result.output_for("survivor")
    with pytest.raises(rc.RunFailedError, match="SIGKILL"):
        job.execute_in_process()


def test_a_worker_that_exits_fails_its_step_and_is_replaced() -> None:
    @rc.op
    def exits() -> None:
        os._exit(7)

    later = [_pid_op(f"later{i}", "exits") for i in range(2)]
    independent = [_pid_op(f"free{i}") for i in range(4)]
    job = rc.job("exits", [exits, *later, *independent])
    result = job.execute_in_process(executor=rc.MultiprocessExecutor(1), raise_on_error=False)
    failure = result.first_failure()
    assert failure is not None and "exited with code 7" in failure.message
    # The single worker died; a fresh one ran the independent steps after it.
    assert all(_types(result.events, f"later{i}") == ["STEP_SKIPPED"] for i in range(2))
    assert len({result.output_for(f"free{i}") for i in range(4)}) == 1


def test_system_exit_in_a_worker_step_is_a_step_failure() -> None:
    @rc.op
    def quits() -> None:
        raise SystemExit("bye")

    @rc.op
    def fine() -> int:
        return os.getpid()

    result = rc.job("quits_mp", [quits, fine]).execute_in_process(
        executor=rc.MultiprocessExecutor(1), raise_on_error=False
    )
    failure = result.first_failure()
    assert failure is not None and failure.error is not None
    assert failure.error.type == "SystemExit"
    assert result.output_for("fine") != os.getpid()


@pytest.mark.parametrize(
    ("value", "kind"),
    [(lambda: 1, "function"), (threading.Lock(), "lock")],
    ids=["lambda", "lock"],
)
def test_an_unpicklable_output_fails_the_step_with_advice(value: Any, kind: str) -> None:
    @rc.op
    def unpicklable() -> Any:
        return value

    @rc.op
    def uses(unpicklable: Any) -> None: ...

    job = rc.job("unpicklable", [unpicklable, uses], executor=rc.MultiprocessExecutor(1))
    result = job.execute_in_process(raise_on_error=False)
    failure = result.first_failure()
    assert failure is not None and failure.step_key == "unpicklable"
    assert failure.error is not None and failure.error.type == "OutputStoreError"
    assert f"the output of step 'unpicklable' ({kind}) cannot be stored" in failure.message
    assert "return a picklable value, plain data" in failure.message
    assert _types(result.events, "uses") == ["STEP_SKIPPED"]


def test_ctrl_c_in_the_parent_terminates_busy_workers_and_fails_the_run(
    sigint_raises: None,
) -> None:
    @rc.op
    def interrupts_parent() -> None:
        os.kill(os.getppid(), signal.SIGINT)
        threading.Event().wait(WAIT)  # the parent terminates this worker long before

    inst = rc.Instance.ephemeral()
    job = rc.job("ctrl_c_mp", [interrupts_parent], executor=rc.MultiprocessExecutor(1))
    with pytest.raises(KeyboardInterrupt):
        job.execute_in_process(instance=inst, run_id="0f1e2d3c-0000-4000-8000-0000000000c3")
    assert inst.get_run("0f1e2d3c-0000-4000-8000-0000000000c3").status is rc.RunStatus.FAILURE
    assert not multiprocessing.active_children()


def test_multiprocess_with_a_file_output_store(tmp_path: Path) -> None:
    @rc.op
    def make() -> dict[str, int]:
        return {"pid": os.getpid()}

    @rc.op
    def read(make: dict[str, int]) -> int:
        return make["pid"]

    job = rc.job("files", [make, read])
    inst = rc.Instance.ephemeral()
    run = _starting_run(inst, job)
    store = rc.FileOutputStore(tmp_path / "outputs")
    final, _ = execute_run(
        run, job, storage=inst.storage, output_store=store, executor=rc.MultiprocessExecutor(2)
    )
    assert final.status is rc.RunStatus.SUCCESS
    assert store.get(run.run_id, "read") == store.get(run.run_id, "make")["pid"]
    assert (tmp_path / "outputs" / run.run_id / "read.pkl").is_file()


def test_cancel_terminates_running_worker_steps() -> None:
    fork = multiprocessing.get_context("fork")
    in_step = fork.Event()
    never = fork.Event()

    @rc.op
    def first() -> int:
        return 1

    @rc.op
    def stuck(first: int) -> None:
        in_step.set()
        never.wait(WAIT)

    @rc.op
    def after_stuck(stuck: None) -> None: ...

    job = rc.job("stuck", [first, stuck, after_stuck])
    inst = rc.Instance.ephemeral()
    run = _starting_run(inst, job)
    cancel = threading.Event()
    canceller = threading.Thread(target=lambda: in_step.wait(WAIT) and cancel.set())
    canceller.start()
    final, _ = execute_run(
        run,
        job,
        storage=inst.storage,
        output_store=rc.InMemoryOutputStore(),
        executor=rc.MultiprocessExecutor(2),
        cancel=cancel,
    )
    canceller.join(WAIT)
    assert final.status is rc.RunStatus.CANCELED
    events = inst.get_events(run.run_id)
    stuck_failure = next(e for e in events if e.event_type is T.STEP_FAILURE)
    assert "SIGTERM" in stuck_failure.message and "canceled" in stuck_failure.message
    assert _types(events, "after_stuck") == ["STEP_SKIPPED"]


def test_spawned_workers_import_the_job_from_its_code_location(fixtures_importable: None) -> None:
    defs = rc.load_code_location("fixtures_defs.good:defs")
    etl = defs.get_job("etl")
    result = etl.execute_in_process(executor=rc.MultiprocessExecutor(1, start_method="spawn"))
    assert result.success
    total = result.output_for("total")
    assert total["total"] == 6
    assert total["pid"] != os.getpid()
    assert [e.data for e in result.events if e.event_type is T.LOG] == [{"count": 3}]


def test_spawn_infers_the_location_of_a_module_level_job(fixtures_importable: None) -> None:
    from fixtures_defs.spawnable import spawn_pids

    assert spawn_pids.code_location is None
    executor = rc.MultiprocessExecutor(2, start_method="spawn")
    result = spawn_pids.execute_in_process(executor=executor)
    assert result.success
    pids = result.output_for("second_pid")
    assert os.getpid() not in pids


def test_spawn_without_a_code_location_fails_the_run_clearly() -> None:
    local = rc.job("local", [rc.op(name="x")(lambda: 1)])
    with pytest.raises(rc.RunFailedError, match="has no code location") as info:
        local.execute_in_process(executor=rc.MultiprocessExecutor(1, start_method="spawn"))
    assert "start_method='fork'" in str(info.value)


def test_a_worker_that_cannot_load_the_job_fails_the_run_with_its_error(
    fixtures_importable: None,
) -> None:
    job = rc.load_code_location("fixtures_defs.worker_only_failure:defs").get_job("fragile")
    inst = rc.Instance.ephemeral()
    result = job.execute_in_process(
        instance=inst,
        executor=rc.MultiprocessExecutor(1, start_method="spawn"),
        raise_on_error=False,
    )
    assert result.status is rc.RunStatus.FAILURE
    failure = result.first_failure()
    assert failure is not None and failure.event_type is T.RUN_FAILURE
    assert failure.error is not None and failure.error.type == "CodeLocationError"
    assert "could not load job 'fragile'" in failure.message
    assert "refuses to load in a worker process" in failure.message


# --- output stores --------------------------------------------------------------------------


def test_in_memory_output_store_keeps_live_objects() -> None:
    store = rc.InMemoryOutputStore()
    value = {"a": [1]}
    store.put("r1", "s", value)
    store.put("r2", "s", 2)
    assert store.get("r1", "s") is value
    assert store.has("r1", "s") and not store.has("r1", "other")
    store.clear_run("r1")
    assert not store.has("r1", "s") and store.get("r2", "s") == 2
    with pytest.raises(rc.OutputStoreError, match="no output of step 's' is stored for run 'r1'"):
        store.get("r1", "s")


def test_file_output_store_round_trips_and_explains_errors(tmp_path: Path) -> None:
    store = rc.FileOutputStore(tmp_path)
    run_id = "0f1e2d3c-0000-4000-8000-000000000001"
    store.put(run_id, "step", {"rows": [1, 2]})
    assert store.has(run_id, "step")
    assert store.get(run_id, "step") == {"rows": [1, 2]}
    assert sorted(p.name for p in (tmp_path / run_id).iterdir()) == ["step.pkl"]  # no temp left
    with pytest.raises(rc.OutputStoreError, match="no output of step 'other'"):
        store.get(run_id, "other")
    with pytest.raises(rc.OutputStoreError, match=r"\(generator\) cannot be stored") as info:
        store.put(run_id, "gen", (i for i in range(3)))
    assert "picklable" in str(info.value)
    assert not store.has(run_id, "gen")
    (tmp_path / run_id / "bad.pkl").write_bytes(b"not a pickle")
    with pytest.raises(rc.OutputStoreError, match="cannot be loaded"):
        store.get(run_id, "bad")
