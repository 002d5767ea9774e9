"""Loading definitions from ``"pkg.module:attr"`` and ``"path/file.py:attr"`` code locations."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import runcore as rc
from runcore.definitions import infer_code_location

FIXTURES_PARENT = Path(__file__).parent


@pytest.fixture(autouse=True)
def fixtures_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``fixtures_defs`` importable; the modules that fail are imported fresh by every test."""
    monkeypatch.syspath_prepend(str(FIXTURES_PARENT))
    yield
    for name in [m for m in sys.modules if m.startswith("fixtures_defs.")]:
        if name != "fixtures_defs.good":
            del sys.modules[name]


def _write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


GOOD_FILE = """
    import runcore as rc

    @rc.op
    def hello() -> str:
        return "hello"

    @rc.op
    def shout(hello: str) -> str:
        return hello.upper()

    greet = rc.job("greet", [hello, shout])
    other = rc.job("other", [hello])
    defs = rc.Definitions(jobs=[greet])
"""


def test_module_location_naming_definitions() -> None:
    defs = rc.load_code_location("fixtures_defs.good:defs")
    assert defs.job_names == ["etl", "pids"]
    etl = defs.get_job("etl")
    assert etl.code_location == "fixtures_defs.good:defs"
    assert etl.execute_in_process().output_for("total")["total"] == 6


def test_module_location_naming_a_job() -> None:
    defs = rc.load_code_location("fixtures_defs.good:solo")
    assert defs.job_names == ["solo"]
    assert defs.get_job("solo").execute_in_process().output_for("one") == 1


def test_module_location_without_attr_uses_its_only_definitions() -> None:
    assert rc.load_code_location("fixtures_defs.good").job_names == ["etl", "pids"]


def test_module_with_two_definitions_needs_an_attr() -> None:
    with pytest.raises(rc.CodeLocationError, match=r"holds 2 Definitions.*two_definitions:<attr>"):
        rc.load_code_location("fixtures_defs.two_definitions")
    assert rc.load_code_location("fixtures_defs.two_definitions:second").job_names == ["second"]


def test_file_location_with_and_without_attr(tmp_path: Path) -> None:
    path = _write(tmp_path / "user_jobs.py", GOOD_FILE)
    defs = rc.load_code_location(f"{path}:defs")
    assert defs.job_names == ["greet"]
    assert defs.get_job("greet").execute_in_process().output_for("shout") == "HELLO"
    assert rc.load_code_location(f"{path}:other").job_names == ["other"]
    # Without an attr the file's single Definitions is used.
    assert rc.load_code_location(str(path)).job_names == ["greet"]


def test_file_location_without_definitions_collects_its_jobs(tmp_path: Path) -> None:
    source = GOOD_FILE.replace("    defs = rc.Definitions(jobs=[greet])\n", "")
    path = _write(tmp_path / "jobs_only.py", source)
    assert sorted(rc.load_code_location(str(path)).job_names) == ["greet", "other"]


def test_a_file_is_imported_once(tmp_path: Path) -> None:
    path = _write(tmp_path / "counted.py", GOOD_FILE)
    first = rc.load_code_location(f"{path}:defs")
    second = rc.load_code_location(f"{path}:defs")
    assert first.get_job("greet") is second.get_job("greet")


@pytest.mark.parametrize("location", ["", "   ", None])
def test_empty_location_is_an_error(location: str | None) -> None:
    with pytest.raises(
        rc.CodeLocationError, match=r"must be 'pkg\.module:attr' or 'file\.py:attr'"
    ):
        rc.load_code_location(location)  # type: ignore[arg-type]


def test_unknown_module_is_named() -> None:
    with pytest.raises(rc.CodeLocationError) as info:
        rc.load_code_location("no_such_runcore_pkg.jobs:defs")
    assert "no module named 'no_such_runcore_pkg'" in str(info.value)
    assert "PYTHONPATH" in str(info.value)
    with pytest.raises(rc.CodeLocationError, match=r"no module named 'fixtures_defs\.nope'"):
        rc.load_code_location("fixtures_defs.nope:defs")


def test_unknown_attribute_is_named_with_what_the_module_holds() -> None:
    with pytest.raises(rc.CodeLocationError) as info:
        rc.load_code_location("fixtures_defs.good:deffs")
    message = str(info.value)
    assert "module 'fixtures_defs.good' has no attribute 'deffs'" in message
    assert "defs, etl, pids, solo" in message


def test_attribute_of_the_wrong_type_is_an_error() -> None:
    with pytest.raises(rc.CodeLocationError, match="'not_defs' is a int, not a runcore"):
        rc.load_code_location("fixtures_defs.two_definitions:not_defs")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(rc.CodeLocationError, match=r"file '.*absent\.py' does not exist"):
        rc.load_code_location(f"{tmp_path / 'absent.py'}:defs")


def test_error_raised_while_the_users_module_imports() -> None:
    with pytest.raises(rc.CodeLocationError) as info:
        rc.load_code_location("fixtures_defs.broken_import:defs")
    message = str(info.value)
    assert "failed to import: ValueError: boom while importing the user's module" in message
    # The user's traceback, down to the line that raised.
    assert "Traceback (most recent call last)" in message
    assert "broken_import.py" in message
    assert "in _configure" in message
    assert isinstance(info.value.__cause__, ValueError)


def test_a_missing_dependency_of_the_users_module_is_not_reported_as_a_missing_location() -> None:
    with pytest.raises(rc.CodeLocationError) as info:
        rc.load_code_location("fixtures_defs.missing_dependency:defs")
    message = str(info.value)
    assert "failed to import: ModuleNotFoundError" in message
    assert "runcore_test_no_such_dependency" in message
    assert "missing_dependency.py" in message
    assert "no module named 'fixtures_defs" not in message


def test_a_module_calling_sys_exit_does_not_end_the_loader() -> None:
    with pytest.raises(rc.CodeLocationError, match="failed to import: SystemExit: 3"):
        rc.load_code_location("fixtures_defs.exits_on_import:defs")


def test_syntax_error_in_a_file_location(tmp_path: Path) -> None:
    path = _write(tmp_path / "typo.py", "def broken(:\n    pass\n")
    with pytest.raises(rc.CodeLocationError, match=r"failed to import: SyntaxError"):
        rc.load_code_location(f"{path}:defs")
    # A failed import is not cached: once fixed, the file loads.
    _write(path, GOOD_FILE)
    assert rc.load_code_location(f"{path}:defs").job_names == ["greet"]


def test_unknown_job_in_loaded_definitions_lists_known_jobs() -> None:
    defs = rc.load_code_location("fixtures_defs.good:defs")
    with pytest.raises(rc.UnknownJobError, match=r"no job named 'nightly'.*: etl, pids"):
        defs.get_job("nightly")


def test_infer_code_location_of_a_job_in_an_importable_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    _write(tmp_path / "runcore_infer_mod.py", GOOD_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module("runcore_infer_mod")
        assert infer_code_location(module.other) == "runcore_infer_mod:other"
        # A job held only by a Definitions would be found through it; this one is both.
        assert infer_code_location(module.greet) in {
            "runcore_infer_mod:greet",
            "runcore_infer_mod:defs",
        }
        # Found through any op's module, not only the first op's.
        mixed = rc.job("mixed", [rc.op(name="local")(lambda: 1), module.hello])
        module.mixed = mixed
        assert infer_code_location(mixed) == "runcore_infer_mod:mixed"
    finally:
        sys.modules.pop("runcore_infer_mod", None)


def test_infer_code_location_of_a_job_in_a_loaded_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "located.py", GOOD_FILE)
    job = rc.load_code_location(f"{path}:other").get_job("other")
    assert infer_code_location(job) == f"{path}:other"


def test_infer_code_location_of_a_local_job_is_none() -> None:
    local = rc.job("local", [rc.op(name="x")(lambda: 1)])
    assert infer_code_location(local) is None
