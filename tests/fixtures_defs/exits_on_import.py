"""A user module that calls ``sys.exit`` while it imports (it must not end the loader)."""

from __future__ import annotations

import sys

sys.exit(3)
