"""Bad input on every user endpoint: an error reply (or a drop), nothing changed, machine up.

Also: the wire is plain msgpack (a client with no project code works), and a
peer of another major protocol version is refused at hello.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import msgspec.inspect as mi
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machine.client import Machine, RequestError
from machine.ipc.auth import TAG_LEN, sign
from machine.params import PAGE_SIZE
from machine.proto import REQUESTS, Request, Scope, tag_of
from tests.conftest import PY, RealMachine, boot_real, pid_alive, status_json

pytestmark = pytest.mark.integration
ROLES = ("supervisor", "mmu", "uvm", "pdaemon", "net")


class RawClient:
    """A bare DEALER per user endpoint that sends arbitrary bytes.

    It attaches like any client (uvm.attach: a session and its key) and signs what
    it sends, so bad input reaches the checks behind the signature; `signed=False`
    sends the bytes as they are, `key=` signs with another key (a forger's).
    """

    def __init__(self, rm: RealMachine) -> None:
        self.ctx = zmq.Context()
        self.socks: dict[str, zmq.Socket[bytes]] = {}
        self.ids = iter(range(1, 1 << 30))
        eps = {"supervisor": rm.endpoint}
        self.session, self.key = 0, b""
        d = self.request_to(rm.endpoint, "ctl.directory")
        eps |= {r: v["user"] for r, v in d["roles"].items()}
        for role, ep in eps.items():
            s = self.ctx.socket(zmq.DEALER)
            s.connect(ep)
            self.socks[role] = s
        att = self.msg("uvm", {"t": "uvm.attach", "h": self.header()}, signed=False)
        assert att is not None
        assert att["status"] == "ok", att
        self.session, self.key = att["session"], att["key"]

    def request_to(self, ep: str, tag: str) -> Any:
        s = self.ctx.socket(zmq.DEALER)
        s.connect(ep)
        s.send(msgpack.packb({"t": tag, "h": {"msg_id": 1, "sender": "raw", "incarnation": 0}}))
        assert s.poll(10_000)
        out = msgpack.unpackb(s.recv())
        s.close(linger=0)
        return out

    def header(self, **kw: Any) -> dict[str, Any]:
        return {"msg_id": next(self.ids), "sender": "fuzz", "incarnation": self.session, **kw}

    def send(
        self,
        role: str,
        payload: bytes,
        timeout_s: float = 5.0,
        signed: bool = True,
        key: bytes | None = None,
    ) -> dict[str, Any] | None:
        s = self.socks[role]
        if signed and (key or self.key):
            payload += sign(key or self.key, payload)
        s.send(payload)
        if not s.poll(int(timeout_s * 1000)):
            return None
        rep = msgpack.unpackb(s.recv())
        assert isinstance(rep, dict)
        return rep

    def msg(self, role: str, obj: Any, **kw: Any) -> dict[str, Any] | None:
        return self.send(role, msgpack.packb(obj), **kw)

    def close(self) -> None:
        for s in self.socks.values():
            s.close(linger=0)
        self.ctx.term()


@pytest.fixture
def raw(real_machine: RealMachine) -> Iterator[RawClient]:
    c = RawClient(real_machine)
    yield c
    c.close()


def _VICTIM_REQUESTS(asid: int, va: int) -> list[tuple[str, dict[str, Any]]]:  # noqa: N802
    """Requests that would read, change or end the victim's process."""
    return [
        ("mmu", {"t": "mmu.load", "asid": asid, "va": va, "n": 11}),
        ("mmu", {"t": "mmu.store", "asid": asid, "va": va, "data": b"overwritten"}),
        ("uvm", {"t": "uvm.mmap", "asid": asid, "length": 4096, "prot": 3}),
        ("uvm", {"t": "uvm.munmap", "asid": asid, "va": va, "length": 4096}),
        ("uvm", {"t": "uvm.fault", "asid": asid, "va": va + 8192, "access": 2}),
        ("uvm", {"t": "uvm.fork", "asid": asid}),
        ("uvm", {"t": "uvm.exit", "asid": asid}),
        ("net", {"t": "net.socket", "asid": asid}),
    ]


def _value(t: Any, name: str) -> Any:
    """A plausible value of msgspec type info `t` (bounds and lengths respected)."""
    if name in ("prot", "access", "flags"):
        return 1
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else 0
        hi = t.le if t.le is not None else 1 << 40
        return max(lo, min(4096, hi))
    if isinstance(t, (mi.ListType, mi.SetType)):
        return [_value(t.item_type, "") for _ in range(t.min_length or 0)]
    if isinstance(t, mi.TupleType):
        return [_value(it, "") for it in t.item_types]
    if isinstance(t, mi.StructType):
        return {f.encode_name: _value(f.type, f.name) for f in t.fields if f.required}
    if isinstance(t, mi.UnionType):
        return _value(t.types[0], name)
    return {
        mi.BytesType: b"x",
        mi.StrType: "x",
        mi.BoolType: False,
        mi.DictType: {},
    }.get(type(t), 1)


def _example(cls: type[Request], **over: Any) -> dict[str, Any]:
    """A well-typed msgpack map for any request class (values are plausible, not meaningful)."""
    out: dict[str, Any] = {"t": tag_of(cls)}
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    for f in info.fields:
        if f.name != "h":
            out[f.name] = _value(f.type, f.name)
    out.update(over)
    return out


async def _snapshot(rm: RealMachine) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Frames and the uvm and mmu counters: the state bad input must not change (the
    memory watchdog's mem_* gauges move on their own, as do uvm's session counts)."""
    async with Machine.attach(rm.endpoint, keepalive=False) as m:
        st = await m.stats()

    def state(role: str, skip: tuple[str, ...] = ()) -> dict[str, int]:
        counters: dict[str, int] = st["roles"][role]["counters"]
        return {k: v for k, v in counters.items() if k not in skip and not k.startswith("mem_")}

    return st["frames"], state("uvm", ("sessions", "attaches")), state("mmu")


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
        # well-formed requests naming another client's address space: as if it did not exist
        for role, obj in _VICTIM_REQUESTS(p.asid, va):
            _assert_error(raw.msg(role, {"h": h(), **obj}), "ESRCH")
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
            lambda tag, extra: {"t": tag, **extra},
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
def test_fuzzed_payloads_get_error_replies(raw: RawClient, payload: bytes | dict[str, Any]) -> None:
    for role, signed in (("mmu", True), ("uvm", True), ("uvm", False)):
        # A generated request map goes out as the fuzzer's own session, signed: it
        # reaches the handlers; unsigned, it must be refused before them.
        data = (
            payload if isinstance(payload, bytes) else msgpack.packb({**payload, "h": raw.header()})
        )
        rep = raw.send(role, data, signed=signed)
        assert rep is not None, "every request gets a reply"
        if rep["status"] == "ok":
            # only a well-formed request may succeed, and only harmless ones can be generated
            public = ("ctl.hello.reply", "ctl.ping.reply", "ctl.stats.reply", "uvm.attach.reply")
            assert rep["t"] in (*public, "uvm.spawn.reply", "uvm.detach.reply"), rep
            assert signed or rep["t"] in public, rep


async def test_forged_sessions_get_no_access_and_change_nothing(
    real_machine: RealMachine, raw: RawClient
) -> None:
    """Issue 9, defect 1: another client that knows the victim's session id (it is on
    the wire and in events) cannot act as the victim: not unsigned, not with its own
    key or a guessed one, not by replaying or re-using the victim's own frames."""
    async with Machine.attach(real_machine.endpoint) as victim:
        p = await victim.spawn()
        va = await p.mmap(4 * PAGE_SIZE)
        captured: list[tuple[str, bytes]] = []  # the victim's frames, as a sniffer saw them
        for role in ("mmu", "uvm"):
            conn: Any = victim._peers[role]._conn
            real_send = conn.send
            conn.send = lambda b, _r=role, _s=real_send: (captured.append((_r, b)), _s(b))[1]
        await p.store(va, b"victim data")
        await p.mprotect(va + 3 * PAGE_SIZE, PAGE_SIZE, "r")
        assert {r for r, _ in captured} == {"mmu", "uvm"}
        before = await _snapshot(real_machine)
        sid = victim.session
        forgers: list[dict[str, Any]] = [
            {"signed": False},  # the id alone
            {"key": raw.key},  # the forger's own key
            {"key": os.urandom(32)},  # a guessed key
        ]
        requests = [*_VICTIM_REQUESTS(p.asid, va), ("uvm", {"t": "uvm.detach"})]
        for role, obj in requests:
            for how in forgers:
                h = raw.header(incarnation=sid)
                _assert_error(raw.msg(role, {**obj, "h": h}, **how), "EPERM")
            # a random tag of the right length
            body = msgpack.packb({**obj, "h": raw.header(incarnation=sid)})
            _assert_error(raw.send(role, body + os.urandom(TAG_LEN), signed=False), "EPERM")
            # a session id nobody has, signed with the forger's key
            h = raw.header(incarnation=int.from_bytes(os.urandom(7), "big") | 1)
            _assert_error(raw.msg(role, {**obj, "h": h}), "EPERM")
        for role, frame in captured:
            # replayed as it was, and to the other role
            _assert_error(raw.send(role, frame, signed=False), "EPERM")
            # its tag on a new msg_id (the tag covers the header)
            m = msgpack.unpackb(frame[:-TAG_LEN])
            m["h"]["msg_id"] += 1_000_000
            _assert_error(
                raw.send(role, msgpack.packb(m) + frame[-TAG_LEN:], signed=False), "EPERM"
            )
        after = await _snapshot(real_machine)
        assert after == before
        assert await p.load(va, 11) == b"victim data"
        q = await victim.spawn()  # the victim's session is still its own and alive
        assert q.asid != p.asid


def test_a_client_matching_on_re_gets_its_error_replies(raw: RawClient) -> None:
    """Issue 21: a signed request with an unknown tag was answered EBADMSG with re=0, so a
    client matching replies on `re` waited out its timeout. Every refusal whose header
    reads is answered to its msg_id, at every role, over real sockets."""
    for role in ROLES:
        for obj, how, errno in [
            ({"t": "nosuch.verb"}, {}, "EBADMSG"),  # the case: signed, unknown tag
            ({"t": "nosuch.verb"}, {"signed": False}, "EBADMSG"),
            ({"t": "uvm.fault.reply"}, {}, "EBADMSG"),
            ({"t": "mmu.load", "asid": "one", "va": 0, "n": 1}, {}, "EINVAL"),
            ({"t": "pd.wakeup"}, {}, "EPERM"),
            ({"t": "ctl.ping"}, {"key": os.urandom(32)}, "EPERM"),
        ]:
            h = raw.header()
            rep = raw.msg(role, {**obj, "h": h}, **how)
            _assert_error(rep, errno)
            assert rep is not None
            assert rep["h"]["re"] == h["msg_id"], (role, obj, rep)
        # Only bytes whose header cannot be read are answered with re 0.
        rep = raw.send(role, b"\xc1")
        _assert_error(rep, "EBADMSG")
        assert rep is not None
        assert rep["h"]["re"] == 0


def test_a_tag_off_in_its_last_byte_is_refused_and_marks_nothing(raw: RawClient) -> None:
    """A forged tag that differs from the valid one only in its last byte (or a middle
    one) is EPERM at every role, and the msg_id it carried is still unused."""
    for role in ROLES:
        for i in (TAG_LEN - 1, TAG_LEN // 2):
            h = raw.header()
            body = msgpack.packb({"t": "ctl.ping", "h": h})
            tag = sign(raw.key, body)
            forged = tag[:i] + bytes([tag[i] ^ 1]) + tag[i + 1 :]
            rep = raw.send(role, body + forged, signed=False)
            _assert_error(rep, "EPERM")
            assert rep is not None
            assert rep["h"]["re"] == h["msg_id"]
            ok = raw.send(role, body + tag, signed=False)  # the genuine frame, same msg_id
            assert ok is not None
            assert (ok["status"], ok["h"]["re"]) == ("ok", h["msg_id"]), ok


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


async def test_bad_file_names_get_errnos_and_links_are_not_followed(
    real_machine: RealMachine, tmp_path: Path
) -> None:
    """uvm.open on the real processes: every bad name an errno, no panic, nothing
    outside disk/ read, written or created (issue 9, defects 2 and 5)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"host secret")
    bad = real_machine.state / "disk" / "badnames"
    bad.mkdir()
    (bad / "dir").mkdir()
    (bad / "f").write_bytes(b"plain")
    os.symlink(outside / "secret.txt", bad / "link_file")
    os.symlink(outside, bad / "link_dir")
    os.symlink(outside / "new.txt", bad / "dangling")
    os.mkfifo(bad / "fifo")
    cases: list[tuple[str, bool, tuple[str, ...]]] = [
        (".", True, ("EISDIR",)),
        ("", True, ("EINVAL",)),  # refused by the schema
        ("badnames/dir", True, ("EISDIR",)),
        ("badnames/dir/", True, ("EISDIR",)),
        ("badnames/f/x", True, ("ENOTDIR",)),
        ("../x", True, ("EINVAL",)),
        ("/etc/passwd", False, ("EINVAL",)),
        ("a\0b", True, ("EINVAL",)),
        ("x" * 300, True, ("ENAMETOOLONG",)),
        ("d/" * 1000, True, ("ENAMETOOLONG",)),
        ("badnames/link_file", False, ("ELOOP",)),
        ("badnames/link_file", True, ("ELOOP",)),
        ("badnames/link_dir/x", True, ("ELOOP",)),
        ("badnames/link_dir/secret.txt", False, ("ELOOP",)),
        ("badnames/dangling", True, ("ELOOP",)),
        ("badnames/fifo", False, ("EACCES",)),
        ("x" * 5000, True, ("EINVAL", "ENAMETOOLONG")),  # over the schema's bound
    ]
    listing = sorted(str(p.relative_to(real_machine.state)) for p in real_machine.state.rglob("*"))
    async with Machine.attach(real_machine.endpoint) as m:
        for name, create, errnos in cases:
            with pytest.raises(RequestError) as ei:
                await m.open(name, create=create, size=PAGE_SIZE if create else None)
            assert ei.value.errno in errnos, (name[:40], ei.value.detail)
        st = await m.stats()
        assert st["state"] == "running"
        assert all(r["alive"] for r in st["roles"].values())
        f = await m.open("badnames/ok.bin", create=True, size=PAGE_SIZE)
        p = await m.spawn()
        va = await p.mmap(PAGE_SIZE, "rw", file=f, shared=True)
        await p.store(va, b"still serving")
        await p.msync(va, PAGE_SIZE)
        await p.exit()
        await f.close()
    assert (bad / "ok.bin").read_bytes()[:13] == b"still serving"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"host secret"
    assert sorted(
        str(p.relative_to(real_machine.state)) for p in real_machine.state.rglob("*")
    ) == sorted([*listing, "disk/badnames/ok.bin"])
    shutil.rmtree(bad)  # the shared machine's disk/ without the planted fifo and links


# -- hostile clients of the IPC layer (issue 9 red team: /tmp/rt a_*.py) ------------------


class Pipelined:
    """One DEALER to one user endpoint that sends signed frames back to back."""

    def __init__(self, rm: RealMachine, role: str, ctx: zmq.Context[Any], **opts: int) -> None:
        self.rm, self.ids = rm, itertools.count(1)
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        for opt, value in opts.items():
            self.sock.setsockopt(getattr(zmq, opt), value)
        self.sock.connect(rm.endpoint if role == "supervisor" else rm.info["roles"][role]["user"])
        self.sid, self.key = 0, b""

    def frame(self, tag: str, **fields: Any) -> bytes:
        h = {"msg_id": next(self.ids), "sender": "burst", "incarnation": self.sid, "proto": [1, 3]}
        body: bytes = msgpack.packb({"t": tag, "h": h, **fields})
        return body + sign(self.key, body) if self.key else body

    def call(self, tag: str, timeout_s: float = 10.0, **fields: Any) -> dict[str, Any]:
        self.sock.send(self.frame(tag, **fields))
        assert self.sock.poll(int(timeout_s * 1000)), f"no reply to {tag}"
        rep: dict[str, Any] = msgpack.unpackb(self.sock.recv())
        return rep

    def attach(self) -> None:
        rep = self.call("uvm.attach")
        self.sid, self.key = rep["session"], rep["key"]

    def join(self, other: Pipelined) -> Pipelined:
        """Send as other's session (its key, and its msg_ids: the replay window is per role)."""
        self.sid, self.key, self.ids = other.sid, other.key, other.ids
        return self

    def __enter__(self) -> Pipelined:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def wait_for(pred: Any, timeout_s: float) -> bool:
    """Poll pred() until it holds or the deadline passes (a sync test's poll_for)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _machine_is_whole(rm: RealMachine) -> None:
    """Not panicked, every role alive and answering its heartbeats, and it still serves."""
    st = status_json(rm.endpoint)
    assert st["state"] == "running", st.get("panic")
    assert all(r["alive"] for r in st["roles"].values()), st["roles"]
    assert all(pid_alive(pid) for pid in rm.role_pids().values())


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RealMachine, Any]]:
    """A machine of its own (a regression panics it), a session, and 1 MiB of faulted memory."""
    rm = boot_real(tmp_path_factory.mktemp("hostile"), "--ram", "16M", "--lease", "300")
    ctx: zmq.Context[Any] = zmq.Context()
    uvm = Pipelined(rm, "uvm", ctx)
    uvm.attach()
    asid = uvm.call("uvm.spawn")["asid"]
    va = uvm.call("uvm.mmap", asid=asid, length=1 << 20, prot=3)["va"]
    for p in range(256):
        assert uvm.call("uvm.fault", asid=asid, va=va + p * PAGE_SIZE, access=1)["status"] == "ok"
    try:
        yield rm, (ctx, uvm, asid, va)
    finally:
        ctx.destroy(linger=0)
        assert rm.stop() == 0


def _mmu_loads(rm: RealMachine, ctx: zmq.Context[Any]) -> int:
    with Pipelined(rm, "mmu", ctx) as c:
        return int(c.call("ctl.stats")["counters"]["loads"])


def test_a_client_that_never_reads_its_replies_holds_little_of_the_roles_memory(
    hostile: tuple[RealMachine, Any],
) -> None:
    """a_replies: 300 loads of 1 MiB from a DEALER that never reads (RCVHWM 1, a 4 KiB
    receive buffer) held ~300 MiB in the mmu (SNDHWM 100 000). A user ROUTER now keeps
    USER_HWM replies per connection and drops the rest (that client's calls time out)."""
    rm, (ctx, uvm, asid, va) = hostile
    mmu_pid = rm.role_pids()["mmu"]
    with Pipelined(rm, "mmu", ctx, RCVHWM=1, RCVBUF=4096) as slow:
        slow.join(uvm)
        loads0, rss0 = _mmu_loads(rm, ctx), _rss_mib(mmu_pid)
        for _ in range(300):
            slow.sock.send(slow.frame("mmu.load", asid=asid, va=va, n=1 << 20))
        assert wait_for(lambda: _mmu_loads(rm, ctx) >= loads0 + 300, 60), "mmu did not serve"
        grown = _rss_mib(mmu_pid) - rss0
        assert grown < 64, f"the mmu holds {grown:.0f} MiB of unread replies"
        with Pipelined(rm, "mmu", ctx) as other:
            assert other.call("ctl.ping")["status"] == "ok"
    _machine_is_whole(rm)


def test_a_burst_from_one_client_does_not_starve_the_heartbeat(
    hostile: tuple[RealMachine, Any],
) -> None:
    """a_block2: thousands of 1 MiB loads sent back to back were served in one go of the
    mmu's reader, so the supervisor's ping on the kernel endpoint waited behind all of
    them: "role mmu missed 4 heartbeats", machine panic. Sized to keep the mmu busy for
    ~8 s (twice HEARTBEAT_LIVENESS + 1 intervals), between 3000 and 8000 loads."""
    rm, (ctx, uvm, asid, va) = hostile
    c = Pipelined(rm, "mmu", ctx, RCVHWM=0)
    c.join(uvm)

    def burst(n: int) -> float:
        """n loads back to back; => seconds until the mmu has served them all. Replies
        are counted, not decoded: with 3000 MiB in flight a client that lags loses
        some (USER_HWM), which is not what this test is about."""
        loads0 = _mmu_loads(rm, ctx)
        frames = [c.frame("mmu.load", asid=asid, va=va, n=1 << 20) for _ in range(n)]
        t0 = time.monotonic()
        for f in frames:
            c.sock.send(f)
        deadline = t0 + 120
        while time.monotonic() < deadline:
            if c.sock.poll(250):
                c.sock.recv(copy=False)
            elif _mmu_loads(rm, ctx) >= loads0 + n:
                return time.monotonic() - t0
        raise AssertionError("the burst was not served within 120 s")

    with c:
        per_load = burst(100) / 100
        n = max(3000, min(8000, int(10.0 / per_load)))
        burst(n)
        _machine_is_whole(rm)
        assert c.call("mmu.load", asid=asid, va=va, n=16)["status"] == "ok"


def test_a_message_of_many_parts_is_dropped_and_freed(hostile: tuple[RealMachine, Any]) -> None:
    """a_multipart2: ZMQ_MAXMSGSIZE bounds each part, and the ROUTER used to serve the
    last part of any message. Now only [identity, payload] is served; a longer message
    is read part by part without a copy and dropped. (libzmq still buffers a whole
    multipart message before the first part can be read: its peak is the sender's
    own message, freed as soon as the role reads it.)"""
    rm, (ctx, _uvm, _asid, _va) = hostile
    mmu_pid = rm.role_pids()["mmu"]
    rss0 = _rss_mib(mmu_pid)
    with Pipelined(rm, "mmu", ctx) as c:
        c.sock.send_multipart([b"\0" * ((2 << 20) - 64)] * 20 + [c.frame("ctl.ping")])
        assert not c.sock.poll(1500), "a multipart message was served"
        assert wait_for(lambda: _rss_mib(mmu_pid) - rss0 < 16, 20), "the parts were not freed"
        assert c.call("ctl.ping")["status"] == "ok"  # the same connection serves on
    _machine_is_whole(rm)


def test_a_huge_header_sender_is_refused_before_it_reaches_the_trace(
    real_machine: RealMachine,
) -> None:
    """a_trace: unsigned pings whose h.sender was 2 MiB went whole into uvm's trace ring
    (256 lines): +250 MiB. Header.sender is at most 64 characters now (EINVAL)."""
    uvm_pid = real_machine.role_pids()["uvm"]
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        c = Pipelined(real_machine, "uvm", ctx)
        rss0 = _rss_mib(uvm_pid)
        for i in range(20):
            h = {"msg_id": i + 1, "sender": "A" * (1 << 20), "incarnation": 0, "proto": [1, 3]}
            c.sock.send(msgpack.packb({"t": "ctl.ping", "h": h}))
            assert c.sock.poll(10_000)
            rep = msgpack.unpackb(c.sock.recv())
            assert (rep["status"], rep["errno"], rep["h"]["re"]) == ("error", "EINVAL", i + 1)
        assert _rss_mib(uvm_pid) - rss0 < 16
        assert c.call("ctl.ping")["status"] == "ok"
    finally:
        ctx.destroy(linger=0)


@pytest.mark.parametrize("role", ["mmu", "uvm", "net", "supervisor"])
def test_a_negative_incarnation_gets_a_reply_and_the_connection_serves_on(
    real_machine: RealMachine, role: str
) -> None:
    """a_neg3: incarnation -1 with 16 bytes after it raised OverflowError in session_key;
    no reply, and later requests on that connection went unanswered."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        c = Pipelined(real_machine, role, ctx)
        h = {"msg_id": 5, "sender": "x", "incarnation": -1, "proto": [1, 3]}
        c.sock.send(msgpack.packb({"t": "ctl.stats", "h": h}) + bytes(TAG_LEN))
        assert c.sock.poll(5000), "no reply"
        rep = msgpack.unpackb(c.sock.recv())
        assert (rep["errno"], rep["h"]["re"]) == ("EINVAL", 5)
        for _ in range(3):
            assert c.call("ctl.ping", timeout_s=5)["status"] == "ok"
    finally:
        ctx.destroy(linger=0)
