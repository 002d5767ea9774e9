"""Output stores: where a step's return value waits for the steps that take it.

This is the one place runcore may pickle, and only users' step outputs: runs, events, config
and RPC messages are JSON. Two stores ship:

* :class:`InMemoryOutputStore` keeps values in a dict. Used by ``execute_in_process`` and by
  runs on threads of an in-memory instance; nothing leaves the process.
* :class:`FileOutputStore` pickles each output to ``<base_dir>/<run_id>/<step_key>.pkl``
  (written to a temporary name, then renamed, so a reader never sees half a file). Used when
  steps run in other processes, and for re-execution from a parent run's outputs. Run ids must
  be run ids (lowercase UUIDs) and step keys plain names, and every path is resolved
  (symbolic links included) and refused unless it lies under ``base_dir``.

A custom store subclasses :class:`OutputStore` (three methods). It must be safe to call from
several threads, and ``get`` must see any ``put`` that returned before it was called.
:class:`runcore.testing.OutputStoreContract` is the pytest suite that checks this.
"""

from __future__ import annotations

import contextlib
import os
import threading
from abc import ABC, abstractmethod
from typing import Any

from runcore import _validate
from runcore.errors import OutputStoreError


class OutputStore(ABC):
    """Holds step outputs by (run id, step key)."""

    @abstractmethod
    def put(self, run_id: str, step_key: str, value: Any) -> None:
        """Store ``value`` as the output of ``step_key`` in ``run_id``, replacing any earlier one.

        Raises :class:`OutputStoreError` if the value cannot be stored (e.g. not picklable);
        nothing is stored then.
        """

    @abstractmethod
    def get(self, run_id: str, step_key: str) -> Any:
        """The stored output; :class:`OutputStoreError` if there is none or it cannot be read."""

    @abstractmethod
    def has(self, run_id: str, step_key: str) -> bool:
        """Whether an output of ``step_key`` in ``run_id`` is stored."""


class InMemoryOutputStore(OutputStore):
    """Outputs kept as live objects in this process (no copy, no serialization)."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def put(self, run_id: str, step_key: str, value: Any) -> None:
        with self._lock:
            self._values[(run_id, step_key)] = value

    def get(self, run_id: str, step_key: str) -> Any:
        try:
            return self._values[(run_id, step_key)]
        except KeyError:
            raise OutputStoreError(
                f"no output of step {step_key!r} is stored for run {run_id!r}"
            ) from None

    def has(self, run_id: str, step_key: str) -> bool:
        return (run_id, step_key) in self._values

    def clear_run(self, run_id: str) -> None:
        """Forget every output of ``run_id`` (frees memory once a run's outputs are not needed)."""
        with self._lock:
            for key in [k for k in self._values if k[0] == run_id]:
                del self._values[key]


class FileOutputStore(OutputStore):
    """Outputs pickled to files under ``base_dir`` (one directory per run).

    Nothing is written or read outside ``base_dir``: a run id that is not a run id, or a step
    key that is not a plain name, is a :class:`~runcore.errors.ConfigError`; a path that
    resolves outside ``base_dir`` (through a symbolic link) an :class:`OutputStoreError`.
    """

    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self.base_dir = os.fspath(base_dir)
        self._root: str | None = None

    def _path(self, run_id: str, step_key: str) -> str:
        _validate.run_id(run_id)
        _validate.path_name(step_key, "step key")
        root = self._root
        if root is None:  # resolved once: every path below is checked against it
            root = self._root = os.path.realpath(self.base_dir)
        run_dir = os.path.join(root, run_id)
        path = os.path.join(run_dir, f"{step_key}.pkl")
        # Both names are plain (no separators, no ".."): only a symbolic link at the run's
        # directory or at the file itself can lead elsewhere; two lstat calls, not a
        # resolution of every component of the path.
        if not (os.path.islink(run_dir) or os.path.islink(path)):
            return path
        resolved = os.path.realpath(path)
        if os.path.commonpath([root, resolved]) != root or resolved == root:
            raise OutputStoreError(
                f"the output of step {step_key!r} of run {run_id} would be at {resolved}, "
                f"outside the output store's directory {root}; refused (is a symbolic link "
                "under it pointing elsewhere?)"
            )
        return resolved

    def put(self, run_id: str, step_key: str, value: Any) -> None:
        import pickle

        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise OutputStoreError(
                f"the output of step {step_key!r} ({type(value).__name__}) cannot be stored: "
                f"{type(exc).__name__}: {exc}. Outputs stored in files (as when steps run in "
                "other processes) are pickled: return a picklable value, plain data such as "
                "numbers, strings, lists, dicts or module-level classes, not a lambda, "
                "generator, lock, open file or connection"
            ) from exc
        path = self._path(run_id, step_key)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise OutputStoreError(
                f"the output of step {step_key!r} cannot be written to {path}: {exc}"
            ) from exc

    def get(self, run_id: str, step_key: str) -> Any:
        import pickle

        path = self._path(run_id, step_key)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise OutputStoreError(
                f"no output of step {step_key!r} is stored for run {run_id!r} (looked at {path})"
            ) from None
        except OSError as exc:
            raise OutputStoreError(f"cannot read the output at {path}: {exc}") from exc
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise OutputStoreError(
                f"the output of step {step_key!r} at {path} cannot be loaded: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def has(self, run_id: str, step_key: str) -> bool:
        return os.path.exists(self._path(run_id, step_key))
