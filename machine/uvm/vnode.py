"""Vnode files: the host files under <state>/disk/ that vnode objects map.

A VnodeFile is the I/O side of the vnode pager: page-granular reads and
writes of a real host file. Reading past end of file gives zeros (as a
hole would); a write never extends the file past its size (fixed at open:
what the client asked for, or the existing file's size), so the tail of
the last page stays out of the file, as it does for mmap(2).

Paths are confined to the disk directory: absolute paths, '..' and empty
names are refused (VnodeError EINVAL) before anything is created.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.ram import Ram

MAX_FILE_BYTES = 1 << 40


class VnodeError(Exception):
    def __init__(self, errno: str, detail: str) -> None:
        super().__init__(detail)
        self.errno = errno
        self.detail = detail


def resolve(disk: Path, name: str) -> Path:
    """The host path of a client's file name. => VnodeError EINVAL for escapes."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\0" in name or len(name) > 255:
        raise VnodeError("EINVAL", f"bad file name {name!r}: a relative path inside disk/")
    return disk / p


class VnodeFile:
    """One host file, opened once per vnode object."""

    def __init__(self, path: Path, create: bool, size: int | None) -> None:
        if size is not None and not 0 <= size <= MAX_FILE_BYTES:
            raise VnodeError("EINVAL", f"file size {size} out of range")
        if not create and not path.is_file():
            raise VnodeError("ENOENT", f"no such file {path.name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        cur = os.fstat(self.fd).st_size
        if size is not None and size > cur:
            os.ftruncate(self.fd, size)
        self.size = max(cur, size or 0)
        self.pgins = 0
        self.pgouts = 0

    @property
    def npages(self) -> int:
        return (self.size + PAGE_SIZE - 1) >> PAGE_SHIFT

    def get(self, pgoff: int, ram: Ram, pfn: int) -> None:
        """Read page `pgoff` of the file into a frame (zeros past EOF)."""
        data = os.pread(self.fd, PAGE_SIZE, pgoff << PAGE_SHIFT)
        frame = ram.frame(pfn)
        frame[: len(data)] = data
        if len(data) < PAGE_SIZE:
            frame[len(data) :] = bytes(PAGE_SIZE - len(data))
        self.pgins += 1

    def put(self, pgoff: int, ram: Ram, pfn: int) -> None:
        """Write a frame to page `pgoff` of the file, never past the file's size."""
        start = pgoff << PAGE_SHIFT
        n = min(PAGE_SIZE, self.size - start)
        if n <= 0:
            return
        os.pwrite(self.fd, bytes(ram.frame(pfn)[:n]), start)
        self.pgouts += 1

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
