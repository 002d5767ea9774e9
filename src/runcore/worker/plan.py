"""The execution plan: which steps run, in which order, fed by which upstream steps.

A step is one op of the job; its key is the op's name. A plan may cover a subset of the job
(``op_selection``, or the step keys a run was created with); an input whose upstream step is
outside the plan must then be loaded from a parent run's stored outputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from runcore.definitions import Job, OpDefinition
from runcore.errors import DefinitionError


@attrs.frozen
class Step:
    """One step of a plan: its op, and for each input the step key that feeds it."""

    key: str
    op: OpDefinition
    inputs: Mapping[str, str | None]  # parameter -> upstream step key (None: the default)
    upstream: tuple[str, ...]  # step keys this step waits for (inside the plan)
    external: tuple[str, ...]  # upstream step keys outside the plan (outputs loaded from a parent)


@attrs.frozen
class ExecutionPlan:
    """The steps of one run in topological order, with their dependencies."""

    job: Job
    steps: tuple[Step, ...]
    _by_key: Mapping[str, Step] = attrs.field(repr=False)
    downstream: Mapping[str, tuple[str, ...]] = attrs.field(repr=False)

    @property
    def step_keys(self) -> list[str]:
        """The plan's step keys, in topological order."""
        return [s.key for s in self.steps]

    def get_step(self, key: str) -> Step:
        """The step with this key."""
        return self._by_key[key]

    def roots(self) -> list[Step]:
        """Steps that wait for no other step of the plan."""
        return [s for s in self.steps if not s.upstream]

    def descendants(self, key: str) -> set[str]:
        """Every step key downstream of ``key`` inside the plan (transitively)."""
        seen: set[str] = set()
        stack = list(self.downstream[key])
        while stack:
            k = stack.pop()
            if k not in seen:
                seen.add(k)
                stack.extend(self.downstream[k])
        return seen


def resolve_op_selection(job: Job, selection: Sequence[str]) -> list[str]:
    """Op names selected by ``selection``, in topological order.

    Each item is an op name, optionally with ``*`` before it (the op and everything upstream)
    and/or after it (the op and everything downstream). Unknown names are an error. A single
    string is one item.
    """
    if isinstance(selection, str):
        selection = [selection]  # op_selection="load" means one item, not five letters
    downstream = job.downstream()
    chosen: set[str] = set()
    for raw in selection:
        if not isinstance(raw, str):
            raise DefinitionError(
                f"op selection items are strings like 'name', '*name' or 'name*', got {raw!r}"
            )
        item = raw.strip()
        up = item.startswith("*")
        down = item.endswith("*") and len(item) > 1
        name = item.strip("*")
        if name not in job.ops:
            raise DefinitionError(
                f"op selection {raw!r}: job {job.name!r} has no op {name!r} "
                f"(ops: {', '.join(job.order)})"
            )
        chosen.add(name)
        if up:
            stack = [s for s in job.upstream[name].values() if s is not None]
            while stack:
                n = stack.pop()
                if n not in chosen:
                    chosen.add(n)
                    stack.extend(s for s in job.upstream[n].values() if s is not None)
        if down:
            stack = list(downstream[name])
            while stack:
                n = stack.pop()
                if n not in chosen:
                    chosen.add(n)
                    stack.extend(downstream[n])
    return [n for n in job.order if n in chosen]


def build_plan(
    job: Job,
    step_keys: Iterable[str] | None = None,
    *,
    allow_external: bool = False,
) -> ExecutionPlan:
    """The plan for ``job``, limited to ``step_keys`` when given.

    A selected step whose upstream step is not selected needs that output from elsewhere (a
    parent run); unless ``allow_external`` this is a :class:`DefinitionError` saying which.
    """
    selected = set(job.order if step_keys is None else step_keys)
    unknown = selected - set(job.ops)
    if unknown:
        raise DefinitionError(
            f"job {job.name!r} has no steps {sorted(unknown)} (steps: {', '.join(job.order)})"
        )
    steps: list[Step] = []
    downstream: dict[str, list[str]] = {}
    for name in job.order:
        if name not in selected:
            continue
        sources = job.upstream[name]
        upstream = tuple(
            dict.fromkeys(s for s in sources.values() if s is not None and s in selected)
        )
        external = tuple(
            dict.fromkeys(s for s in sources.values() if s is not None and s not in selected)
        )
        if external and not allow_external:
            raise DefinitionError(
                f"op {name!r} of job {job.name!r} takes the output of {', '.join(external)}, "
                "which is not in the selection; select it too (e.g. '*" + name + "') or "
                "re-execute from a run that has it"
            )
        steps.append(
            Step(key=name, op=job.ops[name], inputs=sources, upstream=upstream, external=external)
        )
        downstream[name] = []
        for u in upstream:
            downstream[u].append(name)
    return ExecutionPlan(
        job=job,
        steps=tuple(steps),
        by_key={s.key: s for s in steps},
        downstream={k: tuple(v) for k, v in downstream.items()},
    )
