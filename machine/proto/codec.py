"""Encoding and decoding: msgpack (msgspec) with typed unions per message kind.

decode_request() never lets bad bytes escape as anything but BadMessage,
which carries the errno to answer with and the msg_id to answer to (when
one could be read), so a service can reply to any input and change nothing.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from machine.proto.base import Errno, Event, Header, Msg, Reply, Request


def _all_subclasses(base: type[Msg]) -> list[type[Msg]]:
    out: list[type[Msg]] = []
    stack = list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__struct_config__.tag is not None:
            out.append(cls)
    out.sort(key=lambda c: str(c.__struct_config__.tag))
    return out


def _load_all() -> None:
    # Importing the modules registers every subclass.
    from machine.proto import control, net, pdaemon, pmap, uvm  # noqa: F401


_load_all()

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
_any_decoder = msgspec.msgpack.Decoder()


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


def _salvage_msg_id(raw: bytes | memoryview) -> tuple[int, Any]:
    try:
        obj = _any_decoder.decode(raw)
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError):
        return 0, None
    if isinstance(obj, dict):
        h = obj.get("h")
        if isinstance(h, dict):
            mid = h.get("msg_id")
            if isinstance(mid, int) and not isinstance(mid, bool) and 0 < mid < (1 << 63):
                return mid, obj
    return 0, obj


def decode_request(raw: bytes | memoryview) -> Request:
    """Decode one request. => BadMessage(EBADMSG | EINVAL, detail, msg_id) on bad input."""
    try:
        msg = _req_decoder.decode(raw)
    except msgspec.ValidationError as e:
        msg_id, obj = _salvage_msg_id(raw)
        tag = obj.get("t") if isinstance(obj, dict) else None
        if not isinstance(tag, str) or tag not in BY_TAG:
            raise BadMessage(Errno.EBADMSG, f"unknown message tag {tag!r}", msg_id) from None
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
