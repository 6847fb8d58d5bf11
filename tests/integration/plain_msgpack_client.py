"""A uvm-machine client written from docs/client-guide.md and docs/protocol.md alone.

No project code: pyzmq, msgpack, hmac/hashlib and the standard library, so it shows what a
client in any language needs, and that the reference is enough to write one (issue 21).
Run as a script against a machine's attach endpoint it exercises the protocol end to end
and prints "plain msgpack client: ok": attach, signing, the VM calls (mmap, store/load,
mprotect, fork, minherit, madvise, mincore, mlock/munlock, getrlimit, open, file mappings,
msync, ftruncate, munmap, exit), SIGSEGV and SIGBUS (the process lives on), loaned and
copied sends checked on the session's own wire, refusals (unsigned, wrong key, altered,
replayed, stale msg_id, another session's objects, an unknown tag, another major version, a
kernel request, an ended session) and every frame back.

Invariants: one DEALER socket per role, one frame per request and per reply; one msg_id
counter for the whole session (the replay window is per session per role, so one
increasing counter passes every role's); every reply is matched on its header's `re`.
tests/unit/proto/test_client_guide.py checks that `request`, `sign` and `decode` give the
guide's example frames byte for byte.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

PROTO = [1, 7]  # [major, minor]: a msgpack array
TAG_LEN = 16
TIMEOUT_S = 30.0  # the guide: allow at least 10 s per request (faults wait for memory)
PAGE = 4096  # also in ctl.directory
READ, WRITE = 1, 2  # VM_PROT
O_RDWR, O_CREAT, O_TRUNC, MS_SYNC = 2, 0x200, 0x400, 4  # NetBSD's numbers
MADV_DONTNEED, MADV_FREE, MAP_INHERIT_ZERO = 4, 6, 4
RLIMIT_MEMLOCK = 6


def header(msg_id: int, incarnation: int, sender: str = "client") -> dict[str, Any]:
    """The header, every field written (re 0, sent_ns 0)."""
    return {
        "msg_id": msg_id,
        "sender": sender,
        "incarnation": incarnation,
        "re": 0,
        "proto": list(PROTO),
        "sent_ns": 0,
    }


def request(t: str, msg_id: int, incarnation: int, fields: dict[str, Any]) -> bytes:
    """A request's msgpack body: one map, `t`, `h`, then the fields beside them."""
    return msgpack.packb({"t": t, "h": header(msg_id, incarnation), **fields})


def sign(key: bytes, body: bytes) -> bytes:
    """The 16-byte tag that follows a session's request in the same frame."""
    return hmac.new(key, body, hashlib.sha256).digest()[:TAG_LEN]


def decode(frame: bytes) -> dict[str, Any]:
    """A reply (one frame, unsigned): errnos are names, `data` and `key` bytes."""
    msg = msgpack.unpackb(frame, raw=False)
    assert isinstance(msg, dict), msg
    return msg


class Refused(Exception):
    """An error reply: its errno name, detail and the whole reply."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply['errno']}: {reply['detail']}")
        self.errno: str = reply["errno"]
        self.reply = reply


def result(reply: dict[str, Any]) -> dict[str, Any]:
    """The reply if `ok`, else Refused."""
    if reply["status"] != "ok":
        raise Refused(reply)
    return reply


class Session:
    """A client session: the directory, one DEALER per role, the key, one msg_id counter."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], attach: str) -> None:
        self.ctx = ctx
        self.ids = itertools.count(1)
        self.session, self.key = 0, b""
        self.socks = {"supervisor": self._dealer(attach)}
        self.dir = self.call("supervisor", "ctl.directory")
        for role, ends in self.dir["roles"].items():
            self.socks[role] = self._dealer(ends["user"])

    def _dealer(self, endpoint: str) -> zmq.Socket[bytes]:
        s = self.ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(endpoint)
        return s

    def attach(self) -> Session:
        r = self.call("uvm", "uvm.attach")
        self.session, self.key = r["session"], r["key"]
        assert len(self.key) == 32, r
        assert r["lease_s"] > 0, r
        return self

    def frame(self, t: str, fields: dict[str, Any], msg_id: int, key: bytes | None) -> bytes:
        body = request(t, msg_id, self.session, fields)
        return body + sign(key, body) if key else body

    def send_raw(self, role: str, frame: bytes, re: int) -> dict[str, Any]:
        """Send one frame, wait for the reply whose `re` is `re` (others are dropped)."""
        sock = self.socks[role]
        sock.send(frame)
        deadline = time.monotonic() + TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000)):
                break
            reply = decode(sock.recv())
            if reply["h"]["re"] == re:
                return reply
        raise TimeoutError(f"no reply from {role} to msg_id {re}")

    def ask(self, role: str, t: str, **fields: Any) -> dict[str, Any]:
        """One request, signed once attached; the reply, ok or error."""
        msg_id = next(self.ids)
        key = self.key if self.session else None
        return self.send_raw(role, self.frame(t, fields, msg_id, key), msg_id)

    def call(self, role: str, t: str, **fields: Any) -> dict[str, Any]:
        return result(self.ask(role, t, **fields))

    def refused(self, role: str, t: str, **fields: Any) -> dict[str, Any]:
        reply = self.ask(role, t, **fields)
        assert reply["status"] == "error", reply
        return reply


def until(check: Any, what: str, timeout_s: float = TIMEOUT_S) -> Any:
    """Poll `check()` until it is truthy or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return got


def free_frames(s: Session) -> int:
    return int(s.call("supervisor", "ctl.status")["frames"]["free"])


def vm_calls(s: Session) -> int:
    """Memory, faults, fork, SIGSEGV and SIGBUS, files; returns the process's asid."""
    p = s.call("uvm", "uvm.spawn")["asid"]
    va = s.call("uvm", "uvm.mmap", asid=p, length=8 * PAGE, prot=READ | WRITE)["va"]
    assert s.call("mmu", "mmu.store", asid=p, va=va + 10, data=b"hello")["traps"] == 1
    assert s.call("mmu", "mmu.store", asid=p, va=va + 10, data=b"hello")["traps"] == 0
    assert s.call("mmu", "mmu.load", asid=p, va=va + 10, n=5)["data"] == b"hello"
    segv = s.refused("mmu", "mmu.load", asid=p, va=0x10, n=1)  # SIGSEGV; the process lives on
    assert (segv["errno"], segv["fault_va"], segv["fault_access"]) == ("EFAULT", 0x10, READ)
    s.call("uvm", "uvm.mprotect", asid=p, va=va + 7 * PAGE, length=PAGE, prot=READ)
    torn = s.refused("mmu", "mmu.store", asid=p, va=va + 7 * PAGE - 2, data=b"abcd")
    assert (torn["errno"], torn["fault_va"], torn["fault_access"]) == (
        "EFAULT",
        va + 7 * PAGE,
        WRITE,
    )
    assert s.call("mmu", "mmu.load", asid=p, va=va + 7 * PAGE - 2, n=4)["data"] == b"ab\0\0"
    s.call("uvm", "uvm.minherit", asid=p, va=va + 6 * PAGE, length=PAGE, inherit=MAP_INHERIT_ZERO)
    s.call("mmu", "mmu.store", asid=p, va=va + 6 * PAGE, data=b"parent")
    child = s.call("uvm", "uvm.fork", asid=p)["asid"]
    s.call("mmu", "mmu.store", asid=child, va=va + 10, data=b"HELLO")  # copy-on-write
    assert s.call("mmu", "mmu.load", asid=p, va=va + 10, n=5)["data"] == b"hello"
    assert s.call("mmu", "mmu.load", asid=child, va=va + 10, n=5)["data"] == b"HELLO"
    assert s.call("mmu", "mmu.load", asid=child, va=va + 6 * PAGE, n=6)["data"] == bytes(6)
    s.call("uvm", "uvm.exit", asid=child)
    s.call("uvm", "uvm.wire", asid=p, va=va + 1, length=10)  # rounded to the page
    s.call("uvm", "uvm.wire", asid=p, va=va, length=2 * PAGE)  # locks do not nest
    assert s.call("uvm", "uvm.mincore", asid=p, va=va, length=3 * PAGE)["vec"] == b"\1\1\0"
    s.call("uvm", "uvm.unwire", asid=p, va=va, length=2 * PAGE)  # one munlock unlocks
    s.call("uvm", "uvm.madvise", asid=p, va=va, length=PAGE, advice=MADV_DONTNEED)
    s.call("uvm", "uvm.madvise", asid=p, va=va + PAGE, length=PAGE, advice=MADV_FREE)
    assert s.call("uvm", "uvm.mincore", asid=p, va=va, length=2 * PAGE)["vec"] == b"\1\0"
    assert s.call("mmu", "mmu.load", asid=p, va=va + PAGE, n=4)["data"] == bytes(4)
    lim = s.call("uvm", "uvm.getrlimit", asid=p, resource=RLIMIT_MEMLOCK)
    assert 0 < lim["cur"] <= lim["max"], lim
    files(s, p)
    return int(p)


def files(s: Session, p: int) -> None:
    """A shared file mapping: msync reaches the host file, truncation gives SIGBUS."""
    name = "plain-client.bin"
    flags = O_RDWR | O_CREAT | O_TRUNC
    f = s.call("uvm", "uvm.open", name=name, flags=flags, size=2 * PAGE)["handle"]
    fva = s.call("uvm", "uvm.mmap", asid=p, length=2 * PAGE, prot=3, handle=f, shared=True)["va"]
    s.call("mmu", "mmu.store", asid=p, va=fva + PAGE - 6, data=b"0123456789")
    assert s.call("uvm", "uvm.msync", asid=p, va=fva, length=2 * PAGE, flags=MS_SYNC)["pages"] == 2
    host = Path(s.dir["state_dir"]) / "disk" / name  # when the machine runs on this host
    if host.exists():
        assert host.read_bytes()[PAGE - 6 : PAGE + 4] == b"0123456789"
    s.call("uvm", "uvm.ftruncate", handle=f, length=PAGE - 2)
    tail = s.call("mmu", "mmu.load", asid=p, va=fva + PAGE - 6, n=6)["data"]
    assert tail == b"0123\0\0", tail  # past the end: zeros, never written to the file
    bus = s.refused("mmu", "mmu.load", asid=p, va=fva + PAGE, n=1)  # beyond the end
    assert (bus["errno"], bus["fault_va"], bus["fault_access"]) == ("SIGBUS", fva + PAGE, READ)
    s.call("uvm", "uvm.ftruncate", handle=f, length=2 * PAGE)  # grows: zeros
    assert s.call("mmu", "mmu.load", asid=p, va=fva + PAGE, n=2)["data"] == b"\0\0"
    s.call("uvm", "uvm.munmap", asid=p, va=fva, length=2 * PAGE)
    s.call("uvm", "uvm.close", handle=f)
    assert s.refused("uvm", "uvm.close", handle=f)["errno"] == "EBADF"


def sends(s: Session, p: int) -> None:
    """A loaned and a copied send, checked on the session's own wire (net.listen/recv)."""
    s.call("net", "net.listen")
    n = 16 * PAGE
    va = s.call("uvm", "uvm.mmap", asid=p, length=n, prot=3)["va"]
    s.call("mmu", "mmu.store", asid=p, va=va, data=b"x" * n)
    sock = s.call("net", "net.socket", asid=p)["sock"]
    big = s.call("net", "net.send", asid=p, sock=sock, va=va, n=n)
    s.call("mmu", "mmu.store", asid=p, va=va, data=b"y" * PAGE)  # after the send: not on the wire
    small = s.call("net", "net.send", asid=p, sock=sock, va=va + PAGE, n=100)
    threshold = s.dir["loan_threshold"]
    if 0 <= threshold <= n:
        assert (big["loaned_pages"], big["copied_bytes"]) == (16, 0), big
    if threshold == -1 or threshold > 100:
        assert (small["loaned_pages"], small["copied_bytes"]) == (0, 100), small
    want = {big["seq"]: b"x" * n, small["seq"]: b"x" * 100}
    got: dict[int, bytearray] = {}
    have: dict[int, int] = {}
    loaned: dict[int, bool] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while set(have.items()) != {(q, len(b)) for q, b in want.items()}:
        assert time.monotonic() < deadline, have
        for pkt in s.call("net", "net.recv", wait_ms=500)["packets"]:
            assert (pkt["session"], pkt["asid"], pkt["sock"]) == (s.session, p, sock), pkt
            buf = got.setdefault(pkt["seq"], bytearray(pkt["total"]))
            buf[pkt["off"] : pkt["off"] + len(pkt["payload"])] = pkt["payload"]
            have[pkt["seq"]] = have.get(pkt["seq"], 0) + len(pkt["payload"])
            loaned[pkt["seq"]] = pkt["loaned"]
    assert {q: bytes(b) for q, b in got.items()} == want  # what memory held at send
    assert loaned == {big["seq"]: big["loaned_pages"] > 0, small["seq"]: False}, loaned
    s.call("net", "net.close", sock=sock)
    assert s.refused("net", "net.close", sock=sock)["errno"] == "EBADF"


def refusals(s: Session, other: Session, p: int) -> None:
    """Forged, replayed and foreign requests are refused and change nothing."""
    va = s.call("uvm", "uvm.mmap", asid=p, length=PAGE, prot=3)["va"]
    s.call("mmu", "mmu.store", asid=p, va=va, data=b"mine")
    store = {"asid": p, "va": va, "data": b"evil"}
    i = next(s.ids)
    assert s.send_raw("mmu", s.frame("mmu.store", store, i, None), i)["errno"] == "EPERM"
    i = next(s.ids)
    forged = s.frame("mmu.store", store, i, other.key)
    assert s.send_raw("mmu", forged, i)["errno"] == "EPERM"  # another session's key
    i = next(s.ids)
    good = s.frame("mmu.store", store, i, s.key)
    altered = good[:-1] + bytes([good[-1] ^ 1])  # the tag's last byte
    assert s.send_raw("mmu", altered, i)["errno"] == "EPERM"
    i = next(s.ids)
    ok = s.frame("mmu.load", {"asid": p, "va": va, "n": 4}, i, s.key)
    assert result(s.send_raw("mmu", ok, i))["data"] == b"mine"
    replay = s.send_raw("mmu", ok, i)
    assert (replay["errno"], replay["h"]["re"]) == ("EPERM", i), replay
    stale = next(s.ids)  # never sent: once the mmu has seen an id 4096 above it, refused
    s.ids = itertools.count(stale + 4096)
    s.call("mmu", "mmu.load", asid=p, va=va, n=4)
    late = s.frame("mmu.load", {"asid": p, "va": va, "n": 4}, stale, s.key)
    assert s.send_raw("mmu", late, stale)["errno"] == "EPERM"
    assert s.refused("uvm", "uvm.nonesuch")["errno"] == "EBADMSG"  # `re` echoes the id
    assert s.refused("mmu", "pmap.destroy", asid=p)["errno"] == "EPERM"  # kernel only
    i = next(s.ids)
    old = msgpack.packb({"t": "ctl.hello", "h": {**header(i, 0), "proto": [2, 0]}})
    assert s.send_raw("uvm", old, i)["errno"] == "EPROTO"
    assert other.refused("mmu", "mmu.load", asid=p, va=va, n=4)["errno"] == "ESRCH"
    assert other.refused("uvm", "uvm.exit", asid=p)["errno"] == "ESRCH"
    assert other.refused("net", "net.socket", asid=p)["errno"] == "ESRCH"
    sock = s.call("net", "net.socket", asid=p)["sock"]
    assert other.refused("net", "net.close", sock=sock)["errno"] == "EBADF"
    s.call("net", "net.close", sock=sock)  # still ours to close
    assert s.call("mmu", "mmu.load", asid=p, va=va, n=4)["data"] == b"mine"


def main(attach: str) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        s = Session(ctx, attach)
        assert s.dir["page_size"] == PAGE, s.dir
        assert s.call("supervisor", "ctl.hello")["role"] == "supervisor"
        assert s.refused("uvm", "uvm.spawn")["errno"] == "EPERM"  # no session yet
        free0 = free_frames(s)
        s.attach()
        other = Session(ctx, attach).attach()
        p = vm_calls(s)
        sends(s, p)
        refusals(s, other, p)
        s.call("uvm", "uvm.exit", asid=p)
        assert s.refused("mmu", "mmu.load", asid=p, va=0, n=1)["errno"] == "ESRCH"
        s.call("uvm", "uvm.detach")
        other.call("uvm", "uvm.detach")
        assert s.refused("uvm", "uvm.spawn")["errno"] == "ESESSION"
        assert s.refused("mmu", "mmu.load", asid=p, va=0, n=1)["errno"] == "ESESSION"
        until(lambda: s.ask("net", "net.listen")["errno"] == "ESESSION", "net: session ended")
        until(lambda: free_frames(s) >= free0, "every frame back")
        print("plain msgpack client: ok")
    finally:
        ctx.destroy(linger=0)


if __name__ == "__main__":
    sys.modules["machine"] = None  # type: ignore[assignment]  # any project import would fail
    main(sys.argv[1])
