"""Reading runs and events back: the fast path (orjson, and building a run or event straight
from plain values) must give exactly what the general path (the standard library's json and
cattrs) gives, or give up and let the general path answer. Checked on well-formed documents
and on documents with every field of every shape, including the ones the fast path refuses.

Writing them: the fast path (plain data built straight from the fields, written by orjson)
must write the document the general path (cattrs, then the standard library's json) writes,
value for value and type for type, or give up."""

from __future__ import annotations

import json
import math
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runcore import _serde
from runcore.events import ErrorInfo, Event, EventType
from runcore.runs import FailureKind, Run, RunStatus, new_run_id

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from([s.value for s in RunStatus] + [k.value for k in FailureKind]),
    st.sampled_from([t.value for t in EventType]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def _general(text: str, cls: type[Any]) -> Any:
    """The general path: the standard library's parser, then cattrs."""
    return _serde.from_jsonable(json.loads(text), cls)


def _outcome(read: Any, text: str, cls: type[Any]) -> tuple[str, Any]:
    try:
        obj = read(text) if cls is None else read(text, cls)
    except Exception as exc:  # both paths must fail alike, whatever they raise
        return ("error", type(exc).__name__)
    values = [(f.name, getattr(obj, f.name)) for f in attrs.fields(type(obj))]
    return ("ok", [(name, type(value), _norm(value)) for name, value in values])


def _norm(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


#: Fields whose default is made anew on each call (a fresh id, the time now): two reads of a
#: document without them differ there by design.
_FRESH = {"run_id", "created_at", "timestamp"}


def _same(fast: Any, doc: dict[str, Any], cls: type[Any]) -> None:
    text = json.dumps(doc)
    got = _outcome(fast, text, None)
    want = _outcome(_general, text, cls)
    if got[0] == want[0] == "ok":
        got = ("ok", [f for f in got[1] if f[0] in doc or f[0] not in _FRESH])
        want = ("ok", [f for f in want[1] if f[0] in doc or f[0] not in _FRESH])
    assert got == want, text


@SETTINGS
@given(st.dictionaries(st.sampled_from([f.name for f in attrs.fields(Run)] + ["extra"]), values))
def test_any_run_document_reads_as_the_general_path_reads_it(doc: dict[str, Any]) -> None:
    _same(_serde.loads_run, doc, Run)


texts = st.text(max_size=6)
valid_runs = st.builds(
    Run,
    job_name=texts,
    status=st.sampled_from(RunStatus),
    tags=st.dictionaries(texts, texts, max_size=3),
    code_location=st.none() | texts,
    step_keys_to_execute=st.none() | st.lists(texts, max_size=2),
    updated_at=st.none() | st.floats(allow_nan=False) | st.integers(-5, 5),
    failure_kind=st.none() | st.sampled_from(FailureKind),
    pools=st.lists(texts, max_size=2),
    root_pools=st.none() | st.lists(texts, max_size=2),
)


@SETTINGS
@given(valid_runs, st.sampled_from([f.name for f in attrs.fields(Run)]), st.booleans(), values)
def test_a_valid_run_with_one_field_changed_reads_as_the_general_path_reads_it(
    run: Run, name: str, change: bool, value: Any
) -> None:
    doc = _serde.to_jsonable(run)
    if change:
        doc[name] = value
    _same(_serde.loads_run, doc, Run)


@SETTINGS
@given(st.dictionaries(st.sampled_from([f.name for f in attrs.fields(Event)] + ["extra"]), values))
def test_any_event_document_reads_as_the_general_path_reads_it(doc: dict[str, Any]) -> None:
    _same(_serde.loads_event, doc, Event)


@pytest.mark.parametrize(
    "run",
    [
        Run(job_name="etl"),
        Run(
            job_name="etl",
            status=RunStatus.FAILURE,
            tags={"team": "a", "runcore/priority": "3", "é": "\u2603"},
            code_location="pkg.defs:defs",
            step_keys_to_execute=["a", "b"],
            parent_run_id=new_run_id(),
            root_run_id=new_run_id(),
            updated_at=2.5,
            started_at=2.0,
            ended_at=3,
            failure_reason="boom",
            failure_kind=FailureKind.USER_CODE,
            pools=["db"],
            root_pools=[],
            attempt_id="ab" * 16,
        ),
    ],
)
def test_runs_round_trip(run: Run) -> None:
    text = _serde.dumps_run(run)
    back = _serde.loads_run(text)
    assert back == run
    doc = json.loads(text)
    assert _serde._compile(Run, tuple(doc))(doc) == run  # the fast path takes it
    assert type(back.ended_at) is type(run.ended_at if run.ended_at is None else 1.0)


def test_events_round_trip_with_and_without_an_error() -> None:
    plain = Event(run_id=new_run_id(), event_type=EventType.LOG, message="hi", data={"n": [1]})
    failed = attrs.evolve(
        plain,
        event_type=EventType.STEP_FAILURE,
        step_key="s",
        error=ErrorInfo(type="ValueError", message="x", cause=ErrorInfo(type="E", message="y")),
    )
    for event in (plain, failed):
        assert _serde.loads_event(_serde.dumps_event(event)) == event
    doc = json.loads(_serde.dumps_event(plain))
    fast = _serde._compile(Event, tuple(doc))(doc)
    assert fast == plain


@pytest.mark.parametrize(
    "number", [2**64, -(2**63) - 1, 2**80, -(2**90), 10**30, 1e19, -1e300, 1.5]
)
def test_numbers_orjson_reads_differently_read_as_the_standard_library_reads_them(
    number: float,
) -> None:
    # orjson reads integers past 64 bits as floats: such documents go the standard way
    run_id = new_run_id()
    event = json.dumps({"run_id": run_id, "event_type": "LOG", "data": {"n": [{"x": number}]}})
    assert _serde.loads_event(event).data == {"n": [{"x": number}]}
    assert type(_serde.loads_event(event).data["n"][0]["x"]) is type(number)
    run = json.dumps({"run_id": run_id, "job_name": "j", "created_at": number})
    assert _serde.loads_run(run).created_at == float(number)
    # what orjson refuses: NaN, a lone surrogate
    _same(_serde.loads_run, {"run_id": "x", "job_name": math.nan, "created_at": 1.0}, Run)
    _same(_serde.loads_run, {"run_id": "\ud800", "job_name": "j", "created_at": 1.0}, Run)


# --- writing ----------------------------------------------------------------------------------

numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)
data_values = values | st.tuples(scalars) | st.frozensets(st.integers(0, 3), max_size=2)
errors = st.recursive(
    st.builds(ErrorInfo, type=texts, message=texts, traceback=texts),
    lambda inner: st.builds(ErrorInfo, type=texts, message=texts, traceback=texts, cause=inner),
    max_leaves=3,
)
any_runs = st.builds(
    Run,
    run_id=texts,
    job_name=texts,
    status=st.sampled_from(RunStatus),
    tags=st.dictionaries(texts, texts, max_size=3),
    code_location=st.none() | texts,
    step_keys_to_execute=st.none() | st.lists(texts, max_size=2),
    parent_run_id=st.none() | texts,
    created_at=numbers,
    updated_at=st.none() | numbers,
    ended_at=st.none() | numbers,
    failure_reason=st.none() | texts,
    failure_kind=st.none() | st.sampled_from(FailureKind),
    pools=st.lists(texts, max_size=2),
    root_pools=st.none() | st.lists(texts, max_size=2),
    attempt_id=st.none() | texts,
)
any_events = st.builds(
    Event,
    run_id=texts,
    event_type=st.sampled_from(EventType),
    timestamp=numbers,
    step_key=st.none() | texts,
    message=texts,
    level=st.sampled_from(["INFO", "WARNING"]) | texts,
    data=st.dictionaries(texts, data_values, max_size=3)
    | st.dictionaries(st.integers(0, 3), scalars, max_size=2),
    error=st.none() | errors,
)


def _canonical(text: str) -> str:
    """The document re-written by the standard library, so that two writings of one document
    compare equal (NaN included) and an int never passes for a float."""
    return json.dumps(json.loads(text), sort_keys=True)


def _written_alike(obj: Any) -> None:
    general = _serde.converter().unstructure(obj)
    fast = _serde._fast_jsonable(obj)
    assert fast is None or fast == general
    want = json.dumps(general, separators=(",", ":"), default=_serde._default)
    assert _canonical(_serde.dumps(obj)) == _canonical(want)


@SETTINGS
@given(any_runs)
def test_any_run_is_written_as_the_general_path_writes_it(run: Run) -> None:
    _written_alike(run)


@SETTINGS
@given(any_events)
def test_any_event_is_written_as_the_general_path_writes_it(event: Event) -> None:
    _written_alike(event)


def test_plain_runs_and_events_take_the_fast_path_and_read_back() -> None:
    run = Run(job_name="etl", tags={"é": "\u2603"}, created_at=1.5, pools=["db"], attempt_id="a")
    event = Event(
        run_id=run.run_id,
        event_type=EventType.STEP_FAILURE,
        timestamp=2.5,
        step_key="s",
        data={"n": [1, 2.5, None, True, {"k": "v"}]},
        error=ErrorInfo(type="E", message="m", cause=ErrorInfo(type="C", message="c")),
    )
    assert _serde._fast_jsonable(run) is not None
    assert _serde._fast_jsonable(event) is not None
    assert "\u2603" in _serde.dumps_run(run)  # UTF-8 as it is, not escaped
    assert _serde.loads_run(_serde.dumps_run(run)) == run
    assert _serde.loads_event(_serde.dumps_event(event)) == event


@pytest.mark.parametrize(
    "data",
    [{"x": math.nan}, {"x": math.inf}, {"x": 2**64}, {"x": "\ud800"}, {1: "a"}, {"x": (1,)}],
)
def test_what_orjson_writes_differently_is_written_the_standard_way(data: dict[Any, Any]) -> None:
    event = Event(run_id="r", event_type=EventType.LOG, timestamp=1.0, data=data)
    want = json.dumps(
        _serde.converter().unstructure(event), separators=(",", ":"), default=_serde._default
    )
    assert _serde.dumps_event(event) == want


def test_documents_of_more_layouts_than_are_compiled_still_read_back() -> None:
    layouts = _serde._BUILDERS[Run]
    saved = dict(layouts)
    try:
        layouts.clear()
        for i in range(_serde._MAX_LAYOUTS + 3):  # every one a new layout: an unknown key
            doc = {"job_name": "etl", "created_at": 1.0, f"extra{i}": i}
            assert _serde.loads_run(json.dumps(doc)).job_name == "etl"
        assert len(layouts) == _serde._MAX_LAYOUTS  # the rest went the general way
        assert _serde.loads_run(json.dumps({"job_name": "x", "created_at": 2})).created_at == 2.0
    finally:
        layouts.clear()
        layouts.update(saved)
