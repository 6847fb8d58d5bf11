"""POSIX shared-memory segments (/dev/shm): the RAM and the kernel's page table.

A segment is a file under SHM_DIR that every role maps MAP_SHARED. Its owner (the
machine that boots) creates it; the roles open it by name and check its size.

Invariants:
  * `create` leaves either a whole segment (its size set) or none: a failure
    after the file was made unlinks it;
  * `open_sized` returns a descriptor only for a segment of exactly the size
    the caller expects (a stale segment of another machine is refused).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path

SHM_DIR = Path("/dev/shm")


def create(name: str, size: int) -> int:
    """A new segment of `size` bytes, all zero (sparse). => its descriptor, read-write;
    FileExistsError if a segment of that name exists."""
    fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        os.unlink(SHM_DIR / name)
        raise
    return fd


def open_sized(name: str, size: int, what: str) -> int:
    """An existing segment's descriptor, read-write. => ValueError (naming `what`) if
    its size is not `size`; FileNotFoundError if there is none."""
    fd = os.open(SHM_DIR / name, os.O_RDWR)
    actual = os.fstat(fd).st_size
    if actual != size:
        os.close(fd)
        raise ValueError(f"{what} {name} is {actual} bytes, expected {size}")
    return fd


def unmap(m: mmap.mmap, fd: int) -> None:
    """Close a mapping and its descriptor (fd < 0: none). A view still exported keeps
    the mapping until the process ends; that is not an error."""
    with contextlib.suppress(BufferError):
        m.close()
    if fd >= 0:
        os.close(fd)


def unlink(name: str) -> None:
    """Remove the segment's name, if it is there (mappings stay valid until unmapped)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SHM_DIR / name)
