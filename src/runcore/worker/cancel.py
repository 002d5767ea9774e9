"""A run's cancel signal: set once, never cleared.

Everything that executes a run takes its cancel as a :class:`Cancel`: ``is_set``, ``set`` and
``wait``, the part of :class:`threading.Event` it uses, so a ``threading.Event`` serves. What
runcore makes itself is a :class:`CancelEvent`: the same calls on a single lock, without the
condition, its lock and its waiters' deque an Event is built on (about a kilobyte less). A
code server holds one per run it executes, most of them asleep in an op, and ``set`` takes no
lock, so a signal handler may call it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Protocol


class Cancel(Protocol):
    """What executing a run needs of its cancel signal (a :class:`threading.Event` is one)."""

    def is_set(self) -> bool:
        """Whether the run has been asked to stop."""

    def set(self) -> None:
        """Ask the run to stop."""

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set or ``timeout`` seconds have passed; whether it is set."""


class CancelEvent:
    """A one-shot event (see the module doc): :meth:`set` releases a lock taken when it was
    made; a waiter takes that lock and gives it straight back, so every waiter wakes."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._set = False
        self._lock = threading.Lock()
        self._lock.acquire()

    def __repr__(self) -> str:
        return f"CancelEvent({'set' if self._set else 'not set'})"

    def is_set(self) -> bool:
        """Whether :meth:`set` has been called."""
        return self._set

    def set(self) -> None:
        """Set it and wake every waiter (again: no effect)."""
        self._set = True
        self._release()

    def wait(self, timeout: float | None = None) -> bool:
        """As :meth:`threading.Event.wait`: block until set, or for up to ``timeout`` seconds
        (none for ``timeout <= 0``); whether it is set."""
        if self._set:
            return True
        if timeout is None:
            got = self._lock.acquire()
        elif timeout > 0:
            got = self._lock.acquire(True, timeout)  # positional: no kwargs dict kept while blocked
        else:
            got = self._lock.acquire(blocking=False)
        if got:
            self._release()  # for the next waiter
        return self._set

    def _release(self) -> None:
        # Another set() or waiter may have released it first: whoever comes second finds it
        # unlocked, which is the state wanted.
        with contextlib.suppress(RuntimeError):
            self._lock.release()


__all__ = ["Cancel", "CancelEvent"]
