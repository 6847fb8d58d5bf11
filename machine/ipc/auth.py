"""Sessions that cannot be forged: the machine key, session keys, signed user requests.

A client session is made by the machine (uvm.attach) and consists of
  * `sid`, its public id: the `incarnation` in every header the client sends,
    also seen by others (on the wire's metadata, in events, in status);
  * `key`, its secret: HMAC-SHA256(machine key, "uvm-machine session" || sid),
    256 bits that only the machine and that client know.
The machine key is 32 random bytes made at boot (`new_machine_key`) and held
by every role (from RoleConfig.key_file, a mode-0600 file); so each role
derives any session's key itself and keeps no session table to check a
request.

Framing on a user endpoint. A request is its msgpack bytes, optionally
followed by a 16-byte tag:

    frame = body || HMAC-SHA256(session key, body)[:16]

A request whose header names a session (incarnation != 0) must carry the tag
of that session's key over its exact bytes (compared in constant time over all
16 bytes, hmac.compare_digest), and a msg_id that passes the replay window.
Only the public requests (`PUBLIC_TAGS`: hello, ping, stats, directory, status,
attach) may come unsigned, with incarnation 0. Anything else is refused with
EPERM before it is dispatched, and nothing changes. The refusal does not say
whether the session exists.

The msg_id rule (the replay window, as IPsec's and DTLS's). A role keeps, per
session, the highest msg_id it has accepted (`high`) and which of the
REPLAY_WINDOW (4096, machine.params) ids high, high-1, ..., high-4095 it has
accepted. A signed request's msg_id (1 <= id < 2**63) is
  * accepted if id > high (any distance ahead: the window slides to it);
  * accepted if high - 4095 <= id < high and id was not accepted before (the
    transport or a client's concurrent tasks may reorder a few requests);
  * refused otherwise: a repeat within the window, or id <= high - 4096, even if
    never seen (the role no longer knows). The answer is EPERM, detail
    "replayed request (msg_id already seen from this session)", re = the id.
So ids must roughly increase (a counter is right; random ids are not: one
drawn below the highest seen minus 4095 is refused) and never repeat. The tag
is checked first, so a forged frame never moves the window, and a request
refused by the tag or the window changes nothing. Once both pass, the id is
used whatever the answer (EAGAIN, ENOSYS, an errno of the handler): a retry
takes a new id.

Scope: one window per session per role (each role's SessionAuth), not one per
session across roles. Per-role windows need no state shared between processes
(the mmu checks a request without asking uvm, as with keys). A frame
captured at one role and replayed to another is judged by that role's window
and may pass it, but a session request's tag names the one role that serves
it, so elsewhere it is ENOSYS and changes nothing (the ctl.* requests
several roles serve change no VM state). A client that numbers its requests from
one counter across roles sends each role an increasing subsequence, which
passes each role's window; one window across roles would also pass it but
would need every role to share a window per session (a message, or shared
memory, per request) for no added protection. A session's window outlives its
key (forget()) while the role remembers it (_MAX_WINDOWS sessions, LRU).

Leases and ended sessions: every request that passes check() marks its
session seen (`take_seen`); each role reports the sessions it saw to uvm in
batches (uvm.sessions_seen from net, pmap.sessions to the mmu), never one
message per request, and uvm renews their leases. When uvm ends a session it
tells the roles (the reply's `ended` lists, the uvm.session_ended event), each
calls `forget`, and from then on a signed request of that session is answered
ESESSION at every role (machine.ipc.service), never ESRCH or EBADF.

Live sessions (`live`): the sessions whose requests passed check() and that
uvm has not said ended: the `n` of the fair shares of this role's caps
(machine.share). Bounded by _MAX_WINDOWS (the oldest seen goes first).

Invariants:
  * An identifier others can see (a session id, an asid, a socket id, a
    handle) never authorises anything: only a tag made with the session key
    does, and every object a request names is checked against the session
    that owns it (uvm, mmu and net each do so).
  * A replayed frame (same session, same msg_id) is refused, whatever its bytes.
  * Kernel endpoints take no tags: they are reachable only by the machine's
    own roles (ipc sockets in a mode-0700 run directory; under compose, ipc
    sockets on a volume only the roles mount).

Frames signed in this process (the in-memory bus). A transport that hands a request's
bytes object itself from sender to receiver (machine.ipc.inmemory; never a real one)
keeps a SignedFrames: Identity.frame signs there through it (SignedFrames.sign), which
notes each frame with the key it used, and the receiving role's check takes that note
instead of recomputing the HMAC when the frame is that very object (`is`, never an equal
copy), its body is the frame less the tag, and the signer's key is the session's key
(compared in constant time). Then HMAC(session key, body) is the tag the signer
appended, by construction, so the answer is the one recomputing gives: the tag is still
checked against the session key, and the replay window and every later check run as
before. A frame without a note (any frame of a real transport, any frame a test builds
by hand, a note evicted by the bounds) takes the full HMAC. The sim cannot break it:
bytes are immutable, a noted frame is held (so its id is not reused) until checked or
evicted, and only this process's own Identity can note one. It halves the bus's HMAC
work, which hashes every stored byte.

Residual risk, stated plainly: the tag authenticates, it does not encrypt.
Someone who can read a client's TCP stream (root on the host, or on the path
to a remote client) sees its data and the key in the attach reply; on an
untrusted network run clients on the machine's host or over a tunnel.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
from pathlib import Path

from machine.params import REPLAY_WINDOW as REPLAY_WINDOW  # re-exported: this module's rule

TAG_LEN = 16
KEY_LEN = 32
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
#: Session ids and msg_ids a signed request may carry: 0 < n < 2**63 (as the header's types).
_ID_LIMIT = 1 << 63
_MAX_KEYS = 4096  # session keys cached per role (LRU); recomputing one costs ~2 us
_MAX_WINDOWS = 65536  # sessions whose replay window a role remembers (LRU)
_SESSION_LABEL = b"uvm-machine session"

#: Requests a client may send before it has a session (incarnation 0, no tag).
PUBLIC_TAGS = frozenset(
    {"ctl.hello", "ctl.ping", "ctl.stats", "ctl.directory", "ctl.status", "uvm.attach"}
)


def new_machine_key() -> bytes:
    return secrets.token_bytes(KEY_LEN)


def write_key_file(path: Path, key: bytes) -> None:
    """Write the machine key, hex, readable by its owner only (0600 from the start)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a key of an earlier run; never write into a file we find
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.hex().encode() + b"\n")
    finally:
        os.close(fd)


def read_key_file(path: str | Path) -> bytes:
    key = bytes.fromhex(Path(path).read_text().strip())
    if len(key) != KEY_LEN:
        raise ValueError(f"{path}: a machine key is {KEY_LEN} bytes, not {len(key)}")
    return key


def session_key(machine_key: bytes, sid: int) -> bytes:
    return hmac.digest(machine_key, _SESSION_LABEL + sid.to_bytes(8, "big"), "sha256")


def sign(key: bytes, body: bytes | memoryview) -> bytes:
    """=> the tag a client appends to `body` (the request's msgpack bytes)."""
    return hmac.digest(key, body, "sha256")[:TAG_LEN]


class Mac:
    """sign() for one key, with HMAC's two keyed SHA-256 states made once (RFC 2104):
    a tag then costs two state copies instead of four hash setups (0.8 us, not 2.2,
    for a small request; measured). => tag(body) == sign(key, body)."""

    __slots__ = ("_inner", "_outer", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        k = (key if len(key) <= 64 else hashlib.sha256(key).digest()).ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in k))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in k))

    def tag(self, body: bytes | memoryview) -> bytes:
        inner = self._inner.copy()
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:TAG_LEN]


class SignedFrames:
    """Frames signed in this process, noted with their key until checked (module doc,
    "Frames signed in this process"). Bounded: at most MAX frames and MAX_BYTES bytes,
    the oldest notes dropped first (their frames are then checked with the full HMAC)."""

    MAX = 1024
    MAX_BYTES = 32 << 20

    def __init__(self) -> None:
        self._notes: dict[int, tuple[bytes, bytes]] = {}  # id(frame) -> (frame, key)
        self._bytes = 0
        self.taken = 0  # notes used up by a check (tests, benchmarks)

    def sign(self, mac: Mac, body: bytes) -> bytes:
        """=> body || mac.tag(body), the frame, noted with mac's key (the only way to note
        one: a note's tag is always the HMAC of its body under its key)."""
        frame = body + mac.tag(body)
        self._notes[id(frame)] = (frame, mac.key)
        self._bytes += len(frame)
        while len(self._notes) > self.MAX or self._bytes > self.MAX_BYTES:
            old, _ = self._notes.pop(next(iter(self._notes)))
            self._bytes -= len(old)
        return frame

    def take(self, body: bytes | memoryview) -> tuple[bytes, bytes] | None:
        """=> (the key `body`'s frame was signed with, the tag appended), if body is a
        noted frame less its tag (a memoryview of that very frame object); the note is
        used up. Else None."""
        if not isinstance(body, memoryview) or not self._notes:
            return None
        frame = body.obj
        got = self._notes.get(id(frame))
        if got is None or got[0] is not frame or body.nbytes != len(frame) - TAG_LEN:
            return None
        if not body.c_contiguous or body.format != "B":
            return None
        del self._notes[id(frame)]
        self._bytes -= len(frame)
        self.taken += 1
        return got[1], frame[-TAG_LEN:]


class SessionAuth:
    """One role's check of signed user requests (keys derived, replays refused).
    `signed`: the notes of a transport that carries frames by reference (module doc)."""

    def __init__(self, machine_key: bytes, signed: SignedFrames | None = None) -> None:
        if len(machine_key) != KEY_LEN:
            raise ValueError(f"a machine key is {KEY_LEN} bytes")
        self._machine_key = machine_key
        self._signed = signed
        self._macs: collections.OrderedDict[int, Mac] = collections.OrderedDict()
        # sid -> (highest msg_id seen, bitmap: bit i set = highest - i seen)
        self._windows: collections.OrderedDict[int, tuple[int, int]] = collections.OrderedDict()
        #: Sessions whose requests passed check() since the last take_seen() (the lease
        #: report to uvm), and sessions known to have ended (bounded, LRU).
        self._seen: set[int] = set()
        self._ended: collections.OrderedDict[int, None] = collections.OrderedDict()
        #: The live sessions here: whose requests passed check() and that uvm has not
        #: said ended (forget); the `n` of this role's fair shares (machine.share).
        #: Bounded: beyond _MAX_WINDOWS the oldest first seen goes.
        self.live: dict[int, None] = {}
        self.refused = 0
        self.replays = 0

    def key(self, sid: int) -> bytes:
        """The session's key (what uvm.attach hands its client)."""
        return session_key(self._machine_key, sid)

    def _mac(self, sid: int) -> Mac:
        m = self._macs.get(sid)
        if m is None:
            m = self._macs[sid] = Mac(self.key(sid))
            if len(self._macs) > _MAX_KEYS:
                self._macs.popitem(last=False)
        else:
            self._macs.move_to_end(sid)
        return m

    def check(self, sid: int, msg_id: int, body: bytes | memoryview, tag: bytes | None) -> str:
        """=> "" if the request is the session's own and new; else why it is refused.

        The tag is checked before the replay window, so a forged frame cannot
        mark an id as seen. Any int is answered (never raises): a session id or
        msg_id outside [1, 2**63) names no session and no request.
        """
        if tag is None:
            self.refused += 1
            return "unsigned request: attach for a session and sign every request"
        if not (0 < sid < _ID_LIMIT and 0 < msg_id < _ID_LIMIT):
            self.refused += 1
            return "bad session credentials"
        mac = self._mac(sid)
        signed = self._signed.take(body) if self._signed is not None else None
        noted = (
            signed is not None
            and hmac.compare_digest(signed[0], mac.key)
            and hmac.compare_digest(signed[1], tag)
        )  # the signer's own note: HMAC(mac.key, body) == tag by construction
        if not noted and not hmac.compare_digest(mac.tag(body), tag):
            self.refused += 1
            return "bad session credentials"
        high, seen = self._windows.get(sid, (0, 0))
        if msg_id > high:
            shift = msg_id - high
            seen = ((seen << shift) | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
            high = msg_id
        else:
            back = high - msg_id
            if back >= REPLAY_WINDOW or seen >> back & 1:
                self.replays += 1
                return "replayed request (msg_id already seen from this session)"
            seen |= 1 << back
        self._windows[sid] = (high, seen)
        self._windows.move_to_end(sid)
        if len(self._windows) > _MAX_WINDOWS:
            self._windows.popitem(last=False)
        if sid not in self._ended:
            if len(self._seen) < _MAX_WINDOWS:
                self._seen.add(sid)
            if sid not in self.live:
                self.live[sid] = None
                if len(self.live) > _MAX_WINDOWS:
                    del self.live[next(iter(self.live))]
        return ""

    def take_seen(self, limit: int) -> list[int]:
        """=> up to `limit` sessions whose requests passed check() since the last call
        (each once); the rest stay for the next call."""
        out: list[int] = []
        while self._seen and len(out) < limit:
            out.append(self._seen.pop())
        return sorted(out)

    def forget(self, sid: int) -> None:
        """The session ended: drop its cached key (its window stays, against replays) and
        remember it ended (`ended`), so its requests get the one "session ended" answer."""
        self._macs.pop(sid, None)
        self._seen.discard(sid)
        self.live.pop(sid, None)
        self._ended[sid] = None
        self._ended.move_to_end(sid)
        if len(self._ended) > _MAX_WINDOWS:
            self._ended.popitem(last=False)

    def ended(self, sid: int) -> bool:
        """Did uvm say this session ended? (the last _MAX_WINDOWS ended sessions)"""
        return sid in self._ended
