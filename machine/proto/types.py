"""Constrained field types shared by the message modules.

Range checks live here, in the types, so that out-of-range numbers are
refused by the decoder (EINVAL) before any handler runs.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from machine.params import MAX_ACCESS_BYTES, PAGE_SIZE

U64 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
Asid = Annotated[int, msgspec.Meta(ge=0, le=(1 << 31) - 1)]
Va = U64
Pfn = Annotated[int, msgspec.Meta(ge=0, le=(1 << 40) - 1)]
ProtBits = Annotated[int, msgspec.Meta(ge=0, le=7)]
Length = Annotated[int, msgspec.Meta(ge=1, le=1 << 47)]
AccessLen = Annotated[int, msgspec.Meta(ge=1, le=MAX_ACCESS_BYTES)]
AccessBytes = Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_ACCESS_BYTES)]
#: Frames per pfn list (pmap.attrs, pmap.page_protect): a caller sends longer lists in batches.
MAX_PFNS = MAX_ACCESS_BYTES // PAGE_SIZE * 16
PfnList = Annotated[list[Pfn], msgspec.Meta(max_length=MAX_PFNS)]
ShortText = Annotated[str, msgspec.Meta(max_length=4096)]


class Prot(enum.IntFlag):
    """VM_PROT_*: protection of a mapping or the access type of a fault."""

    NONE = 0
    READ = 1
    WRITE = 2
    EXECUTE = 4

    @classmethod
    def parse(cls, text: str | int) -> Prot:
        """'rw', 'r', 'rwx', '' or an int -> Prot. => ValueError on anything else."""
        if isinstance(text, int):
            if not 0 <= text <= 7:
                raise ValueError(f"bad protection {text}")
            return cls(text)
        bits = {"r": cls.READ, "w": cls.WRITE, "x": cls.EXECUTE, "-": cls.NONE}
        p = cls.NONE
        for ch in text.lower():
            if ch not in bits:
                raise ValueError(f"bad protection {text!r} (use letters from 'rwx')")
            p |= bits[ch]
        return p

    def letters(self) -> str:
        return "".join(c if self & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4)))


class EnterFlags(enum.IntFlag):
    """PMAP_* flags of pmap.enter."""

    NONE = 0
    WIRED = 1  # PMAP_WIRED: the mapping must not be forgotten
    CANFAIL = 2  # PMAP_CANFAIL
    # The frame's contents equal its backing store (just read from file or
    # swap): reset its modified bit. Stands in for the pager's
    # pmap_clear_modify at I/O completion, merged into the enter to save a
    # round trip.
    CLEAN = 4
