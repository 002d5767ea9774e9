"""Checks for values that cross the trust boundary: numbers, identifiers, text.

One place, so that config parsing, constructors, CLI flags, tags and storage reads all refuse
the same things with the same words. Every check raises :class:`~runcore.errors.ConfigError`
naming the field (``field`` is how the user wrote it: ``run_monitoring.poll_interval_seconds``,
``--interval``, ``tag runcore/max_runtime``) and saying what would be accepted.
"""

from __future__ import annotations

import math
import re
from typing import Any

from runcore.errors import ConfigError, InvalidRunIdError

#: Signed 64-bit integers: what priorities (and every counter stored as an integer) may be.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: The longest interval, timeout, delay or duration runcore accepts, in seconds (about 31
#: years): anything longer cannot be waited for (``threading.Event.wait`` and ``time.sleep``
#: overflow) and is a mistake, not a setting.
MAX_SECONDS = 1e9

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_MATCH = _UUID.fullmatch  # bound once: every run and queued row read back is checked
#: Step keys and output names become path components: a conservative, portable alphabet.
_PATH_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-\[\]]{0,254}")


def number(
    field: str,
    value: Any,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    off: float | None = None,
) -> float:
    """A finite number (not a bool), ``>= minimum``, ``> above`` and ``<= maximum`` when given.

    ``off`` is a documented value that means "disabled" (``-1``, ``0``): it is accepted as it
    is, outside the range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{field}: expected a number, got {value!r}")
    if off is not None and value == off:
        return float(value)
    if isinstance(value, int):
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{field}: expected a finite number, got {value!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{field}: expected a finite number, got {value!r}")
    too_low = (minimum is not None and value < minimum) or (above is not None and value <= above)
    if too_low or (maximum is not None and value > maximum):
        ranged = _range_words(minimum, above, maximum, off)
        raise ConfigError(f"{field}: must be {ranged}, got {value!r}")
    return float(value)


def interval(field: str, value: Any) -> float:
    """A poll interval, delay between passes, or similar: finite, > 0 and at most
    :data:`MAX_SECONDS`."""
    return number(field, value, above=0, maximum=MAX_SECONDS)


def duration(field: str, value: Any, *, off: float | None = None) -> float:
    """A timeout or duration: finite, > 0 and at most :data:`MAX_SECONDS`, or exactly ``off``."""
    return number(field, value, above=0, maximum=MAX_SECONDS, off=off)


def delay(field: str, value: Any) -> float:
    """A delay that may be zero: finite, >= 0 and at most :data:`MAX_SECONDS`."""
    return number(field, value, minimum=0, maximum=MAX_SECONDS)


def integer(
    field: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    off: int | None = None,
) -> int:
    """An int (not a bool) within ``[minimum, maximum]`` (and always within signed 64 bits),
    or exactly ``off``."""
    low = INT64_MIN if minimum is None else max(minimum, INT64_MIN)
    high = INT64_MAX if maximum is None else min(maximum, INT64_MAX)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field}: must be an int >= {low} and <= {high}, got {value!r}")
    if off is not None and value == off:
        return value
    if not low <= value <= high:
        raise ConfigError(f"{field}: must be an int >= {low} and <= {high}, got {value!r}")
    return value


def int_text(
    field: str, text: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An integer written as text (a tag value, a CLI argument): digits with an optional sign,
    within signed 64 bits and ``[minimum, maximum]``."""
    if not isinstance(text, str):
        raise ConfigError(f"{field}: expected an integer written as text, got {text!r}")
    raw = text.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,20}", raw):
        raise ConfigError(f"{field}: expected an integer, got {text!r}")
    return integer(field, int(raw), minimum=minimum, maximum=maximum)


def float_text(
    field: str, text: str, *, above: float | None = 0, maximum: float | None = MAX_SECONDS
) -> float:
    """A finite number written as text (a tag value, a CLI argument), ``> above`` and
    ``<= maximum`` (by default: a number of seconds, see :func:`duration`)."""
    if not isinstance(text, str):
        raise ConfigError(f"{field}: expected a number written as text, got {text!r}")
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{field}: expected a number, got {text!r}") from None
    return number(field, value, above=above, maximum=maximum)


def _range_words(
    minimum: float | None, above: float | None, maximum: float | None, off: float | None
) -> str:
    words = []
    if minimum is not None:
        words.append(f">= {minimum:g}")
    if above is not None:
        words.append(f"> {above:g}")
    if maximum is not None:
        words.append(f"<= {maximum:g}")
    text = " and ".join(words) or "finite"
    return text + (f" (or {off:g} for off)" if off is not None else "")


def is_run_id(value: object) -> bool:
    """Whether ``value`` is a run id: a canonical UUID in lowercase text form."""
    return isinstance(value, str) and len(value) == 36 and _UUID_MATCH(value) is not None


def run_id(value: Any, field: str = "run_id") -> str:
    """``value`` if it is a canonical lowercase UUID (see :func:`is_run_id`), else
    :class:`~runcore.errors.InvalidRunIdError` (a ``ConfigError``) naming ``field``."""
    if not is_run_id(value):
        raise InvalidRunIdError(value, field)
    return str(value)


def path_name(value: Any, field: str) -> str:
    """A step key or output name that is safe as one path component (no ``/``, no ``..``)."""
    if not isinstance(value, str) or not _PATH_NAME.fullmatch(value) or value in (".", ".."):
        raise ConfigError(
            f"{field}: {value!r} cannot be used; use letters, digits, '_', '-', '.', '[' and "
            "']' (not starting with '.' or '-'), at most 255 characters"
        )
    return value


def text(value: Any, field: str) -> str:
    """A string that is valid Unicode all the way down (no lone surrogates, which is how
    Python carries undecodable bytes from argv, the environment or ``surrogateescape``)."""
    if not isinstance(value, str):
        raise ConfigError(f"{field}: expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{field}: not valid UTF-8 text ({_shown(value)}); use UTF-8") from None
    return value


def _shown(value: str) -> str:
    """``value`` for an error message: undecodable bytes as the bytes they were."""
    try:
        return repr(value.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a surrogate that never was a byte (e.g. from "\ud800")
        return ascii(value)


def utf8_tree(value: Any, field: str) -> None:
    """:func:`text` for every string (keys included) inside nested mappings and lists."""
    if isinstance(value, str):
        text(value, field)
    elif isinstance(value, dict):
        for key, item in value.items():
            name = field
            if isinstance(key, str) and _printable(key):
                name = f"{field}.{key}" if field else key
            if isinstance(key, str):
                text(key, f"{field or 'config'} (a key)")
            utf8_tree(item, name)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            utf8_tree(item, f"{field}[{index}]")


def _printable(key: str) -> bool:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
