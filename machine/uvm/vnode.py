"""Vnode files: the host files under <state>/disk/ that vnode objects map.

A VnodeFile is the I/O side of the vnode pager: page-granular reads and
writes of a real host file. Reading past end of file gives zeros (as a
hole would); a write never extends the file past its size (fixed at open:
what the client asked for, or the existing file's size), so the tail of
the last page stays out of the file, as it does for mmap(2).

Names (namei's part): a client's name is a relative path inside disk/.
check_name refuses, before anything is touched, the empty name, NUL, an
absolute path and a '..' component (EINVAL), a component over NAME_MAX bytes,
a path of PATH_MAX bytes or more and one of more than MAX_DEPTH components
('.' and empty ones aside) (ENAMETOOLONG). lookup then walks the
components from a descriptor of disk/, one openat(O_DIRECTORY|O_NOFOLLOW)
per directory, and opens the last one O_NOFOLLOW|O_NONBLOCK:
  * a symbolic link anywhere in the path is ELOOP and is never followed, so
    no name reaches a host file outside disk/ (hard links are not detected);
  * a directory is EISDIR (".", "dir", "dir/"), a file on the way ENOTDIR
    ("f/x"), anything but a regular file (fifo, socket, device) EACCES, and
    a fifo is never waited on;
  * '.' and empty components are skipped, as namei does: "a//b", "a/./b" and
    "a/b" are one file; vnode objects are keyed by (st_dev, st_ino)
    (VnodeFile.key), so every spelling of one file is one object;
  * with create, missing directories on the way are made (0700) and then the
    file (0600): one open makes at most MAX_DEPTH - 1 directories and one
    file; without create a missing component is ENOENT. disk/ is the
    machine's one file system, shared by every session (one user's files),
    so nothing in it is for the host's other users.
lookup and VnodeFile() raise VnodeError (an errno name) and never OSError;
get/put/sync (paging an open file) let a host I/O error through; resize (the
host side of ftruncate) raises VnodeError and changes nothing when it fails.

Open modes (NetBSD's FFLAGS): fflags(O_RDONLY) = FREAD, O_WRONLY = FWRITE,
O_RDWR = FREAD|FWRITE; O_ACCMODE itself is neither (EINVAL at open). The host
file is opened read-write once per vnode whatever the open modes (the machine
owns disk/); the handle's mode is what the machine enforces (mmap's maximum
protection, ftruncate).
"""

from __future__ import annotations

import contextlib
import os
import stat
from errno import errorcode
from pathlib import Path

from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.proto.base import Errno
from machine.proto.vmcalls import O_ACCMODE
from machine.ram import Ram

MAX_FILE_BYTES = 1 << 40  # whatever limits.filesize says (Uvm.open checks that: EFBIG)
NAME_MAX = 255  # bytes in one component (NetBSD's NAME_MAX)
PATH_MAX = 1024  # bytes in a path, counting the terminating NUL (NetBSD's PATH_MAX)
MAX_DEPTH = 16  # components in a path: one open makes at most 15 directories
FILE_MODE = 0o600  # files and directories a client makes: the machine's alone
DIR_MODE = 0o700
FREAD, FWRITE = 1, 2  # a handle's access (NetBSD's f_flag bits)


def fflags(oflags: int) -> int:
    """NetBSD's FFLAGS: open(2)'s access mode as FREAD/FWRITE bits (0 for O_ACCMODE)."""
    acc = oflags & O_ACCMODE
    return 0 if acc == O_ACCMODE else acc + 1


#: Host errnos passed on by name (if the Errno table has them); any other host
#: failure is EIO. EROFS is EACCES, ENFILE (uvm out of descriptors) EMFILE.
_HOST_ERRNOS = frozenset(
    {"ENOENT", "ENOTDIR", "EISDIR", "EEXIST", "ENAMETOOLONG", "ELOOP", "EACCES", "EPERM", "EINVAL"}
    | {"EMFILE", "EFBIG"}
) & frozenset(Errno.__members__)
_HOST_ALIASES = {"EROFS": "EACCES", "ENFILE": "EMFILE"}


class VnodeError(Exception):
    def __init__(self, errno: str, detail: str) -> None:
        super().__init__(detail)
        self.errno = errno
        self.detail = detail


def _show(name: str | bytes) -> str:
    """A client's name for an error detail (bounded: names may be 4 KiB)."""
    s = os.fsdecode(name) if isinstance(name, bytes) else name
    return repr(s) if len(s) <= 64 else repr(s[:64]) + "..."


def host_error(e: OSError, what: str) -> VnodeError:
    """The errno of a host failure: its own name where the table has it, else EIO."""
    name = errorcode.get(e.errno or 0, "")
    name = _HOST_ALIASES.get(name, name)
    return VnodeError(name if name in _HOST_ERRNOS else "EIO", f"{what}: {e.strerror or e}")


def release(fd: int) -> None:
    """Close a descriptor; a host close error is moot (never raises)."""
    with contextlib.suppress(OSError):
        os.close(fd)


def check_name(name: str) -> tuple[list[bytes], bool]:
    """The components of a client's name (no '.' or empty ones), and whether it
    must name a directory (a trailing '/' or '.').
    => VnodeError EINVAL / ENAMETOOLONG; touches nothing."""
    if not name:
        raise VnodeError("EINVAL", "empty file name: a relative path inside disk/")
    try:
        raw = os.fsencode(name)
    except UnicodeError:
        raise VnodeError("EINVAL", f"file name {_show(name)} is not encodable") from None
    if b"\0" in raw:
        raise VnodeError("EINVAL", f"file name {_show(name)} holds a NUL byte")
    if len(raw) >= PATH_MAX:
        raise VnodeError("ENAMETOOLONG", f"file name of {len(raw)} bytes (PATH_MAX {PATH_MAX})")
    if raw.startswith(b"/"):
        raise VnodeError("EINVAL", f"bad file name {_show(name)}: a relative path inside disk/")
    parts = raw.split(b"/")
    if b".." in parts:
        raise VnodeError("EINVAL", f"bad file name {_show(name)}: '..' leaves disk/")
    if any(len(c) > NAME_MAX for c in parts):
        raise VnodeError("ENAMETOOLONG", f"a component of {_show(name)} is over {NAME_MAX} bytes")
    comps = [c for c in parts if c not in (b"", b".")]
    if len(comps) > MAX_DEPTH:
        raise VnodeError(
            "ENAMETOOLONG", f"{_show(name)} has {len(comps)} components (at most {MAX_DEPTH})"
        )
    return comps, parts[-1] in (b"", b".")


def check_size(size: int | None, limit: int) -> None:
    """A size asked at open. => VnodeError EINVAL (negative), EFBIG (over limit or
    MAX_FILE_BYTES, RLIMIT_FSIZE's errno); touches nothing."""
    if size is None:
        return
    if size < 0:
        raise VnodeError("EINVAL", f"file size {size} out of range")
    if size > min(limit, MAX_FILE_BYTES):
        raise VnodeError(
            "EFBIG", f"file size {size} over the limit of {min(limit, MAX_FILE_BYTES)} (filesize)"
        )


def _lstat_mode(dfd: int, c: bytes) -> int | None:
    """The mode of entry c of directory dfd, not following a link; None if missing."""
    try:
        return os.stat(c, dir_fd=dfd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        raise host_error(e, _show(c)) from None


def _not_a_file(mode: int, c: bytes) -> VnodeError:
    if stat.S_ISLNK(mode):
        return VnodeError("ELOOP", f"{_show(c)} is a symbolic link (never followed)")
    if stat.S_ISDIR(mode):
        return VnodeError("EISDIR", f"{_show(c)} is a directory")
    return VnodeError("EACCES", f"{_show(c)} is not a regular file")


def _subdir(dfd: int, c: bytes, create: bool) -> int:
    """A descriptor of directory c in dfd (made if missing and create). => VnodeError."""
    for _ in range(3):  # a retry after mkdir, one more if it vanishes meanwhile
        try:
            return os.open(
                c, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd
            )
        except FileNotFoundError:
            if not create:
                raise VnodeError("ENOENT", f"no such directory {_show(c)}") from None
            try:
                os.mkdir(c, DIR_MODE, dir_fd=dfd)
            except FileExistsError:
                pass  # made meanwhile: open (or refuse) it next time round
            except OSError as e:
                raise host_error(e, f"making directory {_show(c)}") from None
        except NotADirectoryError:
            mode = _lstat_mode(dfd, c)
            if mode is not None and stat.S_ISLNK(mode):
                raise _not_a_file(mode, c) from None
            raise VnodeError("ENOTDIR", f"{_show(c)} is not a directory") from None
        except OSError as e:
            raise host_error(e, _show(c)) from None
    raise VnodeError("ENOENT", f"directory {_show(c)} keeps vanishing")


def _open_file(dfd: int, c: bytes, create: bool, excl: bool = False) -> tuple[int, tuple[int, int]]:
    """Open regular file c in dfd read-write (made if missing and create; with excl
    it must not exist: EEXIST)."""
    mode = _lstat_mode(dfd, c)
    if mode is None and not create:
        raise VnodeError("ENOENT", f"no such file {_show(c)}")
    if mode is not None and create and excl:
        raise VnodeError("EEXIST", f"{_show(c)} exists (O_CREAT|O_EXCL)")
    if mode is not None and not stat.S_ISREG(mode):
        raise _not_a_file(mode, c)  # before open: a fifo or device is never opened
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        if create:
            flags |= os.O_CREAT | (os.O_EXCL if excl else 0)
        fd = os.open(c, flags, FILE_MODE, dir_fd=dfd)
    except OSError as e:  # e.g. swapped for a link meanwhile: ELOOP
        raise host_error(e, _show(c)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_file(st.st_mode, c)  # swapped meanwhile
        os.set_blocking(fd, True)
    except OSError as e:
        release(fd)
        raise host_error(e, _show(c)) from None
    except VnodeError:
        release(fd)
        raise
    return fd, (st.st_dev, st.st_ino)


def lookup(disk: Path, name: str, create: bool, excl: bool = False) -> tuple[int, tuple[int, int]]:
    """namei + VOP_OPEN for a client's name: a read-write descriptor of the
    regular file `name` under disk/, and its (st_dev, st_ino).
    => VnodeError (an errno name), never OSError; no symbolic link is followed;
       create and excl: EEXIST if the file exists (O_CREAT|O_EXCL)."""
    comps, must_be_dir = check_name(name)
    if not comps:
        raise VnodeError("EISDIR", f"{_show(name)} names disk/ itself")
    try:
        dfd = os.open(disk, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise host_error(e, "the disk directory") from None
    try:
        for c in comps[:-1]:
            nfd = _subdir(dfd, c, create and not must_be_dir)
            release(dfd)
            dfd = nfd
        last = comps[-1]
        if must_be_dir:  # "x/": never a regular file
            mode = _lstat_mode(dfd, last)
            if mode is None:
                raise VnodeError(
                    "EISDIR" if create else "ENOENT", f"{_show(name)} names a directory"
                )
            if stat.S_ISREG(mode):
                raise VnodeError("ENOTDIR", f"{_show(last)} is not a directory")
            raise _not_a_file(mode, last)
        return _open_file(dfd, last, create, excl)
    finally:
        release(dfd)


class VnodeFile:
    """One host file, opened once per vnode object."""

    def __init__(self, fd: int, key: tuple[int, int], name: str, size: int | None) -> None:
        """Own fd (from lookup), grown to at least size bytes.
        => VnodeError (fd closed) on a bad size or a host failure; never OSError."""
        self.fd = fd
        self.key = key  # (st_dev, st_ino): the vnode's identity
        self.name = name
        try:
            check_size(size, MAX_FILE_BYTES)
            cur = os.fstat(fd).st_size
            if size is not None and size > cur:
                os.ftruncate(fd, size)
        except OSError as e:
            self.close()
            raise host_error(e, f"sizing {_show(name)}") from None
        except VnodeError:
            self.close()
            raise
        self.size = max(cur, size or 0)
        self.pgins = 0
        self.pgouts = 0

    @classmethod
    def open(cls, disk: Path, name: str, create: bool, size: int | None) -> VnodeFile:
        """lookup + VnodeFile: for callers that do not share vnodes (tests)."""
        check_size(size, MAX_FILE_BYTES)
        fd, key = lookup(disk, name, create)
        return cls(fd, key, name, size)

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

    def put_run(self, pgoff: int, ram: Ram, pfns: list[int]) -> None:
        """Write frames to consecutive pages from `pgoff` with one pwrite: the bytes
        `put` would write page by page (never past the file's size)."""
        start = pgoff << PAGE_SHIFT
        n = min(len(pfns) << PAGE_SHIFT, self.size - start)
        if n <= 0:
            return
        whole = n >> PAGE_SHIFT
        data = b"".join([bytes(ram.frame(p)) for p in pfns[:whole]])
        if n > whole << PAGE_SHIFT:
            data += bytes(ram.frame(pfns[whole])[: n - (whole << PAGE_SHIFT)])
        os.pwrite(self.fd, data, start)
        self.pgouts += (n + PAGE_SIZE - 1) >> PAGE_SHIFT

    def sync(self) -> None:
        os.fsync(self.fd)

    def resize(self, length: int) -> None:
        """The host side of ftruncate: the file is now `length` bytes (what grows reads
        zeros). => VnodeError (EIO, or the host's own errno where the table has it)
        with nothing changed."""
        try:
            os.ftruncate(self.fd, length)
        except OSError as e:
            raise host_error(e, f"truncating {_show(self.name)}") from None
        self.size = length

    def close(self) -> None:
        """Release the descriptor. => never raises (a host close error is moot)."""
        if self.fd >= 0:
            release(self.fd)
            self.fd = -1
