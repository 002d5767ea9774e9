"""CancelEvent: threading.Event's is_set/set/wait, set once, on real threads."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from runcore.worker.cancel import Cancel, CancelEvent


def test_a_new_event_is_not_set_and_a_wait_times_out() -> None:
    cancel = CancelEvent()
    assert not cancel.is_set()
    start = time.monotonic()
    assert cancel.wait(0.05) is False
    assert time.monotonic() - start >= 0.04
    assert cancel.wait(0) is False
    assert cancel.wait(-1) is False
    assert "not set" in repr(cancel)


def test_set_wakes_every_waiter_and_later_waits_return_at_once() -> None:
    cancel = CancelEvent()
    woke: list[bool] = []
    lock = threading.Lock()

    def waiter(timeout: float | None) -> None:
        got = cancel.wait(timeout)
        with lock:
            woke.append(got)

    threads = [threading.Thread(target=waiter, args=(t,)) for t in [None, 30.0] * 10]
    for thread in threads:
        thread.start()
    time.sleep(0.05)  # let them block
    assert not woke
    cancel.set()
    for thread in threads:
        thread.join(timeout=10)
    assert woke == [True] * 20
    assert cancel.is_set()
    for timeout in (None, 0, -1, 1.0):
        assert cancel.wait(timeout) is True
    cancel.set()  # again: no effect, no error
    assert cancel.wait() is True
    assert repr(cancel) == "CancelEvent(set)"


def test_sets_racing_with_waiters_leave_it_set_for_everyone() -> None:
    def wait(cancel: CancelEvent, results: list[bool]) -> None:
        results.append(cancel.wait(5))

    for _ in range(50):
        cancel = CancelEvent()
        results: list[bool] = []
        threads = [threading.Thread(target=wait, args=(cancel, results)) for _ in range(4)]
        threads += [threading.Thread(target=cancel.set) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert results == [True] * 4
        assert cancel.wait(0) is True


def test_set_from_a_signal_handler_wakes_the_main_thread_waiting() -> None:
    # SIGALRM from a timer of this process: set() takes no lock, so the handler cannot
    # deadlock with the wait it interrupts (threading.Event.set could).
    cancel = CancelEvent()
    old = signal.signal(signal.SIGALRM, lambda signum, frame: cancel.set())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        start = time.monotonic()
        assert cancel.wait(10) is True
        assert time.monotonic() - start < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("make", [CancelEvent, threading.Event])
def test_both_serve_as_a_cancel(make: type[Cancel]) -> None:
    cancel: Cancel = make()
    assert cancel.wait(0.001) is False
    cancel.set()
    assert cancel.is_set() and cancel.wait(None)
