"""runcore's pytest plugin: fixtures for testing code that uses runcore.

Installed with runcore and loaded by pytest on its own (entry point ``pytest11`` named
``runcore``), so a test module needs no ``conftest.py`` to use them. Every fixture's name
starts with ``runcore_``, so none clashes with a project's own:

``runcore_instance_config``
    The config ``runcore_instance`` is built from (a dict, as for
    :meth:`~runcore.Instance.from_config`). Default: in-memory storage, runs on threads of
    this process. Override it in a test module or ``conftest.py`` to test with your own
    (a SQLite file under ``tmp_path``, a queued coordinator, ...).
``runcore_instance``
    A started :class:`~runcore.Instance` built from ``runcore_instance_config``, closed after
    the test. When the test also uses ``runcore_recording_launcher``, that is its launcher.
``runcore_recording_launcher``
    The :class:`~runcore.testing.RecordingLauncher` of ``runcore_instance``: runs are
    recorded, never executed (see ``launched``, ``finish``).
``runcore_clock``
    A :class:`~runcore.testing.VirtualClock` to pass as ``Daemon(instance, clock=...)`` and
    step forward with ``advance(seconds)``.

Disable the plugin with ``-p no:runcore``. Loading it imports the ``runcore`` package (as
``import runcore`` does, which stays light); storage backends and the contract suites are
imported only by the tests that use them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from runcore.instance import Instance

if TYPE_CHECKING:
    from runcore.instance import Instance
    from runcore.testing.clock import VirtualClock
    from runcore.testing.recording import RecordingLauncher

_RECORDING = "runcore_recording_launcher"


@pytest.fixture
def runcore_instance_config() -> dict[str, Any]:
    """The config of ``runcore_instance``: in memory by default; override it."""
    return {"storage": {"in_memory": {}}}


@pytest.fixture
def runcore_instance(
    request: pytest.FixtureRequest, runcore_instance_config: dict[str, Any]
) -> Iterator[Instance]:
    """A started instance from ``runcore_instance_config``, closed after the test."""

    config = dict(runcore_instance_config)
    if _RECORDING in request.fixturenames:
        config["run_launcher"] = {"class": "runcore.testing:RecordingLauncher"}
    with Instance.from_config(config) as instance:
        yield instance


@pytest.fixture
def runcore_recording_launcher(runcore_instance: Instance) -> RecordingLauncher:
    """The RecordingLauncher ``runcore_instance`` hands its runs to."""
    from runcore.testing.recording import RecordingLauncher

    launcher = runcore_instance.run_launcher
    assert isinstance(launcher, RecordingLauncher)
    return launcher


@pytest.fixture
def runcore_clock() -> VirtualClock:
    """A clock the test steps forward: ``Daemon(instance, clock=runcore_clock)``."""
    from runcore.testing.clock import VirtualClock

    return VirtualClock()
