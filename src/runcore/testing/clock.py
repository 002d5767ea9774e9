"""``VirtualClock``: a clock a test steps forward instead of sleeping."""

from __future__ import annotations

import time


class VirtualClock:
    """The wall clock plus an offset that only the test moves; call it for the time.

    Pass it where runcore takes a clock (``Daemon(instance, clock=clock)``), then
    :meth:`advance` it to make timeouts expire at once::

        clock = VirtualClock()
        daemon = rc.Daemon(instance, clock=clock)
        clock.advance(181)          # past run_monitoring.start_timeout_seconds
        daemon.run_once()

    It follows the real clock (plus :attr:`offset`) rather than standing still, because
    storage stamps runs and events with the real time: a clock that fell behind it would see
    them in its future.
    """

    def __init__(self, offset: float = 0.0) -> None:
        #: Seconds added to the real time; :meth:`advance` adds to it.
        self.offset = float(offset)

    def __call__(self) -> float:
        return time.time() + self.offset

    def __repr__(self) -> str:
        return f"VirtualClock(offset={self.offset})"

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward; returns the new time."""
        if seconds < 0:
            raise ValueError(f"a VirtualClock only moves forward, got {seconds}")
        self.offset += seconds
        return self()
