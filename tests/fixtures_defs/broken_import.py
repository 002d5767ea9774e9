"""A user module that fails while it imports."""

from __future__ import annotations

import runcore as rc


def _configure() -> None:
    raise ValueError("boom while importing the user's module")


_configure()

defs = rc.Definitions(jobs=[])
