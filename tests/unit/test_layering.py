"""Layering: a role's code imports only proto, ipc and shared utilities, never another role.

Role cores (every module of a role package except service.py) never import zmq either:
that is what lets the same cores run over ZeroMQ and in one process.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "machine"
ROLES = ("mmu", "uvm", "pdaemon", "net")
SHARED = {
    "machine.proto",
    "machine.ipc",
    "machine.params",
    "machine.tuning",
    "machine.kassert",
    "machine.limits",
    "machine.ram",
    "machine.config",
    "machine.profile",
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
