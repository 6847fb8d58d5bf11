"""Monkeypatches that bench_machine.py applies to machine/ (which it never edits).

Each patch is a candidate optimisation (or instrumentation) of the IPC path,
measured by bench_machine.py against the unpatched code:

  trace      timestamps (CLOCK_MONOTONIC, comparable across processes) at every
             request a ZmqServer receives/handles/answers and every Peer.call
             (start, sent, reply arrived, caller resumed). Read back with
             ctl.dump (key "bench_trace" in the state), which also empties the buffers.
  nowaitfor  Peer.call without asyncio.wait_for: one loop.call_later timer that
             fails the future on timeout, then a plain `await fut`.
             Same semantics (CallTimeout after timeout_s).
  eager      ZmqServer starts each request's handler synchronously in the receive
             loop (what Python 3.12's eager_task_factory does) and only creates a
             task when the handler really suspends (uvm.fault awaiting pmap.enter).
             Handlers that never await (every mmu handler, ctl.*) need no task.
  streams    request/reply without ZeroMQ: ZmqTransport.bind/connect return
             asyncio Protocol servers/connections (tcp or unix socket at the same
             endpoint strings, 4-byte length-prefixed frames); PUB/SUB stay on zmq.
             No I/O thread, one syscall per send, the reader is woken directly.
             Every process of the machine and the client must run it.
  kfault     a trap is resolved inside the kernel: the mmu, finding no translation
             for a store/load, asks uvm itself (new kernel request uvm.kfault,
             defined here; the codec's decoders are rebuilt to know it); uvm runs
             its normal fault code but hands the mapping back instead of calling
             pmap.enter, and the mmu enters it and retries the access. A first
             touch is then 1 client round trip + 1 kernel round trip instead of
             3 + 1; the client library is unchanged (it just sees no trap).
  rawzmq     ZmqServer/ZmqConnection receive with loop.add_reader(zmq FD) on the
             plain (shadow) zmq socket and drain with NOBLOCK, and send with NOBLOCK
             (falling back to zmq.asyncio only on EAGAIN): none of zmq.asyncio's
             per-message futures, getsockopt(EVENTS) calls and call_later(0) hops.

The role processes get the same patches when they run with
PYTHONPATH=bench/_rolepatch and UVM_BENCH_PATCHES=name,name (bench/_rolepatch/
sitecustomize.py calls apply() at interpreter start, so the forkserver and
every role forked from it are patched). Nothing here is used by machine/.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import struct
import time
import types
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from machine.ipc import peer as peer_mod
from machine.ipc import service as service_mod
from machine.ipc import zmqtransport as zt
from machine.ipc.transport import Connection, Handler, OnBytes, Server
from machine.proto import (
    CtlDump,
    CtlDumpReply,
    Header,
    Reply,
    Request,
    decode_reply,
    encode,
    tag_of,
    with_header,
)

PATCH_NAMES = ("trace", "nowaitfor", "eager", "rawzmq", "streams", "kfault")
ENV_VAR = "UVM_BENCH_PATCHES"

_now = time.monotonic_ns
_H0 = Header(msg_id=0, sender="", incarnation=0)


class _Flags:
    trace = False
    nowaitfor = False
    eager = False
    rawzmq = False
    streams = False
    kfault = False


F = _Flags()

# (payload, t_recv, t_start, t_end, t_sent) per request a ZmqServer handled.
SERVER_TRACE: collections.deque[tuple[bytes, int, int, int, int]] = collections.deque(maxlen=50_000)
# (tag, sender, incarnation, msg_id, t_call, t_sent, t_reply, t_done) per Peer.call.
CALL_TRACE: collections.deque[tuple[str, str, int, int, int, int, int, int]] = collections.deque(
    maxlen=50_000
)
_REPLY_T: dict[tuple[int, int], int] = {}

_ORIGINALS: dict[tuple[object, str], Any] = {}
_MISSING = object()


def _set(owner: object, name: str, value: Any) -> None:
    """Replace owner.name (a class or module attribute); undo() puts it back."""
    _ORIGINALS.setdefault((owner, name), vars(owner).get(name, _MISSING))
    setattr(owner, name, value)


def parse(spec: str | Iterable[str]) -> tuple[str, ...]:
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out = tuple(n.strip() for n in names if n.strip() and n.strip() != "none")
    for n in out:
        if n not in PATCH_NAMES:
            raise ValueError(f"unknown patch {n!r}; known: {', '.join(PATCH_NAMES)}")
    return out


def apply(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Install the generic replacements and switch on the named behaviours."""
    names = parse(spec)
    undo()
    if not names:
        return names
    for n in PATCH_NAMES:
        setattr(F, n, n in names)
    _set(peer_mod.Peer, "call", _peer_call)
    _set(peer_mod.Peer, "_on_reply", _peer_on_reply)
    _set(zt.ZmqServer, "_loop", _server_loop)
    _set(zt.ZmqServer, "_one", _server_one)
    _set(zt.ZmqConnection, "_loop", _conn_loop)
    _set(zt.ZmqConnection, "send", _conn_send)
    _set(service_mod.Service, "on_dump", _on_dump)
    if F.streams:
        _set(zt.ZmqTransport, "bind", _stream_bind)
        _set(zt.ZmqTransport, "connect", _stream_connect)
    if F.kfault:
        _install_kfault()
    return names


def undo() -> None:
    """Restore every patched attribute (machine/ behaves as shipped again)."""
    for (owner, name), orig in _ORIGINALS.items():
        if orig is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, orig)
    _ORIGINALS.clear()
    for n in PATCH_NAMES:
        setattr(F, n, False)
    SERVER_TRACE.clear()
    CALL_TRACE.clear()
    _REPLY_T.clear()


# -- Peer -----------------------------------------------------------------------


def _expire(fut: asyncio.Future[Reply]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _peer_call(self: peer_mod.Peer, req: Request, timeout_s: float | None = None) -> Reply:
    assert self._conn is not None, "peer not opened"
    trace = F.trace
    t0 = _now() if trace else 0
    msg = with_header(req, self.ident.header())
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Reply] = loop.create_future()
    mid = msg.h.msg_id
    self._pending[mid] = fut
    self.sent += 1
    tmo = timeout_s or self.timeout_s
    t1 = 0
    try:
        if F.nowaitfor:
            timer = loop.call_later(tmo, _expire, fut)
            try:
                await self._conn.send(encode(msg))
                t1 = _now() if trace else 0
                rep = await fut
            finally:
                timer.cancel()
        else:
            await self._conn.send(encode(msg))
            t1 = _now() if trace else 0
            rep = await asyncio.wait_for(fut, tmo)
    except TimeoutError:
        raise peer_mod.CallTimeout(
            f"no reply from {self.endpoint} to {type(req).__name__} within {tmo} s"
        ) from None
    finally:
        self._pending.pop(mid, None)
    if trace:
        t3 = _now()
        t2 = _REPLY_T.pop((id(self), mid), 0)
        CALL_TRACE.append(
            (tag_of(req), self.ident.sender, self.ident.incarnation, mid, t0, t1, t2, t3)
        )
    return rep


def _peer_on_reply(self: peer_mod.Peer, raw: bytes) -> None:
    t = _now() if F.trace else 0
    try:
        reply = decode_reply(raw)
    except Exception:
        return
    if t:
        _REPLY_T[(id(self), reply.h.re)] = t
    fut = self._pending.pop(reply.h.re, None)
    if fut is not None and not fut.done():
        fut.set_result(reply)


# -- eager start of a handler coroutine ----------------------------------------------


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], yielded: Any) -> Generator[Any, Any, None]:
    """Go on driving a coroutine that suspended on its first step, inside a task."""
    while True:
        try:
            value = yield yielded
        except BaseException as e:  # cancellation or an exception thrown in by the task
            try:
                yielded = coro.throw(e)
            except StopIteration:
                return
        else:
            try:
                yielded = coro.send(value)
            except StopIteration:
                return


async def _continue(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    await _resume(coro, yielded)


def _run_eager(coro: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]]) -> None:
    """Run coro's first step now; hand the rest to a task only if it suspends."""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return
    t = asyncio.get_running_loop().create_task(_continue(coro, yielded))
    tasks.add(t)
    t.add_done_callback(tasks.discard)


# -- ZmqServer ------------------------------------------------------------------------


def _start_one(self: zt.ZmqServer, frames: list[bytes], t_recv: int) -> None:
    coro = self._one(frames[0], frames[-1], t_recv)  # type: ignore[call-arg]
    if F.eager:
        _run_eager(coro, self._tasks)
    else:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)


def _events(s: zmq.Socket[bytes]) -> int:
    return s.getsockopt(zmq.EVENTS)  # type: ignore[return-value]


def _shadow(sock: zmq.asyncio.Socket) -> zmq.Socket[bytes]:
    return zmq.Socket.shadow(sock.underlying)


async def _server_loop(self: zt.ZmqServer) -> None:
    if F.rawzmq:
        loop = asyncio.get_running_loop()
        s = _shadow(self.sock)
        self._bench_shadow = s  # type: ignore[attr-defined]

        def drain() -> None:
            while _events(s) & zmq.POLLIN:
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(frames) >= 2:
                    _start_one(self, frames, _now() if F.trace else 0)

        self._bench_drain = drain  # type: ignore[attr-defined]
        fd = s.FD
        loop.add_reader(fd, drain)
        loop.call_soon(drain)
        try:
            await loop.create_future()
        finally:
            loop.remove_reader(fd)
    while True:
        frames = await self.sock.recv_multipart()
        t = _now() if F.trace else 0
        if len(frames) < 2:
            continue
        _start_one(self, frames, t)


async def _server_one(self: zt.ZmqServer, ident: bytes, payload: bytes, t_recv: int = 0) -> None:
    t_start = _now() if F.trace else 0
    out = await self._handler(payload)
    t_end = _now() if F.trace else 0
    if out is not None:
        s: zmq.Socket[bytes] | None = getattr(self, "_bench_shadow", None)
        if s is not None:
            try:
                s.send_multipart([ident, out], zmq.NOBLOCK)
            except zmq.Again:
                with _suppress_zmq():
                    await self.sock.send_multipart([ident, out])
            except zmq.ZMQError:
                pass
            # any operation on the socket may consume the FD's edge: look again
            if not s.closed and _events(s) & zmq.POLLIN:
                asyncio.get_running_loop().call_soon(self._bench_drain)  # type: ignore[attr-defined]
        else:
            with _suppress_zmq():
                await self.sock.send_multipart([ident, out])
    if F.trace:
        SERVER_TRACE.append((payload, t_recv, t_start, t_end, _now()))


class _suppress_zmq:  # noqa: N801 - used like contextlib.suppress
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, *_: Any) -> bool:
        return et is not None and issubclass(et, zmq.ZMQError)


# -- ZmqConnection ---------------------------------------------------------------


async def _conn_loop(self: zt.ZmqConnection) -> None:
    if F.rawzmq:
        loop = asyncio.get_running_loop()
        s = _shadow(self.sock)

        def drain() -> None:
            while _events(s) & zmq.POLLIN:
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_reply(frames[-1])

        self._bench_shadow = s  # type: ignore[attr-defined]
        self._bench_drain = drain  # type: ignore[attr-defined]
        fd = s.FD
        loop.add_reader(fd, drain)
        loop.call_soon(drain)
        try:
            await loop.create_future()
        finally:
            loop.remove_reader(fd)
    while True:
        frames = await self.sock.recv_multipart()
        self._on_reply(frames[-1])


async def _conn_send(self: zt.ZmqConnection, data: bytes) -> None:
    if not F.rawzmq:
        await self.sock.send(data)
        return
    s = getattr(self, "_bench_shadow", None)
    if s is None:
        s = _shadow(self.sock)  # the receive loop has not started yet: it drains first
        try:
            s.send(data, zmq.NOBLOCK)
        except zmq.Again:
            await self.sock.send(data)
        return
    try:
        s.send(data, zmq.NOBLOCK)
    except zmq.Again:
        await self.sock.send(data)
    if _events(s) & zmq.POLLIN:
        asyncio.get_running_loop().call_soon(self._bench_drain)  # type: ignore[attr-defined]


# -- streams: request/reply over asyncio Protocols (no ZeroMQ) ----------------------

_LEN = struct.Struct("<I")


class FrameProtocol(asyncio.Protocol):
    """Length-prefixed frames over a stream; on_frame(self, frame) per frame."""

    def __init__(self, on_frame: Callable[[FrameProtocol, bytes], None]) -> None:
        self.on_frame = on_frame
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.buf and len(data) >= 4:
            (n,) = _LEN.unpack_from(data, 0)
            if len(data) == 4 + n:  # the common case: exactly one frame
                self.on_frame(self, data[4:])
                return
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            (n,) = _LEN.unpack_from(buf, 0)
            if len(buf) < 4 + n:
                break
            frame = bytes(buf[4 : 4 + n])
            del buf[: 4 + n]
            self.on_frame(self, frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(_LEN.pack(len(data)) + data)


def _split_endpoint(endpoint: str) -> tuple[str, str, int]:
    """=> ("tcp", host, port) or ("ipc", path, 0)."""
    if endpoint.startswith("tcp://"):
        host, port = endpoint[len("tcp://") :].rsplit(":", 1)
        return "tcp", host, 0 if port in ("*", "0") else int(port)
    if endpoint.startswith("ipc://"):
        return "ipc", endpoint[len("ipc://") :], 0
    raise ValueError(f"endpoint {endpoint!r}: streams patch serves tcp:// and ipc:// only")


class StreamServer(Server):
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._protos: set[FrameProtocol] = set()
        self._srv: asyncio.base_events.Server | None = None
        self.endpoint = ""

    async def start(self, endpoint: str) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> FrameProtocol:
            p = FrameProtocol(self._on_frame)
            self._protos.add(p)
            return p

        kind, where, port = _split_endpoint(endpoint)
        if kind == "tcp":
            self._srv = await loop.create_server(factory, where, port)
            bound = self._srv.sockets[0].getsockname()[1]
            self.endpoint = f"tcp://{where}:{bound}"
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(where)
            self._srv = await loop.create_unix_server(factory, where)
            self.endpoint = endpoint

    def _on_frame(self, proto: FrameProtocol, payload: bytes) -> None:
        coro = self._one(proto, payload, _now() if F.trace else 0)
        if F.eager:
            _run_eager(coro, self._tasks)
        else:
            t = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _one(self, proto: FrameProtocol, payload: bytes, t_recv: int) -> None:
        t_start = _now() if F.trace else 0
        out = await self._handler(payload)
        t_end = _now() if F.trace else 0
        if out is not None:
            proto.write(out)
        if F.trace:
            SERVER_TRACE.append((payload, t_recv, t_start, t_end, _now()))

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._srv is not None:
            self._srv.close()
        for p in self._protos:
            if p.transport is not None:
                p.transport.close()


class StreamConnection(Connection):
    def __init__(self, endpoint: str, on_reply: OnBytes) -> None:
        self.endpoint = endpoint
        self._on_reply = on_reply
        self._proto: FrameProtocol | None = None

    async def open(self, wait_s: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        kind, where, port = _split_endpoint(self.endpoint)
        deadline = loop.time() + wait_s

        def factory() -> FrameProtocol:
            return FrameProtocol(lambda _p, frame: self._on_reply(frame))

        while True:  # like a zmq connect: the server may not be listening yet
            try:
                if kind == "tcp":
                    _, proto = await loop.create_connection(factory, where, port)
                else:
                    _, proto = await loop.create_unix_connection(factory, where)
                break
            except OSError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.02)
        self._proto = proto

    async def send(self, data: bytes) -> None:
        assert self._proto is not None
        self._proto.write(data)

    async def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()


async def _stream_bind(self: zt.ZmqTransport, endpoint: str, handler: Handler) -> Server:
    s = StreamServer(handler)
    await s.start(endpoint)
    return s


async def _stream_connect(self: zt.ZmqTransport, endpoint: str, on_reply: OnBytes) -> Connection:
    c = StreamConnection(endpoint, on_reply)
    await c.open()
    return c


# -- kfault: the mmu resolves a trap through uvm itself ----------------------------------


class UvmKfault(Request, frozen=True, kw_only=True, tag="uvm.kfault"):
    """mmu -> uvm (kernel): resolve the fault of `owner`'s access; do not pmap.enter."""

    asid: int
    va: int
    access: int
    owner: int


class UvmKfaultReply(Reply, frozen=True, kw_only=True, tag="uvm.kfault.reply"):
    pfn: int = -1
    prot: int = 0


class _CapturePmap:
    """The uvm's pmap, except that enter() records the mapping instead of sending it."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.last: tuple[int, int, int, int, int] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def enter(self, asid: int, va: int, pfn: int, prot: int, flags: int) -> None:
        self.last = (asid, va, pfn, prot, flags)


def _install_kfault() -> None:
    from machine.mmu.service import MmuService
    from machine.proto import codec
    from machine.uvm.service import UvmService

    def union(classes: list[Any]) -> Any:
        u = classes[0]
        for c in classes[1:]:
            u = u | c
        return u

    reqs = [*codec.REQUESTS, UvmKfault]
    reps = [*codec.REPLIES, UvmKfaultReply]
    _set(codec, "_req_decoder", msgspec.msgpack.Decoder(type=union(reqs)))
    _set(codec, "_rep_decoder", msgspec.msgpack.Decoder(type=union(reps)))
    _set(codec, "BY_TAG", {**codec.BY_TAG, "uvm.kfault": UvmKfault})
    _set(UvmService, "serves", (*UvmService.serves, UvmKfault))
    _set(UvmService, "on_kfault", _uvm_on_kfault)
    _set(MmuService, "on_store", _mmu_on_store)
    _set(MmuService, "on_load", _mmu_on_load)


async def _uvm_on_kfault(self: Any, msg: UvmKfault) -> Reply:
    import copy

    from machine.ipc.service import UserError
    from machine.proto import Errno
    from machine.proto.types import Prot
    from machine.uvm.vm import VmError

    vm = self.vm
    proxy = getattr(self, "_bench_kvm", None)
    if proxy is None or proxy.pmap.real is not vm.pmap:
        proxy = copy.copy(vm)  # shares every table of the real Uvm; only .pmap differs
        proxy.pmap = _CapturePmap(vm.pmap)
        self._bench_kvm = proxy
    try:
        pfn = await proxy.fault(msg.asid, msg.owner, msg.va, Prot(msg.access))
    except VmError as e:
        raise UserError(Errno(e.errno), e.detail) from None
    last = proxy.pmap.last
    rep: Reply = self.reply(msg, UvmKfaultReply, pfn=pfn, prot=last[3] if last else 0)
    return rep


async def _kernel_resolve(self: Any, msg: Any, access: Any) -> Any:
    """Run access() until it does not fault or uvm cannot resolve the fault."""
    from machine.mmu.pmap import Fault
    from machine.params import PAGE_MASK
    from machine.proto import Status
    from machine.proto.types import EnterFlags, Prot

    res = access()
    for _ in range(8):
        if not isinstance(res, Fault):
            return res
        peer = self.peers.get("bench_uvm")
        if peer is None:
            ep = self.endpoints["kernel"].replace("mmu.kernel", "uvm.kernel")
            peer = await self.connect_peer("bench_uvm", ep)
        owner = self.mmu.owner_of(msg.asid)
        rep = await peer.call(
            UvmKfault(h=_H0, asid=msg.asid, va=res.va, access=int(res.access), owner=owner)
        )
        if rep.status is not Status.OK or not isinstance(rep, UvmKfaultReply):
            return res  # the client gets the trap, calls uvm.fault and gets its Segv
        va = res.va & ~PAGE_MASK
        self.mmu.enter(msg.asid, va, rep.pfn, Prot(rep.prot), EnterFlags.NONE)
        res = access()
    return res


async def _mmu_on_store(self: Any, msg: Any) -> Reply:
    self._owned(msg)
    res = await _kernel_resolve(self, msg, lambda: self.mmu.store(msg.asid, msg.va, msg.data))
    return self._access_reply(msg, res)  # type: ignore[no-any-return]


async def _mmu_on_load(self: Any, msg: Any) -> Reply:
    self._owned(msg)
    res = await _kernel_resolve(self, msg, lambda: self.mmu.load(msg.asid, msg.va, msg.n))
    return self._access_reply(msg, res)  # type: ignore[no-any-return]


# -- reading the trace back -----------------------------------------------------------

_any = msgspec.msgpack.Decoder()


def drain_trace() -> dict[str, list[list[Any]]]:
    """The recorded trace as plain lists (buffers are emptied)."""
    server: list[list[Any]] = []
    while SERVER_TRACE:
        payload, t_recv, t_start, t_end, t_sent = SERVER_TRACE.popleft()
        try:
            obj = _any.decode(payload)
            h = obj["h"]
            key = [str(obj["t"]), str(h["sender"]), int(h["incarnation"]), int(h["msg_id"])]
        except Exception:
            continue
        server.append([*key, t_recv, t_start, t_end, t_sent])
    calls = [list(c) for c in CALL_TRACE]
    CALL_TRACE.clear()
    return {"server": server, "calls": calls}


async def _on_dump(self: service_mod.Service, msg: CtlDump) -> Reply:
    orig = _ORIGINALS[(service_mod.Service, "on_dump")]
    rep: Reply = await orig(self, msg)
    if F.trace and isinstance(rep, CtlDumpReply):
        rep = msgspec.structs.replace(rep, state={**rep.state, "bench_trace": drain_trace()})
    return rep
