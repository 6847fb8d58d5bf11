# ruff: noqa: PT018
"""A client written with pyzmq and the plain `msgpack` package only: no project code.

Proves the wire is plain msgpack: attach through the supervisor's directory,
spawn a process, map memory, take the store fault, resolve it through
uvm.fault, retry, load the bytes back. Usage: python plain_msgpack_client.py ENDPOINT
"""

import random
import sys

sys.modules["machine"] = None  # type: ignore[assignment]  # any project import would fail

import msgpack  # noqa: E402
import zmq  # noqa: E402

SESSION = random.getrandbits(62) | 1
_ids = iter(range(1, 1 << 30))


def call(sock: zmq.Socket, tag: str, **fields: object) -> dict:
    mid = next(_ids)
    msg = {
        "t": tag,
        "h": {"msg_id": mid, "sender": "plain", "incarnation": SESSION, "proto": [1, 0]},
        **fields,
    }
    sock.send(msgpack.packb(msg))
    if not sock.poll(10_000):
        raise SystemExit(f"no reply to {tag}")
    rep = msgpack.unpackb(sock.recv())
    assert rep["h"]["re"] == mid, rep
    return rep


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
    asid = call(uvm, "uvm.spawn")["asid"]
    va = call(uvm, "uvm.mmap", asid=asid, length=8192, prot=3)["va"]
    rep = call(mmu, "mmu.store", asid=asid, va=va + 100, data=b"plain msgpack")
    assert rep["status"] == "error" and rep["errno"] == "EFAULT", rep
    assert rep["fault_va"] == va + 100 and rep["fault_access"] == 2, rep
    assert (
        call(uvm, "uvm.fault", asid=asid, va=rep["fault_va"], access=rep["fault_access"])["status"]
        == "ok"
    )
    assert call(mmu, "mmu.store", asid=asid, va=va + 100, data=b"plain msgpack")["status"] == "ok"
    got = call(mmu, "mmu.load", asid=asid, va=va + 100, n=13)
    assert got["status"] == "ok" and got["data"] == b"plain msgpack", got
    assert call(uvm, "uvm.exit", asid=asid)["status"] == "ok"
    call(uvm, "uvm.detach")
    for s in (sup, uvm, mmu):
        s.close(linger=0)
    ctx.term()
    print("plain msgpack client: ok")


if __name__ == "__main__":
    main(sys.argv[1])
