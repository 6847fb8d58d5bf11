"""Machine constants: page size, address-space layout, limits (memlayout.h in spirit).

Invariants:
  * PAGE_SIZE is a power of two; every frame, mapping and VA range the kernel
    keeps is page aligned.
  * User VAs lie in [USER_MIN, USER_TOP); kernel VAs in [KERNEL_MIN, KERNEL_TOP).
    The two ranges never overlap, so a VA alone says which pmap it belongs to.
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1

USER_MIN = 0x1000
USER_TOP = 1 << 47
KERNEL_MIN = 1 << 62  # kernel VAs sit high, within a signed 64-bit integer
KERNEL_TOP = (1 << 63) - PAGE_SIZE

KERNEL_ASID = 0  # the kernel pmap's address-space id; user asids start at 1

#: Largest single load/store a CPU access message may carry.
MAX_ACCESS_BYTES = 1 << 20

#: Largest request frame any endpoint accepts: above the largest legitimate request
#: (an mmu.store of MAX_ACCESS_BYTES, or a kernel batch of page numbers) with room
#: to spare. Larger frames are refused unread (ZMQ_MAXMSGSIZE drops the connection).
MAX_REQUEST_BYTES = MAX_ACCESS_BYTES + (1 << 20)

#: The replay window of signed requests (machine.ipc.auth), in msg_ids, per session per
#: role: an id more than REPLAY_WINDOW - 1 below the highest seen, or one seen within the
#: window, is refused (EPERM "replayed request"). A protocol constant (docs/protocol.md).
REPLAY_WINDOW = 4096

#: RAM sizes accepted by --ram.
MIN_RAM_BYTES = 16 * PAGE_SIZE
MAX_RAM_BYTES = 64 << 30


def atop(addr: int) -> int:
    """Address to page (frame or virtual page) number."""
    return addr >> PAGE_SHIFT


def ptoa(pn: int) -> int:
    """Page number to address."""
    return pn << PAGE_SHIFT


def trunc_page(addr: int) -> int:
    return addr & ~PAGE_MASK


def round_page(addr: int) -> int:
    return (addr + PAGE_MASK) & ~PAGE_MASK


def parse_quantity(text: str) -> int:
    """Parse '64', '16K', '64M', '1G', '1T' (binary multiples) into an int.

    => raises ValueError on anything else.
    """
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    if not t.isdigit():
        raise ValueError(f"not a size: {text!r} (use e.g. 16M, 1G)")
    return int(t) * mult


def parse_size(text: str) -> int:
    """Parse '64M', '1G', '16384K' or a plain byte count into bytes.

    => raises ValueError on anything else, or a size that is not a whole
       number of pages.
    """
    n = parse_quantity(text)
    if n <= 0 or n % PAGE_SIZE:
        raise ValueError(f"size {text!r} is not a positive multiple of {PAGE_SIZE}")
    return n
