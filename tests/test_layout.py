"""The shape of the code: no import cycles under `agent/`, package imports pointing one
way (commands -> node, config -> serve -> push, pull -> peers -> archive -> telemetry
-> protocol), at most 20 modules a folder, and every path docs/ARCHITECTURE.md names
exists. Every import counts: module level, inside functions, and type-only ones."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Higher ranks may import lower ones, never the reverse. push and pull share a rank:
# neither may import the other.
RANKS = {
    "telemetry": 1,
    "archive": 2,
    "peers": 3,
    "push": 4,
    "pull": 4,
    "serve": 5,
    "config": 6,
    "node": 7,
    "commands": 8,
}
MAX_MODULES = 20


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `path` imports, wherever the import statement is."""
    name = module_name(path)
    package = name if is_package(path) else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph(top: str) -> dict[str, set[str]]:
    files = {module_name(p): p for p in (REPO / top).rglob("*.py")}
    known = set(files)
    return {name: imported_modules(path, known) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def rank(module: str) -> int | None:
    parts = module.split(".")
    return RANKS.get(parts[1]) if parts[0] == "agent" and len(parts) > 1 else None


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_walk_sees_function_level_and_type_only_imports():
    edges = graph("agent")
    assert "agent.node" in edges["agent.commands.cli"]  # inside cmd_run
    assert "agent.archive.scrub" in edges["agent.commands.scrub_cli"]  # under TYPE_CHECKING
    assert "agent.commands.tls_init" in edges["agent.commands.tools"]  # `from . import tls_init`


def test_no_import_cycles_under_agent():
    assert cycles(graph("agent")) == []


def test_no_import_cycles_under_protocol():
    assert cycles(graph("protocol")) == []


def test_protocol_imports_nothing_of_agent():
    for path in (REPO / "protocol").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) agent\b", text, re.M), path


def test_imports_point_one_way():
    wrong = []
    for module, targets in graph("agent").items():
        mine = rank(module)
        for target in targets:
            theirs = rank(target)
            if mine is None or theirs is None:
                continue
            same_package = module.split(".")[1] == target.split(".")[1]
            if theirs > mine or (theirs == mine and not same_package):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_every_agent_module_belongs_to_a_ranked_package():
    for module in graph("agent"):
        if module != "agent":
            assert rank(module) is not None, f"{module}: add its package to RANKS"


@pytest.mark.parametrize("top", ["agent", "protocol", "bench"])
def test_no_folder_over_the_module_limit(top):
    for folder in [REPO / top, *(p for p in (REPO / top).rglob("*") if p.is_dir())]:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= MAX_MODULES, f"{folder}: {len(modules)} modules"


def test_every_package_says_what_it_holds():
    for init in (REPO / "agent").rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc.lower(), f"{init}: a docstring saying what it holds and imports"


def test_every_path_in_the_architecture_doc_exists():
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    paths = set(re.findall(r"`((?:agent|protocol|tests|bench)/[\w/.]*)`", text))
    assert paths, "the doc names no paths?"
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert missing == []
