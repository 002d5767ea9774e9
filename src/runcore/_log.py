"""Structured log lines: one ``logging`` record per thing that happened, its message in logfmt
(``event=run_launched run_id=... job=etl``) and its fields on the record (``record.runcore``),
so a handler can print the line or turn the fields into JSON."""

from __future__ import annotations

import logging
from typing import Any


def _value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def logfmt(event: str, fields: dict[str, Any]) -> str:
    """``event=EVENT key=value ...``, values quoted when they need it; None values left out."""
    parts = [f"event={event}"]
    parts.extend(f"{key}={_value(value)}" for key, value in fields.items() if value is not None)
    return " ".join(parts)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured line (nothing is formatted unless ``logger`` is enabled for it)."""
    if logger.isEnabledFor(level):
        logger.log(
            level, "%s", logfmt(event, fields), extra={"runcore": {"event": event, **fields}}
        )
