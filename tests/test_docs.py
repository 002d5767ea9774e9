"""The documentation's examples run, so the docs stay true to the code.

Every fenced block in ``README.md`` and ``docs/*.md`` whose info string is exactly ``python`` is
written to a file in a fresh temporary directory and run there as a script, in its own
interpreter (a fresh namespace, nothing shared between blocks), under a timeout. A block must
finish with exit code 0; its output is shown when it does not.

Every block whose info string is exactly ``yaml`` is an instance configuration and must parse
as one (``runcore.config.parse``); it is not used to build an instance, so a config naming a
backend that this release does not ship yet (``postgres``) is still checked for its shape.

A block that is deliberately not runnable (a fragment, a pytest module) says so with a second
word: ```` ```python fragment ```` or ```` ```yaml fragment ````. Such blocks are reported as
skipped; keep them few.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT_S = 30.0  # generous: examples run in 1-2 s, but CI machines can be loaded

_FENCE = re.compile(
    r"""
    ^(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n   # opening fence and info string
    (?P<body>.*?)                                 # the block
    ^(?P=fence)[ \t]*$                            # closing fence
    """,
    re.DOTALL | re.MULTILINE | re.VERBOSE,
)


def _blocks(language: str) -> list[pytest.ParameterSet]:
    """One parameter per block of ``language``: (file, line, body), id ``file-N``."""
    params = []
    for path in DOC_FILES:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        index = 0
        for match in _FENCE.finditer(text):
            words = match["info"].split()
            if not words or words[0] != language:
                continue
            line = text.count("\n", 0, match.start()) + 1
            rel = path.relative_to(ROOT).as_posix()
            marks = []
            if len(words) > 1:
                marks.append(pytest.mark.skip(reason=f"{' '.join(words)} block: not runnable"))
            params.append(
                pytest.param(rel, line, match["body"], id=f"{rel}-{index}", marks=marks),
            )
            index += 1
    return params


def test_docs_have_examples() -> None:
    """Guard against a silent change to the fence syntax that would skip every example."""
    assert len(_blocks("python")) >= 10


@pytest.mark.parametrize(("doc", "line", "code"), _blocks("python"))
def test_python_block(doc: str, line: int, code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    env["RUNCORE_DEMO_PACE"] = "0.01"
    env.pop("RUNCORE_CONFIG", None)
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{doc}:{line}: the example did not finish in {TIMEOUT_S} s\n{exc.output}")
    if proc.returncode != 0:
        pytest.fail(
            f"{doc}:{line}: the example exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )


@pytest.mark.parametrize(("doc", "line", "text"), _blocks("yaml"))
def test_yaml_config_block(doc: str, line: int, text: str) -> None:
    from runcore.config import InstanceConfig, parse

    data = yaml.safe_load(text)
    try:
        parse(data, InstanceConfig)
    except Exception as exc:
        pytest.fail(f"{doc}:{line}: not a valid instance config: {exc}")


#: Files that links may point to before they exist: written by a nox session, not committed.
GENERATED = {"benchmarks/RESULTS.md"}

_LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown file."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    anchors = set()
    for match in re.finditer(r"^#{1,6}\s+(.*?)\s*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("doc", [p.relative_to(ROOT).as_posix() for p in DOC_FILES if p.exists()])
def test_relative_links_resolve(doc: str) -> None:
    source = ROOT / doc
    text = _FENCE.sub("", source.read_text(encoding="utf-8"))
    broken = []
    for match in _LINK.finditer(text):
        target = match["target"]
        if re.match(r"^[a-z]+:", target):
            continue  # an absolute URL
        file_part, _, anchor = target.partition("#")
        path = (source.parent / file_part).resolve() if file_part else source
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if not path.exists():
            if rel not in GENERATED:
                broken.append(f"{target}: no file {rel}")
            continue
        if anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {rel}")
    assert not broken, f"{doc}: broken links:\n" + "\n".join(broken)
