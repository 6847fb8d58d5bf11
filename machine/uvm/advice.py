"""Advice on address ranges (uvm_map_inherit, uvm_map_advice, uvm_map_willneed,
uvm_map_clean's deactivate and free, sys_mincore): minherit, madvise, mincore.

cf. NetBSD sys/uvm/uvm_map.c, uvm_mmap.c (concepts only).
"""

from __future__ import annotations

from machine.proto import Errno, UserError
from machine.uvm.state import Uvm


async def minherit(uvm: Uvm, asid: int, owner: int, va: int, length: int, inherit: int) -> None:
    """minherit(2). => UserError EINVAL, ENOMEM."""
    raise UserError(Errno.ENOSYS, "minherit: not yet")


async def madvise(uvm: Uvm, asid: int, owner: int, va: int, length: int, advice: int) -> None:
    """madvise(2). => UserError EINVAL, ENOMEM."""
    raise UserError(Errno.ENOSYS, "madvise: not yet")


async def mincore(uvm: Uvm, asid: int, owner: int, va: int, length: int) -> bytes:
    """mincore(2). => one byte per page, 1 resident."""
    raise UserError(Errno.ENOSYS, "mincore: not yet")
