"""A PostgreSQL server restarting under the storage: calls ride through it within the retry
budget, and the pool reconnects as soon as the server is back. On a test-owned cluster
(``initdb``/``pg_ctl`` on a free port), never the machine's shared server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests._postgres import new_cluster

import runcore as rc
from runcore._retry import RetrySettings
from runcore.errors import StorageError
from runcore.storage.postgres import PostgresStorage


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    made = new_cluster()
    made.start()
    try:
        yield made
    finally:
        made.close()


RUN = "0b5e0d9e-63d2-4b54-9a47-6a1c3c7f2a10"


def _event(message: str) -> rc.Event:
    return rc.Event(run_id=RUN, event_type=rc.EventType.ENGINE_EVENT, message=message)


def test_writes_and_reads_ride_through_a_server_restart(cluster: Any) -> None:
    with PostgresStorage(cluster.url, schema="ride", pool_min=1, pool_max=4) as storage:
        storage.add_run(rc.Run(run_id=RUN, job_name="j"))
        storage.store_event(_event("before"))
        cluster.stop("fast")  # every connection of the pool is cut
        starting: list[float] = []  # when the restart began; the server accepts sometime after

        def start_later() -> None:
            time.sleep(2.0)
            starting.append(time.monotonic())
            cluster.start_server()

        thread = threading.Thread(target=start_later)
        thread.start()
        try:
            storage.store_event(_event("during"))  # blocks until the server is back
            done = time.monotonic()
            moved = storage.transition(RUN, [rc.RunStatus.NOT_STARTED], rc.RunStatus.QUEUED)
        finally:
            thread.join()
        messages = [r.event.message for r in storage.get_event_records(RUN)]
    # start_server returns after the server accepts, and the write may land first: compare
    # with when the restart began.
    assert starting and done >= starting[0], "the write landed once the server was back"
    # Bounded, not timed: the pool's own back-off (1, 2, 4, 8 s...) would take far longer.
    assert done - starting[0] < 15.0, "the fresh pool connected without the pool's long back-off"
    assert moved is not None
    assert messages[:2] == ["before", "during"]


def test_a_storage_opened_while_the_server_is_down_waits_for_it(cluster: Any) -> None:
    with PostgresStorage(cluster.url, schema="late"):
        pass  # the schema exists
    cluster.stop("fast")
    timer = threading.Timer(1.5, cluster.start_server)
    timer.start()
    try:
        with PostgresStorage(cluster.url, schema="late") as storage:
            assert storage.count_runs() == 0
    finally:
        timer.join()


def test_an_outage_longer_than_the_budget_is_a_storage_error(cluster: Any) -> None:
    budget = RetrySettings(attempts=50, initial_wait=0.05, max_wait=0.2, deadline=1.0)
    with PostgresStorage(cluster.url, schema="budget", retry=budget) as storage:
        storage.add_run(rc.Run(run_id=RUN, job_name="j"))
        cluster.stop("fast")
        try:
            started = time.monotonic()
            with pytest.raises(StorageError, match=r"through the retries \(1 s"):
                storage.store_event(_event("lost"))
            assert time.monotonic() - started < 10.0
        finally:
            cluster.start_server()
        storage.store_event(_event("after"))  # and it works again once the server is back
        assert [r.event.message for r in storage.get_event_records(RUN)] == ["after"]
