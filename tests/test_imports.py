"""The module graph: no import cycle at module import time, and ``import runcore`` stays light.

Edges are the imports a module runs when it is imported (its top level, including ``if`` and
``try`` blocks, excluding ``if TYPE_CHECKING:``); imports inside functions run later and are
the documented way to defer optional or heavy dependencies.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "runcore").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _edges(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*parts, base] if base else parts)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    edges = set()
    for imported in found:
        target = imported
        while target and target not in known:
            target = target.rpartition(".")[0]
        # Importing ``a.b.c`` first runs the package ``a.b``'s ``__init__``: an edge to each
        # enclosing package, except the importer's own (already under way when it runs).
        while target and not f"{name}.".startswith(f"{target}."):
            edges.add(target)
            target = target.rpartition(".")[0]
    # The root package only gathers the public names; every module may import it last.
    edges.discard("runcore")
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return cycles


def test_no_import_cycle_at_module_import_time() -> None:
    known = _modules()
    graph = {name: _edges(name, path, known) for name, path in known.items()}
    assert len(graph) > 50, "the graph was not built"
    assert _cycles(graph) == []


def test_a_cycle_is_caught() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_import_runcore_loads_no_heavy_dependency() -> None:
    heavy = ["grpc", "boto3", "psycopg", "docker", "rich", "starlette", "pytest", "asyncio"]
    code = f"import sys, runcore\nprint(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == ""


# Function-local imports that would close a cycle if hoisted, each an upward call on purpose:
# (importer, imported): why.
UPWARD_CALLS = {
    ("runcore.definitions", "runcore.worker.execution"): "Job.execute_in_process runs the job",
    ("runcore.worker.execution", "runcore.instance"): "execute_in_process opens an ephemeral "
    "instance, which executes runs",
    ("runcore.worker.execution", "runcore.worker.result"): "the in-process result reads events "
    "through the instance",
}


def _function_local_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    out: set[str] = set()
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                candidates = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for candidate in candidates:
                target = candidate
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target not in ("runcore", name):
                    out.add(target)
    return out


def test_function_local_imports_only_defer_what_import_runcore_does_not_load() -> None:
    """A function-local import must keep something heavy or optional out of ``import runcore``.

    Importing any ``runcore`` module first runs ``runcore/__init__``, which loads the modules
    listed by ``import runcore``: deferring one of those saves nothing and hides the real
    dependency. The exceptions are the upward calls above, which would close a cycle.
    """
    code = "import sys, runcore\nprint(' '.join(m for m in sys.modules if m.startswith('runcore')))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(done.stdout.split())
    known = _modules()
    pointless = sorted(
        f"{name} imports {imported} inside a function"
        for name, path in known.items()
        for imported in _function_local_imports(name, path, known)
        if imported in loaded and (name, imported) not in UPWARD_CALLS
    )
    assert pointless == [], "hoist these to the top of their module:\n" + "\n".join(pointless)


def _runcore_modules_after(code: str) -> set[str]:
    listing = "print(' '.join(m for m in sys.modules if m.startswith('runcore')))"
    probe = f"{code}\nimport sys\n{listing}"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def test_import_runcore_loads_what_defining_ops_and_jobs_needs_and_no_more() -> None:
    # The rest of the public names load on first use (runcore._lazy).
    assert _runcore_modules_after("import runcore") == {
        "runcore",
        "runcore._lazy",
        "runcore._validate",
        "runcore.definitions",
        "runcore.errors",
        "runcore.events",
        "runcore.executors",
        "runcore.executors.base",
        "runcore.runs",
    }


def test_every_public_name_loads_on_first_use() -> None:
    import runcore

    for package in ("runcore", "runcore.executors", "runcore.coordinators"):
        module = __import__(package, fromlist=["__all__"])
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{package}.{name}"
    assert set(runcore.__all__) <= set(dir(runcore))


def test_a_run_worker_process_loads_no_instance_coordinator_daemon_or_other_backend() -> None:
    # What `python -m runcore worker execute-run` imports before it executes a run on SQLite.
    loaded = _runcore_modules_after(
        "import runcore.cli, runcore.worker.process, runcore.storage.sqlite"
    )
    assert "runcore.worker.process" in loaded
    unwanted = {
        "runcore.instance",
        "runcore.coordinators.base",
        "runcore.coordinators.queued",
        "runcore.daemon",
        "runcore.launchers.thread_pool",
        "runcore.launchers.subprocess",
        "runcore.executors.multiprocess",
        "runcore.storage.memory",
        "runcore.storage.postgres",
    }
    assert loaded & unwanted == set()
