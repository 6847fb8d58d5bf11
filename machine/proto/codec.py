"""Encoding and decoding: msgpack (msgspec) with typed unions per message kind.

decode_request() never lets bad bytes escape as anything but BadMessage,
which carries the errno to answer with and the msg_id to answer to (when
one could be read), so a service can reply to any input and change nothing.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

# Importing the message modules registers every subclass (each area's messages: adding
# an area is adding its module here).
from machine.proto import control, net, pdaemon, pmap, trap, uvm, vmcalls  # noqa: F401
from machine.proto.base import Errno, Event, Header, Msg, Reply, Request


def _all_subclasses(base: type[Msg]) -> list[type[Msg]]:
    out: list[type[Msg]] = []
    stack = list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        tag = cls.__struct_config__.tag
        if tag is not None and tag != cls.__name__:  # a base (Notice) is tagged by its name
            out.append(cls)
    out.sort(key=lambda c: str(c.__struct_config__.tag))
    return out


REQUESTS: list[type[Request]] = _all_subclasses(Request)  # type: ignore[assignment]
REPLIES: list[type[Reply]] = _all_subclasses(Reply)  # type: ignore[assignment]
EVENTS: list[type[Event]] = _all_subclasses(Event)  # type: ignore[assignment]
BY_TAG: dict[str, type[Msg]] = {
    str(c.__struct_config__.tag): c for c in (*REQUESTS, *REPLIES, *EVENTS)
}

_encoder = msgspec.msgpack.Encoder()


def _make_union(classes: list[type[Msg]]) -> Any:
    u: Any = classes[0]
    for c in classes[1:]:
        u = u | c
    return u


_req_decoder = msgspec.msgpack.Decoder(type=_make_union(list(REQUESTS)))
_rep_decoder = msgspec.msgpack.Decoder(type=_make_union(list(REPLIES)))
_evt_decoder = msgspec.msgpack.Decoder(type=_make_union(list(EVENTS)))


class BadMessage(Exception):
    """Bytes that are not a valid request. Answer with `errno`, re=`msg_id`."""

    def __init__(self, errno: Errno, detail: str, msg_id: int = 0) -> None:
        super().__init__(detail)
        self.errno = errno
        self.detail = detail
        self.msg_id = msg_id


def tag_of(cls: type[Msg] | Msg) -> str:
    return str(cls.__struct_config__.tag)


def encode(msg: Msg) -> bytes:
    return _encoder.encode(msg)


class _ProbeTag(msgspec.Struct):
    t: str | None = None


class _ProbeHead(msgspec.Struct):
    msg_id: int = 0


class _ProbeId(msgspec.Struct):
    h: _ProbeHead | None = None


# Typed probes read only "t" and "h.msg_id" of a map and skip everything else
# without building it: a bad request costs no more memory than its bytes (an
# untyped decode of 2 MiB of empty lists would build ~128 MiB of objects).
_probe_tag = msgspec.msgpack.Decoder(_ProbeTag)
_probe_id = msgspec.msgpack.Decoder(_ProbeId)
_PROBE_ERRORS = (
    msgspec.DecodeError,
    msgspec.ValidationError,
    ValueError,
    TypeError,
    RecursionError,
)


def salvage_msg_id(raw: bytes | memoryview) -> int:
    """The msg_id of a request's bytes, if they decode as a map with one (else 0)."""
    try:
        h = _probe_id.decode(raw).h
    except _PROBE_ERRORS:
        return 0
    mid = h.msg_id if h is not None else 0
    return mid if 0 < mid < (1 << 63) else 0


def _salvage_tag(raw: bytes | memoryview) -> str | None:
    try:
        return _probe_tag.decode(raw).t
    except _PROBE_ERRORS:
        return None


def decode_request(raw: bytes | memoryview) -> Request:
    """Decode one request. => BadMessage(EBADMSG | EINVAL, detail, msg_id) on bad input."""
    try:
        msg = _req_decoder.decode(raw)
    except msgspec.ValidationError as e:
        msg_id, tag = salvage_msg_id(raw), _salvage_tag(raw)
        if tag is None or tag not in BY_TAG:
            shown = repr(tag)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise BadMessage(Errno.EBADMSG, f"unknown message tag {shown}", msg_id) from None
        if not issubclass(BY_TAG[tag], Request):
            raise BadMessage(Errno.EBADMSG, f"{tag} is not a request", msg_id) from None
        raise BadMessage(Errno.EINVAL, f"{tag}: {e}", msg_id) from None
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError) as e:
        raise BadMessage(Errno.EBADMSG, f"undecodable bytes: {e}", 0) from None
    return msg  # type: ignore[no-any-return]


def decode_reply(raw: bytes) -> Reply:
    """Decode one reply. => msgspec errors propagate (a peer bug, not user input)."""
    return _rep_decoder.decode(raw)  # type: ignore[no-any-return]


def decode_event(raw: bytes) -> Event:
    return _evt_decoder.decode(raw)  # type: ignore[no-any-return]


M = TypeVar("M", bound=Msg)


def with_header(msg: M, h: Header) -> M:
    """The same message with a new header."""
    return msgspec.structs.replace(msg, h=h)
