"""The shape the code keeps: dependencies point one way, no circles, rooms small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("chalice_app", "droptrain")
SOURCES = [ROOT / "app.py", *(p for d in (*PACKAGES, "training", "bench") for p in sorted((ROOT / d).rglob("*.py")))]
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The first-party modules a file imports (absolute or relative), as dotted names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    tree = ast.parse(path.read_text())
    # Imports under ``if TYPE_CHECKING:`` never run: an annotation is not a dependency at run time.
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in out if m.split(".")[0] in (*PACKAGES, "app")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SOURCES if p.parts[len(ROOT.parts)] in (*PACKAGES, "app.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_the_lambda_core_never_imports_the_tools_around_it():
    arrows = [
        (m, d) for m, deps in _graph().items() if m.startswith("chalice_app") for d in deps if d.startswith("droptrain")
    ]
    assert arrows == [], "droptrain → chalice_app only, never back"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                found.append(trail[trail.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_the_import_graph_has_no_circle():
    graph = _graph()
    # A package's __init__ importing its own submodules is not a circle worth the name.
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    assert _cycles(graph) == []


def test_the_checks_see_real_imports_and_real_circles():
    graph = _graph()
    assert "chalice_app.config" in graph["chalice_app.bootstrap"]
    assert any(d.startswith("chalice_app") for d in graph["droptrain.local.runtime"])
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_module_is_too_long_to_read():
    long = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_is_too_long_to_read():
    long = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = length
    assert long == {}


def test_the_local_runtime_keeps_its_rooms():
    """droptrain/local/ is a house of subpackages (aws/, sagemaker/, engines/): at most 8 modules loose at its top."""
    loose = sorted(p.name for p in (ROOT / "droptrain" / "local").glob("*.py"))
    assert len(loose) <= 8, loose
    assert {p.name for p in (ROOT / "droptrain" / "local").iterdir() if (p / "__init__.py").exists()} >= {
        "aws",
        "sagemaker",
        "engines",
    }


def test_the_slowest_files_listed_for_scheduling_exist():
    """tests/conftest.py starts these first; a renamed file would silently lose its place."""
    from helpers import SLOWEST_FIRST

    assert [name for name in SLOWEST_FIRST if not (ROOT / name).is_file()] == []
