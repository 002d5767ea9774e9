"""The public contract suite for output stores.

Subclass :class:`OutputStoreContract` in a pytest module and provide an ``output_store``
fixture::

    import pytest
    from runcore.testing import OutputStoreContract

    class TestMyStore(OutputStoreContract):
        @pytest.fixture
        def output_store(self, tmp_path):
            return MyStore(tmp_path)

The suite checks what :mod:`runcore.worker.outputs` asks of a store:

* ``put`` then ``get`` gives the value back (equal, whatever its kind: ``None`` included), and
  ``has`` says so; a later ``put`` of the same output replaces it;
* outputs are kept apart by run and by step;
* ``get`` of an output never stored raises :class:`~runcore.errors.OutputStoreError`, and
  ``has`` is False;
* a value the store cannot keep is refused with :class:`~runcore.errors.OutputStoreError`,
  and nothing is stored;
* any method may be called from several threads at once, and ``get`` sees every ``put`` that
  returned before it was called, also through another handle on the same data (another
  process's, with ``output_store_factory``); a reader racing a writer of the same output gets
  the old value or the new one, never an error.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from runcore.errors import OutputStoreError
from runcore.worker.outputs import OutputStore

#: How long a concurrency test waits for its threads before it fails (seconds).
THREAD_TIMEOUT = 60.0


def _run_id() -> str:
    return str(uuid.uuid4())


#: Values every store must keep: what ops return most (plain data), by kind.
VALUES: dict[str, Any] = {
    "none": None,
    "int": 42,
    "float": 2.5,
    "bool": False,
    "str": "naïve café ✓",
    "empty_str": "",
    "list": [1, "two", 3.0, None],
    "nested": {"rows": [{"id": 1, "tags": ["a", "b"]}], "total": 1, "ok": True},
    "empty_dict": {},
    "large": list(range(100_000)),
}


def _in_threads(n: int, fn: Callable[[int], None]) -> None:
    """Run ``fn(0) .. fn(n-1)`` on ``n`` threads released together; re-raise the first error."""
    barrier = threading.Barrier(n)
    errors: dict[int, BaseException] = {}

    def call(i: int) -> None:
        try:
            barrier.wait(timeout=THREAD_TIMEOUT)
            fn(i)
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + THREAD_TIMEOUT
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        pytest.fail(f"threads did not finish within {THREAD_TIMEOUT} s (a deadlock?)")
    if errors:
        raise errors[min(errors)]


class OutputStoreContract:
    """Checks that an output store keeps the contract of :mod:`runcore.worker.outputs`.

    Not collected by itself (no ``Test`` prefix); subclass it as
    ``class TestX(OutputStoreContract)``.

    Fixtures the subclass provides:

    ``output_store`` (required)
        The :class:`~runcore.worker.outputs.OutputStore` under test, empty, new for each test.

    ``output_store_factory`` (optional)
        A zero-argument callable that returns another handle on the *same* outputs, as
        another process would open it (a second ``FileOutputStore`` on the same directory,
        for example). The default returns ``output_store`` itself, which suits a store whose
        outputs live in one object (like ``InMemoryOutputStore``).

    Run ids are UUIDs and step keys plain names, as runcore gives them.
    """

    @pytest.fixture
    def output_store_factory(self, output_store: OutputStore) -> Callable[[], OutputStore]:
        return lambda: output_store

    @pytest.mark.parametrize("kind", sorted(VALUES))
    def test_a_value_put_is_got_back(self, output_store: OutputStore, kind: str) -> None:
        run_id = _run_id()
        output_store.put(run_id, "step", VALUES[kind])
        assert output_store.has(run_id, "step")
        assert output_store.get(run_id, "step") == VALUES[kind]

    def test_an_output_never_stored_is_an_error(self, output_store: OutputStore) -> None:
        run_id = _run_id()
        assert not output_store.has(run_id, "step")
        with pytest.raises(OutputStoreError):
            output_store.get(run_id, "step")
        output_store.put(run_id, "other_step", 1)
        assert not output_store.has(run_id, "step")
        with pytest.raises(OutputStoreError):
            output_store.get(run_id, "step")

    def test_outputs_are_kept_apart_by_run_and_by_step(self, output_store: OutputStore) -> None:
        first, second = _run_id(), _run_id()
        output_store.put(first, "a", "first a")
        output_store.put(first, "b", "first b")
        output_store.put(second, "a", "second a")
        assert output_store.get(first, "a") == "first a"
        assert output_store.get(first, "b") == "first b"
        assert output_store.get(second, "a") == "second a"
        assert not output_store.has(second, "b")

    def test_a_later_put_replaces_the_output(self, output_store: OutputStore) -> None:
        run_id = _run_id()
        output_store.put(run_id, "step", {"version": 1})
        output_store.put(run_id, "step", {"version": 2})
        assert output_store.get(run_id, "step") == {"version": 2}

    def test_a_value_that_cannot_be_kept_is_refused_cleanly(
        self, output_store: OutputStore
    ) -> None:
        """Stores that keep live objects accept anything; the others refuse with the error."""
        run_id = _run_id()
        unkeepable = [threading.Lock(), lambda: None, (i for i in range(3))]
        for index, value in enumerate(unkeepable):
            key = f"step_{index}"
            try:
                output_store.put(run_id, key, value)
            except OutputStoreError:
                assert not output_store.has(run_id, key), "a refused value was stored"
            except Exception as exc:
                pytest.fail(
                    f"put of a {type(value).__name__} raised {type(exc).__name__}: {exc}; "
                    "a store refuses a value with OutputStoreError"
                )
            else:
                assert output_store.has(run_id, key)

    def test_another_handle_sees_what_was_put(
        self, output_store: OutputStore, output_store_factory: Callable[[], OutputStore]
    ) -> None:
        run_id = _run_id()
        output_store.put(run_id, "step", [1, 2, 3])
        other = output_store_factory()
        assert other.has(run_id, "step")
        assert other.get(run_id, "step") == [1, 2, 3]
        other.put(run_id, "from_other", "hello")
        assert output_store.get(run_id, "from_other") == "hello"

    def test_concurrent_puts_and_gets_of_different_outputs(
        self, output_store: OutputStore, output_store_factory: Callable[[], OutputStore]
    ) -> None:
        run_ids = [_run_id() for _ in range(4)]
        handles = [output_store, output_store_factory()]

        def work(i: int) -> None:
            store = handles[i % len(handles)]
            run_id = run_ids[i % len(run_ids)]
            for n in range(25):
                key = f"step_{i}_{n}"
                store.put(run_id, key, {"thread": i, "n": n})
                # A put that returned is seen by the next get, from any handle.
                assert handles[(i + 1) % len(handles)].get(run_id, key) == {"thread": i, "n": n}

        _in_threads(8, work)
        for i in range(8):
            for n in range(25):
                assert output_store.get(run_ids[i % len(run_ids)], f"step_{i}_{n}") == {
                    "thread": i,
                    "n": n,
                }

    def test_a_reader_racing_a_writer_sees_a_whole_value(
        self, output_store: OutputStore, output_store_factory: Callable[[], OutputStore]
    ) -> None:
        run_id = _run_id()
        versions = [list(range(v, v + 20_000)) for v in range(6)]
        output_store.put(run_id, "step", versions[0])
        reader_store = output_store_factory()

        def work(i: int) -> None:
            if i == 0:
                for value in versions[1:]:
                    output_store.put(run_id, "step", value)
                return
            for _ in range(40):
                got = reader_store.get(run_id, "step")  # never a missing or half value
                assert got in versions, "a reader saw a value that was never put"

        _in_threads(3, work)
        assert output_store.get(run_id, "step") == versions[-1]
