"""Properties of the trust boundary (issue 9): whatever a user passes as a tag, a config value
or a command-line number, runcore either accepts it or refuses it with a
:class:`~runcore.errors.RuncoreError` that names the field (the CLI: exit code 2 and a
message naming the flag). No other exception escapes."""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runcore as rc
from runcore import cli
from runcore.runs import RUNCORE_OWN_TAGS, USER_CONTROL_TAGS, check_user_tags

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Undecodable bytes as Python carries them (surrogateescape), and lone surrogates.
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
any_text = st.text(alphabet=st.one_of(st.characters(), surrogates), max_size=12)
number_text = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e309", "", " ", "0x10", "1_000", "+7", "٣"]),
    any_text,
)
tag_keys = st.one_of(
    any_text,
    st.sampled_from(sorted(USER_CONTROL_TAGS | RUNCORE_OWN_TAGS)),
    any_text.map(lambda t: "runcore/" + t),
)
tag_values = st.one_of(
    any_text,
    number_text,
    st.sampled_from(["isolated", "non_isolated", "from_failure", "all_steps"]),
    # What a user might pass who forgot that tag values are strings.
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.none(),
)


def _names_a_field(message: str, keys: list[Any]) -> bool:
    if "tag key" in message:
        return True
    return any(isinstance(k, str) and (repr(k) in message or f"tag {k}" in message) for k in keys)


@rc.op
def one() -> int:
    return 1


tiny = rc.job("tiny", [one])


@SETTINGS
@given(tags=st.dictionaries(tag_keys, tag_values, max_size=4))
def test_tags_are_accepted_or_refused_naming_the_tag(tags: dict[Any, Any]) -> None:
    try:
        checked = check_user_tags(tags)
    except rc.ConfigError as exc:
        assert _names_a_field(str(exc), list(tags)), str(exc)
        return
    # Accepted: strings all the way, and only the control tags under runcore/.
    for key, value in checked.items():
        assert isinstance(key, str) and isinstance(value, str)
        key.encode("utf-8")
        value.encode("utf-8")
        assert not key.startswith("runcore/") or key in USER_CONTROL_TAGS


@SETTINGS
@given(tags=st.dictionaries(tag_keys, tag_values, max_size=3))
def test_submitting_any_tags_stores_a_run_or_raises_a_config_error(tags: dict[Any, Any]) -> None:
    with rc.Instance.ephemeral() as inst:
        try:
            run = inst.create_run(tiny, tags=tags)
        except rc.ConfigError as exc:
            assert _names_a_field(str(exc), list(tags)), str(exc)
            return
        stored = inst.get_run(run.run_id)
        assert isinstance(stored.priority, int)
        assert -(2**63) <= stored.priority < 2**63


SECONDS = {
    ("run_monitoring", "start_timeout_seconds"): "duration",
    ("run_monitoring", "cancel_timeout_seconds"): "duration",
    ("run_monitoring", "max_runtime_seconds"): "duration_or_null",
    ("run_monitoring", "poll_interval_seconds"): "interval",
    ("run_retries", "delay_seconds"): "delay",
}
INTEGERS = [
    ("run_retries", "max_retries"),
    ("concurrency.runs", "max_concurrent_runs"),
    ("concurrency.pools", "default_limit"),
    ("non_isolated_runs", "max_concurrent_runs"),
]
config_values = st.one_of(
    st.floats(),
    st.integers(min_value=-(2**70), max_value=2**70),
    number_text,
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(any_text, st.integers(), max_size=2),
)


def _nested(section: str, key: str, value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {key: value}
    for part in reversed(section.split(".")):
        data = {part: data}
    return {"storage": {"in_memory": {}}, **data}


@SETTINGS
@given(field=st.sampled_from(sorted(SECONDS)), value=config_values)
def test_config_seconds_are_finite_and_in_range_or_refused(
    field: tuple[str, str], value: Any
) -> None:
    section, key = field
    try:
        inst = rc.Instance.from_config(_nested(section, key, value))
    except rc.ConfigError as exc:
        assert f"{section}.{key}" in str(exc), str(exc)
        return
    assert inst.config is not None
    got = getattr(getattr(inst.config, section), key)
    if got is None:
        assert SECONDS[field] == "duration_or_null"
        return
    assert isinstance(got, float) and math.isfinite(got) and got <= 1e9
    assert got >= 0 if SECONDS[field] == "delay" else got > 0


@SETTINGS
@given(field=st.sampled_from(INTEGERS), value=config_values)
def test_config_integers_fit_64_bits_or_are_refused(field: tuple[str, str], value: Any) -> None:
    section, key = field
    try:
        rc.Instance.from_config(_nested(section, key, value))
    except rc.ConfigError as exc:
        assert f"{section}.{key}" in str(exc), str(exc)
        return
    assert value is None or (isinstance(value, int) and -(2**63) <= value < 2**63)


@SETTINGS
@given(data=st.binary(max_size=80))
def test_any_config_file_bytes_are_read_or_refused_naming_the_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "instance.yaml")
        with open(path, "wb") as fh:
            fh.write(b"storage: {in_memory: {}}\n" + data)
        try:
            rc.Instance.from_config(path)
        except rc.ConfigError as exc:
            assert "instance.yaml" in str(exc), str(exc)


# --- the command line -------------------------------------------------------------------------

PIPELINE = textwrap.dedent(
    """
    import runcore as rc

    @rc.op
    def one() -> int:
        return 1

    defs = rc.Definitions(jobs=[rc.job("tiny", [one])])
    """
)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("cli")
    config = folder / "runcore.yaml"
    config.write_text("storage:\n  in_memory: {}\n", encoding="utf-8")
    pipeline = folder / "pipeline.py"
    pipeline.write_text(PIPELINE, encoding="utf-8")
    yield config, pipeline


def _run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv, out=io.StringIO())
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


def _check_refusal(code: int, err: str, flag: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    # The flag by its name (argparse: "argument --limit"; runcore: "--limit: ..." or the
    # setting it feeds, such as "limit: ..." or "wait_for_run(timeout=...)").
    assert flag.lstrip("-") in err, err


cli_numbers = st.one_of(number_text, st.sampled_from(["0", "-1", "1", "0.5", "20"]))


@SETTINGS
@given(value=cli_numbers)
def test_runs_list_limit(cli_files: tuple[Path, Path], value: str) -> None:
    config, _ = cli_files
    code, err = _run_cli(["--config", str(config), "runs", "list", "--limit", value])
    if code != 0:
        _check_refusal(code, err, "--limit")


@SETTINGS
@given(value=cli_numbers)
def test_concurrency_set_limit(cli_files: tuple[Path, Path], value: str) -> None:
    config, _ = cli_files
    code, err = _run_cli(["--config", str(config), "instance", "concurrency", "set", "p", value])
    if code != 0:
        _check_refusal(code, err, "limit")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=cli_numbers)
def test_job_execute_timeout(cli_files: tuple[Path, Path], value: str) -> None:
    config, pipeline = cli_files
    argv = ["--config", str(config), "job", "execute", f"{pipeline}:defs", "tiny"]
    code, err = _run_cli([*argv, "--timeout", value])
    if code != 0:
        _check_refusal(code, err, "--timeout")


def _valid_interval(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and 0 < value <= 1e9


@SETTINGS
@given(value=cli_numbers)
def test_daemon_interval(cli_files: tuple[Path, Path], value: str) -> None:
    if _valid_interval(value):
        return  # accepted: the daemon would start and run until signaled
    config, _ = cli_files
    code, err = _run_cli(["--config", str(config), "daemon", "--interval", value])
    _check_refusal(code, err, "--interval")


@SETTINGS
@given(value=any_text)
def test_any_argument_text_is_used_or_refused_with_exit_2(
    cli_files: tuple[Path, Path], value: str
) -> None:
    config, _ = cli_files
    code, err = _run_cli(["--config", str(config), "runs", "list", "--job", value])
    assert code in (0, 2), err
    assert "Traceback" not in err
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        assert code == 2 and "argument 6 (the value of --job): not valid UTF-8" in err, err
