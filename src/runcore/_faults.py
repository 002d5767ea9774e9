"""Fault points: named places where a test can make this process die, to prove recovery.

Set ``RUNCORE_FAULT=<name>`` in a process's environment and it SIGKILLs *itself* the first
time it reaches :func:`point` with that name, exactly as a power cut or the OOM killer would
at that instant. Only the process's own pid is ever signalled. Unset (always, outside tests),
a point costs one dictionary lookup.

Points:

``after_starting``
    the coordinator moved a run to STARTING and has not called the launcher yet.
``after_spawn``
    the subprocess launcher started a run's worker process and has not recorded it yet.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "RUNCORE_FAULT"


def point(name: str) -> None:
    """Die here, by SIGKILL to this process, if ``RUNCORE_FAULT`` names this point."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
