"""runcore's pytest plugin: a user's test module gets the ``runcore_*`` fixtures, no conftest."""

from __future__ import annotations

import importlib.metadata

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import runcore as rc


@rc.op
def hello() -> str:
    return "hello"


hello_job = rc.job("hello_job", [hello])


def test_instance_runs_a_job(runcore_instance):
    run = runcore_instance.submit_run(hello_job)
    done = runcore_instance.wait_for_run(run.run_id, timeout=30)
    assert done.status is rc.RunStatus.SUCCESS
    assert runcore_instance.output_store.get(run.run_id, "hello") == "hello"


def test_recording_launcher_records_and_runs_nothing(
    runcore_instance, runcore_recording_launcher
):
    assert runcore_instance.run_launcher is runcore_recording_launcher
    run = runcore_instance.submit_run(hello_job)
    assert runcore_recording_launcher.launched_ids == [run.run_id]
    assert runcore_instance.get_run(run.run_id).status is rc.RunStatus.STARTING
    runcore_recording_launcher.finish(run.run_id)
    assert runcore_instance.get_run(run.run_id).status is rc.RunStatus.SUCCESS


def test_recording_launcher_alone(runcore_recording_launcher):
    assert runcore_recording_launcher.launched == []


def test_clock_steps_a_daemon_past_the_start_timeout(
    runcore_instance, runcore_recording_launcher, runcore_clock
):
    run = runcore_instance.submit_run(hello_job)
    daemon = rc.Daemon(runcore_instance, clock=runcore_clock)
    daemon.run_once()
    assert runcore_instance.get_run(run.run_id).status is rc.RunStatus.STARTING
    runcore_clock.advance(24 * 3600)
    daemon.run_once()
    assert runcore_instance.get_run(run.run_id).status is rc.RunStatus.FAILURE


def test_instances_are_separate(runcore_instance):
    assert runcore_instance.get_run_records() == []
"""


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    entry_points = importlib.metadata.entry_points(group="pytest11")
    assert [ep.value for ep in entry_points if ep.name == "runcore"] == [
        "runcore.testing.pytest_plugin"
    ]


def test_a_users_test_module_gets_the_fixtures_without_a_conftest(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=5)


def test_the_fixtures_close_the_instance_after_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
        import pytest
        import runcore as rc

        kept = []


        def test_keep(runcore_instance):
            kept.append(runcore_instance)


        def test_closed_after():
            with pytest.raises(rc.InstanceClosedError):
                kept[0].get_run_records()
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2)


def test_a_user_overrides_the_instance_config(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
        import pytest
        import runcore as rc


        @pytest.fixture
        def runcore_instance_config(tmp_path):
            return {
                "storage": {"sqlite": {"path": str(tmp_path / "runs.db")}},
                "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
            }


        @rc.op
        def one() -> int:
            return 1


        job = rc.job("one_job", [one])


        def test_queued_on_sqlite(runcore_instance, runcore_recording_launcher):
            assert isinstance(runcore_instance.storage, rc.InstanceStorage)
            assert type(runcore_instance.storage).__name__ == "SqliteStorage"
            run = runcore_instance.submit_run(job)
            assert run.status is rc.RunStatus.QUEUED
            rc.Daemon(runcore_instance).run_once()
            assert runcore_recording_launcher.launched_ids == [run.run_id]
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)


def test_the_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
        def test_needs_it(runcore_clock):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:runcore", "-p", "no:cacheprovider", "-q")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'runcore_clock' not found*"])
