"""Captured output of runs: what a run writes to stdout and stderr, stored as LOG events.

Two ways, one per kind of worker (``execute_run(capture=...)`` picks one):

* ``"process"`` (:class:`FdCapture`): a worker process executes one run, so the process's
  file descriptors 1 and 2 are pointed at pipes. Everything is caught: ``print``, C extensions,
  child processes (step workers of a ``MultiprocessExecutor``, ``subprocess.run``). What is
  read is also written on to the original descriptors (a launcher keeps the tail of stderr to
  explain a crash).
* ``"thread"`` (:func:`capture_streams`): runs on threads share the process, so
  ``sys.stdout`` and ``sys.stderr`` are replaced (once, by a small proxy) with objects that
  send what a step's thread writes to that run's :class:`OutputSink`, and everything else on to
  the stream they replaced. Output of threads an op starts itself, and of child processes,
  is not caught.

Each line becomes one LOG event whose ``data["stream"]`` names the stream (``stdout`` or
``stderr``). A run's captured output is bounded (``max_bytes``, 1 MiB by default): past it,
lines are dropped, and one LOG event with ``data["truncated"] = True`` marks the place; when
the run ends another says how much was dropped. Lines longer than :data:`MAX_LINE_CHARS` are
cut into several events.

Threads: a sink flushes on a thread of its own (``runcore-output-<run>``), started at its
first line and stopped by :meth:`OutputSink.close`; a :class:`FdCapture` reads both pipes on
one thread (``runcore-capture``) that :meth:`FdCapture.stop` joins.
"""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from runcore.events import Event, EventType

#: Bytes of captured output stored per run by default (both streams together).
DEFAULT_MAX_BYTES = 1024 * 1024
#: A longer line is stored as several events.
MAX_LINE_CHARS = 16 * 1024
#: How often buffered lines are written to storage while a run goes on (seconds).
FLUSH_INTERVAL = 0.2

STREAMS = ("stdout", "stderr")


class OutputSink:
    """Turns one run's output into LOG events, within the run's byte budget.

    ``store`` writes a batch of events (``storage.store_events``). Thread-safe.
    """

    __slots__ = (  # a code server holds one per run thread
        "_closed",
        "_flush_interval",
        "_lock",
        "_partial",
        "_pending",
        "_stop",
        "_store",
        "_store_lock",
        "_thread",
        "default_step",
        "dropped_bytes",
        "dropped_lines",
        "max_bytes",
        "run_id",
        "used",
    )

    def __init__(
        self,
        run_id: str,
        store: Callable[[Sequence[Event]], None],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.run_id = run_id
        self.max_bytes = max_bytes
        self._store = store
        self._flush_interval = flush_interval
        self._lock = threading.Lock()
        self._store_lock = threading.Lock()
        self._pending: list[Event] = []
        self._partial: dict[tuple[str, str | None], str] = {}
        self.used = 0
        self.dropped_bytes = 0
        self.dropped_lines = 0
        self._thread: threading.Thread | None = None
        # Made with the flush thread: most runs write nothing, and a code server holds one
        # sink per run thread.
        self._stop: threading.Event | None = None
        self._closed = False
        #: The step a line written without one is put down to (see ``RunExecution``).
        self.default_step: str | None = None

    def write(self, stream: str, text: str, step_key: str | None = None) -> None:
        """Take ``text`` written to ``stream``; complete lines become events."""
        if not text:
            return
        with self._lock:
            if self._closed:
                return
            if step_key is None:
                step_key = self.default_step
            key = (stream, step_key)
            buffered = self._partial.pop(key, "") + text
            *lines, rest = buffered.split("\n")
            if len(rest) > MAX_LINE_CHARS:
                lines.append(rest)
                rest = ""
            if rest:
                self._partial[key] = rest
            for line in lines:
                self._line(stream, line.removesuffix("\r"), step_key)
            start = bool(lines) and self._thread is None
            if start:
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._flush_loop,
                    name=f"runcore-output-{self.run_id[:8]}",
                    daemon=True,
                )
        if start:
            assert self._thread is not None
            self._thread.start()

    def _line(self, stream: str, line: str, step_key: str | None) -> None:
        for start in range(0, max(len(line), 1), MAX_LINE_CHARS):
            chunk = line[start : start + MAX_LINE_CHARS]
            size = len(chunk.encode("utf-8", "replace")) + 1
            if self.used + size > self.max_bytes:
                if not self.dropped_lines:
                    self._pending.append(
                        self._event(
                            f"[runcore] output truncated: this run's captured output reached "
                            f"its limit of {self.max_bytes} bytes; later lines are dropped",
                            stream,
                            step_key,
                            truncated=True,
                        )
                    )
                self.dropped_lines += 1
                self.dropped_bytes += size
                continue
            self.used += size
            self._pending.append(self._event(chunk, stream, step_key))

    def _event(
        self, message: str, stream: str, step_key: str | None, *, truncated: bool = False
    ) -> Event:
        data: dict[str, Any] = {"stream": stream}
        if truncated:
            data["truncated"] = True
        return Event(
            run_id=self.run_id,
            event_type=EventType.LOG,
            step_key=step_key,
            message=message,
            level="WARNING" if truncated else "INFO",
            data=data,
        )

    def flush(self, *, partial: bool = False) -> None:
        """Store the lines taken so far (with ``partial``, unfinished lines too)."""
        with self._store_lock:
            with self._lock:
                if partial:
                    for (stream, step_key), rest in self._partial.items():
                        self._line(stream, rest, step_key)
                    self._partial.clear()
                batch, self._pending = self._pending, []
            if batch:
                self._store(batch)

    def _flush_loop(self) -> None:
        stop = self._stop
        assert stop is not None  # made before the thread
        while not stop.wait(self._flush_interval):
            with contextlib.suppress(Exception):  # storage trouble must not end the run
                self.flush()

    def close(self) -> None:
        """Store everything left, with a summary of dropped output; stop the flush thread."""
        with self._lock:
            if self._closed:
                return
            thread, stop = self._thread, self._stop
        if stop is not None:
            stop.set()
        if thread is not None:
            thread.join(timeout=5)
        with self._lock:
            for (stream, step_key), rest in self._partial.items():
                self._line(stream, rest, step_key)
            self._partial.clear()
            if self.dropped_lines:
                self._pending.append(
                    Event(
                        run_id=self.run_id,
                        event_type=EventType.LOG,
                        message=f"[runcore] {self.dropped_lines} lines ({self.dropped_bytes} "
                        f"bytes) of output were dropped past the limit of {self.max_bytes} "
                        "bytes",
                        level="WARNING",
                        data={
                            "truncated": True,
                            "dropped_lines": self.dropped_lines,
                            "dropped_bytes": self.dropped_bytes,
                        },
                    )
                )
            self._closed = True
            batch, self._pending = self._pending, []
        if batch:
            with self._store_lock:
                self._store(batch)


# --- runs on threads: sys.stdout / sys.stderr --------------------------------------------------

_current: contextvars.ContextVar[tuple[OutputSink, str | None] | None] = contextvars.ContextVar(
    "runcore_output", default=None
)


class _StreamProxy:
    """Stands in for ``sys.stdout``/``sys.stderr``: a write from a thread executing a step of
    a capturing run goes to that run's sink, and on to the stream it replaced (``tee``)."""

    def __init__(self, name: str, original: IO[str]) -> None:
        self._runcore_name = name
        self._runcore_original = original

    def write(self, text: str) -> int:
        current = _current.get()
        if current is not None:
            sink, step_key = current
            sink.write(self._runcore_name, text, step_key)
        return self._runcore_original.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runcore_original, name)


def _install_proxies() -> None:
    for name in STREAMS:
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _StreamProxy):
            setattr(sys, name, _StreamProxy(name, stream))


@contextlib.contextmanager
def capture_streams(sink: OutputSink, step_key: str | None = None) -> Iterator[None]:
    """Within the block, what this thread (and tasks it runs on an event loop) writes to
    ``sys.stdout``/``sys.stderr`` also goes to ``sink``."""
    token = start_capture(sink, step_key)
    try:
        yield
    finally:
        stop_capture(token)


def start_capture(
    sink: OutputSink, step_key: str | None = None
) -> contextvars.Token[tuple[OutputSink, str | None] | None]:
    """:func:`capture_streams` without a context manager object (a step's call holds one
    for as long as the step runs): from now, until :func:`stop_capture` with the token."""
    _install_proxies()
    return _current.set((sink, step_key))


def stop_capture(token: contextvars.Token[tuple[OutputSink, str | None] | None]) -> None:
    """End what :func:`start_capture` began."""
    _current.reset(token)


# --- runs in their own process: file descriptors 1 and 2 ---------------------------------------


class FdCapture:
    """Points this process's fds 1 and 2 at pipes read into ``sink`` (see the module doc).

    ``start()`` and ``stop()`` are called by the one thread that executes the run.
    """

    def __init__(self, sink: OutputSink, *, tee: bool = True) -> None:
        self.sink = sink
        self.tee = tee
        self._saved: dict[int, int] = {}
        self._pipes: dict[int, int] = {}
        self._reader: threading.Thread | None = None
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> None:
        """Redirect fds 1 and 2 (flushing Python's streams first)."""
        names: dict[int, str] = {}
        for fd, name in ((1, "stdout"), (2, "stderr")):
            stream = getattr(sys, name)
            with contextlib.suppress(Exception):
                stream.flush()
            try:
                saved = os.dup(fd)
            except OSError:
                continue  # no such descriptor (closed): nothing to capture
            read_fd, write_fd = os.pipe()
            os.dup2(write_fd, fd)
            os.close(write_fd)
            self._saved[fd] = saved
            self._pipes[fd] = read_fd
            names[read_fd] = name
            with contextlib.suppress(Exception):  # lines reach the pipe as they are printed
                stream.reconfigure(line_buffering=True)
        if names:  # one thread reads both pipes: a run's start pays for one thread, not two
            self._reader = threading.Thread(
                target=self._read, args=(names,), name="runcore-capture", daemon=True
            )
            self._reader.start()

    def _read(self, names: dict[int, str]) -> None:
        import select

        saved = {read_fd: self._saved[fd] for fd, read_fd in self._pipes.items()}
        decoders = {read_fd: codecs.getincrementaldecoder("utf-8")("replace") for read_fd in names}
        open_fds = list(names)
        while open_fds:
            ready, _, _ = select.select(open_fds, [], [], 0.05)
            if not ready:
                if self._stop.is_set():
                    break
                continue
            with self._busy_lock:
                self._busy += 1
            try:
                for read_fd in ready:
                    data = os.read(read_fd, 65536)
                    if not data:
                        open_fds.remove(read_fd)
                        continue
                    self.sink.write(names[read_fd], decoders[read_fd].decode(data))
                    if self.tee:
                        with contextlib.suppress(OSError):
                            os.write(saved[read_fd], data)
            finally:
                with self._busy_lock:
                    self._busy -= 1
        for read_fd, name in names.items():
            self.sink.write(name, decoders[read_fd].decode(b"", final=True))

    def _pending_bytes(self) -> int:
        import fcntl
        import termios

        total = 0
        for read_fd in self._pipes.values():
            buf = bytearray(4)
            with contextlib.suppress(OSError):
                fcntl.ioctl(read_fd, termios.FIONREAD, buf)
                total += int.from_bytes(buf, sys.byteorder)
        with self._busy_lock:
            return total + self._busy

    def drain(self, timeout: float = 1.0) -> None:
        """Wait (up to ``timeout`` s) until the readers have taken what was written so far."""
        for name in STREAMS:
            with contextlib.suppress(Exception):
                getattr(sys, name).flush()
        deadline = time.monotonic() + timeout
        while self._pending_bytes() and time.monotonic() < deadline:
            time.sleep(0.001)

    def flush(self) -> None:
        """Store what was written so far (waiting up to a second for the readers)."""
        self.drain()
        self.sink.flush(partial=True)

    def stop(self) -> None:
        """Put fds 1 and 2 back, read what is left, and close the sink."""
        for name in STREAMS:
            with contextlib.suppress(Exception):
                getattr(sys, name).flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # drops this process's write end of the pipe
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=2)
        for read_fd in self._pipes.values():
            with contextlib.suppress(OSError):
                os.close(read_fd)
        for saved in self._saved.values():
            with contextlib.suppress(OSError):
                os.close(saved)
        self._saved.clear()
        self._pipes.clear()
        self.sink.close()


__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_LINE_CHARS",
    "FdCapture",
    "OutputSink",
    "capture_streams",
]
