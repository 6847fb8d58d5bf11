"""The client library and the CLI are layered: each module imports only the ones below it.

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
    "cli": ("args", "life", "tools", "scenarios", "parser", "__init__"),
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
