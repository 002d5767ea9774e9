"""Ops, jobs, retry policies and Definitions: what is accepted, what fails at definition time."""

from __future__ import annotations

import math
from typing import Any

import pytest

import runcore as rc


@rc.op
def extract() -> list[int]:
    return [1, 2, 3]


@rc.op(retry_policy=rc.RetryPolicy(max_retries=2, delay=0.05), tags={"kind": "sql"})
def load(context: Any, extract: list[int]) -> int:
    """Load the rows."""
    context.log.info("loading", rows=len(extract))
    return sum(extract)


def test_the_issue_example_runs() -> None:
    etl = rc.job("etl", [extract, load], tags={"team": "data"})
    result = etl.execute_in_process()
    assert result.success
    assert result.output_for("load") == 6
    assert result.run.tags == {"team": "data"}
    logs = [e for e in result.events if e.event_type is rc.EventType.LOG]
    assert [(e.step_key, e.message, e.data) for e in logs] == [("load", "loading", {"rows": 3})]


# --- ops ------------------------------------------------------------------------------------


def test_op_records_name_inputs_context_and_options() -> None:
    assert extract.name == "extract"
    assert extract.inputs == ()
    assert not extract.takes_context
    assert load.name == "load"
    assert load.inputs == ("extract",)
    assert load.takes_context
    assert load.tags == {"kind": "sql"}
    assert load.retry_policy == rc.RetryPolicy(max_retries=2, delay=0.05)
    assert load.description == "Load the rows."
    assert load.pool is None


def test_op_options_override_function_facts() -> None:
    @rc.op(name="renamed", description="explicit", pool=" warehouse ")
    def original() -> int:
        """Docstring."""
        return 1

    assert original.name == "renamed"
    assert original.description == "explicit"
    assert original.pool == "warehouse"


def test_an_op_stays_callable_as_its_function() -> None:
    assert extract() == [1, 2, 3]

    @rc.op
    def double(x: int) -> int:
        return 2 * x

    assert double(4) == 8
    assert double.fn(5) == 10


def test_context_must_be_the_first_parameter() -> None:
    with pytest.raises(rc.DefinitionError, match=r"op 'late'.*'context' is reserved"):

        @rc.op
        def late(extract: list[int], context: Any) -> None: ...


def test_an_op_cannot_be_named_context() -> None:
    with pytest.raises(rc.DefinitionError, match="cannot be named 'context'"):
        rc.op(name="context")(lambda: 1)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f(*rows): ...", r"op 'f': \*args and \*\*kwargs"),
        ("def f(**named): ...", r"op 'f': \*args and \*\*kwargs"),
        ("def f(a, /): ...", r"op 'f': parameter 'a' is positional-only"),
    ],
)
def test_parameters_that_cannot_name_upstream_ops_are_rejected(source: str, message: str) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    with pytest.raises(rc.DefinitionError, match=message):
        rc.op(namespace["f"])


def test_a_lambda_needs_a_name() -> None:
    with pytest.raises(rc.DefinitionError, match=r"'<lambda>' is not valid.*@op\(name=\.\.\.\)"):
        rc.op(lambda: 1)
    assert rc.op(name="one")(lambda: 1).name == "one"


def test_op_given_a_name_positionally_says_how_to_name_it() -> None:
    with pytest.raises(
        rc.DefinitionError, match=r"got 'x' \(give the name as @op\(name=\.\.\.\)\)"
    ):
        rc.op("x")  # type: ignore[call-overload]


@pytest.mark.parametrize("pool", ["", "   ", 3, ["warehouse"]])
def test_bad_pool_is_a_definition_error_naming_the_op(pool: Any) -> None:
    with pytest.raises(rc.DefinitionError, match=r"op 'pooled': pool must be a non-empty string"):

        @rc.op(pool=pool)
        def pooled() -> None: ...


@pytest.mark.parametrize(
    "tags", [{"k": 1}, {1: "v"}, ["k", "v"], "k=v"], ids=["int-value", "int-key", "list", "str"]
)
def test_bad_op_tags_are_a_definition_error(tags: Any) -> None:
    with pytest.raises(rc.DefinitionError, match=r"op 'tagged': tags must"):
        rc.op(name="tagged", tags=tags)(lambda: 1)


# --- retry policies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"max_retries": "2"}, "max_retries"),
        ({"delay": -0.1}, "delay"),
        ({"delay": math.nan}, "delay"),
        ({"delay": math.inf}, "delay"),
        ({"delay": "1"}, "delay"),
        ({"backoff": -2}, "backoff"),
        ({"jitter": -1}, "jitter"),
        ({"jitter": False}, "jitter"),
    ],
)
def test_bad_retry_policy_is_a_definition_error_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(rc.DefinitionError, match=rf"RetryPolicy\.{field} must be"):
        rc.RetryPolicy(**kwargs)


def test_retry_policy_must_be_a_retry_policy() -> None:
    with pytest.raises(rc.DefinitionError, match=r"op 'flaky': retry_policy must be"):

        @rc.op(retry_policy={"max_retries": 2})  # type: ignore[arg-type]
        def flaky() -> None: ...


def test_retry_policy_wait_grows_by_backoff() -> None:
    policy = rc.RetryPolicy(max_retries=4, delay=0.5, backoff=2.0)
    assert [policy.wait_before(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert rc.RetryPolicy().wait_before(3) == 0.0


# --- jobs -----------------------------------------------------------------------------------


def _op(name: str, *inputs: str, **defaults: Any) -> rc.OpDefinition:
    """An op called ``name`` whose parameters are ``inputs`` (returns its name)."""
    params = ", ".join([*inputs, *(f"{k}={v!r}" for k, v in defaults.items())])
    namespace: dict[str, Any] = {}
    exec(f"def {name}({params}):\n    return {name!r}", namespace)
    return rc.op(namespace[name])


def test_job_wires_ops_by_parameter_name_in_topological_order() -> None:
    ops = [_op("d", "b", "c"), _op("b", "a"), _op("c", "a"), _op("a")]
    diamond = rc.job("diamond", ops)
    assert diamond.order == ("a", "b", "c", "d")
    assert diamond.upstream["d"] == {"b": "b", "c": "c"}
    assert diamond.downstream() == {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
    assert set(diamond.ops) == {"a", "b", "c", "d"}


def test_topological_order_is_stable_in_the_order_ops_were_given() -> None:
    assert rc.job("j", [_op("z"), _op("y"), _op("x")]).order == ("z", "y", "x")


def test_a_cycle_is_an_error_naming_the_ops_in_it() -> None:
    with pytest.raises(rc.DefinitionError, match="dependency cycle") as info:
        rc.job("loop", [_op("root"), _op("a", "c", "root"), _op("b", "a"), _op("c", "b")])
    message = str(info.value)
    assert "'loop'" in message
    cycle = message.split(": ", 1)[1].split(" -> ")
    assert set(cycle) == {"a", "b", "c"}
    assert cycle[0] == cycle[-1]
    assert "root" not in message


def test_an_op_taking_its_own_output_is_an_error() -> None:
    with pytest.raises(rc.DefinitionError, match=r"op 'me' takes its own output \('me'\)"):
        rc.job("selfish", [_op("me", "me")])


def test_unknown_upstream_is_an_error_naming_the_op_and_parameter() -> None:
    with pytest.raises(rc.DefinitionError) as info:
        rc.job("etl", [extract, _op("report", "extrac")])
    message = str(info.value)
    assert "op 'report' has a parameter 'extrac' that names no op" in message
    assert "ops: extract, report" in message


def test_a_parameter_with_a_default_may_name_nothing() -> None:
    job = rc.job("defaults", [_op("scaled", "a", factor=3), _op("a")])
    assert job.upstream["scaled"] == {"a": "a", "factor": None}

    @rc.op
    def scale(a: int, factor: int = 3) -> int:
        return a * factor

    result = rc.job("run_defaults", [rc.op(name="a")(lambda: 2), scale]).execute_in_process()
    assert result.output_for("scale") == 6


def test_a_default_parameter_naming_an_op_takes_the_op_output() -> None:
    @rc.op
    def b(a: int = 100) -> int:
        return a + 1

    result = rc.job("j", [rc.op(name="a")(lambda: 1), b]).execute_in_process()
    assert result.output_for("b") == 2


def test_duplicate_op_names_are_an_error_naming_the_name() -> None:
    other_extract = rc.op(name="extract")(lambda: [])
    with pytest.raises(rc.DefinitionError, match=r"job 'etl' has two ops named 'extract'"):
        rc.job("etl", [extract, load, other_extract])


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ([], r"job 'j' has no ops"),
        ([extract, print], r"job 'j': <built-in function print> is not an op"),
        (extract, r"job 'j': ops must be a list of ops"),
    ],
    ids=["empty", "plain-function", "single-op"],
)
def test_bad_op_lists_are_errors(ops: Any, message: str) -> None:
    with pytest.raises(rc.DefinitionError, match=message):
        rc.job("j", ops)


@pytest.mark.parametrize("name", ["", "my job", "1st", None])
def test_bad_job_names_are_errors(name: Any) -> None:
    with pytest.raises(rc.DefinitionError, match="job name"):
        rc.job(name, [extract])


def test_bad_job_tags_are_errors() -> None:
    with pytest.raises(rc.DefinitionError, match=r"job 'j': tags must map strings to strings"):
        rc.job("j", [extract], tags={"team": 1})  # type: ignore[dict-item]


def test_job_executor_must_be_an_instance() -> None:
    with pytest.raises(rc.DefinitionError, match=r"executor must be an Executor instance"):
        rc.job("j", [extract], executor=rc.ThreadPoolExecutor)  # type: ignore[arg-type]
    pooled = rc.job("j", [extract], executor=rc.ThreadPoolExecutor(2))
    assert isinstance(pooled.executor, rc.ThreadPoolExecutor)


# --- Definitions ----------------------------------------------------------------------------


def test_definitions_find_jobs_by_name() -> None:
    etl = rc.job("etl", [extract, load])
    other = rc.job("other", [extract])
    defs = rc.Definitions(jobs=[other, etl])
    assert defs.job_names == ["etl", "other"]
    assert defs.get_job("etl") is etl


def test_unknown_job_lists_the_known_jobs() -> None:
    defs = rc.Definitions(jobs=[rc.job("etl", [extract]), rc.job("daily", [extract])])
    with pytest.raises(rc.UnknownJobError, match=r"no job named 'nope'.*: daily, etl"):
        defs.get_job("nope")
    with pytest.raises(rc.UnknownJobError, match="jobs defined are: none"):
        rc.Definitions().get_job("etl")
    assert issubclass(rc.UnknownJobError, rc.RuncoreError)


def test_definitions_accept_any_iterable_of_jobs_once() -> None:
    defs = rc.Definitions(jobs=(j for j in [rc.job("etl", [extract])]))
    assert defs.job_names == ["etl"]
    assert len(defs.jobs) == 1  # the generator was kept as a tuple, not exhausted


def test_definitions_reject_two_jobs_with_one_name_and_non_jobs() -> None:
    with pytest.raises(rc.DefinitionError, match="two jobs named 'etl'"):
        rc.Definitions(jobs=[rc.job("etl", [extract]), rc.job("etl", [extract])])
    with pytest.raises(rc.DefinitionError, match="takes jobs, got 'etl'"):
        rc.Definitions(jobs=["etl"])  # type: ignore[list-item]
    with pytest.raises(rc.DefinitionError, match="takes a list of jobs"):
        rc.Definitions(jobs=rc.job("etl", [extract]))  # type: ignore[arg-type]
    same = rc.job("etl", [extract])
    assert rc.Definitions(jobs=[same, same]).job_names == ["etl"]
