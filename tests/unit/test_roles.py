"""The role specs (machine.rolespec, machine.roles.ROLES): one list the machine iterates.

Adding a role is a package with a spec and one line in ROLES; these tests check that
every other place follows the list instead of naming roles by hand.
"""

from __future__ import annotations

import importlib
import random
from pathlib import Path

import pytest

from machine.cli.parser import parser
from machine.ipc.inmemory import InMemoryTransport
from machine.limits import Limits
from machine.profile import load_profile
from machine.ram import Ram
from machine.roles import ROLE_NAMES, ROLES, fixed_layout
from machine.rolespec import RoleContext

ROOT = Path(__file__).resolve().parents[2]


def test_specs_are_in_start_order_with_distinct_names_and_ports() -> None:
    seen: list[str] = []
    for spec in ROLES:
        assert spec.name not in seen
        assert set(spec.connects_to) <= set(seen), f"{spec.name} starts before a peer"
        seen.append(spec.name)
    offsets = [s.port_offset for s in ROLES]
    assert len(set(offsets)) == len(offsets)
    assert all(o >= 10 for o in offsets)  # B and B+1 are the supervisor's


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_each_role_package_exports_its_spec(role: str) -> None:
    spec = importlib.import_module(f"machine.{role}.spec").SPEC
    assert spec.name == role
    assert spec.knobs, "a role names the knobs it acts on (docs, profiles)"
    assert set(spec.knobs) <= set(load_profile("modern").knobs)


def test_the_port_layout_and_the_cli_follow_the_specs() -> None:
    layout = fixed_layout("h", 7000)
    for spec in ROLES:
        assert layout[spec.name]["kernel"] == f"tcp://h:{7000 + spec.port_offset}"
        assert layout[spec.name]["pub"] == f"tcp://h:{7000 + spec.port_offset + 2}"
    for role in ROLE_NAMES:
        assert parser().parse_args(["role", role]).name == role
    with pytest.raises(SystemExit):
        parser().parse_args(["role", "nosuchrole"])


def test_compose_runs_a_service_per_role() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for role in ROLE_NAMES:
        assert f'command: ["uvm-machine", "role", "{role}"]' in text, role


async def test_a_built_role_has_its_core_before_it_serves() -> None:
    ram = Ram.anonymous(64 * 4096)
    peers = {r: {"kernel": f"inproc://{r}/kernel", "pub": f"inproc://{r}/pub"} for r in ROLE_NAMES}
    for spec in ROLES:
        ctx = RoleContext(
            transport=InMemoryTransport(1),
            ram=ram,
            rng=random.Random(1),
            profile=load_profile("modern"),
            limits=Limits(),
            peers=peers,
        )
        svc = spec.build(ctx)
        assert svc.role == spec.name
        assert set(svc.peers) == set(spec.connects_to)  # named, opened by connect()
        await svc.close()
