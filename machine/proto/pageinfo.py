"""Packed page facts: the bits, names and batch sizes inside the page daemon's messages.

Some fields of pmap.attrs and uvm.pd_* carry page state packed into plain ints and
strings (compact on the wire, cheap to build in the cores). Their meaning is defined
here, once, for both ends of each message:

  * R/M attributes, pmap.attrs: the mmu keeps a frame's attributes as REFERENCED |
    MODIFIED (NetBSD's pvh_attrs). The reply carries them as two lists of booleans;
    a caller packs them back into those bits (`pack_attrs`), the mmu unpacks its own
    (`unpack_attrs`).
  * Snapshot rows, uvm.pd_snapshot: each queued page is [pfn, bits], bits an OR of the
    page flags below, as uvm knew them when it answered.
  * Daemon operations, uvm.pd_claim / uvm.pd_finish items [op, pfn] and the keys of
    uvm.pd_finish's `done`: the values of PdOp.
  * Batch sizes: PFN_BATCH frames per pmap.attrs / pmap.page_protect (the bound of
    every PfnList field; a longer list is refused EINVAL); PD_SCAN_LIMIT pages of each
    queue per snapshot (uvm.pd_snapshot's default `limit`).
Changing a value here changes the protocol (tests/golden pins the bytes): a new bit
or operation is a protocol minor version, a changed one a major.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from machine.proto.types import MAX_PFNS

# -- pmap.attrs: R/M bits ---------------------------------------------------------------

REFERENCED = 1  # the frame was accessed since the bit was last cleared
MODIFIED = 2  # the frame was written since the bit was last cleared


def pack_attrs(referenced: Sequence[bool], modified: Sequence[bool]) -> list[int]:
    """pmap.attrs' reply lists -> one REFERENCED | MODIFIED int per frame."""
    return [int(r) | int(m) << 1 for r, m in zip(referenced, modified, strict=True)]


def unpack_attrs(bits: Sequence[int]) -> tuple[list[bool], list[bool]]:
    """One REFERENCED | MODIFIED int per frame -> pmap.attrs' (referenced, modified)."""
    return [bool(b & REFERENCED) for b in bits], [bool(b & MODIFIED) for b in bits]


# -- uvm.pd_snapshot: the bits of a [pfn, bits] row --------------------------------------

SWAP_BACKED = 1 << 0  # an anon's page or an aobj's (else a file page)
CLEAN = 1 << 1  # PG_CLEAN
BUSY = 1 << 2  # PG_BUSY
WIRED = 1 << 3  # wire_count > 0
LOANED = 1 << 4  # loan_count > 0
OWNED = 1 << 5  # owned by an anon or tabled in an object
HAS_ANON = 1 << 6  # uanon set
SWSLOT = 1 << 7  # has a swap slot


# -- uvm.pd_claim / uvm.pd_finish: what the daemon asks for -------------------------------


class PdOp(enum.StrEnum):
    """A page daemon action on one page (its string is what the messages carry)."""

    REACTIVATE = "reactivate"  # uvm_pageactivate (pdreact)
    DEACTIVATE = "deactivate"  # uvm_pagedeactivate (pddeact)
    FREE = "free"  # clean: revoke mappings, free (pdfreed)
    PAGEOUT = "pageout"  # dirty: write to swap or file, then free (pdpageouts)
    DROPSWAP = "dropswap"  # release the page's swap slot (swap shortage)


# -- batch sizes ----------------------------------------------------------------------------

PFN_BATCH = MAX_PFNS  # frames per pmap.attrs / pmap.page_protect message
PD_SCAN_LIMIT = 4096  # pages of each paging queue per uvm.pd_snapshot
