"""The ECS launcher's names and the checks of its config values.

Every check raises :class:`~runcore.errors.ConfigError` naming the setting
(``EcsRunLauncher capacity_provider_strategy[0].weight must be ...``), at construction: a bad
config never reaches AWS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runcore._retry import RetrySettings
from runcore.errors import ConfigError

#: The worker kind this launcher records.
ECS = "ecs"
#: Tags every run task carries.
RUN_ID_TAG = "runcore/run_id"
JOB_NAME_TAG = "runcore/job_name"
#: Run tags that size a run's task (task-level ``cpu`` units and ``memory`` MiB overrides).
CPU_TAG = "ecs/cpu"
MEMORY_TAG = "ecs/memory"
#: The launch types RunTask takes (``launch_type``).
LAUNCH_TYPES = ("EC2", "FARGATE", "EXTERNAL")
#: The keys of one capacity provider strategy item, as RunTask spells them, and the largest
#: ``weight`` and ``base`` AWS accepts.
STRATEGY_KEYS = ("capacityProvider", "weight", "base")
STRATEGY_LIMITS = {"weight": 1000, "base": 100000}


def strings(name: str, value: Any) -> tuple[str, ...]:
    """A list of non-empty strings (``subnets``, ``command``)."""
    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise ConfigError(f"EcsRunLauncher {name} must be a list of strings, got {value!r}")
    return tuple(value)


def string_map(name: str, value: Any) -> dict[str, str]:
    """A mapping of strings to strings (``env``, ``secrets``, ``task_tags``)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"EcsRunLauncher {name} must map strings to strings, got {value!r}")
    return dict(value)


def optional_name(name: str, value: Any) -> str | None:
    """A non-empty string, or None (``container_name``, ``region_name``, ``endpoint_url``)."""
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"EcsRunLauncher {name} must be a non-empty string, got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ConfigError(f"EcsRunLauncher {name} must be true or false, got {value!r}")
    return value


def retry(attempts: Any, initial_wait: Any, max_wait: Any) -> RetrySettings:
    """RunTask's retries (``run_task_attempts``, ``retry_initial_wait``, ``retry_max_wait``)."""
    try:
        return RetrySettings(attempts=attempts, initial_wait=initial_wait, max_wait=max_wait)
    except ConfigError as exc:  # name the launcher's settings, not RetrySettings'
        text = str(exc)
        for field, setting in (
            ("attempts", "run_task_attempts"),
            ("initial_wait", "retry_initial_wait"),
            ("max_wait", "retry_max_wait"),
        ):
            text = text.replace(f"RetrySettings.{field}", f"EcsRunLauncher {setting}")
        raise ConfigError(text) from None


def launch_type(value: Any) -> str | None:
    """``EC2``, ``FARGATE``, ``EXTERNAL`` or None."""
    if value is not None and value not in LAUNCH_TYPES:
        raise ConfigError(
            f"EcsRunLauncher launch_type must be one of {', '.join(LAUNCH_TYPES)}, got {value!r}"
        )
    return str(value) if value is not None else None


def capacity_provider_strategy(value: Any) -> tuple[dict[str, Any], ...]:
    """A list of ``{capacityProvider, weight, base}``, as RunTask takes it."""
    name = "EcsRunLauncher capacity_provider_strategy"
    if value is None:
        return ()
    if isinstance(value, str | Mapping) or not isinstance(value, Sequence):
        raise ConfigError(f"{name} must be a list of {{capacityProvider, weight, base}}")
    out: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where} must be {{capacityProvider, weight, base}}, got {item!r}")
        unknown = sorted(str(key) for key in set(item) - set(STRATEGY_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown} (takes {', '.join(STRATEGY_KEYS)})")
        provider = item.get("capacityProvider")
        if not isinstance(provider, str) or not provider:
            raise ConfigError(f"{where}.capacityProvider must be a name, got {provider!r}")
        entry: dict[str, Any] = {"capacityProvider": provider}
        for key, top in STRATEGY_LIMITS.items():
            number = item.get(key)
            if number is None:
                continue
            if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= top:
                raise ConfigError(
                    f"{where}.{key} must be a whole number from 0 to {top}, got {number!r}"
                )
            entry[key] = number
        out.append(entry)
    if not out:
        raise ConfigError(f"{name} must name at least one capacity provider (or leave it out)")
    if sum(1 for entry in out if entry.get("base")) > 1:
        raise ConfigError(f"{name}: only one capacity provider may have a base above 0")
    return tuple(out)


def run_resources(value: Mapping[str, Any] | None) -> dict[str, str]:
    """``{cpu, memory}`` task sizes, as ECS takes them."""
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"EcsRunLauncher run_resources must be {{cpu, memory}}, got {value!r}")
    resources = dict(value or {})
    unknown = sorted(set(resources) - {"cpu", "memory"})
    if unknown:
        raise ConfigError(f"EcsRunLauncher run_resources takes cpu and memory, got {unknown}")
    return {
        key: size(f"EcsRunLauncher run_resources.{key}", amount)
        for key, amount in resources.items()
        if amount is not None
    }


def size(name: str, value: Any) -> str:
    """A task size (cpu units or MiB) as ECS takes it: a string of digits."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isdigit() or int(text) <= 0:
        raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
    return text
