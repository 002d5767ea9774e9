"""Turn measured outcomes into the RESULTS.md markdown report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from _specs import Row

#: Measurement fields listed under "Measurement details" (``measured_value``: before
#: extrapolation).
DETAIL_KEYS = (
    "median",
    "p99",
    "reps",
    "warmup",
    "trials",
    "min",
    "max",
    "count",
    "seconds",
    "calls",
    "lost_races",
    "daemons",
    "fill_seconds",
    "n_ops",
    "submit_ms",
    "wall_ms",
    "idle_rss_mib",
    "busy_rss_mib",
    "threads",
    "measured_value",
)


@dataclass
class Outcome:
    """What one worker run produced for one implementation of one case."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    skipped: str | None = None
    extrapolated_from: int | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Line:
    """One evaluated row: the figures, the ratio and whether the target was met."""

    row: Row
    runcore: dict[str, Any] | None
    dagster: dict[str, Any] | None
    runcore_cell: str
    dagster_cell: str
    ratio: float | None
    met: bool | None


def fmt_value(measurement: Mapping[str, Any]) -> str:
    """A measurement as shown in a cell: ``0.42 ms``, ``2.18 s``, ``12,345/s``, ``0``."""
    value, unit = measurement["value"], measurement["unit"]
    if unit == "ms":
        if value >= 1000:
            return f"{value / 1000:.2f} s"
        if value >= 100:
            return f"{value:.0f} ms"
        if value >= 1:
            return f"{value:.2f} ms"
        return f"{value:.3f} ms"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "KiB":
        return f"{value:,.1f} KiB"
    return f"{value:g}"


def _cell(outcome: Outcome | None, metric: str, note: str) -> tuple[dict[str, Any] | None, str]:
    if outcome is None:
        return None, f"n/a ({note})" if note else "n/a"
    if outcome.skipped:
        return None, f"skipped ({outcome.skipped})"
    if outcome.error:
        return None, "ERROR"
    measurement = outcome.metrics.get(metric)
    if measurement is None:
        return None, "ERROR"
    text = fmt_value(measurement)
    if outcome.extrapolated_from:
        text += f" (extrapolated from {outcome.extrapolated_from} ops)"
    return measurement, text


def ratio_of(runcore: Mapping[str, Any] | None, dagster: Mapping[str, Any] | None) -> float | None:
    """How many times better runcore is: time ratio for ``ms``, rate ratio for ``/s``."""
    if not runcore or not dagster or runcore["unit"] != dagster["unit"]:
        return None
    if runcore["unit"] == "ms" and runcore["value"] > 0:
        return float(dagster["value"] / runcore["value"])
    if runcore["unit"] == "/s" and dagster["value"] > 0:
        return float(runcore["value"] / dagster["value"])
    return None


def evaluate(row: Row, runcore: Outcome | None, dagster: Outcome | None) -> Line:
    """Figures, ratio and verdict of one row."""
    rc, rc_cell = _cell(runcore, row.metric, "")
    dg, dg_cell = _cell(dagster, row.metric, row.dagster_case.note)
    ratio = ratio_of(rc, dg)
    met = row.target.met(rc["value"] if rc else None, ratio)
    return Line(row, rc, dg, rc_cell, dg_cell, ratio, met)


def verdict(line: Line) -> str:
    """PASS / FAIL, in parentheses for informational rows, ``-`` when it cannot be judged."""
    if line.met is None:
        return "-"
    word = "PASS" if line.met else "**FAIL**"
    return word if line.row.target.binding else f"({word.strip('*').lower()})"


def _table(lines: list[Line]) -> list[str]:
    out = [
        "| benchmark | runcore | dagster | ratio | target | result |",
        "|---|---:|---:|---:|---|---|",
    ]
    for line in lines:
        ratio = f"{line.ratio:,.1f}x" if line.ratio is not None else "-"
        out.append(
            f"| {line.row.name} | {line.runcore_cell} | {line.dagster_cell} | {ratio} "
            f"| {line.row.target.text()} | {verdict(line)} |"
        )
    return out


def _number(value: Any) -> str:
    """A detail value: floats to 4 significant digits, large ones with thousands separators."""
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 1000 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _detail(measurement: Mapping[str, Any] | None) -> str:
    if not measurement:
        return "-"
    keys = DETAIL_KEYS
    parts = []
    for key in keys:
        if key in measurement:
            value = measurement[key]
            parts.append(f"{key}={_number(value)}")
    return ", ".join(parts) or "-"


def _details(lines: list[Line]) -> list[str]:
    out = ["| benchmark | runcore | dagster |", "|---|---|---|"]
    out += [f"| {ln.row.name} | {_detail(ln.runcore)} | {_detail(ln.dagster)} |" for ln in lines]
    return out


def render(
    lines: list[Line],
    machine: Mapping[str, str],
    errors: Mapping[str, str],
    notes: list[str],
    title: str = "# runcore vs Dagster: benchmark results",
) -> str:
    """The whole RESULTS.md text, or (``title`` a ``##`` heading) one section of it, its
    parts one heading level down."""
    sub = "#" * (len(title) - len(title.lstrip("#")) + 1)
    out = [title, ""]
    out += ["| machine | |", "|---|---|"]
    out += [f"| {key} | {value} |" for key, value in machine.items()]
    out += ["", f"{sub} Results", ""]
    out += _table(lines)
    out += ["", f"{sub} Notes", ""]
    out += [f"- {note}" for note in notes]
    out += ["", f"{sub} Measurement details", ""]
    out += _details(lines)
    if errors:
        out += ["", f"{sub} Errors", ""]
        for key, text in errors.items():
            out += [f"{sub}# {key}", "", "```", text.strip(), "```", ""]
    return "\n".join(out).rstrip() + "\n"
