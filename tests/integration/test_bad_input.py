"""Bad input on every user endpoint: an error reply (or a drop), nothing changed, machine up.

Also: the wire is plain msgpack (a client with no project code works), and a
peer of another major protocol version is refused at hello.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machine.client import Machine
from machine.params import PAGE_SIZE
from machine.proto import REQUESTS, Request, Scope, tag_of
from tests.conftest import PY, RealMachine

pytestmark = pytest.mark.integration
ROLES = ("supervisor", "mmu", "uvm", "pdaemon", "net")


class RawClient:
    """A bare DEALER per user endpoint that sends arbitrary bytes."""

    def __init__(self, rm: RealMachine, session: int) -> None:
        self.ctx = zmq.Context()
        self.session = session
        self.socks: dict[str, zmq.Socket[bytes]] = {}
        eps = {"supervisor": rm.endpoint}
        d = self.request_to(rm.endpoint, "ctl.directory")
        eps |= {r: v["user"] for r, v in d["roles"].items()}
        for role, ep in eps.items():
            s = self.ctx.socket(zmq.DEALER)
            s.connect(ep)
            self.socks[role] = s
        self.ids = iter(range(1, 1 << 30))

    def request_to(self, ep: str, tag: str) -> Any:
        s = self.ctx.socket(zmq.DEALER)
        s.connect(ep)
        s.send(
            msgpack.packb(
                {"t": tag, "h": {"msg_id": 1, "sender": "raw", "incarnation": self.session}}
            )
        )
        assert s.poll(10_000)
        out = msgpack.unpackb(s.recv())
        s.close(linger=0)
        return out

    def header(self, **kw: Any) -> dict[str, Any]:
        return {"msg_id": next(self.ids), "sender": "fuzz", "incarnation": self.session, **kw}

    def send(self, role: str, payload: bytes, timeout_s: float = 5.0) -> dict[str, Any] | None:
        s = self.socks[role]
        s.send(payload)
        if not s.poll(int(timeout_s * 1000)):
            return None
        rep = msgpack.unpackb(s.recv())
        assert isinstance(rep, dict)
        return rep

    def msg(self, role: str, obj: Any) -> dict[str, Any] | None:
        return self.send(role, msgpack.packb(obj))

    def close(self) -> None:
        for s in self.socks.values():
            s.close(linger=0)
        self.ctx.term()


@pytest.fixture
def raw(real_machine: RealMachine) -> Iterator[RawClient]:
    c = RawClient(real_machine, session=424242)
    yield c
    c.close()


def _example(cls: type[Request], **over: Any) -> dict[str, Any]:
    """A well-typed msgpack map for any request class (values are plausible, not meaningful)."""
    out: dict[str, Any] = {"t": tag_of(cls)}
    for f in msgspec.structs.fields(cls):
        if f.name == "h":
            continue
        t = getattr(f.type, "__origin__", f.type)
        name = getattr(t, "__name__", str(t))
        value = {
            "int": 4096,
            "bytes": b"x",
            "str": "x",
            "bool": False,
            "list": [],
            "dict": {},
            "tuple": [1, 0],
        }.get(name, 1)
        out[f.name] = 1 if f.name in ("prot", "access", "flags") else value
    out.update(over)
    return out


async def _snapshot(rm: RealMachine) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    async with Machine.attach(rm.endpoint, keepalive=False) as m:
        st = await m.stats()
    uvm = {k: v for k, v in st["roles"]["uvm"]["counters"].items() if k != "sessions"}
    mmu = st["roles"]["mmu"]["counters"]
    return st["frames"], uvm, mmu


def _assert_error(rep: dict[str, Any] | None, *errnos: str) -> None:
    assert rep is not None, "no reply"
    assert rep["status"] == "error", rep
    if errnos:
        assert rep["errno"] in errnos, rep


async def test_every_kind_of_bad_input_is_refused_and_changes_nothing(
    real_machine: RealMachine, raw: RawClient
) -> None:
    async with Machine.attach(real_machine.endpoint) as victim:
        p = await victim.spawn()
        va = await p.mmap(4 * PAGE_SIZE)
        await p.store(va, b"victim data")
        before = await _snapshot(real_machine)
        h = raw.header
        for role in ROLES:
            # bytes that are not msgpack, or msgpack of the wrong shape
            for junk in (b"", b"\xc1", b"\xff" * 7, b"\x92\x01"):
                _assert_error(raw.send(role, junk), "EBADMSG")
            for obj in (
                1,
                "ctl.ping",
                [1, 2],
                {},
                {"t": "ctl.ping"},
                {"h": h()},
                {"t": 5, "h": h()},
                {"t": "ctl.ping", "h": "nope"},
            ):
                _assert_error(raw.msg(role, obj), "EBADMSG", "EINVAL")
            # unknown tags, replies and events sent as requests
            for tag in ("nosuch.verb", "uvm.fault.reply", "ctl.panic", "pmap", ""):
                _assert_error(raw.msg(role, {"t": tag, "h": h()}), "EBADMSG")
            # every kernel message on a user endpoint
            for cls in REQUESTS:
                if cls.scope is Scope.KERNEL:
                    _assert_error(raw.msg(role, {**_example(cls), "h": h()}), "EPERM")
        # wrong types, huge and negative numbers, on the user messages
        bad_fields: list[tuple[str, dict[str, Any]]] = [
            ("mmu", {"t": "mmu.load", "asid": p.asid, "va": va, "n": -1}),
            ("mmu", {"t": "mmu.load", "asid": p.asid, "va": va, "n": 1 << 40}),
            ("mmu", {"t": "mmu.load", "asid": p.asid, "va": -4096, "n": 1}),
            ("mmu", {"t": "mmu.load", "asid": p.asid, "va": (1 << 64) - 1, "n": 1}),
            ("mmu", {"t": "mmu.load", "asid": "one", "va": va, "n": 1}),
            ("mmu", {"t": "mmu.store", "asid": p.asid, "va": va, "data": "text, not bytes"}),
            ("mmu", {"t": "mmu.store", "asid": p.asid, "va": va, "data": b""}),
            ("mmu", {"t": "mmu.store", "asid": p.asid, "va": va}),
            ("uvm", {"t": "uvm.mmap", "asid": p.asid, "length": -5, "prot": 3}),
            ("uvm", {"t": "uvm.mmap", "asid": p.asid, "length": 1 << 62, "prot": 3}),
            ("uvm", {"t": "uvm.mmap", "asid": p.asid, "length": 4096, "prot": 99}),
            ("uvm", {"t": "uvm.munmap", "asid": p.asid, "va": va, "length": 0}),
            ("uvm", {"t": "uvm.fault", "asid": p.asid, "va": va, "access": -1}),
            ("uvm", {"t": "uvm.fault", "asid": 1 << 40, "va": va, "access": 1}),
            ("uvm", {"t": "uvm.exit", "asid": None}),
            ("uvm", {"t": "uvm.spawn", "extra": [1, 2, 3]} | {"h": {"msg_id": "x"}}),
        ]
        for role, obj in bad_fields:
            _assert_error(raw.msg(role, {"h": h(), **obj}), "EINVAL", "EBADMSG")
        # well-formed requests naming another client's address space
        for role, obj in (
            ("mmu", {"t": "mmu.load", "asid": p.asid, "va": va, "n": 11}),
            ("mmu", {"t": "mmu.store", "asid": p.asid, "va": va, "data": b"overwritten"}),
            ("uvm", {"t": "uvm.munmap", "asid": p.asid, "va": va, "length": 4096}),
            ("uvm", {"t": "uvm.exit", "asid": p.asid}),
            ("uvm", {"t": "uvm.fault", "asid": p.asid, "va": va + 8192, "access": 2}),
        ):
            _assert_error(raw.msg(role, {"h": h(), **obj}), "EPERM")
        # another major protocol version
        _assert_error(raw.msg("uvm", {"t": "ctl.hello", "h": h(proto=[2, 0])}), "EPROTO")
        _assert_error(
            raw.msg(
                "mmu", {"t": "mmu.load", "h": h(proto=[9, 9]), "asid": p.asid, "va": va, "n": 1}
            ),
            "EPROTO",
        )
        after = await _snapshot(real_machine)
        assert after == before
        assert await p.load(va, 11) == b"victim data"
    async with Machine.attach(real_machine.endpoint) as m:
        q = await m.spawn()
        vb = await q.mmap(PAGE_SIZE)
        await q.store(vb, b"still serving")
        assert await q.load(vb, 13) == b"still serving"


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    payload=st.one_of(
        st.binary(max_size=256),
        st.builds(
            msgpack.packb,
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers(-(2**63), 2**64 - 1)
                | st.binary(max_size=16)
                | st.text(max_size=16),
                lambda kids: (
                    st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=8), kids, max_size=4)
                ),
                max_leaves=12,
            ),
        ),
        st.builds(
            lambda tag, extra: msgpack.packb(
                {"t": tag, "h": {"msg_id": 5, "sender": "f", "incarnation": 3}, **extra}
            ),
            st.sampled_from([tag_of(c) for c in REQUESTS]),
            st.dictionaries(
                st.sampled_from(
                    ["asid", "va", "n", "length", "prot", "data", "access", "pfns", "message"]
                ),
                st.one_of(
                    st.integers(-(2**63), 2**64 - 1),
                    st.binary(max_size=8),
                    st.text(max_size=4),
                    st.none(),
                ),
                max_size=4,
            ),
        ),
    )
)
def test_fuzzed_payloads_get_error_replies(raw: RawClient, payload: bytes) -> None:
    for role in ("mmu", "uvm"):
        rep = raw.send(role, payload)
        assert rep is not None, "every request gets a reply"
        if rep["status"] == "ok":
            # only a well-formed request may succeed, and only harmless ones can be generated
            assert rep["t"] in (
                "ctl.hello.reply",
                "ctl.ping.reply",
                "ctl.stats.reply",
                "uvm.spawn.reply",
                "uvm.detach.reply",
            ), rep


async def test_the_machine_survives_fuzzing(real_machine: RealMachine, raw: RawClient) -> None:
    raw.msg("uvm", {"t": "uvm.detach", "h": raw.header()})  # drop what fuzzing spawned
    async with Machine.attach(real_machine.endpoint) as m:
        st = await m.stats()
        assert all(r["alive"] for r in st["roles"].values())
        assert st["state"] == "running"


def test_a_plain_msgpack_client_speaks_the_protocol(real_machine: RealMachine) -> None:
    script = Path(__file__).with_name("plain_msgpack_client.py")
    r = subprocess.run(
        [PY, str(script), real_machine.endpoint],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "plain msgpack client: ok" in r.stdout
