"""Ops, jobs and definitions, and loading them from a code location.

An op is a Python function. Its parameters name the ops whose outputs it takes, except the
reserved ``context``. A job is a named set of ops; its dependency graph is derived from those
parameter names and checked when the job is defined, so a cycle, an unknown upstream or a
duplicate op name is an error at import time, not at run time.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

import attrs

from runcore import _validate
from runcore.errors import CodeLocationError, ConfigError, DefinitionError, UnknownJobError
from runcore.executors.base import Executor
from runcore.runs import check_user_tags

if TYPE_CHECKING:
    from runcore.instance import Instance
    from runcore.worker.result import ExecuteInProcessResult

CONTEXT_PARAM = "context"


def _check_tags(owner: str, tags: Mapping[str, str] | None) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise DefinitionError(f"{owner}: tags must be a mapping of strings, got {tags!r}")
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise DefinitionError(
                f"{owner}: tags must map strings to strings, got {key!r}: {value!r}"
            )
    return check_user_tags(tags, where=owner)


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        hint = " (name a lambda or partial with @op(name=...))" if kind == "op" else ""
        raise DefinitionError(
            f"{kind} name {name!r} is not valid: use letters, digits and underscores, "
            f"not starting with a digit{hint}"
        )
    return name


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often a failing step is tried again, and how long to wait between tries.

    The wait before retry ``n`` (1-based) is ``delay * backoff ** (n - 1)`` seconds (at most
    ``1e9``), plus a random extra of up to ``jitter`` seconds. ``delay``, ``backoff`` and
    ``jitter`` are finite numbers from 0 to ``1e9``.
    """

    max_retries: int = 1
    delay: float = 0.0
    backoff: float = 1.0
    jitter: float = 0.0

    def __attrs_post_init__(self) -> None:
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise DefinitionError(f"RetryPolicy.max_retries must be an int >= 0, got {retries!r}")
        for name in ("delay", "backoff", "jitter"):
            # The rule is _validate.delay's; a bad policy is a definition error, though.
            value = getattr(self, name)
            try:
                _validate.delay(f"RetryPolicy.{name}", value)
            except ConfigError:
                raise DefinitionError(
                    f"RetryPolicy.{name} must be a finite number >= 0 and <= "
                    f"{_validate.MAX_SECONDS:g}, got {value!r}"
                ) from None

    def wait_before(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based), jitter excluded; at most
        ``1e9`` (a backoff that grows past it stops there)."""
        try:
            wait = float(self.delay * self.backoff ** (retry_number - 1))
        except OverflowError:
            return _validate.MAX_SECONDS
        return min(wait, _validate.MAX_SECONDS)


@attrs.frozen(kw_only=True, eq=False)
class OpDefinition:
    """A step function with its name, upstream parameter names and options.

    Calling an ``OpDefinition`` calls the function itself, so ops stay unit-testable.
    """

    fn: Callable[..., Any]
    name: str
    description: str | None = None
    tags: Mapping[str, str] = attrs.field(factory=dict)
    pool: str | None = None
    retry_policy: RetryPolicy | None = None
    inputs: tuple[str, ...] = ()
    input_defaults: Mapping[str, Any] = attrs.field(factory=dict)
    takes_context: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _make_op(
    fn: Callable[..., Any],
    *,
    name: str | None,
    description: str | None,
    tags: Mapping[str, str] | None,
    pool: str | None,
    retry_policy: RetryPolicy | None,
) -> OpDefinition:
    target: object = fn
    if not callable(target):
        hint = " (give the name as @op(name=...))" if isinstance(target, str) else ""
        raise DefinitionError(f"@op decorates a function, got {target!r}{hint}")
    op_name = _check_name("op", name or str(getattr(fn, "__name__", "")))
    if op_name == CONTEXT_PARAM:
        raise DefinitionError(
            "an op cannot be named 'context': that parameter name is reserved for the op context"
        )
    if pool is not None and (not isinstance(pool, str) or not pool.strip()):
        raise DefinitionError(f"op {op_name!r}: pool must be a non-empty string, got {pool!r}")
    if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
        raise DefinitionError(
            f"op {op_name!r}: retry_policy must be a runcore.RetryPolicy, got {retry_policy!r}"
        )
    tag_map = _check_tags(f"op {op_name!r}", tags)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise DefinitionError(
            f"op {op_name!r}: cannot read the parameters of {fn!r}: {exc}"
        ) from exc
    inputs: list[str] = []
    defaults: dict[str, Any] = {}
    takes_context = False
    for position, param in enumerate(signature.parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise DefinitionError(
                f"op {op_name!r}: *args and **kwargs cannot name upstream ops; "
                "give each upstream op its own parameter"
            )
        if param.kind is param.POSITIONAL_ONLY and param.name != CONTEXT_PARAM:
            raise DefinitionError(
                f"op {op_name!r}: parameter {param.name!r} is positional-only, but upstream "
                "outputs are passed by name; remove the '/' from the signature"
            )
        if param.name == CONTEXT_PARAM:
            if position != 0:
                raise DefinitionError(
                    f"op {op_name!r}: 'context' is reserved and must be the first parameter"
                )
            takes_context = True
            continue
        inputs.append(param.name)
        if param.default is not param.empty:
            defaults[param.name] = param.default
    return OpDefinition(
        fn=fn,
        name=op_name,
        description=description if description is not None else inspect.getdoc(fn),
        tags=tag_map,
        pool=pool.strip() if pool else None,
        retry_policy=retry_policy,
        inputs=tuple(inputs),
        input_defaults=defaults,
        takes_context=takes_context,
    )


@overload
def op(fn: Callable[..., Any], /) -> OpDefinition: ...


@overload
def op(
    *,
    name: str | None = None,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
    pool: str | None = None,
    retry_policy: RetryPolicy | None = None,
) -> Callable[[Callable[..., Any]], OpDefinition]: ...


def op(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
    pool: str | None = None,
    retry_policy: RetryPolicy | None = None,
) -> OpDefinition | Callable[[Callable[..., Any]], OpDefinition]:
    """Turn a function into an op: ``@op`` or ``@op(name=..., pool=..., retry_policy=...)``.

    Parameters name upstream ops by their op name; a parameter with a default may name nothing
    and then takes its default. ``context`` (first parameter, optional) receives the step's
    :class:`~runcore.worker.context.OpContext`. The return value is the op's output.
    """
    if fn is not None:
        return _make_op(
            fn, name=name, description=description, tags=tags, pool=pool, retry_policy=retry_policy
        )

    def decorate(f: Callable[..., Any]) -> OpDefinition:
        return _make_op(
            f, name=name, description=description, tags=tags, pool=pool, retry_policy=retry_policy
        )

    return decorate


@attrs.frozen(eq=False)
class Job:
    """A named, checked graph of ops. Build one with :func:`job`.

    ``upstream[op]`` lists, per input parameter, the op it takes its value from (or ``None``
    where a default is used); ``order`` is a topological order of op names.
    """

    name: str
    ops: Mapping[str, OpDefinition]
    upstream: Mapping[str, Mapping[str, str | None]]
    order: tuple[str, ...]
    tags: Mapping[str, str] = attrs.field(factory=dict)
    executor: Executor | None = None
    description: str | None = None
    code_location: str | None = None

    def downstream(self) -> dict[str, list[str]]:
        """For each op, the ops that take its output (in topological order)."""
        result: dict[str, list[str]] = {name: [] for name in self.order}
        for name in self.order:
            for source in self.upstream[name].values():
                if source is not None and name not in result[source]:
                    result[source].append(name)
        return result

    def execute_in_process(
        self,
        *,
        instance: Instance | None = None,
        tags: Mapping[str, str] | None = None,
        op_selection: Sequence[str] | None = None,
        raise_on_error: bool = True,
        run_id: str | None = None,
        executor: Executor | None = None,
    ) -> ExecuteInProcessResult:
        """Run this job now, in this thread, and return its result.

        With no ``instance`` an ephemeral in-memory one is used. Outputs stay in memory and are
        available from the result. ``raise_on_error=False`` returns a failed result instead of
        raising :class:`~runcore.errors.RunFailedError`.
        """
        return _in_process_runner()(
            self,
            instance=instance,
            tags=tags,
            op_selection=op_selection,
            raise_on_error=raise_on_error,
            run_id=run_id,
            executor=executor,
        )


def _toposort(job_name: str, upstream: Mapping[str, Mapping[str, str | None]]) -> tuple[str, ...]:
    """Kahn's algorithm, stable in the order the ops were given; a cycle is an error."""
    remaining = {
        name: {u for u in sources.values() if u is not None} for name, sources in upstream.items()
    }
    order: list[str] = []
    while remaining:
        ready = [name for name, deps in remaining.items() if not deps]
        if not ready:
            cycle = _find_cycle(remaining)
            raise DefinitionError(f"job {job_name!r} has a dependency cycle: {' -> '.join(cycle)}")
        for name in ready:
            order.append(name)
            del remaining[name]
        for deps in remaining.values():
            deps.difference_update(ready)
    return tuple(order)


def _find_cycle(graph: Mapping[str, set[str]]) -> list[str]:
    start = next(iter(graph))
    path = [start]
    seen = {start: 0}
    node = start
    while True:
        node = sorted(graph[node])[0]
        if node in seen:
            return [*path[seen[node] :], node]
        seen[node] = len(path)
        path.append(node)


@functools.cache
def _in_process_runner() -> Callable[..., ExecuteInProcessResult]:
    """:func:`runcore.worker.execution.execute_job_in_process`, imported on the first call (the
    run worker imports this module) and then remembered: an import statement per call costs
    more than the one-op job it would run."""
    from runcore.worker.execution import execute_job_in_process

    return execute_job_in_process


def job(
    name: str,
    ops: Iterable[OpDefinition],
    *,
    tags: Mapping[str, str] | None = None,
    executor: Executor | None = None,
    description: str | None = None,
) -> Job:
    """Define a job from ops; their parameters wire them together by op name.

    Raises :class:`~runcore.errors.DefinitionError` naming the offending op for a duplicate
    op name, a parameter that names no op of the job (and has no default), or a cycle.
    """
    _check_name("job", name)
    if isinstance(ops, OpDefinition) or not isinstance(ops, Iterable):
        raise DefinitionError(f"job {name!r}: ops must be a list of ops, got {ops!r}")
    if executor is not None and not isinstance(executor, Executor):
        raise DefinitionError(
            f"job {name!r}: executor must be an Executor instance (e.g. "
            f"runcore.ThreadPoolExecutor(4)), got {executor!r}"
        )
    tag_map = _check_tags(f"job {name!r}", tags)
    by_name: dict[str, OpDefinition] = {}
    for item in ops:
        if not isinstance(item, OpDefinition):
            raise DefinitionError(
                f"job {name!r}: {item!r} is not an op; decorate the function with @runcore.op"
            )
        if item.name in by_name:
            raise DefinitionError(
                f"job {name!r} has two ops named {item.name!r}; give one another name with "
                "@op(name=...)"
            )
        by_name[item.name] = item
    if not by_name:
        raise DefinitionError(f"job {name!r} has no ops")
    upstream: dict[str, dict[str, str | None]] = {}
    for op_def in by_name.values():
        sources: dict[str, str | None] = {}
        for param in op_def.inputs:
            if param in by_name:
                if param == op_def.name:
                    raise DefinitionError(
                        f"job {name!r}: op {op_def.name!r} takes its own output ({param!r})"
                    )
                sources[param] = param
            elif param in op_def.input_defaults:
                sources[param] = None
            else:
                raise DefinitionError(
                    f"job {name!r}: op {op_def.name!r} has a parameter {param!r} that names no op "
                    f"of the job (ops: {', '.join(sorted(by_name))}); rename it to an upstream "
                    "op, give it a default, or add the op to the job"
                )
        upstream[op_def.name] = sources
    order = _toposort(name, upstream)
    return Job(
        name=name,
        ops=by_name,
        upstream=upstream,
        order=order,
        tags=tag_map,
        executor=executor,
        description=description,
    )


def _as_job_tuple(value: Iterable[Job]) -> tuple[Job, ...]:
    if isinstance(value, Job) or not isinstance(value, Iterable):
        raise DefinitionError(f"Definitions(jobs=...) takes a list of jobs, got {value!r}")
    return tuple(value)


@attrs.frozen(eq=False)
class Definitions:
    """The jobs of one code location."""

    jobs: Sequence[Job] = attrs.field(default=(), converter=_as_job_tuple)
    _by_name: dict[str, Job] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        by_name: dict[str, Job] = {}
        for item in self.jobs:
            if not isinstance(item, Job):
                raise DefinitionError(f"Definitions(jobs=...) takes jobs, got {item!r}")
            if item.name in by_name and by_name[item.name] is not item:
                raise DefinitionError(f"two jobs named {item.name!r} in one Definitions")
            by_name[item.name] = item
        object.__setattr__(self, "_by_name", by_name)

    @property
    def job_names(self) -> list[str]:
        """The names of the jobs, sorted."""
        return sorted(self._by_name)

    def get_job(self, name: str) -> Job:
        """The job called ``name``; :class:`~runcore.errors.UnknownJobError` if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(self.job_names) or "none"
            raise UnknownJobError(f"no job named {name!r}; the jobs defined are: {known}") from None


# --- code locations -------------------------------------------------------------------------

# Re-entrant: a user module may itself load another code location file while it imports.
_location_lock = threading.RLock()


def _split_location(location: str) -> tuple[str, str | None]:
    target, sep, attr = location.rpartition(":")
    # "C:\\path" on Windows and "pkg.mod" with no attribute both leave no usable attr.
    if not sep or not target or os.sep in attr or "/" in attr:
        return location, None
    return target, attr or None


def _import_target(target: str, location: str) -> Any:
    is_file = target.endswith(".py") or os.sep in target or "/" in target
    try:
        if is_file:
            return _import_file(target)
        return importlib.import_module(target)
    except CodeLocationError:
        raise
    except ModuleNotFoundError as exc:
        # Only the location's own module (or a parent package) missing is "not found"; a
        # module the user's code imports being missing is an import error in that code.
        if not is_file and exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise CodeLocationError(
                f"code location {location!r}: no module named {exc.name!r}; check the name and "
                "that its package is installed or on PYTHONPATH (sys.path[0] is "
                f"{sys.path[0]!r})"
            ) from exc
        raise _import_failed(location, exc) from exc
    except BaseException as exc:
        # A module calling sys.exit() while it imports must not end the loading process (a
        # code server, a daemon); only an interrupt from the user goes through.
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise _import_failed(location, exc) from exc


def _import_failed(location: str, exc: BaseException) -> CodeLocationError:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return CodeLocationError(
        f"code location {location!r} failed to import: {type(exc).__name__}: {exc}\n{tb}"
    )


def _import_file(path: str) -> Any:
    import importlib.util

    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise CodeLocationError(f"code location file {path!r} does not exist (looked at {full})")
    module_name = "_runcore_location_" + "".join(c if c.isalnum() else "_" for c in full)
    with _location_lock:
        existing = sys.modules.get(module_name)
        if existing is not None:
            return existing
        spec = importlib.util.spec_from_file_location(module_name, full)
        if spec is None or spec.loader is None:
            raise CodeLocationError(f"code location file {path!r} cannot be loaded as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        directory = os.path.dirname(full)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        return module


def absolute_location(location: str) -> str:
    """``location`` with a file path made absolute against the current working directory (so a
    daemon or worker anywhere finds the file); a module location is returned as it is."""
    target, attr = _split_location(location.strip())
    if not (target.endswith(".py") or os.sep in target or "/" in target):
        return location
    full = os.path.abspath(os.path.expanduser(target))
    return f"{full}:{attr}" if attr is not None else full


_importing = 0


def importing_code_location() -> bool:
    """Whether a code location's module is being imported right now (by any thread)."""
    return _importing > 0


def load_code_location(location: str) -> Definitions:
    """Load the :class:`Definitions` named by ``"pkg.module:attr"`` or ``"path/file.py:attr"``.

    ``attr`` may name a ``Definitions`` or a single ``Job``; without ``:attr`` the module must hold
    exactly one ``Definitions`` (or, failing that, its jobs are collected). Import errors in the
    user's module are raised as :class:`~runcore.errors.CodeLocationError` with the traceback.
    """
    if not isinstance(location, str) or not location.strip():
        raise CodeLocationError(
            f"a code location must be 'pkg.module:attr' or 'file.py:attr', got {location!r}"
        )
    # A relative file path is resolved against this process's working directory, once: the
    # jobs remember the absolute location, so runs of them load anywhere.
    location = absolute_location(location.strip())
    target, attr = _split_location(location)
    global _importing  # noqa: PLW0603 - a process-wide fact: is a location being imported?
    _importing += 1
    try:
        module = _import_target(target, location)
    finally:
        _importing -= 1
    if attr is not None:
        if not hasattr(module, attr):
            candidates = sorted(
                k for k, v in vars(module).items() if isinstance(v, Definitions | Job)
            )
            raise CodeLocationError(
                f"code location {location!r}: module {target!r} has no attribute {attr!r} "
                f"(its Definitions and jobs: {', '.join(candidates) or 'none'})"
            )
        return _as_definitions(getattr(module, attr), location, attr, location)
    found = [v for v in vars(module).values() if isinstance(v, Definitions)]
    if len(found) == 1:
        return _tag_location(found[0], location)
    if len(found) > 1:
        raise CodeLocationError(
            f"code location {location!r} holds {len(found)} Definitions objects; "
            f"name one, as '{target}:<attr>'"
        )
    jobs = [v for v in vars(module).values() if isinstance(v, Job)]
    if not jobs:
        raise CodeLocationError(f"code location {location!r} defines no Definitions and no jobs")
    return _tag_location(Definitions(jobs=jobs), location)


def _as_definitions(value: Any, location: str, attr: str, loc: str) -> Definitions:
    if isinstance(value, Definitions):
        return _tag_location(value, loc)
    if isinstance(value, Job):
        return _tag_location(Definitions(jobs=[value]), loc)
    raise CodeLocationError(
        f"code location {location!r}: {attr!r} is a {type(value).__name__}, "
        "not a runcore Definitions or Job"
    )


def _tag_location(defs: Definitions, location: str) -> Definitions:
    for item in defs.jobs:
        if item.code_location is None:
            object.__setattr__(item, "code_location", location)
    return defs


def infer_code_location(job_obj: Job) -> str | None:
    """Where a worker in another process could import ``job_obj`` from, or ``None``.

    An importable module gives ``"pkg.module:attr"``; a script or ``__main__`` with a file gives
    ``"/abs/path.py:attr"``; a job built in an interactive session gives ``None``.
    """
    if job_obj.code_location is not None:
        return job_obj.code_location
    names = dict.fromkeys(getattr(o.fn, "__module__", None) for o in job_obj.ops.values())
    for module_name in names:
        module = sys.modules.get(module_name or "")
        if module is None:
            continue
        for attr, value in list(vars(module).items()):
            if value is job_obj or (isinstance(value, Definitions) and job_obj in value.jobs):
                if module.__name__ == "__main__" or module.__name__.startswith(
                    "_runcore_location_"
                ):
                    file = getattr(module, "__file__", None)
                    return f"{os.path.abspath(file)}:{attr}" if file else None
                return f"{module.__name__}:{attr}"
    return None
