"""uvm.open and every name it can receive: an errno, never a host exception or a panic.

Each bad name gets its errno from Uvm.open (the core) and, through the whole
in-process machine, from the client (RequestError), and the machine is still
running afterwards; nothing outside disk/ is read, written or created (a tree
of bait files next to disk/ is compared before and after); symbolic links
planted in disk/ are never followed; every spelling of one file is one vnode.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from machine.client import RequestError
from machine.limits import Limits
from machine.params import PAGE_SIZE
from machine.proto import UserError
from machine.proto.base import Errno
from machine.proto.types import Prot
from machine.testing import SimMachine
from machine.uvm import files, mmap
from machine.uvm.state import Uvm
from machine.uvm.vnode import MAX_DEPTH, NAME_MAX, PATH_MAX, VnodeFile, host_error
from tests.unit.uvm.localpmap import make_uvm

OWN = 77
SECRET = b"host secret, outside disk/"

#: (name, create, errno): every kind of bad name and what it names.
BAD: list[tuple[str, bool, str]] = [
    (".", True, "EISDIR"),
    ("./", False, "EISDIR"),
    ("", True, "EINVAL"),
    ("dir", True, "EISDIR"),
    ("dir", False, "EISDIR"),
    ("dir/", True, "EISDIR"),
    ("dir/.", False, "EISDIR"),
    ("f/x", True, "ENOTDIR"),
    ("f/", False, "ENOTDIR"),
    ("f/x/y", True, "ENOTDIR"),
    ("../x", True, "EINVAL"),
    ("a/../../x", True, "EINVAL"),
    ("dir/..", False, "EINVAL"),
    ("/etc/passwd", False, "EINVAL"),
    ("/etc/passwd", True, "EINVAL"),
    ("a\0b", True, "EINVAL"),
    ("x" * (NAME_MAX + 45), True, "ENAMETOOLONG"),
    ("d/" * 1000, True, "ENAMETOOLONG"),  # a 2000-byte path
    ("y" * PATH_MAX, True, "ENAMETOOLONG"),
    ("a/" * 500 + "x", True, "ENAMETOOLONG"),  # red team: 1001 bytes, made 500 directories
    ("d/./" * MAX_DEPTH + "x", True, "ENAMETOOLONG"),  # MAX_DEPTH + 1 components
    ("link_file", False, "ELOOP"),  # -> a host file outside disk/
    ("link_file", True, "ELOOP"),
    ("link_dir/secret.txt", False, "ELOOP"),  # a symlinked directory on the way
    ("link_dir/x", True, "ELOOP"),
    ("dir/link_up/secret.txt", True, "ELOOP"),  # a relative link ../../outside, deeper
    ("dangling", True, "ELOOP"),  # -> outside/new.txt, which must not be created
    ("fifo", False, "EACCES"),  # never opened, never waited on
    ("fifo", True, "EACCES"),
    ("missing", False, "ENOENT"),
    ("nodir/x", False, "ENOENT"),
    ("missing/", True, "EISDIR"),
]


def plant(root: Path) -> Path:
    """disk/ with a directory, a file, links out of it and a fifo; outside/ next to it."""
    disk = root / "disk"
    disk.mkdir(exist_ok=True)
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (disk / "dir").mkdir()
    (disk / "f").write_bytes(b"plain file")
    os.symlink(outside / "secret.txt", disk / "link_file")
    os.symlink(outside, disk / "link_dir")
    os.symlink("../../outside", disk / "dir" / "link_up")
    os.symlink(outside / "new.txt", disk / "dangling")
    os.mkfifo(disk / "fifo")
    return disk


def tree(root: Path) -> dict[str, tuple[int, bytes | str, int]]:
    """Every entry under root (not disk/ itself), without following links: kind, content, mtime."""
    out: dict[str, tuple[int, bytes | str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            body: bytes | str = b""
            if p.is_symlink():
                body = os.readlink(p)
            elif p.is_file():
                body = p.read_bytes()
            out[str(p.relative_to(root))] = (st.st_mode, body, st.st_mtime_ns)
    return out


@pytest.fixture
def uvm(tmp_path: Path) -> Uvm:
    u, _ = make_uvm(64, tmp_path, swap_pages=16)
    plant(tmp_path)
    return u


def _outside(tmp_path: Path) -> dict[str, tuple[int, bytes | str, int]]:
    return {k: v for k, v in tree(tmp_path).items() if k != "swap.img"}


@pytest.mark.parametrize(("name", "create", "err"), BAD, ids=[repr(b[0])[:24] for b in BAD])
def test_a_bad_name_gets_its_errno_and_changes_nothing(
    uvm: Uvm, tmp_path: Path, name: str, create: bool, err: str
) -> None:
    before = _outside(tmp_path)
    with pytest.raises(UserError) as ei:
        files.open(uvm, OWN, name, create, PAGE_SIZE if create else None)
    assert ei.value.errno == err, ei.value.detail
    assert _outside(tmp_path) == before  # disk/ and outside/ alike: nothing made or written
    assert (tmp_path / "outside" / "secret.txt").read_bytes() == SECRET
    assert not (tmp_path / "outside" / "new.txt").exists()
    assert uvm.vnodes == {}
    assert uvm.handles == {}
    _, size = files.open(uvm, OWN, "good.bin", True, PAGE_SIZE)  # a valid open still works
    assert size == PAGE_SIZE
    assert (tmp_path / "disk" / "good.bin").stat().st_size == PAGE_SIZE


def test_a_name_that_cannot_be_encoded_is_einval(uvm: Uvm) -> None:
    with pytest.raises(UserError) as ei:
        files.open(uvm, OWN, "bad\ud800", True, None)
    assert ei.value.errno == "EINVAL"


def test_a_unix_socket_is_not_a_regular_file(uvm: Uvm, tmp_path: Path) -> None:
    path = tmp_path / "disk" / "sock"
    if len(os.fsencode(path)) >= 100:
        pytest.skip("the tmp path is too long for a unix socket")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(UserError) as ei:
            files.open(uvm, OWN, "sock", False, None)
    assert ei.value.errno == "EACCES"


def test_every_spelling_of_one_file_is_one_vnode(uvm: Uvm, tmp_path: Path) -> None:
    h1, _ = files.open(uvm, OWN, "a/b", True, 2 * PAGE_SIZE)  # makes a/ on the way, as before
    assert (tmp_path / "disk" / "a" / "b").is_file()
    hs = [
        files.open(uvm, OWN, n, False, None)[0]
        for n in ("a//b", "./a/b", "a/./b", "a/b", "a///./b")
    ]
    os.link(tmp_path / "disk" / "a" / "b", tmp_path / "disk" / "hard")
    hs.append(files.open(uvm, OWN, "hard", True, None)[0])
    assert len(uvm.vnodes) == 1
    assert all(uvm.handles[(OWN, h)] is uvm.handles[(OWN, h1)] for h in hs)
    assert uvm.handles[(OWN, h1)].refs == 1 + len(hs)
    with pytest.raises(UserError) as ei:  # a second spelling cannot resize the open vnode
        files.open(uvm, OWN, "a//b", True, 8 * PAGE_SIZE)
    assert ei.value.errno == "EINVAL"
    assert (tmp_path / "disk" / "a" / "b").stat().st_size == 2 * PAGE_SIZE


async def test_a_file_page_reaches_the_file_not_a_link_target(uvm: Uvm, tmp_path: Path) -> None:
    """The valid open after the bad ones maps and writes back into disk/ only."""
    for name, create, _ in BAD:
        with pytest.raises(UserError):
            files.open(uvm, OWN, name, create, None)
    h, _ = files.open(uvm, OWN, "dir/data.bin", True, PAGE_SIZE)
    asid = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, asid, OWN, PAGE_SIZE, Prot.READ | Prot.WRITE, handle=h, shared=True)
    assert va
    await files.close(uvm, OWN, h)
    assert len(uvm.vnodes) == 1  # the mapping holds it
    await mmap.exit(uvm, asid, OWN)
    assert uvm.vnodes == {}
    assert (tmp_path / "outside" / "secret.txt").read_bytes() == SECRET


def test_host_failures_map_to_errnos_and_close_never_raises(tmp_path: Path) -> None:
    assert host_error(OSError(errno.ENOSPC, "No space left"), "x").errno == "EIO"
    assert host_error(OSError(errno.EFBIG, "File too large"), "x").errno == "EFBIG"
    assert host_error(OSError(errno.EROFS, "Read-only"), "x").errno == "EACCES"
    assert host_error(OSError(errno.EMLINK, "?"), "x").errno == "EIO"
    assert host_error(OSError(errno.ELOOP, "loop"), "x").errno == "ELOOP"
    for code in errno.errorcode:  # whatever the host says, the reply's errno is in the table
        assert host_error(OSError(code, "?"), "x").errno in Errno.__members__
    for _, _, err in BAD:
        assert err in Errno.__members__
    (tmp_path / "disk").mkdir()
    f = VnodeFile.open(tmp_path / "disk", "v", True, 10)
    os.close(f.fd)  # the descriptor vanished behind its back
    f.close()  # => no OSError
    assert f.fd == -1


def test_a_file_the_host_refuses_is_eacces(
    uvm: Uvm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's EACCES (a mode-000 file for a non-root machine; refused here by a
    stand-in, since the tests run as root, whom file modes do not refuse)."""
    p = tmp_path / "disk" / "locked"
    p.write_bytes(b"x")
    real_open = os.open

    def refusing_open(path: object, flags: int, *a: object, **kw: object) -> int:
        if path in ("locked", b"locked"):
            raise PermissionError(errno.EACCES, "Permission denied", "locked")
        return real_open(path, flags, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(UserError) as ei:
        files.open(uvm, OWN, "locked", False, None)
    assert ei.value.errno == "EACCES"


def test_an_open_makes_at_most_max_depth_components_private_to_the_machine(
    uvm: Uvm, tmp_path: Path
) -> None:
    """Red team: one open of a fresh 500-deep path made 500 directories. At most
    MAX_DEPTH components (so MAX_DEPTH - 1 directories and a file); files 0600,
    directories 0700 (the machine's own, whatever the umask allows beyond)."""
    name = "/".join(f"d{i}" for i in range(MAX_DEPTH - 1)) + "/deep.bin"
    h, _ = files.open(uvm, OWN, name, True, PAGE_SIZE)
    assert h
    top = tmp_path / "disk" / "d0"
    made = [top, *top.rglob("*")]
    assert len([p for p in made if p.is_dir()]) == MAX_DEPTH - 1
    for p in made:
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
    files.open(uvm, OWN, "top.bin", True, None)
    assert stat.S_IMODE((tmp_path / "disk" / "top.bin").stat().st_mode) == 0o600


def test_a_size_beyond_filesize_is_efbig_and_makes_nothing(uvm: Uvm, tmp_path: Path) -> None:
    """Red team: 20 opens of 1 TiB sparse files. The default filesize is 64 GiB."""
    before = _outside(tmp_path)
    for size in (1 << 40, (64 << 30) + 1):
        with pytest.raises(UserError) as ei:
            files.open(uvm, OWN, "huge/big.bin", True, size)
        assert ei.value.errno == "EFBIG"
    assert _outside(tmp_path) == before  # no file, no directory
    uvm.limits = Limits(filesize=4 * PAGE_SIZE)
    with pytest.raises(UserError) as ei:
        files.open(uvm, OWN, "five.bin", True, 5 * PAGE_SIZE)
    assert ei.value.errno == "EFBIG"
    assert "filesize" in ei.value.detail
    assert not (tmp_path / "disk" / "five.bin").exists()
    _, size = files.open(uvm, OWN, "four.bin", True, 4 * PAGE_SIZE)
    assert size == 4 * PAGE_SIZE
    (tmp_path / "disk" / "host.bin").write_bytes(b"h" * 5 * PAGE_SIZE)  # the host's own
    assert files.open(uvm, OWN, "host.bin", False, None)[1] == 5 * PAGE_SIZE  # opens at its size
    with pytest.raises(UserError) as ei:
        files.open(uvm, OWN, "neg.bin", True, -1)
    assert ei.value.errno == "EINVAL"


async def test_uvm_makes_disk_private_when_it_makes_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    async with SimMachine.boot(seed=4, ram_bytes=64 * PAGE_SIZE, state_dir=str(state)):
        assert stat.S_IMODE((state / "disk").stat().st_mode) == 0o700


def test_a_missing_disk_directory_is_an_errno(tmp_path: Path) -> None:
    u, _ = make_uvm(16, tmp_path, swap_pages=4)
    (tmp_path / "disk").rmdir()
    with pytest.raises(UserError) as ei:
        files.open(u, OWN, "x", True, None)
    assert ei.value.errno == "ENOENT"


async def test_bad_names_through_the_machine_get_errnos_and_no_panic(tmp_path: Path) -> None:
    """The whole path (client -> uvm service): RequestError with the errno, machine running."""
    state = tmp_path / "state"
    state.mkdir()
    plant(state)
    before = _outside(state)
    async with (
        SimMachine.boot(seed=9, ram_bytes=64 * PAGE_SIZE, state_dir=str(state)) as sim,
        sim.attach() as m,
    ):
        for name, create, err in BAD:
            if not name or len(name) > 4096:
                continue  # refused by the message schema (EINVAL): see test_bad_input
            with pytest.raises(RequestError) as ei:
                await m.open(name, create=create, size=PAGE_SIZE if create else None)
            assert ei.value.errno == err, (name, ei.value.detail)
            assert sim.service("uvm").state == "running", sim.service("uvm").panic_message
        assert (await m.stats())["state"] == "running"
        f = await m.open("ok.bin", create=True, size=PAGE_SIZE)
        p = await m.spawn()
        va = await p.mmap(PAGE_SIZE, "rw", file=f, shared=True)
        await p.store(va, b"still serving")
        await p.msync(va, PAGE_SIZE)
        assert (state / "disk" / "ok.bin").read_bytes()[:13] == b"still serving"
        await p.exit()
        await f.close()
    after = _outside(state)
    assert {k: v for k, v in after.items() if k.startswith("outside")} == {
        k: v for k, v in before.items() if k.startswith("outside")
    }
    assert {k for k in after if k.startswith("disk")} == {
        k for k in before if k.startswith("disk")
    } | {"disk/ok.bin"}
