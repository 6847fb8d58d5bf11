"""A damaged dump gets a clear refusal, never a traceback: read_dump raises DumpError,
or what it returns is merged, explained and turned into a workload without raising.

The dump is a real one of the simulated machine (a short run, a live dump with every
flight recorder); Hypothesis damages it at random places: a value replaced by one of
another type, a key dropped, a list entry cut, a number made huge or negative.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machine.dumpfile import DumpError, read_dump
from machine.explore.explain import explain
from machine.explore.flight import merge
from machine.explore.fromdump import extract, profile_for
from machine.ipc.inmemory import run_simulation
from machine.params import PAGE_SIZE
from machine.proto import NO_HEADER, CtlDumpsys, CtlDumpsysReply
from machine.testing import SimMachine

pytestmark = pytest.mark.timeout(300)
_H = NO_HEADER


@pytest.fixture(scope="module")
def dump_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    state = tmp_path_factory.mktemp("state")

    async def main() -> str:  # the dump's path
        async with SimMachine.boot(seed=3, ram_bytes=1 << 20, state_dir=str(state)) as sim:
            async with sim.attach() as m, m.wire() as wire:
                p = await m.spawn()
                va = await p.mmap(8 * PAGE_SIZE, "rw")
                await p.store(va, b"d" * (8 * PAGE_SIZE))
                s = await p.socket()
                await p.send(s, va, 8 * PAGE_SIZE)
                await wire.get(30.0)
                await p.fork()
            rep = await sim.kcall("supervisor", CtlDumpsys(h=_H, reason="frames not back: x"))
            assert isinstance(rep, CtlDumpsysReply), rep
            return rep.path

    return Path(run_simulation(main(), limit_s=600)).read_text()


def _paths(v: Any, at: tuple[Any, ...] = (), depth: int = 0) -> list[tuple[Any, ...]]:
    """Every place in the JSON document (bounded: lists by their first few items)."""
    out = [at]
    if depth > 9:
        return out
    if isinstance(v, dict):
        for k in list(v)[:40]:
            out += _paths(v[k], (*at, k), depth + 1)
    elif isinstance(v, list):
        for i in range(min(len(v), 6)):
            out += _paths(v[i], (*at, i), depth + 1)
    return out


WEIRD = st.sampled_from(
    [None, True, -1, 0, 1 << 70, 1e308, "x", "", [], {}, [1], {"b64": "!!"}, {"b64": 3}]
)


def _damage(doc: Any, path: tuple[Any, ...], how: str, weird: Any) -> Any:
    if not path:
        return weird
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    k = path[-1]
    if how == "drop" and isinstance(parent, dict):
        del parent[k]
    elif how == "drop" and isinstance(parent, list):
        parent.pop(k)
    else:
        parent[k] = weird
    return doc


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_damaged_dump_is_refused_or_explained(
    dump_text: str, tmp_path: Path, data: st.DataObject
) -> None:
    base = json.loads(dump_text)
    paths = _paths(base)
    damaged = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        try:
            damaged = _damage(damaged, path, data.draw(st.sampled_from(["set", "drop"])),
                              data.draw(WEIRD))  # fmt: skip
        except (KeyError, IndexError, TypeError):
            continue  # an earlier damage removed that place
    f = tmp_path / "d.json"
    f.write_text(json.dumps(damaged))
    try:
        dump = read_dump(f)
    except DumpError:
        return  # refused, with a reason
    merge(dump)
    ex = explain(dump, str(f))
    json.dumps(ex.to_json())
    ex.html("t")
    try:
        extract(dump)
        profile_for(dump, tmp_path / "p")
    except DumpError:
        pass
