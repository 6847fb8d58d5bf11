"""RAM: one shared-memory segment of nframes x PAGE_SIZE bytes that every role maps.

The segment is a file under /dev/shm opened and mmap'ed directly (not
multiprocessing.shared_memory: on Python 3.11 an attaching process registers
the segment with its resource tracker, which unlinks it for everyone when
that process exits). Only the owner (the supervisor, or the compose service
that owns the IPC namespace) creates and unlinks it.

Beside it, the owner creates the kernel's page table (machine.kpt, `<name>.kpt`):
the role config's ram_name names both; `kpt` maps it on first use (the mmu and net).

Invariant: page bytes never travel in kernel messages; roles exchange frame
numbers and read or write the frames here.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from machine import shm
from machine.kpt import KernelPageTable
from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.shm import SHM_DIR

ZERO_PAGE = bytes(PAGE_SIZE)


class Ram:
    """A mapping of the RAM segment; `view` is a writable memoryview of all frames."""

    def __init__(self, name: str, size: int, fd: int, owner: bool) -> None:
        self.name = name
        self.size = size
        self.nframes = size >> PAGE_SHIFT
        self.owner = owner
        self._fd = fd
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self._map)
        self._kpt: KernelPageTable | None = None

    @classmethod
    def anonymous(cls, size: int) -> Ram:
        """Private RAM for an in-process (simulated) machine: no segment to clean up."""
        self = cls.__new__(cls)
        self.name, self.size, self.nframes, self.owner = "", size, size >> PAGE_SHIFT, False
        self._fd = -2
        self._map = mmap.mmap(-1, size)
        self.view = memoryview(self._map)
        self._kpt = None
        return self

    @property
    def kpt(self) -> KernelPageTable:
        """The kernel's page table (machine.kpt), mapped on first use."""
        if self._kpt is None:  # the simulator's RAM has no name: an in-process table
            n = self.name
            self._kpt = KernelPageTable.attach(n + ".kpt") if n else KernelPageTable.anonymous()
        return self._kpt

    @property
    def path(self) -> Path:
        return SHM_DIR / self.name

    @classmethod
    def create(cls, name: str, size: int) -> Ram:
        """Create the segment. => FileExistsError if a segment of that name exists."""
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"RAM size {size} is not a positive multiple of {PAGE_SIZE}")
        fd = shm.create(name, size)
        self = cls(name, size, fd, owner=True)
        try:
            self._kpt = KernelPageTable.create(name + ".kpt")
        except BaseException:
            self.close()
            raise
        return self

    @classmethod
    def attach(cls, name: str, size: int) -> Ram:
        """Map an existing segment. => ValueError if its size differs."""
        fd = shm.open_sized(name, size, "RAM segment")
        return cls(name, size, fd, owner=False)

    def frame(self, pfn: int) -> memoryview:
        off = pfn << PAGE_SHIFT
        return self.view[off : off + PAGE_SIZE]

    def zero(self, pfn: int) -> None:
        off = pfn << PAGE_SHIFT
        self.view[off : off + PAGE_SIZE] = ZERO_PAGE

    def close(self) -> None:
        """Unmap (and, for the owner, unlink) the segment. Idempotent."""
        if self._fd == -1:
            return
        if self._kpt is not None:
            self._kpt.close()
        self.view.release()
        shm.unmap(self._map, self._fd)
        self._fd = -1
        if self.owner:
            self.unlink()

    def unlink(self) -> None:
        for name in (self.name, self.name + ".kpt"):
            shm.unlink(name)
