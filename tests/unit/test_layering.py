"""Layering: a role's code imports only proto, ipc and shared utilities, never another role.

Role cores (every module of a role package except service.py) never import zmq either:
that is what lets the same cores run over ZeroMQ and in one process.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

from machine.roles import ROLE_NAMES

ROOT = Path(__file__).resolve().parents[2] / "machine"
ROLES = ROLE_NAMES  # every role package (machine.roles)
SHARED = {
    "machine.proto",
    "machine.ipc",
    "machine.params",
    "machine.tuning",
    "machine.kassert",
    "machine.limits",
    "machine.ram",
    "machine.kpt",
    "machine.shm",
    "machine.config",
    "machine.profile",
    "machine.rules",
    "machine.rolespec",
    "machine.share",
}


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("role", ROLES)
def test_roles_import_only_shared_modules_and_themselves(role: str) -> None:
    for path in (ROOT / role).glob("*.py"):
        for mod in _imports(path):
            if not mod.startswith("machine"):
                continue
            ok = mod.startswith(f"machine.{role}") or any(
                mod == s or mod.startswith(s + ".") for s in SHARED
            )
            assert ok, f"{path.relative_to(ROOT)} imports {mod}"


@pytest.mark.parametrize("role", ROLES)
def test_role_cores_never_import_zmq(role: str) -> None:
    for path in (ROOT / role).glob("*.py"):
        if path.name == "service.py":
            continue
        mods = _imports(path)
        assert not any(m == "zmq" or m.startswith("zmq.") for m in mods), path
        assert "machine.ipc.zmqtransport" not in mods, path


def test_proto_imports_nothing_from_roles() -> None:
    for path in (ROOT / "proto").glob("*.py"):
        for mod in _imports(path):
            assert not any(mod.startswith(f"machine.{r}") for r in (*ROLES, "supervisor")), path


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """Every module of machine/ -> the machine modules it imports, wherever the import
    statement is (module level, inside a function, under TYPE_CHECKING): a function-local
    import cannot hide a circle from this graph."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names}
                deps |= subs & files.keys()
                if node.module in files and not subs <= files.keys():
                    deps.add(node.module)  # a name the module (or package) defines
        deps.discard(name)
        graph[name] = deps
    return graph


def test_no_import_circle_anywhere_in_machine() -> None:
    _check_acyclic(_import_graph())


def test_the_circle_check_finds_a_circle() -> None:
    """The check above can fail: a circle hidden in a function body is found."""
    graph = _import_graph()
    assert "machine.uvm.state" in graph["machine.uvm.fault"]
    graph["machine.uvm.state"].add("machine.uvm.fault")  # as a function-local import would
    with pytest.raises(AssertionError, match="import circle"):
        _check_acyclic(graph)


def _check_acyclic(graph: dict[str, set[str]]) -> None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import circle: {' -> '.join(e.args[1])}") from None


MAX_LINES = 500


def test_no_module_over_500_lines() -> None:
    big = {
        str(p.relative_to(ROOT.parent)): n
        for p in ROOT.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines (give a second job its own module): {big}"
