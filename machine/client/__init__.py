"""The async client library: attach to a machine and act as emulated user processes.

    async with Machine.attach("tcp://127.0.0.1:7700") as m:
        p = await m.spawn()
        va = await p.mmap(64 * 4096, prot="rw")
        await p.store(va + 10, b"hello")          # faults resolved transparently
        assert await p.load(va + 10, 5) == b"hello"
        await p.munmap(va, 64 * 4096)
        await p.exit()

Zero-copy sends and the wire (this session's own packets; the operator's tap,
Wire.tap, sees every session's):

        async with m.wire() as w:
            s = await p.socket()
            r = await p.send(s, va, 8192)     # loaned if >= LOAN_THRESHOLD
            pkt = await w.get()               # pkt.payload: memory as it was at send

A Process's load/store is a CPU access: the mmu performs it page by page and
has the kernel (uvm) resolve each trap while the access waits, so the library
sees one reply. An unresolvable fault raises Segv.

Errors a caller can see (all MachineError):
  Segv            the access had no valid mapping (SIGSEGV); the machine is fine
  Sigbus          the access was beyond the end of a mapped file (SIGBUS)
  OutOfMemory     no frame could be had for the fault
  SessionEnded    the session ended (ESESSION, at every role)
  MachinePanic    the machine panicked; every pending and later call raises it
  MachineStopped  the machine stopped cleanly (or is stopping); every pending
                  and later call raises it, within a second of the stop
  MachineTimeout  a role did not answer in time (the machine may be gone)
  RequestError    any other error reply (errno + detail)

A session is this attachment, made by the machine (uvm.attach): a public id,
the `incarnation` in every header, and a secret key with which every request
is signed (machine.ipc.auth); nobody else can act as this session. Leaving
the `async with` detaches (every process of the session exits); a session
that vanishes is reaped by uvm when its lease (renewed by a keepalive task)
runs out.

Modules, each importing only those above it:
  errors.py   the exceptions
  feed.py     WireFeed: one receiver queue in net and the task that polls it
  session.py  Session: attach, keepalive, every request and its error mapping
  process.py  Process (mmap, load/store, fork, send ...), File, Socket, SendResult
  wire.py     Wire (a session's receiver, or the operator's tap), Packet
  machine.py  Machine: a Session that spawns processes, opens files, makes Wires
"""

from machine.client.errors import (
    MachineError,
    MachinePanic,
    MachineStopped,
    MachineTimeout,
    OutOfMemory,
    RequestError,
    Segv,
    SessionEnded,
    Sigbus,
)
from machine.client.feed import RECV_PACKETS, RECV_WAIT_MS, WireFeed
from machine.client.machine import Machine
from machine.client.process import File, Process, SendResult, Socket
from machine.client.session import Session
from machine.client.wire import KCall, Packet, Wire
from machine.proto.vmcalls import (
    MADV_DONTNEED,
    MADV_FREE,
    MADV_NORMAL,
    MADV_RANDOM,
    MADV_SEQUENTIAL,
    MADV_WILLNEED,
    MAP_INHERIT_COPY,
    MAP_INHERIT_NONE,
    MAP_INHERIT_SHARE,
    MAP_INHERIT_ZERO,
    MCL_CURRENT,
    MCL_FUTURE,
    MS_ASYNC,
    MS_INVALIDATE,
    MS_SYNC,
    O_CREAT,
    O_EXCL,
    O_RDONLY,
    O_RDWR,
    O_TRUNC,
    O_WRONLY,
    RLIM_INFINITY,
    RLIMIT_MEMLOCK,
)

__all__ = [
    "MADV_DONTNEED",
    "MADV_FREE",
    "MADV_NORMAL",
    "MADV_RANDOM",
    "MADV_SEQUENTIAL",
    "MADV_WILLNEED",
    "MAP_INHERIT_COPY",
    "MAP_INHERIT_NONE",
    "MAP_INHERIT_SHARE",
    "MAP_INHERIT_ZERO",
    "MCL_CURRENT",
    "MCL_FUTURE",
    "MS_ASYNC",
    "MS_INVALIDATE",
    "MS_SYNC",
    "O_CREAT",
    "O_EXCL",
    "O_RDONLY",
    "O_RDWR",
    "O_TRUNC",
    "O_WRONLY",
    "RECV_PACKETS",
    "RECV_WAIT_MS",
    "RLIMIT_MEMLOCK",
    "RLIM_INFINITY",
    "File",
    "KCall",
    "Machine",
    "MachineError",
    "MachinePanic",
    "MachineStopped",
    "MachineTimeout",
    "OutOfMemory",
    "Packet",
    "Process",
    "RequestError",
    "Segv",
    "SendResult",
    "Session",
    "SessionEnded",
    "Sigbus",
    "Socket",
    "Wire",
    "WireFeed",
]
