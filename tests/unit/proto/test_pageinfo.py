"""machine.proto.pageinfo: the packed page facts both ends of the daemon's messages share."""

from __future__ import annotations

import msgspec
import pytest

from machine.proto import BadMessage, Header, PmapAttrs, decode_request, encode
from machine.proto import pageinfo as pi


def test_attrs_pack_and_unpack_are_inverse() -> None:
    bits = [0, pi.REFERENCED, pi.MODIFIED, pi.REFERENCED | pi.MODIFIED]
    referenced, modified = pi.unpack_attrs(bits)
    assert referenced == [False, True, False, True]
    assert modified == [False, False, True, True]
    assert pi.pack_attrs(referenced, modified) == bits


def test_snapshot_bits_are_distinct_single_bits_of_one_byte() -> None:
    flags = [pi.SWAP_BACKED, pi.CLEAN, pi.BUSY, pi.WIRED, pi.LOANED, pi.OWNED, pi.HAS_ANON]
    flags.append(pi.SWSLOT)
    assert sorted(flags) == [1 << i for i in range(8)]  # the wire values, pinned


def test_daemon_ops_are_the_strings_the_messages_carry() -> None:
    assert [str(op) for op in pi.PdOp] == [
        "reactivate",
        "deactivate",
        "free",
        "pageout",
        "dropswap",
    ]
    from_the_wire: str = "free"
    assert from_the_wire == pi.PdOp.FREE  # a plain str from the wire compares equal


def test_pfn_batch_is_the_protocols_bound() -> None:
    h = Header(msg_id=1, sender="t", incarnation=1)
    ok = PmapAttrs(h=h, pfns=list(range(pi.PFN_BATCH)))
    assert decode_request(encode(ok)) == ok
    too_long = msgspec.structs.replace(ok, pfns=list(range(pi.PFN_BATCH + 1)))
    with pytest.raises(BadMessage):
        decode_request(encode(too_long))
