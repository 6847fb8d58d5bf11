# ruff: noqa: PT018
"""A client written with pyzmq and the plain `msgpack` package only: no project code.

Proves the wire is plain msgpack: find the roles through the supervisor's
directory, attach (uvm.attach gives the session id and its key), then sign
every request (HMAC-SHA256 over its bytes, the first 16 bytes appended),
spawn a process, map memory, store (the first touch traps to the kernel,
which resolves it while the request waits: one reply, `traps` 1), load the
bytes back, take a SIGSEGV (EFAULT with fault_va) past the end.
Usage: python plain_msgpack_client.py ENDPOINT
"""

import hashlib
import hmac
import sys

sys.modules["machine"] = None  # type: ignore[assignment]  # any project import would fail

import msgpack  # noqa: E402
import zmq  # noqa: E402

SESSION = {"id": 0, "key": b""}  # made by the machine at uvm.attach
_ids = iter(range(1, 1 << 30))


def call(sock: zmq.Socket, tag: str, **fields: object) -> dict:
    mid = next(_ids)
    msg = {
        "t": tag,
        "h": {"msg_id": mid, "sender": "plain", "incarnation": SESSION["id"], "proto": [1, 4]},
        **fields,
    }
    body = msgpack.packb(msg)
    if SESSION["key"]:  # every request of a session carries its tag
        body += hmac.new(SESSION["key"], body, hashlib.sha256).digest()[:16]
    sock.send(body)
    if not sock.poll(10_000):
        raise SystemExit(f"no reply to {tag}")
    rep = msgpack.unpackb(sock.recv())
    assert rep["h"]["re"] == mid, rep
    return rep


def ok(rep: dict) -> dict:
    assert rep["status"] == "ok", rep
    return rep


def _vm_calls(uvm: zmq.Socket, mmu: zmq.Socket, asid: int, va: int) -> None:
    """The VM calls of NetBSD programs (1.6), with NetBSD's numbers: both pages are
    resident (the store, and the load that ran into the end); MADV_FREE (6) frees them,
    so they read zeros; a file truncated under its shared mapping raises SIGBUS."""
    assert ok(call(uvm, "uvm.mincore", asid=asid, va=va, length=8192))["vec"] == b"\1\1"
    ok(call(uvm, "uvm.madvise", asid=asid, va=va, length=8192, advice=6))
    assert ok(call(uvm, "uvm.mincore", asid=asid, va=va, length=8192))["vec"] == b"\0\0"
    assert ok(call(mmu, "mmu.load", asid=asid, va=va + 100, n=4))["data"] == bytes(4)
    ok(call(uvm, "uvm.wire", asid=asid, va=va + 1, length=10))  # mlock rounds to pages
    ok(call(uvm, "uvm.wire", asid=asid, va=va, length=4096))
    ok(call(uvm, "uvm.unwire", asid=asid, va=va, length=4096))  # one munlock unlocks
    rl = ok(call(uvm, "uvm.getrlimit", asid=asid, resource=6))  # RLIMIT_MEMLOCK
    assert 0 < rl["cur"] <= rl["max"], rl
    # O_RDWR | O_CREAT | O_TRUNC
    f = ok(call(uvm, "uvm.open", name="plain.bin", flags=2 | 0x200 | 0x400, size=8192))
    fva = ok(call(uvm, "uvm.mmap", asid=asid, length=8192, prot=3, handle=f["handle"], shared=True))
    fva = fva["va"]
    ok(call(mmu, "mmu.store", asid=asid, va=fva + 4090, data=b"0123456789"))
    ok(call(uvm, "uvm.msync", asid=asid, va=fva, length=8192, flags=4))  # MS_SYNC
    ok(call(uvm, "uvm.ftruncate", handle=f["handle"], length=4094))
    tail = ok(call(mmu, "mmu.load", asid=asid, va=fva + 4090, n=6))["data"]
    assert tail == b"0123\0\0", tail  # past the end: zeros, never written to the file
    bus = call(mmu, "mmu.load", asid=asid, va=fva + 4096, n=1)
    assert bus["errno"] == "SIGBUS" and bus["fault_va"] == fva + 4096, bus
    ok(call(uvm, "uvm.close", handle=f["handle"]))


def main(endpoint: str) -> None:
    ctx = zmq.Context()
    sup = ctx.socket(zmq.DEALER)
    sup.connect(endpoint)
    hello = call(sup, "ctl.hello")
    assert hello["status"] == "ok" and hello["role"] == "supervisor", hello
    d = call(sup, "ctl.directory")
    assert d["status"] == "ok", d
    uvm = ctx.socket(zmq.DEALER)
    uvm.connect(d["roles"]["uvm"]["user"])
    mmu = ctx.socket(zmq.DEALER)
    mmu.connect(d["roles"]["mmu"]["user"])
    refused = call(uvm, "uvm.spawn")  # nothing but the public requests without a session
    assert refused["status"] == "error" and refused["errno"] == "EPERM", refused
    att = call(uvm, "uvm.attach")
    assert att["status"] == "ok" and len(att["key"]) == 32, att
    SESSION.update(id=att["session"], key=att["key"])
    asid = call(uvm, "uvm.spawn")["asid"]
    va = call(uvm, "uvm.mmap", asid=asid, length=8192, prot=3)["va"]
    rep = call(mmu, "mmu.store", asid=asid, va=va + 100, data=b"plain msgpack")
    assert rep["status"] == "ok" and rep["traps"] == 1, rep
    again = call(mmu, "mmu.store", asid=asid, va=va + 100, data=b"plain msgpack")
    assert again["status"] == "ok" and again["traps"] == 0, again
    segv = call(mmu, "mmu.load", asid=asid, va=va + 8190, n=4)
    assert segv["status"] == "error" and segv["errno"] == "EFAULT", segv
    assert segv["fault_va"] == va + 8192 and segv["fault_access"] == 1, segv
    got = call(mmu, "mmu.load", asid=asid, va=va + 100, n=13)
    assert got["status"] == "ok" and got["data"] == b"plain msgpack", got
    _vm_calls(uvm, mmu, asid, va)
    assert call(uvm, "uvm.exit", asid=asid)["status"] == "ok"
    call(uvm, "uvm.detach")
    for s in (sup, uvm, mmu):
        s.close(linger=0)
    ctx.term()
    print("plain msgpack client: ok")


if __name__ == "__main__":
    main(sys.argv[1])
