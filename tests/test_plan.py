"""Execution plans: topological steps, step keys, op selection and plans over a subset."""

from __future__ import annotations

import random
from typing import Any

import pytest

import runcore as rc
from runcore.worker.plan import build_plan, resolve_op_selection


def _op(name: str, *inputs: str) -> rc.OpDefinition:
    namespace: dict[str, Any] = {}
    exec(f"def {name}({', '.join(inputs)}):\n    return {name!r}", namespace)
    return rc.op(namespace[name])


def _diamond_plus() -> rc.Job:
    """a -> b, a -> c, (b, c) -> d, d -> e; and a separate branch x -> y."""
    return rc.job(
        "diamond",
        [
            _op("a"),
            _op("b", "a"),
            _op("c", "a"),
            _op("d", "b", "c"),
            _op("e", "d"),
            _op("x"),
            _op("y", "x"),
        ],
    )


def test_full_plan_is_topological_with_op_names_as_step_keys() -> None:
    plan = build_plan(_diamond_plus())
    assert plan.step_keys == ["a", "x", "b", "c", "y", "d", "e"]
    assert [s.key for s in plan.roots()] == ["a", "x"]
    d = plan.get_step("d")
    assert d.op.name == "d"
    assert d.upstream == ("b", "c")
    assert d.inputs == {"b": "b", "c": "c"}
    assert d.external == ()
    assert plan.downstream["a"] == ("b", "c")
    assert plan.descendants("a") == {"b", "c", "d", "e"}
    assert plan.descendants("x") == {"y"}
    assert plan.descendants("e") == set()


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (["d"], ["d"]),
        (["*d"], ["a", "b", "c", "d"]),
        (["b*"], ["b", "d", "e"]),
        (["*b*"], ["a", "b", "d", "e"]),
        (["x*", "*c"], ["a", "x", "c", "y"]),
        ([" *y "], ["x", "y"]),
        ("*e", ["a", "b", "c", "d", "e"]),  # one string is one item, not its letters
    ],
)
def test_op_selection(selection: Any, expected: list[str]) -> None:
    assert resolve_op_selection(_diamond_plus(), selection) == expected


@pytest.mark.parametrize("item", ["nope", "*nope", "nope*", "", "*"])
def test_selecting_an_unknown_op_is_an_error_listing_the_ops(item: str) -> None:
    with pytest.raises(rc.DefinitionError) as info:
        resolve_op_selection(_diamond_plus(), ["a", item])
    message = str(info.value)
    assert f"op selection {item!r}" in message
    assert "ops: a, x, b, c, y, d, e" in message


def test_selection_items_must_be_strings() -> None:
    with pytest.raises(rc.DefinitionError, match="items are strings"):
        resolve_op_selection(_diamond_plus(), [3])  # type: ignore[list-item]


def test_a_selection_missing_an_upstream_is_a_clear_error() -> None:
    job = _diamond_plus()
    with pytest.raises(rc.DefinitionError) as info:
        build_plan(job, ["a", "d"])
    message = str(info.value)
    assert "op 'd' of job 'diamond' takes the output of b, c" in message
    assert "not in the selection" in message
    assert "'*d'" in message


def test_a_subset_plan_with_external_inputs_when_allowed() -> None:
    plan = build_plan(_diamond_plus(), ["d", "e"], allow_external=True)
    assert plan.step_keys == ["d", "e"]
    d = plan.get_step("d")
    assert d.upstream == ()
    assert d.external == ("b", "c")
    assert plan.get_step("e").upstream == ("d",)
    assert [s.key for s in plan.roots()] == ["d"]


def test_unknown_step_keys_are_an_error() -> None:
    with pytest.raises(rc.DefinitionError, match=r"has no steps \['zz'\]"):
        build_plan(_diamond_plus(), ["a", "zz"])


def test_an_op_used_twice_as_input_is_one_upstream_step() -> None:
    @rc.op
    def twice(a: int, b: int) -> int:
        return a + b

    job = rc.job("j", [rc.op(name="a")(lambda: 1), rc.op(name="b")(lambda a: a), twice])
    assert build_plan(job).get_step("twice").upstream == ("a", "b")


def _random_dag(rng: random.Random) -> rc.Job:
    """A random DAG of up to 12 ops, given to ``job`` in a shuffled order."""
    names = [f"op{i}" for i in range(rng.randint(1, 12))]
    ops = [
        _op(name, *sorted(rng.sample(names[:i], min(i, rng.randint(0, 3)))))
        for i, name in enumerate(names)
    ]
    rng.shuffle(ops)
    return rc.job("random", ops)


@pytest.mark.parametrize("seed", range(60))
def test_plans_of_random_dags_respect_dependencies(seed: int) -> None:
    rng = random.Random(seed)
    job = _random_dag(rng)
    plan = build_plan(job)
    position = {key: i for i, key in enumerate(plan.step_keys)}
    assert sorted(position) == sorted(job.ops)
    for step in plan.steps:
        for upstream in step.upstream:
            assert position[upstream] < position[step.key]

    name = rng.choice(sorted(job.ops))
    ancestors = set(resolve_op_selection(job, [f"*{name}"]))
    descendants = set(resolve_op_selection(job, [f"{name}*"]))
    assert descendants == {name} | plan.descendants(name)
    for key in ancestors - {name}:
        assert name in plan.descendants(key)
    # An upstream-closed selection always makes a plan without external inputs.
    sub = build_plan(job, ancestors)
    assert all(not s.external for s in sub.steps)
