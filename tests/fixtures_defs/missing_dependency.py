"""A user module whose own import of a third-party package fails."""

from __future__ import annotations

import runcore_test_no_such_dependency  # type: ignore[import-not-found]  # noqa: F401
