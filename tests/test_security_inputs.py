"""Bad input, tried as an attacker would (issue 9): numbers that would spin a loop, run ids
that would escape a directory, integers past 64 bits, bytes that are not UTF-8. Each is
refused with a :class:`~runcore.errors.RuncoreError` naming the field, and the CLI exits 2."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import runcore as rc
from runcore import cli
from runcore.daemon.monitoring import max_runtime_of
from runcore.launchers.subprocess import SubprocessRunLauncher
from runcore.runs import MAX_RUNTIME_TAG, PRIORITY_TAG

RUN_ID = "0f1e2d3c-0000-4000-8000-0000000000a1"


@rc.op
def one() -> int:
    return 1


tiny = rc.job("tiny", [one])


@rc.op(pool="p")
def pooled() -> int:
    return 2


uses_pool = rc.job("uses_pool", [pooled])


def _config_file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "runcore.yaml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


# --- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "0", "-1", "1e300"])
def test_a_poll_interval_that_would_spin_is_refused(tmp_path: Path, value: str) -> None:
    path = _config_file(tmp_path, f"run_monitoring:\n  poll_interval_seconds: {value}\n")
    with pytest.raises(rc.ConfigError, match=r"run_monitoring\.poll_interval_seconds"):
        rc.Instance.from_config(path)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("run_monitoring", "start_timeout_seconds"),
        ("run_monitoring", "cancel_timeout_seconds"),
        ("run_monitoring", "max_runtime_seconds"),
        ("run_retries", "delay_seconds"),
    ],
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0])
def test_nan_and_negative_durations_in_config_are_refused(
    section: str, key: str, value: float
) -> None:
    with pytest.raises(rc.ConfigError, match=rf"{section}\.{key}"):
        rc.Instance.from_config({"storage": {"in_memory": {}}, section: {key: value}})


def test_the_documented_off_values_are_accepted() -> None:
    inst = rc.Instance.from_config(
        {
            "storage": {"in_memory": {}},
            "run_monitoring": {"max_runtime_seconds": None},
            "run_retries": {"delay_seconds": 0},
            "concurrency": {"runs": {"max_concurrent_runs": -1}},
        }
    )
    assert inst.config is not None
    assert inst.config.run_monitoring.max_runtime_seconds is None


@pytest.mark.parametrize("value", [-1, 0, math.nan, math.inf, 1e300, "0.1", True])
def test_subprocess_launcher_poll_interval_must_be_a_positive_number(value: Any) -> None:
    with pytest.raises(rc.ConfigError, match=r"poll_interval"):
        SubprocessRunLauncher(poll_interval=value)
    with pytest.raises(rc.ConfigError, match=r"run_launcher\.config.*poll_interval"):
        rc.Instance.from_config(
            {
                "storage": {"in_memory": {}},
                "run_launcher": {
                    "class": "runcore.launchers.subprocess:SubprocessRunLauncher",
                    "config": {"poll_interval": value},
                },
            }
        )


@pytest.mark.parametrize("value", [-1, math.nan, math.inf])
def test_subprocess_launcher_grace_period_must_be_finite(value: float) -> None:
    with pytest.raises(rc.ConfigError, match=r"grace_period"):
        SubprocessRunLauncher(grace_period=value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dequeue_interval": 0},
        {"dequeue_interval": math.nan},
        {"heartbeat_interval": -1},
        {"monitor_interval": math.inf},
        {"retry_interval": math.nan},
    ],
)
def test_daemon_intervals_must_be_positive_and_finite(kwargs: dict[str, float]) -> None:
    (name,) = kwargs
    with rc.Instance.ephemeral() as inst, pytest.raises(rc.ConfigError, match=name):
        rc.Daemon(inst, **kwargs)


@pytest.mark.parametrize("field", ["delay", "backoff", "jitter"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 1e300])
def test_retry_policy_delays_must_be_finite(field: str, value: float) -> None:
    with pytest.raises(rc.DefinitionError, match=rf"RetryPolicy\.{field}"):
        rc.RetryPolicy(**{field: value})


def test_a_growing_backoff_is_capped_not_overflowing() -> None:
    policy = rc.RetryPolicy(max_retries=100, delay=1.0, backoff=1e9)
    assert policy.wait_before(100) == 1e9


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-5", "1e300", "soon"])
def test_a_max_runtime_tag_that_would_never_fire_is_refused(value: str) -> None:
    with rc.Instance.ephemeral() as inst, pytest.raises(rc.ConfigError, match=MAX_RUNTIME_TAG):
        inst.submit_run(tiny, tags={MAX_RUNTIME_TAG: value})


def test_a_stored_nan_max_runtime_counts_as_absent() -> None:
    # A row written by something other than runcore's API: the monitor never trusts it.
    run = rc.Run(job_name="tiny", tags={MAX_RUNTIME_TAG: "nan"})
    assert max_runtime_of(run, 60.0) == 60.0
    assert max_runtime_of(rc.Run(job_name="tiny", tags={MAX_RUNTIME_TAG: "30"}), None) == 30.0


@pytest.mark.parametrize("timeout", [math.nan, -1, 0, math.inf])
def test_wait_for_run_timeout_must_be_positive_and_finite(timeout: float) -> None:
    with rc.Instance.ephemeral() as inst:
        run = inst.submit_run(tiny)
        with pytest.raises(rc.ConfigError, match="timeout"):
            inst.wait_for_run(run.run_id, timeout=timeout)
        assert inst.wait_for_run(run.run_id, timeout=30).status is rc.RunStatus.SUCCESS


@pytest.mark.parametrize("value", [str(2**63), str(-(2**63) - 1), str(10**30), "1e3", "nan"])
def test_priority_outside_signed_64_bits_is_refused(value: str) -> None:
    with rc.Instance.ephemeral() as inst, pytest.raises(rc.ConfigError, match=PRIORITY_TAG):
        inst.submit_run(tiny, tags={PRIORITY_TAG: value})


@pytest.mark.parametrize("value", [str(2**63 - 1), str(-(2**63))])
def test_priority_at_the_64_bit_edges_is_accepted_and_admitted(value: str) -> None:
    config = {
        "storage": {"in_memory": {}},
        "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
    }
    with rc.Instance.from_config(config) as inst:
        inst.set_pool_limit("p", 1)
        others = [inst.submit_run(uses_pool, tags={PRIORITY_TAG: "0"}) for _ in range(2)]
        run = inst.submit_run(uses_pool, tags={PRIORITY_TAG: value})
        assert run.priority == int(value)
        with rc.Daemon(inst, dequeue_interval=0.01):
            for each in [*others, run]:
                assert inst.wait_for_run(each.run_id, timeout=30).status is rc.RunStatus.SUCCESS


def test_pool_limits_past_64_bits_are_refused() -> None:
    with rc.Instance.ephemeral() as inst, pytest.raises(rc.ConfigError, match="pool 'p'"):
        inst.set_pool_limit("p", 2**63)


def test_config_integers_past_64_bits_are_refused() -> None:
    with pytest.raises(rc.ConfigError, match=r"concurrency\.runs\.max_concurrent_runs"):
        rc.Instance.from_config({"concurrency": {"runs": {"max_concurrent_runs": 2**64}}})


# --- identifiers ------------------------------------------------------------------------------


def test_a_run_id_with_dot_dot_cannot_escape_the_output_store(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    store = rc.FileOutputStore(root)
    for bad in ("../escaped", "../../etc", "/tmp/x", f"{RUN_ID}/..", ".."):
        with pytest.raises(rc.InvalidRunIdError, match="is not a run id"):
            store.put(bad, "step", 1)
        with pytest.raises(rc.InvalidRunIdError):
            store.get(bad, "step")
        with pytest.raises(rc.InvalidRunIdError):
            store.has(bad, "step")
    for bad_key in ("../../escaped", "..", ".hidden", "a/b", "", "x\x00y"):
        with pytest.raises(rc.ConfigError, match="step key"):
            store.put(RUN_ID, bad_key, 1)
    assert sorted(os.listdir(tmp_path)) == []  # nothing written anywhere, not even the root


def test_a_symbolic_link_out_of_the_output_store_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / RUN_ID).symlink_to(outside)
    store = rc.FileOutputStore(root)
    with pytest.raises(rc.OutputStoreError, match="outside"):
        store.put(RUN_ID, "step", 1)
    assert list(outside.iterdir()) == []


def test_a_symbolic_link_at_the_output_file_is_followed_only_inside_the_store(
    tmp_path: Path,
) -> None:
    root = tmp_path / "outputs"
    (root / RUN_ID).mkdir(parents=True)
    outside = tmp_path / "outside.pkl"
    (root / RUN_ID / "step.pkl").symlink_to(outside)
    store = rc.FileOutputStore(root)
    with pytest.raises(rc.OutputStoreError, match="outside"):
        store.put(RUN_ID, "step", 1)
    assert not outside.exists()
    (root / "kept").mkdir()
    (root / RUN_ID / "other.pkl").symlink_to(root / "kept" / "other.pkl")
    store.put(RUN_ID, "other", 2)  # a link that stays inside the store is followed
    assert store.get(RUN_ID, "other") == 2
    assert (root / "kept" / "other.pkl").is_file()


def test_run_ids_are_checked_where_they_enter_the_api() -> None:
    with rc.Instance.ephemeral() as inst:
        with pytest.raises(rc.InvalidRunIdError):
            inst.submit_run(tiny, run_id="../../x")
        with pytest.raises(rc.InvalidRunIdError):
            tiny.execute_in_process(run_id="../../x")
        with pytest.raises(rc.RunNotFoundError):  # callers catching "not found" still do
            inst.get_run("../../x")


# --- encoding ---------------------------------------------------------------------------------

NOT_UTF8 = b"\xff\xfe".decode("utf-8", "surrogateescape")


def test_non_utf8_bytes_in_a_tag_are_refused_naming_it() -> None:
    with rc.Instance.ephemeral() as inst:
        with pytest.raises(rc.ConfigError, match=r"tag 'team'.*not valid UTF-8"):
            inst.submit_run(tiny, tags={"team": f"data{NOT_UTF8}"})
        with pytest.raises(rc.ConfigError, match=r"tag key.*not valid UTF-8"):
            inst.submit_run(tiny, tags={f"team{NOT_UTF8}": "data"})
        with pytest.raises(rc.ConfigError, match="not valid UTF-8"):
            inst.submit_run(tiny, tags={"team": "\ud800"})  # a lone surrogate from "\ud800"


def test_non_utf8_bytes_in_a_config_file_name_the_file(tmp_path: Path) -> None:
    path = _config_file(tmp_path, b"storage:\n  sqlite: {path: 'runs\xff.db'}\n")
    with pytest.raises(rc.ConfigError, match=r"runcore\.yaml.*not valid UTF-8"):
        rc.Instance.from_config(path)


def test_lone_surrogates_in_config_values_name_the_field() -> None:
    with pytest.raises(rc.ConfigError, match=r"storage\.sqlite\.path: not valid UTF-8"):
        rc.Instance.from_config({"storage": {"sqlite": {"path": f"runs{NOT_UTF8}.db"}}})
    with pytest.raises(rc.ConfigError, match=r"run_launcher\.config.*not valid UTF-8"):
        rc.Instance.from_config(
            {
                "storage": {"in_memory": {}},
                "run_launcher": {
                    "class": "runcore.launchers:ThreadPoolRunLauncher",
                    "config": {"max_workers": f"{NOT_UTF8}"},
                },
            }
        )


# --- the command line -------------------------------------------------------------------------


@pytest.fixture
def in_memory_config(tmp_path: Path) -> Path:
    return _config_file(tmp_path, "storage:\n  in_memory: {}\n")


INTERVAL_0 = ["--interval", "0"]
BAD_TAG: list[str | bytes] = ["--tag", b"team=\xff"]  # bytes, as a shell would pass them


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e300"])
def test_daemon_interval_that_would_spin_exits_2_naming_the_flag(
    in_memory_config: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["--config", str(in_memory_config), "daemon", "--interval", value])
    assert code == 2
    err = capsys.readouterr().err
    assert "--interval" in err and "Traceback" not in err


def test_daemon_interval_0_in_a_real_process(in_memory_config: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runcore", "--config", str(in_memory_config), "daemon", *INTERVAL_0],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "ConfigError: --interval: must be > 0" in done.stderr
    assert "Traceback" not in done.stderr


def test_non_utf8_argv_exits_2_naming_the_argument(
    in_memory_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(in_memory_config), "runs", "list", "--tag", f"team={NOT_UTF8}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "argument 6 (the value of --tag): not valid UTF-8" in err
    assert cli.main([f"--config={NOT_UTF8}", "runs", "list"]) == 2
    assert "(--config)" in capsys.readouterr().err


def test_non_utf8_argv_in_a_real_process(tmp_path: Path, in_memory_config: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runcore",
            "--config",
            str(in_memory_config),
            "runs",
            "list",
            *BAD_TAG,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "the value of --tag" in done.stderr and "Traceback" not in done.stderr


def test_a_non_utf8_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config_file(tmp_path, b"storage:\n  in_memory: {}\n# caf\xe9\n")
    assert cli.main(["--config", str(path), "runs", "list"]) == 2
    assert "not valid UTF-8" in capsys.readouterr().err


def test_a_bad_run_id_on_the_command_line_exits_2(
    in_memory_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--config", str(in_memory_config), "runs", "show", "../../etc"]) == 2
    assert "is not a run id" in capsys.readouterr().err
