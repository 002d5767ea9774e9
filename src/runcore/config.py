"""Typed instance configuration (attrs + cattrs), read from a dict or a YAML file.

The structure mirrors what ``dagster.yaml`` users know; see ``docs/configuration.md``. Errors
name the key and what was expected (``ConfigError: storage.sqlite.path: expected a string``).
Unknown keys are errors, so a typo is caught rather than silently ignored.

Components are plug-ins named ``"module:Class"`` with a ``config:`` mapping beside them. A class
may declare ``config_schema``, an attrs class, to have its config typed and checked; otherwise
the mapping is passed as keyword arguments and checked against the constructor's signature.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import attrs

from runcore import _validate
from runcore.errors import ConfigError

if TYPE_CHECKING:
    import cattrs

T = TypeVar("T")

#: The environment variable naming the instance's home directory.
HOME_ENV = "RUNCORE_HOME"
#: The home directory when ``$RUNCORE_HOME`` is not set (relative to the current directory).
DEFAULT_HOME = ".runcore"


def home_dir() -> str:
    """The instance's home directory, absolute: ``$RUNCORE_HOME``, else ``./.runcore``.

    Files that processes of one instance on one host share live under it, such as the code
    servers' generated tokens (``code-servers/<host>_<port>.token``). Nothing is created here.
    """
    return os.path.abspath(os.environ.get(HOME_ENV) or DEFAULT_HOME)


@attrs.frozen
class SqliteStorageConfig:
    """``storage: {sqlite: {path: ..., auto_migrate: false}}``; a relative path is relative to
    the config file. ``auto_migrate`` upgrades an older schema on open (else that is an error
    naming ``runcore instance migrate``)."""

    path: str = ".runcore/runs.db"
    auto_migrate: bool = False


@attrs.frozen
class PostgresPoolConfig:
    """``storage.postgres.pool: {min: 1, max: 10}``: connections per process."""

    min: int = 1
    max: int = 10


@attrs.frozen
class PostgresStorageConfig:
    """``storage: {postgres: {url: postgresql://..., schema: public, pool: {min, max},
    auto_migrate: false}}``. ``url`` defaults to ``$RUNCORE_POSTGRES_URL``; a URL without a
    password takes the one in ``$RUNCORE_POSTGRES_URL`` (or libpq's ``PGPASSWORD``)."""

    url: str | None = None
    schema: str = "public"
    pool: PostgresPoolConfig = attrs.field(factory=PostgresPoolConfig)
    auto_migrate: bool = False


@attrs.frozen
class InMemoryStorageConfig:
    """``storage: {in_memory: {}}``."""


@attrs.frozen
class StorageConfig:
    """Exactly one of the backends: a short form (``sqlite``, ``in_memory``, ``postgres``) or
    a plug-in, ``{class: "module:Class", config: {...}}`` with ``config`` beside ``class``."""

    sqlite: SqliteStorageConfig | None = None
    in_memory: InMemoryStorageConfig | None = None
    postgres: PostgresStorageConfig | None = None
    class_name: str | None = None
    config: dict[str, Any] | None = None

    def __attrs_post_init__(self) -> None:
        names = {"sqlite": "sqlite", "in_memory": "in_memory", "postgres": "postgres"}
        chosen = [key for attr, key in names.items() if getattr(self, attr) is not None]
        if self.class_name is not None:
            chosen.append("class")
        if len(chosen) != 1:
            raise ConfigError(
                "storage: give exactly one of sqlite, in_memory, postgres, class"
                + (f" (got {', '.join(chosen)})" if chosen else " (got none)")
            )
        if self.config is not None and self.class_name is None:
            raise ConfigError(
                "storage.config: settings of a storage plug-in go beside its class "
                "(storage: {class: 'module:Class', config: {...}}); the short forms take "
                "theirs inside (storage: {sqlite: {path: ...}})"
            )


@attrs.frozen
class PluginConfig:
    """``{class: "module:Class", config: {...}}``."""

    class_name: str
    config: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class UniqueValue:
    """``value: {applyLimitPerUniqueValue: true}`` in a tag limit."""

    apply_limit_per_unique_value: bool = True


@attrs.frozen
class TagConcurrencyLimit:
    """At most ``limit`` in-progress runs carrying tag ``key`` (with ``value``, if given)."""

    key: str
    limit: int
    value: str | UniqueValue | None = None


@attrs.frozen
class RunConcurrencyConfig:
    """``concurrency.runs``: the global limit (-1: none) and the tag limits."""

    max_concurrent_runs: int = -1
    tag_concurrency_limits: list[TagConcurrencyLimit] = attrs.field(factory=list)


@attrs.frozen
class PoolConcurrencyConfig:
    """``concurrency.pools``: the limit of pools with none set, and the granularity."""

    default_limit: int | None = None
    granularity: Literal["op", "run"] = "op"


@attrs.frozen
class ConcurrencyConfig:
    """``concurrency``: run limits and op pools."""

    runs: RunConcurrencyConfig = attrs.field(factory=RunConcurrencyConfig)
    pools: PoolConcurrencyConfig = attrs.field(factory=PoolConcurrencyConfig)


@attrs.frozen
class NonIsolatedRunsConfig:
    """``non_isolated_runs``: runs tagged ``runcore/isolation: non_isolated``."""

    enabled: bool = True
    max_concurrent_runs: int = 1
    launcher: PluginConfig | None = None


@attrs.frozen
class RunMonitoringConfig:
    """``run_monitoring``: stuck and dead run detection by the daemon.

    Every value is a finite number of seconds, > 0 and at most ``1e9``;
    ``max_runtime_seconds`` and ``worker_heartbeat_timeout_seconds`` may also be null (off).
    Run workers heartbeat into storage every ``worker_heartbeat_interval_seconds``; a worker
    silent for longer than ``worker_heartbeat_timeout_seconds`` is dead, on whatever host.
    """

    enabled: bool = True
    start_timeout_seconds: float = 180.0
    cancel_timeout_seconds: float = 180.0
    max_runtime_seconds: float | None = None
    poll_interval_seconds: float = 5.0
    worker_heartbeat_interval_seconds: float = 10.0
    worker_heartbeat_timeout_seconds: float | None = 120.0

    def __attrs_post_init__(self) -> None:
        for name in ("start_timeout_seconds", "cancel_timeout_seconds"):
            _validate.duration(f"run_monitoring.{name}", getattr(self, name))
        _validate.interval("run_monitoring.poll_interval_seconds", self.poll_interval_seconds)
        _validate.interval(
            "run_monitoring.worker_heartbeat_interval_seconds",
            self.worker_heartbeat_interval_seconds,
        )
        for name in ("max_runtime_seconds", "worker_heartbeat_timeout_seconds"):
            if getattr(self, name) is None:
                continue
            try:
                _validate.duration(f"run_monitoring.{name}", getattr(self, name))
            except ConfigError as exc:
                raise ConfigError(f"{exc} (or null for none)") from None
        timeout = self.worker_heartbeat_timeout_seconds
        if timeout is not None and timeout <= self.worker_heartbeat_interval_seconds:
            raise ConfigError(
                "run_monitoring.worker_heartbeat_timeout_seconds must be longer than "
                f"worker_heartbeat_interval_seconds ({self.worker_heartbeat_interval_seconds:g}"
                f" s), got {timeout:g}: a worker would be dead between two heartbeats"
            )


@attrs.frozen
class RunRetriesConfig:
    """``run_retries``: automatic re-runs of failed runs by the daemon."""

    enabled: bool = False
    max_retries: int = 0
    retry_on_op_failure: bool = True
    delay_seconds: float = 0.0

    def __attrs_post_init__(self) -> None:
        _validate.integer("run_retries.max_retries", self.max_retries, minimum=0)
        _validate.delay("run_retries.delay_seconds", self.delay_seconds)


@attrs.frozen
class OutputsConfig:
    """``outputs: {path: ...}``: where runs launched by the instance keep step outputs.

    Default: ``outputs`` beside the SQLite file; in memory for in-memory storage. Or a store of
    one's own, as a plug-in: ``outputs: {class: "module:Class", config: {...}}`` (an
    :class:`~runcore.worker.outputs.OutputStore`, e.g.
    ``runcore.worker.outputs_s3:S3OutputStore`` for runs in ECS tasks).
    """

    path: str | None = None
    class_name: str | None = None
    config: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.path is not None and self.class_name is not None:
            raise ConfigError("outputs: give either path or class, not both")
        if self.config and self.class_name is None:
            raise ConfigError("outputs.config: settings for a store need its class")


@attrs.frozen
class InstanceConfig:
    """The whole instance configuration."""

    storage: StorageConfig = attrs.field(
        factory=lambda: StorageConfig(sqlite=SqliteStorageConfig())
    )
    run_coordinator: PluginConfig | None = None
    run_launcher: PluginConfig | None = None
    non_isolated_runs: NonIsolatedRunsConfig = attrs.field(factory=NonIsolatedRunsConfig)
    concurrency: ConcurrencyConfig = attrs.field(factory=ConcurrencyConfig)
    run_monitoring: RunMonitoringConfig = attrs.field(factory=RunMonitoringConfig)
    run_retries: RunRetriesConfig = attrs.field(factory=RunRetriesConfig)
    outputs: OutputsConfig = attrs.field(factory=OutputsConfig)
    #: ``run_hooks: [{class: "pkg.mod:Hooks", config: {...}}]``: built by every run worker.
    run_hooks: list[PluginConfig] = attrs.field(factory=list)


# --- parsing ----------------------------------------------------------------------------------


@functools.cache
def _converter() -> cattrs.Converter:
    import cattrs
    from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

    conv = cattrs.Converter(forbid_extra_keys=True)

    def structure_int(value: Any, _: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _ConfigTypeError(f"expected an integer, got {value!r}")
        if not _validate.INT64_MIN <= value <= _validate.INT64_MAX:
            raise _ConfigTypeError(f"expected an integer within signed 64 bits, got {value!r}")
        return value

    def structure_float(value: Any, _: type) -> float:
        # Ranges are the config classes' own (they name the field); here: a finite number.
        try:
            return _validate.number("value", value)
        except ConfigError as exc:
            raise _ConfigTypeError(str(exc).removeprefix("value: ")) from None

    def structure_str(value: Any, _: type) -> str:
        if not isinstance(value, str):
            raise _ConfigTypeError(f"expected a string, got {value!r}")
        return value

    def structure_bool(value: Any, _: type) -> bool:
        if not isinstance(value, bool):
            raise _ConfigTypeError(f"expected true or false, got {value!r}")
        return value

    conv.register_structure_hook(int, structure_int)
    conv.register_structure_hook(float, structure_float)
    conv.register_structure_hook(str, structure_str)
    conv.register_structure_hook(bool, structure_bool)

    renamed: list[tuple[type, str, str]] = [
        (PluginConfig, "class_name", "class"),
        (StorageConfig, "class_name", "class"),
        (OutputsConfig, "class_name", "class"),
        (UniqueValue, "apply_limit_per_unique_value", "applyLimitPerUniqueValue"),
    ]
    for cls, attr, key in renamed:
        rename: dict[str, Any] = {attr: override(rename=key)}
        conv.register_structure_hook(
            cls, make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True, **rename)
        )
        conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, **rename))

    def structure_tag_value(value: Any, _: type) -> str | UniqueValue | None:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, Mapping):
            return conv.structure(value, UniqueValue)
        raise _ConfigTypeError(
            f"expected a string or {{applyLimitPerUniqueValue: true}}, got {value!r}"
        )

    conv.register_structure_hook(str | UniqueValue | None, structure_tag_value)

    def structure_in_memory(value: Any, _: type) -> InMemoryStorageConfig:
        if value not in (None, {}):
            raise _ConfigTypeError(f"in_memory takes no settings, got {value!r}")
        return InMemoryStorageConfig()

    conv.register_structure_hook(InMemoryStorageConfig, structure_in_memory)
    conv.register_unstructure_hook(InMemoryStorageConfig, lambda _: {})
    return conv


_RENAMED = {"class_name": "class", "apply_limit_per_unique_value": "applyLimitPerUniqueValue"}


class _ConfigTypeError(TypeError):
    """Raised by runcore's own structure hooks; its message is already readable."""


def _format(exc: BaseException, expected: type | None) -> str:
    import cattrs

    if isinstance(exc, _ConfigTypeError):
        return str(exc)
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        known = sorted(a.name for a in attrs.fields(exc.cl)) if attrs.has(exc.cl) else []
        renamed = {
            "class_name": "class",
            "apply_limit_per_unique_value": "applyLimitPerUniqueValue",
        }
        known = [renamed.get(k, k) for k in known]
        unknown = ", ".join(repr(k) for k in sorted(exc.extra_fields))
        return f"unknown key {unknown}; expected one of: {', '.join(known) or 'no keys'}"
    if isinstance(exc, KeyError):
        return "this key is required"
    import re

    literal = re.search(r"(.*) not in literal typing.Literal\[(.*)\]", str(exc))
    if literal:
        return f"expected one of {literal.group(2)}, got {literal.group(1)!r}"
    if isinstance(exc, AttributeError) and "items" in str(exc):
        return "expected a mapping"
    if isinstance(exc, ValueError | TypeError) and expected is not None:
        name = getattr(expected, "__name__", repr(expected))
        return f"expected a {name}"
    return str(exc)


def _describe(exc: BaseException, where: str) -> list[str]:
    import cattrs

    lines = []
    for line in cattrs.transform_error(exc, path="$", format_exception=_format):
        message, _, path = line.rpartition(" @ ")
        key = path.removeprefix("$").removeprefix(".").replace("class_name", "class")
        key = ".".join(p for p in (where, key) if p) or "config"
        lines.append(f"{key}: {message}")
    return lines


def parse(data: Any, cls: type[T], *, where: str = "") -> T:
    """Structure plain data into ``cls``, raising :class:`ConfigError` naming each bad key."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    _validate.utf8_tree(dict(data), where)
    try:
        return _converter().structure(dict(data), cls)
    except ConfigError:
        raise
    except Exception as exc:
        inner = _find_config_error(exc)
        if inner is not None:
            raise ConfigError(f"{where + ': ' if where else ''}{inner}") from exc
        lines = _describe(exc, where)
        text = lines[0] if len(lines) == 1 else "invalid configuration:\n  " + "\n  ".join(lines)
        raise ConfigError(text) from exc


def _find_config_error(exc: BaseException) -> ConfigError | None:
    if isinstance(exc, ConfigError):
        return exc
    for sub in getattr(exc, "exceptions", ()):
        found = _find_config_error(sub)
        if found is not None:
            return found
    return None


def to_dict(obj: Any) -> Any:
    """A config object back as plain data (for passing to worker processes)."""
    return _converter().unstructure(obj)


#: Plug-in settings that are secrets: never passed to another process's command line.
SECRET_SETTINGS = frozenset({"token"})


def without_secrets(data: Any) -> Any:
    """Plain config data with every plug-in's secret settings (:data:`SECRET_SETTINGS`) left
    out: what may travel on a worker's command line, which every local user can read."""
    if isinstance(data, list):
        return [without_secrets(item) for item in data]
    if not isinstance(data, Mapping):
        return data
    plugin = "class" in data and isinstance(data.get("config"), Mapping)
    return {
        key: (
            {k: without_secrets(v) for k, v in value.items() if k not in SECRET_SETTINGS}
            if plugin and key == "config"
            else without_secrets(value)
        )
        for key, value in data.items()
    }


def _normalize(data: Any) -> Any:
    """YAML writes an empty mapping as null (``in_memory:``); read it as ``{}``."""
    if isinstance(data, Mapping):
        storage = data.get("storage")
        if isinstance(storage, Mapping) and "in_memory" in storage and storage["in_memory"] is None:
            return {**data, "storage": {**storage, "in_memory": {}}}
    return data


def load_instance_config(
    source: Mapping[str, Any] | str | os.PathLike[str],
) -> tuple[InstanceConfig, str]:
    """Parse an instance config from a mapping or a YAML file path.

    Returns the config and the directory relative paths are resolved against (the file's
    directory, or the current directory for a mapping).
    """
    if isinstance(source, Mapping):
        return parse(_normalize(source), InstanceConfig), os.getcwd()
    if not isinstance(source, str | os.PathLike):
        raise ConfigError(
            f"an instance config is a mapping or a YAML file path, got {type(source).__name__}"
        )
    path = os.fspath(source)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the instance config file {path!r}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"the instance config file {path!r} is not valid UTF-8 (byte {exc.start}: "
            f"{raw[exc.start : exc.start + 1]!r}); save it as UTF-8"
        ) from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return parse(_normalize(data), InstanceConfig), os.path.dirname(os.path.abspath(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


# --- plug-ins ---------------------------------------------------------------------------------


def import_class(name: str, *, where: str) -> type:
    """Import ``"module:Class"`` (or ``"module.Class"``)."""
    module_name, sep, attr = name.partition(":")
    if not sep:
        module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{where}.class: expected 'module:Class', got {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}.class: cannot import module {module_name!r}: {exc}") from exc
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise ConfigError(f"{where}.class: module {module_name!r} has no class {attr!r}")
    return cls


def build_plugin(plugin: PluginConfig, base: type, *, where: str) -> Any:
    """Instantiate the configured class, checking it subclasses ``base`` and its config."""
    cls = import_class(plugin.class_name, where=where)
    if not issubclass(cls, base):
        raise ConfigError(f"{where}.class: {plugin.class_name} is not a {base.__name__} subclass")
    schema = getattr(cls, "config_schema", None)
    if schema is not None and attrs.has(schema):
        typed = parse(plugin.config, schema, where=f"{where}.config")
        return cls(**attrs.asdict(typed, recurse=False))
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in plugin.config if k not in params and not takes_any]
    if unknown:
        accepted = ", ".join(n for n in params if n != "self") or "nothing"
        raise ConfigError(
            f"{where}.config: {cls.__name__} has no setting {', '.join(map(repr, unknown))} "
            f"(it accepts: {accepted})"
        )
    try:
        return cls(**plugin.config)
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"{where}.config: {cls.__name__}: {exc}") from exc
