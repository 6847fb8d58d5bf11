"""docs/client-guide.md's example frames are what the machine encodes: each hex block
decodes (plain msgpack) to the readable form printed under it, the machine's decoder
accepts it and its encoder gives back exactly those bytes, and the example tag is the
HMAC the page says (so the guide a stranger implements from cannot drift from the code)."""

from __future__ import annotations

import ast
import hashlib
import hmac
import re
from pathlib import Path

import msgpack
import pytest

from machine.proto import Reply, decode_reply, decode_request, encode
from machine.proto.codec import BY_TAG

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "client-guide.md"
KEY = bytes(range(32))  # the page's example key


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), re.S)


def test_every_example_frame_decodes_to_its_readable_form_and_reencodes_exactly() -> None:
    frames = [bytes.fromhex("".join(b.split())) for b in _blocks("hex")]
    readable = [ast.literal_eval(b) for b in _blocks("text")]
    assert len(frames) == len(readable) == 3
    for raw, want in zip(frames, readable, strict=True):
        assert msgpack.unpackb(raw) == want
        cls = BY_TAG[want["t"]]
        msg = decode_reply(raw) if issubclass(cls, Reply) else decode_request(raw)
        assert type(msg) is cls
        assert encode(msg) == raw  # the live encoder writes these very bytes


def test_the_example_tag_is_the_hmac_of_the_request() -> None:
    [req] = [bytes.fromhex("".join(b.split())) for b in _blocks("hex")][:1]
    [tag] = _blocks("tag")
    assert hmac.new(KEY, req, hashlib.sha256).digest()[:16] == bytes.fromhex(tag.strip())
    assert f"these {len(req)} bytes" in GUIDE.read_text()


def test_the_plain_client_writes_and_reads_the_guides_frames() -> None:
    """The client written from the reference alone (tests/integration/
    plain_msgpack_client.py), given the example's key, msg_id, session and fields, encodes
    the guide's request and tag byte for byte, and reads its reply and error reply as the
    guide prints them (issue 21)."""
    from tests.integration import plain_msgpack_client as plain

    req, reply, error = (bytes.fromhex("".join(b.split())) for b in _blocks("hex"))
    want_req, want_reply, want_error = (ast.literal_eval(b) for b in _blocks("text"))
    [tag] = _blocks("tag")
    fields = {k: v for k, v in want_req.items() if k not in ("t", "h")}
    h = want_req["h"]
    assert h == plain.header(h["msg_id"], h["incarnation"])  # what the client writes
    body = plain.request(want_req["t"], h["msg_id"], h["incarnation"], fields)
    assert body == req
    assert plain.sign(KEY, body) == bytes.fromhex(tag.strip())
    assert plain.decode(reply) == want_reply
    assert plain.result(plain.decode(reply))["va"] == want_reply["va"]
    assert plain.decode(error) == want_error
    with pytest.raises(plain.Refused) as refused:
        plain.result(plain.decode(error))
    assert refused.value.errno == want_error["errno"] == "EFAULT"
    assert refused.value.reply["fault_va"] == want_error["fault_va"]
