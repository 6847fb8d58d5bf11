"""A ZMTP 3.0 DEALER on a gevent socket: the green client's connection to a role's ROUTER.

    d = Dealer.connect("tcp://127.0.0.1:7701", timeout_s=5.0)
    d.send(request_bytes, deadline)  # time.monotonic() + seconds
    reply = d.recv(0.25)        # one whole message (its last frame), or None: not yet
    d.close()

Why not libzmq: a libzmq DEALER hands every message to its I/O thread through a
mailbox (an eventfd write, a getpid, and a poll and a read to learn that a reply
came), and the I/O thread wakes for each message in each direction. Measured in
a stress run (docs/stress.md, "The harness's own overhead"), that thread was a
quarter of a Locust worker's CPU and the mailbox calls a seventh of the rest.
Here a message is one send(2), and a reply one recv(2) after the hub's epoll says
the socket is readable (gevent's own socket would try the recv(2) first, and fail):
the same bytes on the wire, ZeroMQ's own protocol (ZMTP 3.0, rfc.zeromq.org/spec/23,
NULL mechanism: the machine's user endpoints use no other), to the same ROUTER.

What a DEALER is to a ROUTER, and all this does: a greeting (64 bytes each way,
version 3.0, mechanism NULL, as client), a READY command each way (ours names
Socket-Type DEALER; the ROUTER gives the connection its identity), then frames:
a flags byte (MORE 1, LONG 2, COMMAND 4), a size (1 byte, or 8 with LONG) and
the body. A message is its frames up to the one without MORE; the client's
requests and the roles' replies are one frame each. A PING command (ZMTP 3.1
heartbeats, if a peer ever asks for them) is answered with PONG; other commands
are ignored.

Invariants:
  - one caller at a time (green.py's per-connection lock): a partial message
    stays in `_buf` for the next recv, never lost between calls;
  - recv never blocks past its timeout, send never past its deadline; a closed
    connection (the role gone: a panic), or a message only half written by the
    deadline, makes `broken` true, and recv and send raise ConnectionError after it;
  - connect() does the whole handshake or raises (OSError, ValueError for a peer
    that does not speak ZMTP 3 with NULL), leaving no socket open.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket as pysocket
import struct
import time
from typing import Any

import gevent
import gevent.socket
from gevent.hub import Waiter

_MORE, _LONG, _COMMAND = 1, 2, 4
_GREETING = (
    b"\xff" + b"\0" * 8 + b"\x7f"  # signature
    + bytes((3, 0))  # version 3.0
    + b"NULL".ljust(20, b"\0")  # mechanism
    + b"\0"  # as-server: no
    + b"\0" * 31  # filler
)  # fmt: skip
_RECV_CHUNK = 1 << 16
_JOIN_BELOW = 1 << 16  # a message below this goes out with its header in one send(2)
_EV_READ, _EV_WRITE = 1, 2  # libev's


def _command(name: bytes, data: bytes = b"") -> bytes:
    body = bytes((len(name),)) + name + data
    return bytes((_COMMAND, len(body))) + body if len(body) < 256 else (
        bytes((_COMMAND | _LONG,)) + struct.pack(">Q", len(body)) + body)  # fmt: skip


_READY = _command(b"READY", b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER")


def _address(endpoint: str) -> tuple[int, Any]:
    """tcp://HOST:PORT or ipc://PATH => (address family, address). A host name is looked
    up through gevent's resolver (the hub goes on meanwhile); an address literal is not."""
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[6:].rpartition(":")
        host = host.strip("[]")
        try:
            family = pysocket.AF_INET6 if ipaddress.ip_address(host).version == 6 else (
                pysocket.AF_INET)  # fmt: skip
            return family, (host, int(port))
        except ValueError:
            info = gevent.socket.getaddrinfo(host, int(port), 0, pysocket.SOCK_STREAM)
            return info[0][0], info[0][4]
    if endpoint.startswith("ipc://"):
        return pysocket.AF_UNIX, endpoint[6:]
    raise ValueError(f"endpoint {endpoint!r}: use tcp://HOST:PORT or ipc://PATH")


class Dealer:
    """One ZMTP connection to a ROUTER (see the module docstring). The socket is a plain
    non-blocking one, waited on through two libev io watchers of the hub made once: a
    read waits for readiness before recv(2) (a reply takes a round trip, so trying first
    would cost a failed system call per call), a write only when the kernel's buffer is
    full."""

    def __init__(self, sock: pysocket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._hub = gevent.get_hub()
        self._readable = self._hub.loop.io(sock.fileno(), _EV_READ)
        self._writable = self._hub.loop.io(sock.fileno(), _EV_WRITE)
        self._buf = bytearray()
        self._parts: list[bytes] = []  # the frames of a message still arriving
        self.broken = False

    @classmethod
    def connect(cls, endpoint: str, timeout_s: float = 10.0) -> Dealer:
        """Connect and handshake. => a Dealer; OSError, ValueError (not ZMTP 3 NULL)."""
        family, addr = _address(endpoint)
        deadline = time.monotonic() + timeout_s
        s = pysocket.socket(family, pysocket.SOCK_STREAM)
        d = None
        try:
            d = cls(s)
            err = s.connect_ex(addr)
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                d._wait(d._writable, deadline)
                err = s.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_ERROR)
            if err:
                raise OSError(err, f"{endpoint}: {os.strerror(err)}")
            if family != pysocket.AF_UNIX:
                s.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
            d._send(_GREETING + _READY, deadline)
            peer = d._take(64, deadline)
            if peer[0] != 0xFF or peer[9] != 0x7F or peer[10] < 3:
                raise ValueError(f"{endpoint}: not a ZMTP 3 peer")
            if peer[12:32].rstrip(b"\0") != b"NULL":
                raise ValueError(f"{endpoint}: mechanism {peer[12:32]!r}, not NULL")
            flags, body = d._frame(deadline)
            if not flags & _COMMAND or body[1 : 1 + body[0]] != b"READY":
                raise ValueError(f"{endpoint}: no READY from the peer")
            return d
        except BaseException:
            if d is not None:
                d.close()
            else:
                s.close()
            raise

    def send(self, payload: bytes, deadline: float) -> None:
        """One single-frame message. => ConnectionError once the connection is gone (or
        if the kernel would not take it by the deadline: the connection is then unusable)."""
        n = len(payload)
        head = bytes((0, n)) if n < 256 else b"\x02" + struct.pack(">Q", n)
        if n < _JOIN_BELOW:  # one send(2): a copy is cheaper than a system call
            self._send(head + payload, deadline)
        else:
            self._send(head, deadline)
            self._send(payload, deadline)

    def _send(self, data: bytes, deadline: float) -> None:
        if self.broken:
            raise ConnectionError("the connection is closed")
        view, sent = memoryview(data), 0
        try:
            while sent < len(data):
                try:
                    sent += self.sock.send(view[sent:])
                except BlockingIOError:
                    self._wait(self._writable, deadline)
        except (OSError, TimeoutError) as e:  # a message half written: the stream is lost
            self.broken = True
            raise ConnectionError(str(e)) from e

    def recv(self, timeout_s: float) -> bytes | None:
        """The next whole message's last frame, or None if none came within timeout_s.
        => ConnectionError once the connection is gone."""
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                flags, body = self._frame(deadline)
                if flags & _COMMAND:
                    if body[1 : 1 + body[0]] == b"PING":  # ZMTP 3.1 heartbeat
                        self._send(_command(b"PONG", body[1 + body[0] + 2 :]), deadline)
                    continue
                if flags & _MORE:
                    self._parts.append(body)
                    continue
                self._parts.clear()
                return body
        except TimeoutError:
            return None

    def _frame(self, deadline: float) -> tuple[int, bytes]:
        """One frame: (flags, body). => TimeoutError at the deadline (nothing consumed)."""
        buf = self._buf
        while len(buf) < 2:
            self._fill(deadline)
        flags = buf[0]
        if flags & _LONG:
            while len(buf) < 9:
                self._fill(deadline)
            size, at = struct.unpack_from(">Q", buf, 1)[0], 9
        else:
            size, at = buf[1], 2
        while len(buf) < at + size:
            self._fill(deadline, at + size - len(buf))
        body = bytes(buf[at : at + size])
        del buf[: at + size]
        return flags, body

    def _take(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _fill(self, deadline: float, need: int = 1) -> None:
        """Read what has come: waiting for it first when nothing is buffered, else
        trying at once (the rest of a long frame). => TimeoutError at the deadline,
        ConnectionError at the end of the stream."""
        if self.broken:
            raise ConnectionError("the connection is closed")
        wait = not self._buf
        while True:
            if wait:
                self._wait(self._readable, deadline)
            try:
                chunk = self.sock.recv(max(need, _RECV_CHUNK))
                break
            except BlockingIOError:
                wait = True
            except OSError as e:
                self.broken = True
                raise ConnectionError(str(e)) from e
        if not chunk:
            self.broken = True
            raise ConnectionError("the peer closed the connection")
        self._buf += chunk

    def _wait(self, watcher: Any, deadline: float) -> None:
        """Until the watcher's fd is ready (the greenlet sleeps in the hub). => TimeoutError
        at the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        waiter: Waiter[bool] = Waiter(self._hub)
        timer = self._hub.loop.timer(left)
        watcher.start(waiter.switch, True)
        timer.start(waiter.switch, False)
        try:
            ready = waiter.get()
        finally:
            watcher.stop()
            timer.close()
        if not ready:
            raise TimeoutError

    def close(self) -> None:
        self.broken = True
        for w in (self._readable, self._writable):
            w.stop()
            w.close()
        self.sock.close()
