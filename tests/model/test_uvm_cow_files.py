# ruff: noqa: PT017, PT018
"""Model-based test of the UVM core: anonymous and file memory, private and shared, fork
by each page's inheritance (minherit SHARE, COPY, NONE, ZERO), MAP_FIXED over mapped
pages, madvise DONTNEED and WILLNEED, mprotect, munmap, mlock/munlock, msync, exit,
"page out this page" / page back in,
passes of the page daemon on a small RAM (it also scans by itself under pressure), and
zero-copy sends (page loans to the net role) with the driver draining the wire.

The machine runs in-process (in-memory transport, virtual time). A plain
Python reference model says, for every process and page, what a load must
return:
  * private anonymous page  -> the process's own bytes (zeros until written);
  * private file page       -> the file object's live bytes until the process
                               first writes (or wires) it, then its own copy;
  * shared page (anon/file) -> the bytes of the shared object, seen by all.
fork copies private pages and shares shared ones, as minherit says: SHARE of a private
page shares its own copy too (one cell for both processes: the amap is shared), COPY of a
shared page is a private copy-on-write page over the same object, ZERO a zero page, NONE
a hole; what msync, munmap, MAP_FIXED or exit write back must then be in the host file,
byte for byte. A send records the
model's bytes of its range at that moment; the link is held, so loans stay
outstanding while every other rule runs (COW breaks of loaned pages, exits,
the daemon reclaiming them), and whatever the wire later carries must be
those bytes (machine.wirecheck) under the default profile (modern).
After every step the auditor (uvm.audit) must find nothing; at the end every
frame is free again and no swap slot is in use.
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from machine.client import File, Process, RequestError, Segv, Socket
from machine.params import PAGE_SIZE
from machine.pdaemon.daemon import run_pass
from machine.pdaemon.service import PdaemonService, RemoteDaemonOps
from machine.proto import (
    MADV_DONTNEED,
    MADV_WILLNEED,
    MAP_INHERIT_COPY,
    MAP_INHERIT_NONE,
    MAP_INHERIT_SHARE,
    MAP_INHERIT_ZERO,
    NO_HEADER,
    Errno,
    NetLink,
    UvmPageout,
)
from machine.testing import poll_for
from machine.wirecheck import WireCheck
from tests.model.simrun import MODEL_TIMEOUT_S, SimStateMachine

NFRAMES = 96  # small: the page daemon has work to do
FILES = {"a.bin": 6, "b.bin": 3}  # name -> pages

settings.register_profile(
    "ci",
    max_examples=80,
    stateful_step_count=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=400,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# Store payloads drawn compactly (a seed and a length, not every byte), so that an
# example's choice budget goes to many steps rather than to a few long byte strings.
PAYLOADS = st.builds(
    lambda seed, n: bytes((seed + i * 7) & 0xFF for i in range(n)),
    st.integers(0, 255),
    st.integers(1, PAGE_SIZE + 64),
)


@dataclass
class Shared:
    """A shared memory object: an aobj, or a file's page cache."""

    data: bytearray
    name: str = ""  # file name, "" for anonymous shared memory


@dataclass
class Cell:
    """A private page's own copy, None until first written (or wired). Processes that
    inherited the page MAP_INHERIT_SHARE hold the same cell (the amap is shared)."""

    data: bytearray | None = None


@dataclass
class Page:
    prot: str
    shared: Shared | None  # the object behind the page (aobj or file), if any
    objpage: int  # page index in that object
    cell: Cell = field(default_factory=Cell)  # this process's own copy (COW)
    cow: bool = True  # private mapping
    wired: int = 0
    inherit: str = ""  # minherit: share, copy, none, zero ("": the mapping's default)

    @property
    def private(self) -> bytearray | None:
        return self.cell.data

    @private.setter
    def private(self, data: bytearray | None) -> None:
        self.cell.data = data

    def forked(self) -> Page | None:
        """The child's page at fork (uvmspace_fork by inheritance), or None (a hole)."""
        inherit = self.inherit or ("copy" if self.cow else "share")
        if inherit == "none":
            return None
        if inherit == "zero":
            return Page(self.prot, None, 0, inherit="zero")
        c = copy.copy(self)
        c.wired = 0
        if inherit == "copy":  # a private copy-on-write copy, of a shared page too
            c.cell = Cell(None if self.private is None else bytearray(self.private))
            c.cow = True
        return c

    def view(self) -> bytes:
        if self.private is not None:
            return bytes(self.private)
        if self.shared is not None:
            o = self.objpage * PAGE_SIZE
            return bytes(self.shared.data[o : o + PAGE_SIZE])
        return bytes(PAGE_SIZE)


@dataclass
class ModelProc:
    p: Process
    pages: dict[int, Page] = field(default_factory=dict)  # vpn -> Page


class CowFilesModel(SimStateMachine):
    SEED = 21
    NFRAMES = NFRAMES
    SWAP_PAGES = 4 * NFRAMES

    def __init__(self) -> None:
        super().__init__()
        self.disk = Path(self.sim.state_dir) / "disk"
        self.files: dict[str, tuple[File, Shared]] = {}
        for name, npages in FILES.items():
            self.disk.mkdir(parents=True, exist_ok=True)
            init = bytes((i * 7 + len(name)) & 0xFF for i in range(npages * PAGE_SIZE))
            (self.disk / name).write_bytes(init)
            f = self.run(self.m.open(name))
            self.files[name] = (f, Shared(bytearray(init), name))
        self.procs: list[ModelProc] = [ModelProc(self.run(self.m.spawn()))]
        self.wire = self.run(self.m.wire().open())
        self.check = WireCheck()
        self.sockets: dict[int, Socket] = {}
        self.run(self.sim.kcall("net", NetLink(h=NO_HEADER, hold=True)))

    def finish(self) -> None:
        self.drain()
        for mp in self.procs:
            self.run(mp.p.exit())
        for f, _ in self.files.values():
            self.run(f.close())
        self.run(self.wire.close())
        frames = self.run(self.m.stats())["frames"]
        assert frames["loaned"] == 0, frames
        assert frames["free"] + frames["kernel_owned"] == frames["total"], frames
        assert frames["swpginuse"] == 0, frames

    # -- helpers -----------------------------------------------------------------

    def _file_check(self, name: str, pages: set[int]) -> None:
        """The host file holds the object's bytes for these pages (written back)."""
        _, obj = self.files[name]
        host = (self.disk / name).read_bytes()
        for pg in pages:
            o = pg * PAGE_SIZE
            assert host[o : o + PAGE_SIZE] == obj.data[o : o + PAGE_SIZE], f"{name} page {pg}"

    def _pick(self, data: st.DataObject) -> ModelProc:
        return data.draw(st.sampled_from(self.procs))

    def _addr(self, mp: ModelProc, data: st.DataObject) -> int:
        if mp.pages and data.draw(st.integers(0, 9)):
            vpn = data.draw(st.sampled_from(sorted(mp.pages)))
            return vpn * PAGE_SIZE + data.draw(st.integers(0, PAGE_SIZE - 1))
        return data.draw(st.sampled_from([0x3000, 0x6000_0000]))

    def _range(self, mp: ModelProc, data: st.DataObject) -> tuple[int, int]:
        vpn = data.draw(st.sampled_from(sorted(mp.pages)))
        n = data.draw(st.integers(1, 4))
        return vpn * PAGE_SIZE, n * PAGE_SIZE

    # -- rules ---------------------------------------------------------------------

    @precondition(lambda self: len(self.procs) < 4)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        mp = self._pick(data)
        child = ModelProc(self.run(mp.p.fork()))
        for vpn, pg in mp.pages.items():
            c = pg.forked()
            if c is not None:
                child.pages[vpn] = c
        self.procs.append(child)

    @precondition(lambda self: any(p.pages for p in self.procs))
    @rule(data=st.data(), inherit=st.sampled_from(["share", "copy", "none", "zero"]))
    def minherit(self, data: st.DataObject, inherit: str) -> None:
        """minherit of 1-4 pages (unmapped ones skipped, as uvm_map_inherit does)."""
        mp = data.draw(st.sampled_from([p for p in self.procs if p.pages]))
        va, n = self._range(mp, data)
        value = {
            "share": MAP_INHERIT_SHARE,
            "copy": MAP_INHERIT_COPY,
            "none": MAP_INHERIT_NONE,
            "zero": MAP_INHERIT_ZERO,
        }[inherit]
        self.run(mp.p.minherit(va, n, value))
        for v in range(va // PAGE_SIZE, (va + n) // PAGE_SIZE):
            if v in mp.pages:
                mp.pages[v].inherit = inherit

    @precondition(lambda self: any(p.pages for p in self.procs))
    @rule(data=st.data(), dontneed=st.booleans())
    def madvise(self, data: st.DataObject, dontneed: bool) -> None:
        """MADV_DONTNEED (EFAULT over a hole) or MADV_WILLNEED: no byte changes."""
        mp = data.draw(st.sampled_from([p for p in self.procs if p.pages]))
        va, n = self._range(mp, data)
        mapped = all(v in mp.pages for v in range(va // PAGE_SIZE, (va + n) // PAGE_SIZE))
        try:
            self.run(mp.p.madvise(va, n, MADV_DONTNEED if dontneed else MADV_WILLNEED))
        except RequestError as e:
            assert dontneed and not mapped and e.errno is Errno.EFAULT
            return
        assert mapped or not dontneed

    @precondition(lambda self: sum(len(p.pages) for p in self.procs) < 60)
    @rule(
        data=st.data(),
        kind=st.sampled_from(["anon", "anon-shared", "file", "file-shared"]),
        prot=st.sampled_from(["rw", "rw", "r"]),
    )
    def mmap(self, data: st.DataObject, kind: str, prot: str) -> None:
        mp = self._pick(data)
        if kind.startswith("file"):
            name = data.draw(st.sampled_from(sorted(FILES)))
            first = data.draw(st.integers(0, FILES[name] - 1))
            n = data.draw(st.integers(1, FILES[name] - first))
            f, obj = self.files[name]
            va = self.run(
                mp.p.mmap(
                    n * PAGE_SIZE,
                    prot,
                    file=f,
                    offset=first * PAGE_SIZE,
                    shared=kind == "file-shared",
                )
            )
            for i in range(n):
                mp.pages[va // PAGE_SIZE + i] = Page(prot, obj, first + i, cow=kind == "file")
        else:
            n = data.draw(st.integers(1, 4))
            va = self.run(mp.p.mmap(n * PAGE_SIZE, prot, shared=kind == "anon-shared"))
            obj = Shared(bytearray(n * PAGE_SIZE)) if kind == "anon-shared" else None
            for i in range(n):
                mp.pages[va // PAGE_SIZE + i] = Page(prot, obj, i, cow=obj is None)

    @precondition(lambda self: any(p.pages for p in self.procs))
    @rule(data=st.data(), kind=st.sampled_from(["anon", "anon-shared", "file"]))
    def mmap_fixed(self, data: st.DataObject, kind: str) -> None:
        """MAP_FIXED over 1-4 pages from a mapped one: what was there is replaced (shared
        file pages written back, as munmap writes them)."""
        mp = data.draw(st.sampled_from([p for p in self.procs if p.pages]))
        va, n = self._range(mp, data)
        if sum(len(p.pages) for p in self.procs) + n // PAGE_SIZE > 64:
            return
        if kind == "file":
            name = data.draw(st.sampled_from(sorted(FILES)))
            if n // PAGE_SIZE > FILES[name]:
                return
            f, obj = self.files[name]
            got = self.run(mp.p.mmap(n, "rw", va=va, fixed=True, file=f))
        else:
            obj = Shared(bytearray(n)) if kind == "anon-shared" else None
            got = self.run(mp.p.mmap(n, "rw", va=va, fixed=True, shared=obj is not None))
        assert got == va
        flushed: dict[str, set[int]] = {}
        for i in range(n // PAGE_SIZE):
            old = mp.pages.get(va // PAGE_SIZE + i)
            if old is not None and not old.cow and old.shared is not None and old.shared.name:
                flushed.setdefault(old.shared.name, set()).add(old.objpage)
            mp.pages[va // PAGE_SIZE + i] = Page("rw", obj, i, cow=kind != "anon-shared")
        for name, pages in flushed.items():
            self._file_check(name, pages)

    @rule(data=st.data(), payload=PAYLOADS)
    def store(self, data: st.DataObject, payload: bytes) -> None:
        mp = self._pick(data)
        va = self._addr(mp, data)
        vpns = range(va // PAGE_SIZE, (va + len(payload) - 1) // PAGE_SIZE + 1)
        ok = all(v in mp.pages and "w" in mp.pages[v].prot for v in vpns)
        fault_va = -1
        try:
            self.run(mp.p.store(va, payload))
        except Segv as e:
            fault_va = e.va
        if fault_va < 0:
            assert ok, f"store at {va:#x} succeeded, but the model says it must fault"
            self._apply(mp, va, payload)
            return
        assert not ok, f"store at {va:#x} faulted, but the model has it writable"
        # Page by page, as a CPU's string store: the bytes before the bad page landed.
        bad = next(v for v in vpns if v not in mp.pages or "w" not in mp.pages[v].prot)
        assert fault_va == max(va, bad * PAGE_SIZE), f"{fault_va:#x} is not the first bad page"
        self._apply(mp, va, payload[: fault_va - va])

    def _apply(self, mp: ModelProc, va: int, payload: bytes) -> None:
        for i, b in enumerate(payload):
            a = va + i
            pg = mp.pages[a // PAGE_SIZE]
            if pg.cow:
                if pg.private is None:
                    pg.private = bytearray(pg.view())
                pg.private[a % PAGE_SIZE] = b
            else:
                assert pg.shared is not None
                pg.shared.data[pg.objpage * PAGE_SIZE + a % PAGE_SIZE] = b

    @rule(data=st.data(), n=st.integers(1, PAGE_SIZE + 64))
    def load(self, data: st.DataObject, n: int) -> None:
        mp = self._pick(data)
        va = self._addr(mp, data)
        vpns = range(va // PAGE_SIZE, (va + n - 1) // PAGE_SIZE + 1)
        ok = all(v in mp.pages and "r" in mp.pages[v].prot for v in vpns)
        try:
            got = self.run(mp.p.load(va, n))
        except Segv:
            assert not ok, f"load at {va:#x} faulted, but the model has it readable"
            return
        assert ok, f"load at {va:#x} succeeded, but the model says it must fault"
        want = b"".join(mp.pages[v].view() for v in vpns)
        off = va % PAGE_SIZE
        assert got == want[off : off + n]

    @precondition(lambda self: any(p.pages for p in self.procs))
    @rule(data=st.data())
    def munmap(self, data: st.DataObject) -> None:
        mp = data.draw(st.sampled_from([p for p in self.procs if p.pages]))
        va, n = self._range(mp, data)
        self.run(mp.p.munmap(va, n))
        flushed: dict[str, set[int]] = {}
        for v in range(va // PAGE_SIZE, (va + n) // PAGE_SIZE):
            pg = mp.pages.pop(v, None)
            if pg is not None and not pg.cow and pg.shared is not None and pg.shared.name:
                flushed.setdefault(pg.shared.name, set()).add(pg.objpage)
        for name, pages in flushed.items():
            self._file_check(name, pages)

    @precondition(lambda self: any(p.pages for p in self.procs))
    @rule(data=st.data(), prot=st.sampled_from(["r", "rw", ""]))
    def mprotect(self, data: st.DataObject, prot: str) -> None:
        mp = data.draw(st.sampled_from([p for p in self.procs if p.pages]))
        va, n = self._range(mp, data)
        vpns = range(va // PAGE_SIZE, (va + n) // PAGE_SIZE)
        mapped = all(v in mp.pages for v in vpns)
        try:
            self.run(mp.p.mprotect(va, n, prot or 0))
        except RequestError as e:
            assert not mapped and e.errno is Errno.ENOMEM
            return
        assert mapped
        for v in vpns:
            mp.pages[v].prot = prot

    @precondition(lambda self: any(p.pages for p in self.procs))
    @rule(data=st.data())
    def mlock(self, data: st.DataObject) -> None:
        mp = data.draw(st.sampled_from([p for p in self.procs if p.pages]))
        va, n = self._range(mp, data)
        vpns = range(va // PAGE_SIZE, (va + n) // PAGE_SIZE)
        ok = all(v in mp.pages and mp.pages[v].prot for v in vpns)
        # sys_mlock's limits come first: the machine's wiredmax (a third of RAM, against
        # every wired page) and RLIMIT_MEMLOCK (a third of RAM, against the process's
        # locked pages), the whole range counted even where it is locked already
        frames = self.run(self.m.stats())["frames"]
        locked = sum(1 for pg in mp.pages.values() if pg.wired)
        npages = len(vpns)
        limited = (
            npages + frames["wired"] > frames["total"] // 3
            or (npages + locked) * PAGE_SIZE > frames["total"] * PAGE_SIZE // 3
        )
        try:
            self.run(mp.p.mlock(va, n))
        except RequestError as e:
            expected = Errno.EAGAIN if limited else Errno.ENOMEM
            assert (limited or not ok) and e.errno is expected, (e, limited, ok)
            return
        assert ok and not limited
        for v in vpns:
            pg = mp.pages[v]
            pg.wired += 1
            if pg.cow and pg.private is None:
                # wiring forces the copy now wherever the mapping may ever be written (its
                # maximum protection: always, for a private mapping), read-only or not
                pg.private = bytearray(pg.view())

    @precondition(lambda self: any(p.pages for p in self.procs))
    @rule(data=st.data())
    def munlock(self, data: st.DataObject) -> None:
        mp = data.draw(st.sampled_from([p for p in self.procs if p.pages]))
        va, n = self._range(mp, data)
        vpns = range(va // PAGE_SIZE, (va + n) // PAGE_SIZE)
        ok = all(v in mp.pages and mp.pages[v].wired for v in vpns)  # mapped and locked
        try:
            self.run(mp.p.munlock(va, n))
        except RequestError as e:
            assert not ok and e.errno is Errno.ENOMEM
            return
        assert ok
        for v in vpns:
            mp.pages[v].wired = 0  # one munlock unlocks, however often it was locked

    @precondition(lambda self: any(p.pages for p in self.procs))
    @rule(data=st.data())
    def msync(self, data: st.DataObject) -> None:
        mp = data.draw(st.sampled_from([p for p in self.procs if p.pages]))
        va, n = self._range(mp, data)
        vpns = range(va // PAGE_SIZE, (va + n) // PAGE_SIZE)
        try:
            self.run(mp.p.msync(va, n))
        except RequestError as e:
            assert e.errno is Errno.EFAULT  # uvm_map_clean's (NetBSD's ATF t_msync)
            assert not all(v in mp.pages for v in vpns)
            return
        for v in vpns:
            pg = mp.pages[v]
            if not pg.cow and pg.shared is not None and pg.shared.name:
                self._file_check(pg.shared.name, {pg.objpage})

    @precondition(lambda self: any(p.pages for p in self.procs))
    @rule(data=st.data())
    def pageout(self, data: st.DataObject) -> None:
        """Page out this page (anon/aobj to swap, file pages to the file)."""
        mp = data.draw(st.sampled_from([p for p in self.procs if p.pages]))
        vpn = data.draw(st.sampled_from(sorted(mp.pages)))
        rep = self.run(
            self.sim.kcall("uvm", UvmPageout(h=NO_HEADER, asid=mp.p.asid, va=vpn * PAGE_SIZE))
        )
        if rep.errno is not None:
            assert rep.errno in (Errno.ENOENT, Errno.EBUSY), rep
            if rep.errno is Errno.EBUSY:
                assert mp.pages[vpn].wired or self._wired_elsewhere(mp, vpn), rep

    def _wired_elsewhere(self, mp: ModelProc, vpn: int) -> bool:
        pg = mp.pages[vpn]
        return (
            any(
                q.wired
                and q.shared is pg.shared
                and q.objpage == pg.objpage
                and pg.private is None
                and q.private is None
                for p in self.procs
                for q in p.pages.values()
            )
            or pg.private is not None
        )

    @rule()
    def pdaemon_pass(self) -> None:
        """One pass of the page daemon, over the bus: snapshot, claim, revoke, finish."""
        svc = self.sim.service("pdaemon")
        assert isinstance(svc, PdaemonService)
        self.run(run_pass(RemoteDaemonOps(svc), svc.policy, svc.profile.settings))

    @precondition(lambda self: len(self.procs) > 1)
    @rule(data=st.data())
    def exit(self, data: st.DataObject) -> None:
        mp = self._pick(data)
        self.run(mp.p.exit())
        self.procs.remove(mp)
        flushed: dict[str, set[int]] = {}
        for pg in mp.pages.values():
            if not pg.cow and pg.shared is not None and pg.shared.name:
                flushed.setdefault(pg.shared.name, set()).add(pg.objpage)
        for name, pages in flushed.items():
            self._file_check(name, pages)

    @precondition(lambda self: any(p.pages for p in self.procs))
    @rule(data=st.data())
    def send(self, data: st.DataObject) -> None:
        """Send 1-4 readable pages (from a byte offset): loaned, or copied when refused."""
        mp = self._pick(data)
        readable = sorted(v for v, pg in mp.pages.items() if "r" in pg.prot)
        if not readable:
            return
        first = data.draw(st.sampled_from(readable))
        run = [first]
        while run[-1] + 1 in mp.pages and "r" in mp.pages[run[-1] + 1].prot and len(run) < 4:
            run.append(run[-1] + 1)
        size = len(run) * PAGE_SIZE
        kind = data.draw(st.sampled_from(["whole", "whole", "loan", "any"]))
        n = size if kind == "whole" else data.draw(st.integers(1 if kind == "any" else 4096, size))
        off = data.draw(st.integers(0, size - n))
        want = b"".join(mp.pages[v].view() for v in run)[off : off + n]
        s = self.sockets.get(mp.p.asid)
        if s is None:
            s = self.sockets[mp.p.asid] = self.run(mp.p.socket())
        r = self.run(mp.p.send(s, first * PAGE_SIZE + off, n))
        self.check.expect(r, want)

    @precondition(lambda self: any(p.pages for p in self.procs))
    @rule(data=st.data(), seed=st.integers(0, 255))
    def send_then_overwrite(self, data: st.DataObject, seed: int) -> None:
        """With the driver running: send, then at once write over the buffer, so the
        loan break races the driver's DMA read and its unloan."""
        mp = self._pick(data)
        run = [v for v, pg in sorted(mp.pages.items()) if pg.prot == "rw"][:4]
        if not run or any(b - a != 1 for a, b in itertools.pairwise(run)):
            return
        self.run(self.sim.kcall("net", NetLink(h=NO_HEADER, hold=False)))
        self.send(data)
        va = run[0] * PAGE_SIZE
        payload = bytes((seed + i) & 0xFF for i in range(len(run) * PAGE_SIZE))
        self.run(mp.p.store(va, payload))
        for i, v in enumerate(run):
            pg = mp.pages[v]
            chunk = bytearray(payload[i * PAGE_SIZE : (i + 1) * PAGE_SIZE])
            if pg.cow:
                pg.private = chunk
            else:
                assert pg.shared is not None
                pg.shared.data[pg.objpage * PAGE_SIZE : (pg.objpage + 1) * PAGE_SIZE] = chunk
        self.run(self.sim.kcall("net", NetLink(h=NO_HEADER, hold=True)))

    @rule()
    def drain(self) -> None:
        """Let the driver run: every queued send reaches the wire and is checked."""
        self.run(self.sim.kcall("net", NetLink(h=NO_HEADER, hold=False)))
        while self.check.expected:
            self.check.check(self.run(self.wire.get(60)))
        self.run(
            poll_for(
                lambda: (c := self.sim.service("net").counters())["pendfree"] == c["loaned_chunks"],
                60,
                what="every loaned mbuf freed",
            )
        )
        self.run(self.sim.kcall("net", NetLink(h=NO_HEADER, hold=True)))

    @invariant()
    def auditor_finds_nothing(self) -> None:
        assert self.audit() == []


settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
# A passing run takes seconds; a failing one shrinks for minutes. The default 120 s
# would interrupt the shrink mid-example, and Hypothesis would report that as flaky.
pytestmark = pytest.mark.timeout(MODEL_TIMEOUT_S)
TestCowFilesModel = CowFilesModel.TestCase
