"""The client library, the CLI and the stress harness are layered: each module imports
only the ones below it.

Every import counts, function-local ones included, so no circle can hide in a
function body. The orders are the ones the packages' docstrings give.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_layering import _imports

ROOT = Path(__file__).resolve().parents[3] / "machine"

#: bottom first; a module may import only modules before it in its package's list
ORDERS = {
    "client": ("errors", "feed", "session", "process", "wire", "machine", "__init__"),
    "cli": (
        "args",
        "life",
        "tools",
        "scenarios",
        "stress",
        "explore",
        "explain",
        "parser",
        "__init__",
    ),
    "explore": (
        "workload",
        "calls",
        "vmops",
        "run",
        "shrink",
        "explore",
        "sequence",
        "diagram",
        "flight",
        "frames",
        "explain",
        "fromdump",
        "repro",
        "__init__",
    ),
    "stress": (
        "outcome",
        "model",
        "vmstats",
        "charts",
        "webui",
        "greenproc",
        "zmtp",
        "green",
        "bridge",
        "base",
        "nemesis_plan",
        "nemesis_faults",
        "nemesis",
        "victim",
        "users_common",
        "users_memory",
        "users_io",
        "users",
        "control",
        "locustfile",
        "__main__",
        "__init__",
    ),
}


@pytest.mark.parametrize("pkg", sorted(ORDERS))
def test_every_module_is_in_the_declared_order(pkg: str) -> None:
    assert {p.stem for p in (ROOT / pkg).glob("*.py")} == set(ORDERS[pkg])


@pytest.mark.parametrize("pkg", sorted(ORDERS))
def test_modules_import_only_modules_below_them(pkg: str) -> None:
    order = ORDERS[pkg]
    for i, name in enumerate(order):
        below = {f"machine.{pkg}.{m}" for m in order[:i]}
        for mod in _imports(ROOT / pkg / f"{name}.py"):
            if mod == f"machine.{pkg}" or mod.startswith(f"machine.{pkg}."):
                assert mod in below, f"{pkg}/{name}.py imports {mod}"


def test_the_client_and_cli_never_import_the_entry_point() -> None:
    for pkg in ORDERS:
        for path in (ROOT / pkg).glob("*.py"):
            assert "machine.__main__" not in _imports(path), path
            if pkg == "client":
                assert not any(m.split(".")[:2] == ["machine", "cli"] for m in _imports(path)), path


#: The harness's modules that import neither gevent nor Locust: the CLI may use them.
PURE_STRESS = {"machine.stress.nemesis_plan", "machine.stress.outcome"}


def test_only_the_stress_command_imports_the_harness_and_only_its_pure_modules() -> None:
    """gevent's monkey-patching must never reach an asyncio process: outside
    machine/stress, only cli/stress.py imports the harness, and only its pure modules."""
    for path in ROOT.rglob("*.py"):
        if path.parent.name == "stress":
            continue
        mods = {m for m in _imports(path) if m.split(".")[:2] == ["machine", "stress"]}
        if path.relative_to(ROOT).as_posix() == "cli/stress.py":
            assert mods <= PURE_STRESS, mods
        else:
            assert not mods, f"{path} imports {mods}"
    for name in PURE_STRESS:
        mods = _imports(ROOT / "stress" / (name.rsplit(".", 1)[1] + ".py"))
        assert not {m.split(".")[0] for m in mods} & {"gevent", "locust", "zmq"}, name
