"""The users' byte models alone (machine/stress/model.py: pure, no gevent)."""

from __future__ import annotations

import random

import pytest

from machine.stress.model import (
    ByteModel,
    PageSignatures,
    PrivateFileModel,
    SendLedger,
    Sent,
    compare,
    log_uniform,
    random_range,
)
from machine.stress.outcome import WINDOW, Corruption

pytestmark = pytest.mark.timeout(30)
PAGE = 4096


def test_byte_model_store_expect_and_a_wrong_byte() -> None:
    m = ByteModel(3 * PAGE)
    m.store(PAGE - 2, b"\x01\x02\x03\x04")  # spans two pages
    assert m.expect(PAGE - 3, 6) == b"\x00\x01\x02\x03\x04\x00"
    assert m.diff(PAGE - 3, b"\x00\x01\x02\x03\x04\x00") is None
    mm = m.diff(PAGE - 3, b"\x00\x01\x02\xff\x04\x00")
    assert mm is not None
    assert mm.offset == PAGE  # the region offset of the wrong byte, not the read's start
    assert (mm.start, mm.index) == (PAGE - 3, 3)
    assert mm.expected == b"\x00\x01\x02\x03\x04\x00"
    assert mm.got == b"\x00\x01\x02\xff\x04\x00"


def test_mismatch_becomes_a_corruption_with_the_offset_and_both_values() -> None:
    exp = bytes(range(256)) * 16
    got = bytearray(exp)
    got[3000] ^= 0x5A
    mm = compare(100, exp, bytes(got))
    assert mm is not None
    assert mm.offset == 3100
    assert mm.index == 3000
    c = mm.corruption("pattern.load", va=0x7000)
    d = c.detail()
    assert d["what"] == "pattern.load"
    assert d["offset"] == 3000
    assert d["region_offset"] == 3100
    assert d["va"] == hex(0x7000)
    i = 3000 - d["window_start"]
    assert bytes.fromhex(d["expected"])[i] == exp[3000]
    assert bytes.fromhex(d["got"])[i] == got[3000] == exp[3000] ^ 0x5A
    assert len(c.expected) == len(c.got) == 2 * WINDOW
    assert f"{exp[3000]:02x}" in str(c)
    assert f"{got[3000]:02x}" in str(c)
    assert isinstance(c, Corruption)


def test_byte_model_rejects_out_of_range() -> None:
    m = ByteModel(PAGE)
    with pytest.raises(AssertionError):
        m.store(PAGE - 1, b"xx")
    with pytest.raises(AssertionError):
        m.expect(-1, 1)


def test_copy_is_independent_as_private_memory_after_fork() -> None:
    parent = ByteModel(PAGE)
    parent.store(0, b"P")
    child = parent.copy()
    child.store(0, b"C")
    parent.store(1, b"Q")
    assert parent.expect(0, 2) == b"PQ"
    assert child.expect(0, 2) == b"C\x00"


def test_private_file_model_is_copy_on_write_per_page() -> None:
    f = ByteModel(4 * PAGE)
    f.store(0, b"A" * (4 * PAGE))
    priv = PrivateFileModel(f, PAGE, 2 * PAGE, PAGE)  # file pages 1..2
    assert priv.expect(0, 4) == b"AAAA"
    priv.store(10, b"pp")  # COW of mapping page 0 (file page 1)
    f.store(PAGE, b"S" * 16)  # a shared store to file page 1: the private copy keeps A
    f.store(2 * PAGE, b"T" * 4)  # file page 2: not copied, the private mapping sees it
    assert priv.expect(8, 6) == b"AAppAA"
    assert priv.expect(0, 4) == b"AAAA"
    assert priv.expect(PAGE, 5) == b"TTTTA"
    # a store spanning both pages copies page 1 (with T) and writes across
    priv.store(PAGE - 1, b"xy")
    f.store(2 * PAGE, b"U")
    assert priv.expect(PAGE - 1, 4) == b"xyTT"
    assert f.expect(2 * PAGE, 2) == b"UT"  # the file never sees private stores
    mm = priv.diff(PAGE - 1, b"xyTZ")
    assert mm is not None
    assert mm.offset == PAGE + 2
    assert mm.expected == b"xyTT"
    assert mm.got == b"xyTZ"


def test_page_signatures() -> None:
    s = PageSignatures(8, PAGE, salt=0xABC)
    assert s.expected_page(3) == bytes(PAGE)
    for off, data in s.stores(3, 5):
        assert off in (0, PAGE - s.SIG)
        assert len(data) == s.SIG
    s.touch(3, 5)
    page = s.expected_page(3)
    assert page[: s.SIG] == s.signature(3, 5) == page[-s.SIG :]
    assert s.diff(3, page) is None
    # an older generation, another page, another user: each is caught
    assert s.signature(3, 4) != s.signature(3, 5) != s.signature(2, 5)
    assert PageSignatures(8, PAGE, salt=1).signature(3, 5) != s.signature(3, 5)
    stale = bytearray(page)
    stale[: s.SIG] = s.signature(3, 4)
    mm = s.diff(3, bytes(stale))
    assert mm is not None
    assert 3 * PAGE <= mm.offset < 3 * PAGE + s.SIG
    assert mm.start == 3 * PAGE
    assert mm.expected[mm.index] == s.signature(3, 5)[mm.index]
    assert mm.got[mm.index] == s.signature(3, 4)[mm.index]


def test_send_ledger_matches_and_counts_the_lost() -> None:
    led = SendLedger()
    for seq in (1, 2, 3):
        led.record(Sent(7, seq, 0x1000, bytes([seq]), "overwrite"))
    led.record(Sent(8, 1, 0x2000, b"x", "fork"))
    s, lost = led.match(7, 3)
    assert s is not None
    assert s.payload == b"\x03"
    assert [x.seq for x in lost] == [1, 2]  # sends arrive in order: 1 and 2 never will
    assert list(led.pending) == [(8, 1)]
    assert led.match(9, 1) == (None, [])


def test_log_uniform_spans_decades() -> None:
    rng = random.Random(1)
    xs = [log_uniform(rng, 1, 1 << 20) for _ in range(4000)]
    assert min(xs) >= 1
    assert max(xs) <= 1 << 20
    small = sum(x < 1000 for x in xs)
    big = sum(x >= 1000 for x in xs)
    assert 0.35 < small / len(xs) < 0.65
    assert big > 0
    assert any(x >= 1 << 19 for x in xs)


def test_random_range_stays_inside() -> None:
    rng = random.Random(2)
    for _ in range(1000):
        off, n = random_range(rng, 3 * PAGE, 2 * PAGE)
        assert n >= 1
        assert off >= 0
        assert off + n <= 3 * PAGE
