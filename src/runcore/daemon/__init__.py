"""The daemon: background duties over one instance (see :mod:`runcore.daemon.core`).

``Daemon`` runs each :class:`~runcore.daemon.base.Duty` on a thread of its own: dequeue
(:mod:`runcore.daemon.dequeue`), run monitoring (:mod:`runcore.daemon.monitoring`) and run
retries (:mod:`runcore.daemon.retries`); later schedules, sensors and metrics.
"""

from runcore.daemon.base import Duty
from runcore.daemon.core import (
    DAEMON_TYPE,
    DUTY_TYPE,
    Daemon,
    DaemonPass,
    DaemonStatus,
    DutyStatus,
    daemon_statuses,
    duty_statuses,
)

__all__ = [
    "DAEMON_TYPE",
    "DUTY_TYPE",
    "Daemon",
    "DaemonPass",
    "DaemonStatus",
    "Duty",
    "DutyStatus",
    "daemon_statuses",
    "duty_statuses",
]
