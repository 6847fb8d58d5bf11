"""Process, File and Socket: what a session acts on, as an emulated user process would.

A Process's load/store is a CPU access: one mmu request per MAX_ACCESS_BYTES,
performed page by page; a page that does not translate traps to the kernel,
which resolves it while the request waits (the mmu hands the trap to uvm and
enters its answer), so the library sees one reply. An unresolvable fault
raises Segv; the bytes before the faulting address were accessed, as a
CPU's string instruction leaves them.

Invariants:
  - a Process is in its session's `processes` (by asid) from spawn/fork until
    its exit() returns; after that `exited` is true and the asid is no longer
    the session's;
  - `faults` counts the traps the machine resolved for this process's
    accesses (the mmu's reply says how many each took);
  - File and Socket are handles the machine owns: it closes them itself when
    the session detaches (and a socket when its process exits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from machine.client.errors import OutOfMemory, RequestError, Segv, Sigbus
from machine.params import MAX_ACCESS_BYTES, PAGE_SIZE
from machine.proto import (
    MCL_CURRENT,
    MS_SYNC,
    NO_HEADER,
    RLIMIT_MEMLOCK,
    Errno,
    MmuAccessReply,
    MmuLoad,
    MmuStore,
    NetClose,
    NetSend,
    NetSendReply,
    NetSocket,
    NetSocketReply,
    Reply,
    Request,
    Status,
    UvmClose,
    UvmExit,
    UvmFork,
    UvmForkReply,
    UvmFtruncate,
    UvmGetrlimit,
    UvmMadvise,
    UvmMincore,
    UvmMincoreReply,
    UvmMinherit,
    UvmMlockall,
    UvmMmap,
    UvmMmapReply,
    UvmMprotect,
    UvmMsync,
    UvmMsyncReply,
    UvmMunlockall,
    UvmMunmap,
    UvmRlimitReply,
    UvmSetrlimit,
    UvmUnwire,
    UvmWire,
)
from machine.proto.types import Prot

_H = NO_HEADER


@dataclass(frozen=True)
class SendResult:
    """What a send queued: its sequence number on the socket, and how (loan or copy)."""

    sock: int
    seq: int
    n: int
    loaned_pages: int
    copied_bytes: int
    messages: int  # kernel messages the send path used


class RoleCaller(Protocol):
    """What processes and files call through: a session (Session, or the stress
    harness's synchronous GreenMachine, whose coroutines finish without waiting)."""

    async def call_role(self, role: str, req: Request, expect: type[Any] = Reply) -> Any: ...


class Socket:
    def __init__(self, proc: Process, sock: int) -> None:
        self.proc, self.id = proc, sock

    async def close(self) -> None:
        """close(2): queued data is still sent. => RequestError EBADF if already closed
        (the machine also closes it when its process exits or the session detaches)."""
        await self.proc.m.call_role("net", NetClose(h=_H, sock=self.id), Reply)


class File:
    """An open file of the machine's disk/ (a vnode): map it with Process.mmap(file=...)."""

    def __init__(self, machine: RoleCaller, handle: int, name: str, size: int) -> None:
        self.m, self.handle, self.name, self.size = machine, handle, name, size

    async def close(self) -> None:
        await self.m.call_role("uvm", UvmClose(h=_H, handle=self.handle), Reply)

    async def ftruncate(self, length: int) -> None:
        """ftruncate(2): the file is now `length` bytes. Shrinking takes the pages beyond
        the end out of every mapping (an access there raises Sigbus); growing reads
        zeros. => RequestError EINVAL when the file is not open for writing."""
        await self.m.call_role("uvm", UvmFtruncate(h=_H, handle=self.handle, length=length), Reply)
        self.size = length


class Process:
    """An emulated user process: its address space and a CPU to access it."""

    def __init__(
        self, machine: RoleCaller, asid: int, processes: dict[int, Process] | None = None
    ) -> None:
        self.m = machine
        self.asid = asid
        self.exited = False
        self.faults = 0
        #: the session's live processes (Machine.processes), kept by spawn, fork and exit
        self._processes: dict[int, Process] = {} if processes is None else processes
        self._processes[asid] = self

    @property
    def pid(self) -> int:
        return self.asid

    async def _uvm(self, req: Request, expect: type[Any] = Reply) -> Any:
        return await self.m.call_role("uvm", req, expect)

    async def mmap(
        self,
        length: int,
        prot: str | int = "rw",
        *,
        va: int = 0,
        fixed: bool = False,
        file: File | None = None,
        offset: int = 0,
        shared: bool = False,
    ) -> int:
        """Map memory. => start VA.

        Anonymous (file None) or a file at `offset`; private (copy-on-write:
        stores stay in this process and its forks' copies, the file never
        changes) or shared (stores are seen by every process mapping it and
        reach the file on msync, munmap, exit and shutdown).
        """
        rep = await self._uvm(
            UvmMmap(
                h=_H,
                asid=self.asid,
                length=length,
                prot=int(Prot.parse(prot)),
                va=va,
                fixed=fixed,
                handle=file.handle if file is not None else 0,
                offset=offset,
                shared=shared,
            ),
            UvmMmapReply,
        )
        return int(rep.va)

    async def _range_call(self, cls: Any, va: int, length: int, **kw: Any) -> Any:
        return await self._uvm(cls(h=_H, asid=self.asid, va=va, length=length, **kw))

    async def mprotect(self, va: int, length: int, prot: str | int) -> None:
        await self._range_call(UvmMprotect, va, length, prot=int(Prot.parse(prot)))

    async def mlock(self, va: int, length: int) -> None:
        """mlock(2): wire the range (rounded to pages): every page faulted in now (COW
        copied now), never paged out. Locks do not nest: one munlock unlocks."""
        await self._range_call(UvmWire, va, length)

    async def munlock(self, va: int, length: int) -> None:
        """munlock(2): unlock the range, however often it was locked."""
        await self._range_call(UvmUnwire, va, length)

    async def mlockall(self, flags: int = MCL_CURRENT) -> None:
        """mlockall(2): MCL_CURRENT wires every mapping now, MCL_FUTURE every later one."""
        await self._uvm(UvmMlockall(h=_H, asid=self.asid, flags=flags))

    async def munlockall(self) -> None:
        """munlockall(2): unlock everything and cancel MCL_FUTURE."""
        await self._uvm(UvmMunlockall(h=_H, asid=self.asid))

    async def getrlimit(self, resource: int = RLIMIT_MEMLOCK) -> tuple[int, int]:
        """getrlimit(2). => (soft, hard) in bytes (RLIMIT_MEMLOCK)."""
        rep = await self._uvm(UvmGetrlimit(h=_H, asid=self.asid, resource=resource), UvmRlimitReply)
        return int(rep.cur), int(rep.max)

    async def setrlimit(self, resource: int, cur: int, max: int) -> tuple[int, int]:
        """setrlimit(2) (RLIMIT_MEMLOCK; the hard limit may only be lowered). => now."""
        rep = await self._uvm(
            UvmSetrlimit(h=_H, asid=self.asid, resource=resource, cur=cur, max=max),
            UvmRlimitReply,
        )
        return int(rep.cur), int(rep.max)

    async def minherit(self, va: int, length: int, inherit: int) -> None:
        """minherit(2): MAP_INHERIT_SHARE, _COPY, _NONE or _ZERO for the range at fork."""
        await self._range_call(UvmMinherit, va, length, inherit=inherit)

    async def madvise(self, va: int, length: int, advice: int) -> None:
        """madvise(2): MADV_NORMAL, _RANDOM, _SEQUENTIAL, _WILLNEED, _DONTNEED, _FREE."""
        await self._range_call(UvmMadvise, va, length, advice=advice)

    async def mincore(self, va: int, length: int) -> bytes:
        """mincore(2). => one byte per page of the range: 1 resident, 0 not."""
        rep = await self._uvm(
            UvmMincore(h=_H, asid=self.asid, va=va, length=length), UvmMincoreReply
        )
        return bytes(rep.vec)

    async def msync(self, va: int, length: int, flags: int = MS_SYNC) -> int:
        """msync(2): write dirty pages of shared file mappings in the range to their file
        (MS_SYNC, MS_ASYNC; with MS_INVALIDATE). => pages written or scheduled."""
        rep = await self._uvm(
            UvmMsync(h=_H, asid=self.asid, va=va, length=length, flags=flags), UvmMsyncReply
        )
        return int(rep.pages)

    async def fork(self) -> Process:
        """A child process with a copy-on-write copy of this one's private memory."""
        rep = await self._uvm(UvmFork(h=_H, asid=self.asid), UvmForkReply)
        return Process(self.m, rep.asid, self._processes)

    async def munmap(self, va: int, length: int) -> None:
        await self._uvm(UvmMunmap(h=_H, asid=self.asid, va=va, length=length))

    async def exit(self) -> None:
        await self._uvm(UvmExit(h=_H, asid=self.asid))
        self.exited = True
        self._processes.pop(self.asid, None)

    async def _access(self, req: Request) -> MmuAccessReply:
        """One CPU access (the kernel resolves its traps). => Segv where it cannot."""
        rep: MmuAccessReply = await self.m.call_role("mmu", req, MmuAccessReply)
        self.faults += rep.traps
        if rep.status is Status.OK:
            return rep
        access = Prot(rep.fault_access)
        if rep.errno is Errno.EFAULT:
            raise Segv(rep.fault_va, access, rep.detail)
        if rep.errno is Errno.SIGBUS:
            raise Sigbus(rep.fault_va, access, rep.detail)
        if rep.errno is Errno.ENOMEM:
            raise OutOfMemory(rep.detail)
        raise RequestError(rep.errno or Errno.EINVAL, rep.detail)

    async def store(self, va: int, data: bytes) -> None:
        """A CPU store; faults are resolved transparently. => Segv if unmapped."""
        for off in range(0, len(data), MAX_ACCESS_BYTES):
            chunk = bytes(data[off : off + MAX_ACCESS_BYTES])
            a = va + off
            await self._access(MmuStore(h=_H, asid=self.asid, va=a, data=chunk))

    async def load(self, va: int, n: int) -> bytes:
        """A CPU load of n bytes; faults are resolved transparently. => Segv if unmapped,
        Sigbus beyond the end of a mapped file."""
        out = bytearray()
        for off in range(0, n, MAX_ACCESS_BYTES):
            take = min(MAX_ACCESS_BYTES, n - off)
            a = va + off
            rep = await self._access(MmuLoad(h=_H, asid=self.asid, va=a, n=take))
            out += rep.data
        return bytes(out)

    async def socket(self, sndbuf: int = 1 << 20) -> Socket:
        """socket(2) for this process; sends wait while `sndbuf` bytes are queued."""
        rep = await self.m.call_role(
            "net", NetSocket(h=_H, asid=self.asid, sndbuf=sndbuf), NetSocketReply
        )
        return Socket(self, rep.sock)

    async def send(self, sock: Socket, va: int, n: int) -> SendResult:
        """Send n bytes from va (write(2) on a socket). Returns once the data is queued:
        the receiver gets what memory held now, whatever this process does next.
        => Segv-like RequestError EFAULT for a bad buffer."""
        rep = await self.m.call_role(
            "net", NetSend(h=_H, asid=self.asid, sock=sock.id, va=va, n=n), NetSendReply
        )
        return SendResult(sock.id, rep.seq, n, rep.loaned_pages, rep.copied_bytes, rep.messages)

    async def touch(self, va: int, npages: int) -> None:
        """Write one byte in each of npages pages (first-touch faults)."""
        for i in range(npages):
            await self.store(va + i * PAGE_SIZE, b"\x01")
