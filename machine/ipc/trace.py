"""The in-memory bus's trace: a digest of every delivery, and optionally the deliveries.

TraceDigest is a running blake2b over one record per delivery: the virtual
time in ns (8 bytes, little-endian), `|<endpoint>|<kind>|`, the message tag.
Invariants:

  * It depends on the order and timing of deliveries and on which messages
    they were, never on their raw bytes: those carry the temporary state
    directory's path, keys and per-run random values, which differ between
    two runs of the same seed. Nor on PYTHONHASHSEED (nothing hashed here
    goes through hash()).
  * It is cheap (~0.8 us per delivery measured on a loaded 2-core host; a
    first-touch fault makes 4 deliveries, ~1.5 % of its cost): the tag is
    read straight from the msgpack bytes without decoding the message.
    msgspec writes a tagged struct as a map whose first key is "t", so a
    message starts `<map header> a1 74 <str header> <tag>`; tags are
    short (a fixstr). Bytes of another shape (a fuzzed request) are noted as
    their tag "?".

Delivery is one recorded delivery (InMemoryTransport(record=True)), for the
sequence diagram: its data are the message's exact bytes.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

#: Buffered lines hashed at once past this many bytes (saves a blake2b call per delivery).
_FLUSH_BYTES = 1 << 16
_NS = struct.Struct("<Q").pack


class Delivery(NamedTuple):
    """One message handed to its receiver: time (virtual s), "req" | "rep" | "evt",
    the server's or publisher's endpoint, the message's bytes."""

    t: float
    kind: str
    endpoint: str
    data: bytes


def tag_bytes(data: bytes) -> bytes:
    """The message tag at the start of msgpack `data` (b"?" if there is none)."""
    if data[1:3] == b"\xa1t":  # a fixmap's first key "t" (the common case)
        try:
            n = data[3]
        except IndexError:
            return b"?"
        if 0xA0 <= n <= 0xBF:
            return data[4 : 4 + (n & 0x1F)]
    return _tag_slow(data)


def _tag_slow(data: bytes) -> bytes:
    """A map16/map32 header, or a str8 tag; else b"?"."""
    if not data:
        return b"?"
    i = {0xDE: 3, 0xDF: 5}.get(data[0], 1 if 0x80 <= data[0] <= 0x8F else 0)
    if not i or data[i : i + 2] != b"\xa1t" or len(data) < i + 3:
        return b"?"
    n = data[i + 2]
    if 0xA0 <= n <= 0xBF:
        return data[i + 3 : i + 3 + (n & 0x1F)]
    if n == 0xD9 and len(data) > i + 3:
        return data[i + 4 : i + 4 + data[i + 3]]
    return b"?"


def delivery_key(endpoint: str, kind: str) -> bytes:
    """The constant middle of a delivery's line (made once per connection)."""
    return f"|{endpoint}|{kind}|".encode()


class TraceDigest:
    """A running blake2b over every delivery's (time in ns, endpoint, kind, tag)."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)
        self._buf = bytearray()

    def note(self, t: float, key: bytes, data: bytes) -> None:
        """One delivery at virtual time t (s); key: delivery_key(endpoint, kind)."""
        buf = self._buf
        buf += _NS(round(t * 1e9))
        buf += key
        buf += tag_bytes(data)
        if len(buf) > _FLUSH_BYTES:
            self._h.update(buf)
            buf.clear()

    def hexdigest(self) -> str:
        h = self._h.copy()
        h.update(self._buf)
        return h.hexdigest()
