"""The duty interface: one job of the daemon, on its own thread, every ``interval`` seconds.

Contract:

* ``name`` is short and unique within a daemon (``dequeue``, ``monitor``, ``retries``; later
  ``schedules``, ``sensors``, ``metrics``): it names the duty's thread and its heartbeat.
* ``run_once(now)`` does one pass at ``now`` (the daemon's clock, Unix seconds) and returns
  what it did. It must not block for long: the daemon runs each duty on a thread of its own,
  so a slow duty delays only itself, but a pass that never returns stops that duty.
* An exception from a pass is recorded (``Daemon.errors``, the heartbeat's ``last_error``)
  and the duty runs again after its interval; only a storage that is no longer the one opened
  stops the daemon.
* ``busy(result)`` says whether the pass left work that another pass may do at once (a
  dequeue pass that started runs); then the daemon runs it again without waiting.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Duty(ABC):
    """One of the daemon's jobs. Subclass it and add it with ``Daemon.add_duty``."""

    #: The duty's name, unique within a daemon.
    name: str = "duty"
    #: Seconds between passes.
    interval: float = 5.0

    @abstractmethod
    def run_once(self, now: float) -> object:
        """One pass at ``now``; returns what it did."""

    def busy(self, result: object) -> bool:
        """Whether to run again at once (the last pass left work), instead of waiting."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, interval={self.interval:g})"
