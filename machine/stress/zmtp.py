"""A ZMTP 3.0 DEALER on a gevent socket: the green client's connection to a role's ROUTER.

    d = Dealer.connect("tcp://127.0.0.1:7701", timeout_s=5.0)
    d.send(request_bytes)
    reply = d.recv(0.25)        # one whole message (its last frame), or None: not yet
    d.close()

Why not libzmq: a libzmq DEALER hands every message to its I/O thread through a
mailbox (an eventfd write, a getpid, and a poll and a read to learn that a reply
came), and the I/O thread wakes for each message in each direction. Measured in
a stress run (docs/stress.md, "The harness's own overhead"), that thread was a
quarter of a Locust worker's CPU and the mailbox calls a seventh of the rest.
Here a message is one send(2), and a reply one recv(2) after the hub's epoll says
the socket is readable: the same bytes on the wire, ZeroMQ's own protocol
(ZMTP 3.0, rfc.zeromq.org/spec/23, NULL mechanism: the machine's user endpoints
use no other), speaking to the same ROUTER.

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
  - recv never blocks past its timeout; a closed connection (the role gone: a
    panic) makes `broken` true, and recv and send raise ConnectionError after it;
  - connect() does the whole handshake or raises (OSError, ValueError for a peer
    that does not speak ZMTP 3 with NULL), leaving no socket open.
"""

from __future__ import annotations

import socket as pysocket
import struct
import time

from gevent import socket

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


def _command(name: bytes, data: bytes = b"") -> bytes:
    body = bytes((len(name),)) + name + data
    return bytes((_COMMAND, len(body))) + body if len(body) < 256 else (
        bytes((_COMMAND | _LONG,)) + struct.pack(">Q", len(body)) + body)  # fmt: skip


_READY = _command(b"READY", b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER")


def _address(endpoint: str) -> tuple[int, str | tuple[str, int]]:
    """tcp://HOST:PORT or ipc://PATH => (address family, address)."""
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[6:].rpartition(":")
        host = host.strip("[]")
        family = pysocket.AF_INET6 if ":" in host else pysocket.AF_INET
        return family, (host, int(port))
    if endpoint.startswith("ipc://"):
        return pysocket.AF_UNIX, endpoint[6:]
    raise ValueError(f"endpoint {endpoint!r}: use tcp://HOST:PORT or ipc://PATH")


class Dealer:
    """One ZMTP connection to a ROUTER (see the module docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._parts: list[bytes] = []  # the frames of a message still arriving
        self.broken = False

    @classmethod
    def connect(cls, endpoint: str, timeout_s: float = 10.0) -> Dealer:
        """Connect and handshake. => a Dealer; OSError, ValueError (not ZMTP 3 NULL)."""
        family, addr = _address(endpoint)
        s = socket.socket(family, pysocket.SOCK_STREAM)
        try:
            s.settimeout(timeout_s)
            s.connect(addr)
            if family != pysocket.AF_UNIX:
                s.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
            s.sendall(_GREETING + _READY)
            d = cls(s)
            deadline = time.monotonic() + timeout_s
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
            s.close()
            raise

    def send(self, payload: bytes) -> None:
        """One single-frame message. => ConnectionError once the connection is gone."""
        if self.broken:
            raise ConnectionError("the connection is closed")
        n = len(payload)
        head = bytes((0, n)) if n < 256 else b"\x02" + struct.pack(">Q", n)
        try:
            if n < _JOIN_BELOW:  # one send(2): a copy is cheaper than a system call
                self.sock.sendall(head + payload)
            else:
                self.sock.sendall(head)
                self.sock.sendall(payload)
        except OSError as e:
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
                        ctx = body[1 + body[0] + 2 :]
                        self.sock.sendall(_command(b"PONG", ctx))
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
        """Read what has come (waiting in the hub until the deadline). => TimeoutError,
        ConnectionError at the end of the stream."""
        if self.broken:
            raise ConnectionError("the connection is closed")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(max(need, _RECV_CHUNK))
        except TimeoutError:
            raise TimeoutError from None
        except OSError as e:
            self.broken = True
            raise ConnectionError(str(e)) from e
        if not chunk:
            self.broken = True
            raise ConnectionError("the peer closed the connection")
        self._buf += chunk

    def close(self) -> None:
        self.broken = True
        self.sock.close()
