"""GreenProcess, GreenFile, GreenSocket, GreenWire: what a GreenMachine session acts on.

Each is the async client's object (machine.client.process, .wire) driven
synchronously: its coroutines are run by `_finish`, which works because the
session's call_role (green.GreenMachine) blocks the greenlet and returns
without awaiting; so the request code, the CPU's trap handling (Segv at the
faulting address) and the wire's reassembly are the async client's own.

Invariants: a GreenProcess is in its session's `processes` from spawn/fork
until its exit() returns; a GreenWire listens (net.listen) between open() and
close(), and get() never waits past its timeout.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from machine.client.errors import MachineError, MachineTimeout
from machine.client.process import File, Process, SendResult, Socket
from machine.client.wire import Packet, Wire
from machine.proto import (
    MCL_CURRENT,
    MS_SYNC,
    NO_HEADER,
    RLIMIT_MEMLOCK,
    NetListen,
    NetRecv,
    NetRecvReply,
    NetUnlisten,
    Reply,
    Request,
)

_H = NO_HEADER
_RECV_WAIT_MS = 200  # one net.recv long poll of GreenWire.get
T = TypeVar("T")


class Caller(Protocol):
    """The session a wire calls through (green.GreenMachine)."""

    def call(self, role: str, req: Request, expect: type[Any] = Reply) -> Any: ...


def _finish(coro: Coroutine[Any, Any, T]) -> T:
    """Run a client coroutine whose awaits all finish at once (GreenMachine.call_role
    blocks the greenlet instead of awaiting). => its value."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a client coroutine awaited something the green client cannot drive")


class GreenFile:
    """An open file of the machine's disk/ (map it with GreenProcess.mmap(file=...))."""

    def __init__(self, f: File) -> None:
        self.f = f
        self.handle, self.name, self.size = f.handle, f.name, f.size

    def close(self) -> None:
        _finish(self.f.close())

    def ftruncate(self, length: int) -> None:
        """ftruncate(2) (File.ftruncate): beyond the new end a mapping's access is Sigbus."""
        _finish(self.f.ftruncate(length))
        self.size = self.f.size


class GreenSocket:
    def __init__(self, s: Socket) -> None:
        self.s, self.id = s, s.id

    def close(self) -> None:
        _finish(self.s.close())


class GreenProcess:
    """An emulated user process (machine.client.Process, synchronously)."""

    def __init__(self, p: Process, processes: dict[int, GreenProcess]) -> None:
        self.p = p
        self._processes = processes
        processes[p.asid] = self

    @property
    def asid(self) -> int:
        return self.p.asid

    pid = asid

    @property
    def faults(self) -> int:
        return self.p.faults

    @property
    def exited(self) -> bool:
        return self.p.exited

    def mmap(
        self,
        length: int,
        prot: str | int = "rw",
        *,
        va: int = 0,
        fixed: bool = False,
        file: GreenFile | None = None,
        offset: int = 0,
        shared: bool = False,
    ) -> int:
        f = file.f if file is not None else None
        return _finish(
            self.p.mmap(length, prot, va=va, fixed=fixed, file=f, offset=offset, shared=shared)
        )

    def mprotect(self, va: int, length: int, prot: str | int) -> None:
        _finish(self.p.mprotect(va, length, prot))

    def mlock(self, va: int, length: int) -> None:
        _finish(self.p.mlock(va, length))

    def munlock(self, va: int, length: int) -> None:
        _finish(self.p.munlock(va, length))

    def msync(self, va: int, length: int, flags: int = MS_SYNC) -> int:
        return _finish(self.p.msync(va, length, flags))

    def mlockall(self, flags: int = MCL_CURRENT) -> None:
        _finish(self.p.mlockall(flags))

    def munlockall(self) -> None:
        _finish(self.p.munlockall())

    def getrlimit(self, resource: int = RLIMIT_MEMLOCK) -> tuple[int, int]:
        return _finish(self.p.getrlimit(resource))

    def setrlimit(self, resource: int, cur: int, max: int) -> tuple[int, int]:
        return _finish(self.p.setrlimit(resource, cur, max))

    def minherit(self, va: int, length: int, inherit: int) -> None:
        _finish(self.p.minherit(va, length, inherit))

    def madvise(self, va: int, length: int, advice: int) -> None:
        _finish(self.p.madvise(va, length, advice))

    def mincore(self, va: int, length: int) -> bytes:
        return _finish(self.p.mincore(va, length))

    def fork(self) -> GreenProcess:
        return GreenProcess(_finish(self.p.fork()), self._processes)

    def munmap(self, va: int, length: int) -> None:
        _finish(self.p.munmap(va, length))

    def exit(self) -> None:
        _finish(self.p.exit())
        self._processes.pop(self.asid, None)

    def store(self, va: int, data: bytes) -> None:
        _finish(self.p.store(va, data))

    def load(self, va: int, n: int) -> bytes:
        return _finish(self.p.load(va, n))

    def touch(self, va: int, npages: int) -> None:
        _finish(self.p.touch(va, npages))

    def socket(self, sndbuf: int = 1 << 20) -> GreenSocket:
        return GreenSocket(_finish(self.p.socket(sndbuf)))

    def send(self, sock: GreenSocket, va: int, n: int) -> SendResult:
        return _finish(self.p.send(sock.s, va, n))


class GreenWire:
    """This session's receiver on the wire: every send of its sockets, whole and in
    order per socket (the async Wire's reassembly), polled by the caller's get()."""

    def __init__(self, m: Caller) -> None:
        self.m = m
        self._w = Wire(None)
        self._open = False

    def open(self) -> GreenWire:
        if not self._open:
            self.m.call("net", NetListen(h=_H))
            self._open = True
        return self

    def close(self) -> None:
        if self._open:
            self._open = False
            with contextlib.suppress(MachineError):
                self.m.call("net", NetUnlisten(h=_H))

    def __enter__(self) -> GreenWire:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def dropped(self) -> int:
        return self._w.dropped

    @property
    def lost(self) -> int:
        return self._w.lost

    def get(self, timeout_s: float = 30.0) -> Packet:
        """The next complete send. => MachineTimeout after timeout_s (MachinePanic ...)."""
        self.open()
        deadline = time.monotonic() + timeout_s
        while (pkt := self._w.take()) is None:
            if time.monotonic() > deadline:
                raise MachineTimeout(f"no packet on the wire within {timeout_s} s")
            req = NetRecv(h=_H, max_packets=256, wait_ms=_RECV_WAIT_MS)
            self._w.on_recv(self.m.call("net", req, NetRecvReply))
        return pkt
