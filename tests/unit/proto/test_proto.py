"""The protocol: every message round-trips, tags are unique and well formed, the doc is fresh."""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec
import pytest

from machine.proto import (
    BY_TAG,
    EVENTS,
    PROTOCOL_VERSION,
    REPLIES,
    REQUESTS,
    BadMessage,
    Errno,
    Header,
    MmuStore,
    Msg,
    Reply,
    Request,
    Scope,
    decode_event,
    decode_reply,
    decode_request,
    encode,
    gendoc,
    tag_of,
)

H = Header(msg_id=7, sender="test", incarnation=99)


def example(cls: type[Msg]) -> Msg:
    """An instance of any message class with plausible field values."""
    kw: dict[str, Any] = {}
    for f in msgspec.structs.fields(cls):
        if (
            f.name == "h"
            or f.default is not msgspec.NODEFAULT
            or f.default_factory is not msgspec.NODEFAULT
        ):
            continue
        t = getattr(f.type, "__origin__", f.type)
        name = getattr(t, "__name__", "")
        kw[f.name] = {
            "int": 1,
            "bytes": b"x",
            "str": "x",
            "bool": True,
            "list": [],
            "dict": {},
        }.get(name, 1)
    return cls(h=H, **kw)


@pytest.mark.parametrize("cls", REQUESTS, ids=tag_of)
def test_every_request_round_trips(cls: type[Request]) -> None:
    msg = example(cls)
    assert decode_request(encode(msg)) == msg


@pytest.mark.parametrize("cls", REPLIES, ids=tag_of)
def test_every_reply_round_trips(cls: type[Reply]) -> None:
    msg = example(cls)
    assert decode_reply(encode(msg)) == msg


@pytest.mark.parametrize("cls", EVENTS, ids=tag_of)
def test_every_event_round_trips(cls: type[Msg]) -> None:
    msg = example(cls)
    assert decode_event(encode(msg)) == msg


def test_tags_are_unique_and_named_area_verb() -> None:
    tags = [tag_of(c) for c in (*REQUESTS, *REPLIES, *EVENTS)]
    assert len(tags) == len(set(tags)) == len(BY_TAG)
    for c in REQUESTS:
        area, _, verb = tag_of(c).partition(".")
        assert area in {"ctl", "pmap", "mmu", "uvm", "pd", "net"}
        assert verb
        assert not verb.endswith("reply")
        assert c.__doc__, f"{tag_of(c)} has no docstring (its spec entry)"
    for c in REPLIES:
        assert tag_of(c).endswith(".reply")


def test_wire_format_is_a_plain_msgpack_map() -> None:
    raw = encode(MmuStore(h=H, asid=3, va=0x2000, data=b"ab"))
    obj = msgpack.unpackb(raw)
    assert obj["t"] == "mmu.store"
    assert obj["h"]["msg_id"] == 7
    assert obj["h"]["proto"] == list(PROTOCOL_VERSION)
    assert obj["data"] == b"ab"


def test_user_and_kernel_scopes() -> None:
    user = {tag_of(c) for c in REQUESTS if c.scope is Scope.USER}
    assert {"mmu.load", "mmu.store", "uvm.fault", "uvm.spawn", "uvm.mmap"} <= user
    kernel = {tag_of(c) for c in REQUESTS if c.scope is Scope.KERNEL}
    assert {
        "pmap.enter",
        "pmap.page_protect",
        "pmap.kenter",
        "ctl.kpanic",
        "ctl.shutdown",
        "uvm.audit",
    } <= kernel


@pytest.mark.parametrize(
    ("raw", "errno", "msg_id"),
    [
        (b"", Errno.EBADMSG, 0),
        (b"\xc1", Errno.EBADMSG, 0),
        (msgpack.packb([1, 2]), Errno.EBADMSG, 0),
        (msgpack.packb({"t": "nope", "h": {"msg_id": 4}}), Errno.EBADMSG, 4),
        (msgpack.packb({"t": "ctl.ping.reply", "h": {"msg_id": 4}}), Errno.EBADMSG, 4),
        (
            msgpack.packb(
                {
                    "t": "mmu.load",
                    "h": {"msg_id": 9, "sender": "x", "incarnation": 1},
                    "asid": 1,
                    "va": 0,
                    "n": 0,
                }
            ),
            Errno.EINVAL,
            9,
        ),
        (
            msgpack.packb(
                {
                    "t": "mmu.load",
                    "h": {"msg_id": 9, "sender": "x", "incarnation": 1},
                    "asid": 1,
                    "va": -1,
                    "n": 1,
                }
            ),
            Errno.EINVAL,
            9,
        ),
        (
            msgpack.packb(
                {
                    "t": "mmu.load",
                    "h": {"msg_id": 9, "sender": "x", "incarnation": 1},
                    "asid": 1,
                    "va": 1 << 63,
                    "n": 1,
                }
            ),
            Errno.EINVAL,
            9,
        ),
        (msgpack.packb({"t": "mmu.load", "h": {"msg_id": True}, "asid": 1}), Errno.EINVAL, 0),
    ],
)
def test_bad_bytes_are_classified(raw: bytes, errno: Errno, msg_id: int) -> None:
    with pytest.raises(BadMessage) as ei:
        decode_request(raw)
    assert ei.value.errno is errno
    assert ei.value.msg_id == msg_id


def test_protocol_doc_is_generated_and_current() -> None:
    assert gendoc.DOC.read_text() == gendoc.render(), (
        "docs/protocol.md is stale: run python -m machine.proto.gendoc"
    )
    text = gendoc.render()
    for c in (*REQUESTS, *REPLIES, *EVENTS):
        assert f"`{tag_of(c)}`" in text


def test_golden_encodings_of_every_released_version_still_decode() -> None:
    import json
    from pathlib import Path

    golden = sorted((Path(__file__).parents[2] / "golden").glob("proto-*.json"))
    assert golden, "no golden samples"
    for path in golden:
        data = json.loads(path.read_text())
        assert data["proto"][0] == PROTOCOL_VERSION[0]
        for m in data["messages"]:
            raw = bytes.fromhex(m["hex"])
            cls = BY_TAG[m["tag"]]
            if issubclass(cls, Request):
                msg: Msg = decode_request(raw)
            elif issubclass(cls, Reply):
                msg = decode_reply(raw)
            else:
                msg = decode_event(raw)
            assert tag_of(msg) == m["tag"]
            if path.name == f"proto-{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}.json":
                assert encode(msg).hex() == m["hex"]  # this version encodes identically


async def test_golden_signed_frames_verify_and_decode_at_a_user_endpoint() -> None:
    """A session's frame is body || HMAC-SHA256(key, body)[:16] (machine.ipc.auth): the
    sample from 1.3 on still verifies, and a role accepts it."""
    import json
    import random
    from pathlib import Path

    from machine.ipc.auth import TAG_LEN, SessionAuth, sign
    from machine.ipc.inmemory import InMemoryTransport
    from machine.ipc.service import Service
    from machine.proto import Scope

    frames = []
    for path in sorted((Path(__file__).parents[2] / "golden").glob("proto-*.json")):
        frames += json.loads(path.read_text()).get("signed", [])
    assert frames, "no signed sample"
    for f in frames:
        raw, key = bytes.fromhex(f["hex"]), bytes.fromhex(f["key"])
        body, tag = raw[:-TAG_LEN], raw[-TAG_LEN:]
        assert sign(key, body) == tag
        msg = decode_request(body)
        assert tag_of(msg) == f["tag"]
        # The sample's key is the session key of machine key bytes(range(32)).
        assert SessionAuth(bytes(range(32))).check(msg.h.incarnation, msg.h.msg_id, body, tag) == ""
        svc = Service(InMemoryTransport(0), rng=random.Random(0), key=bytes(range(32)))
        checked = svc._check(raw, Scope.USER)
        # Every check passed but the last: a bare Service serves no uvm.spawn.
        assert isinstance(checked, Reply)
        assert checked.errno is Errno.ENOSYS, checked


def _is_bounded(t: Any) -> bool:
    """A field type that holds a bounded amount: a number with ge/le, or a sized
    str/bytes/list/dict with max_length (bool and None are bounded by nature)."""
    if t in (bool, type(None)):
        return True
    meta = getattr(t, "__metadata__", ())
    base = getattr(t, "__origin__", t)
    if base is int:
        return any(
            getattr(m, "ge", None) is not None and getattr(m, "le", None) is not None for m in meta
        )
    if base in (str, bytes) or getattr(base, "__origin__", base) in (list, dict, tuple):
        return any(getattr(m, "max_length", None) is not None for m in meta)
    return False


def test_every_field_a_client_can_send_is_bounded() -> None:
    """Audit: the header and every field of every request a user endpoint accepts
    (USER and ANY scopes) has a range or a maximum length, so what a client sends is
    refused (EINVAL) before it can grow a role's memory or trace."""
    loose = [
        f"Header.{f.name}"
        for f in msgspec.structs.fields(Header)
        if f.name != "proto" and not _is_bounded(f.type)
    ]
    for cls in REQUESTS:
        if cls.scope is Scope.KERNEL:
            continue
        loose += [
            f"{tag_of(cls)}.{f.name}"
            for f in msgspec.structs.fields(cls)
            if f.name != "h" and not _is_bounded(f.type)
        ]
    assert loose == []


@pytest.mark.parametrize(
    "h",
    [
        {"msg_id": -1, "sender": "x", "incarnation": 0},
        {"msg_id": 1 << 63, "sender": "x", "incarnation": 0},
        {"msg_id": 5, "sender": "x", "incarnation": -1},
        {"msg_id": 5, "sender": "x" * 65, "incarnation": 0},
        {"msg_id": 5, "sender": "x", "incarnation": 0, "re": -1},
        {"msg_id": 5, "sender": "x", "incarnation": 0, "sent_ns": 1 << 63},
    ],
)
def test_out_of_range_headers_are_einval(h: dict[str, Any]) -> None:
    with pytest.raises(BadMessage) as ei:
        decode_request(msgpack.packb({"t": "ctl.ping", "h": h}))
    assert ei.value.errno is Errno.EINVAL


def test_a_refused_request_costs_no_more_memory_than_its_bytes() -> None:
    """Reading the msg_id and tag of a bad request skips the rest unbuilt (an untyped
    decode of 2 MiB of empty lists made ~128 MiB of Python objects)."""
    import tracemalloc

    junk = msgpack.packb(
        {
            "t": "ctl.ping",
            "junk": [[]] * ((2 << 20) - 100),
            "h": {"msg_id": 3, "sender": "x", "incarnation": -1},
        }
    )
    tracemalloc.start()
    try:
        with pytest.raises(BadMessage) as ei:
            decode_request(junk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (ei.value.errno, ei.value.msg_id) == (Errno.EINVAL, 3)
    assert peak < 8 << 20, peak
    # An unknown tag is echoed cut short.
    with pytest.raises(BadMessage) as ei:
        decode_request(msgpack.packb({"t": "x" * 100_000, "h": {"msg_id": 4}}))
    assert (ei.value.errno, ei.value.msg_id) == (Errno.EBADMSG, 4)
    assert len(ei.value.detail) < 200
