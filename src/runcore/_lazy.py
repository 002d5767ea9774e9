"""Public names a package loads on first use (PEP 562).

A package's ``__init__`` lists its public names and the module each lives in; importing the
package then costs nothing beyond the package itself, and ``package.Name`` imports the
module the first time it is read. ``import runcore`` stays as light as defining ops and
jobs needs, and a run worker process loads only the modules it uses, not every backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(
    package: str, namespace: dict[str, Any], names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` (whose globals are ``namespace``):
    ``names`` maps each public name to the module that defines it."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # from now on an ordinary global
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
