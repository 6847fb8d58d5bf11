"""The errno table of docs/vm-interface.md, held to the tests.

Two halves:
  * the table and the tests cannot drift apart: the table's (call, errno) pairs are
    parsed from the document and must be exactly the keys of
    tests.unit.uvm.errno_coverage.COVERAGE, and every test that mapping names must exist;
  * the conditions no other test drove are driven here, through the in-process core:
    each refused call answers its errno and changes nothing (the maps, the mmu, the
    frames, the files, every counter; the auditor clean). The refusals the table says
    do change something (ftruncate's ENOMEM; MAP_FIXED under MCL_FUTURE) are checked
    for exactly that change. The same over real processes: tests/integration/
    test_vm_errnos.py.
"""

from __future__ import annotations

import ast
import errno as host_errno
import inspect
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from machine.limits import Limits
from machine.mmu.pmap import Mmu
from machine.params import PAGE_SIZE, USER_MIN, USER_TOP
from machine.proto import (
    MADV_NORMAL,
    MADV_RANDOM,
    MAP_INHERIT_NONE,
    MCL_CURRENT,
    MCL_FUTURE,
    O_RDONLY,
    RLIM_INFINITY,
    RLIMIT_MEMLOCK,
    UserError,
)
from machine.proto.types import Prot
from machine.uvm import advice, files, loan, mmap, wiring
from machine.uvm.audit import audit
from machine.uvm.fault import fault
from machine.uvm.state import Uvm
from tests.unit.uvm.errno_coverage import COVERAGE, REPO
from tests.unit.uvm.localpmap import make_uvm
from tests.unit.uvm.test_core import OWN, cpu_load, cpu_store

RW = Prot.READ | Prot.WRITE
P = PAGE_SIZE
OTHER = 78  # another session
TOP64 = 1 << 64  # a range ending at or past it wraps (NetBSD's 64-bit arithmetic)
DOC = REPO / "docs" / "vm-interface.md"

# -- the table and the mapping ---------------------------------------------------------------


def table_pairs(text: str) -> set[tuple[str, str]]:
    """The (call, errno) pairs of the table under '## Errnos': one per errno of a row's
    errno cell (a parenthesis there is a remark: 'SIGSEGV (`EFAULT`)' is SIGSEGV)."""
    _, found, rest = ("\n" + text).partition("\n## Errnos\n")
    assert found, "no '## Errnos' section"
    section = rest.split("\n## ", 1)[0]
    pairs = set()
    for line in section.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        call, errnos = cells[0], re.sub(r"\(.*?\)", "", cells[1])
        if call == "call" or set(call) <= {"-"}:
            continue  # the header and its rule
        for e in errnos.split(","):
            pairs.add((call, e.strip().strip("`")))
    return pairs


def test_every_pair_of_the_errno_table_has_its_tests_and_no_other() -> None:
    pairs = table_pairs(DOC.read_text())
    assert len(pairs) > 40
    assert sorted(pairs - COVERAGE.keys()) == [], "rows of the table no test is named for"
    assert sorted(COVERAGE.keys() - pairs) == [], "tests named for rows the table lost"
    assert all(conds and all(conds.values()) for conds in COVERAGE.values())


def test_the_parser_sees_a_new_row_and_an_escaped_bar() -> None:
    """The companion: a row added to the table is a pair the mapping lacks."""
    doc = (
        "## Errnos\n\n| call | errno | when |\n|---|---|---|\n"
        "| open | EEXIST | `O_CREAT \\| O_EXCL` |\n| load, store | SIGBUS (`SIGBUS`) | x |\n"
        "| mremap | ENOMEM, EINVAL | new |\n\n## After\n| not | this | row |\n"
    )
    pairs = table_pairs(doc)
    assert pairs == {
        ("open", "EEXIST"),
        ("load, store", "SIGBUS"),
        ("mremap", "ENOMEM"),
        ("mremap", "EINVAL"),
    }
    assert pairs - COVERAGE.keys() == {("mremap", "ENOMEM"), ("mremap", "EINVAL")}


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_test_the_mapping_names_exists() -> None:
    missing = []
    defs: dict[str, set[str]] = {}
    for (call, errno), conds in sorted(COVERAGE.items()):
        for when, refs in conds.items():
            for ref in refs:
                path, _, name = ref.partition("::")
                name, _, param = name.partition("[")
                if path not in defs:
                    defs[path] = _defined(REPO / path) if (REPO / path).is_file() else set()
                ok = name in defs[path]
                if param:  # a case of this module's table-driven test
                    ok = ok and path.endswith("test_errno_table.py") and param[:-1] in CASES
                if not ok:
                    missing.append(f"{call} {errno} ({when}): {ref}")
    assert missing == []


# -- refusals that change nothing --------------------------------------------------------------


@dataclass
class World:
    """A process `p` with 4 anonymous pages at `va` ("kept" stored) and a shared mapping
    `fva` of the 2-page file "f" (handle `h` read-write, `ro` read-only)."""

    uvm: Uvm
    mmu: Mmu
    mp: pytest.MonkeyPatch
    p: int
    va: int
    fva: int
    h: int
    ro: int


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    uvm, mmu = make_uvm(64, tmp_path, swap_pages=64)
    (tmp_path / "disk" / "f").write_bytes(b"f" * 2 * P)
    h, _ = files.open(uvm, OWN, "f", False, None)
    ro, _ = files.open(uvm, OWN, "f", False, None, O_RDONLY)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 4 * P, RW)
    fva = await mmap.mmap(uvm, p, OWN, 2 * P, RW, handle=h, shared=True)
    await cpu_store(uvm, mmu, p, va, b"kept")
    await cpu_store(uvm, mmu, p, fva, b"file")
    return World(uvm, mmu, monkeypatch, p, va, fva, h, ro)


def snapshot(w: World) -> tuple[Any, ...]:
    """Everything a refused call must leave as it was."""
    uvm, mmu = w.uvm, w.mmu
    return (
        {
            a: [
                (e.start, e.end, e.prot, e.max_prot, e.wired_count, e.inheritance, e.advice)
                for e in sp.map.entries
            ]
            for a, sp in uvm.spaces.items()
        },
        {
            a: (sp.map.size, sp.map.wirefuture, sp.map.all_locked, sp.memlock)
            for a, sp in uvm.spaces.items()
        },
        {
            a: sorted((v, t.pfn, t.prot, t.wired) for v, t in pm.ptes.items())
            for a, pm in mmu.pmaps.items()
        },
        sorted(uvm.handles),
        sorted(uvm.objects),
        {
            o.id: (o.file.size if o.file else 0, sorted(o.pages.items()))
            for o in uvm.vnodes.values()
        },
        dict(uvm.procs.held),
        dict(uvm.nfiles),
        (uvm.pages.free.count, uvm.pages.wired, len(uvm.anons)),
        (uvm.entry_pool.nentries, uvm.entry_pool.reserved),
        uvm.stats.as_dict(),
    )


Call = Callable[[], Any]  # the refused call: a coroutine function, or a plain one
Prepare = Callable[[World], Awaitable[Call]]
#: case id -> (errno, words its detail names or "", prepare: sets up, returns the call)
CASES: dict[str, tuple[str, str, Prepare]] = {}


async def run(call: Call) -> None:
    r = call()
    if inspect.isawaitable(r):
        await r


def case(name: str, errno: str, detail: str = "") -> Callable[[Prepare], Prepare]:
    def register(prepare: Prepare) -> Prepare:
        assert name not in CASES
        CASES[name] = (errno, detail, prepare)
        return prepare

    return register


@case("mmap-EINVAL-unaligned-offset", "EINVAL", "offset")
async def _mmap_offset(w: World) -> Call:
    return lambda: mmap.mmap(w.uvm, w.p, OWN, P, RW, handle=w.h, offset=100)


@case("mmap-EINVAL-fixed-length-beyond-user-space", "EINVAL")
async def _mmap_fixed_huge(w: World) -> Call:
    return lambda: mmap.mmap(w.uvm, w.p, OWN, USER_TOP, RW, va=USER_MIN, fixed=True)


@case("mmap-ENOMEM-no-room-anywhere", "ENOMEM", "no room")
async def _mmap_no_room(w: World) -> Call:
    w.uvm.limits = Limits(vsize=1 << 48)
    top = USER_MIN + 16 * P  # everything above is mapped: a 10-page hole below is left
    await mmap.mmap(w.uvm, w.p, OWN, USER_TOP - top, RW, va=top, fixed=True)
    return lambda: mmap.mmap(w.uvm, w.p, OWN, 11 * P, RW)


@case("mmap-ENOMEM-mcl-future-beyond-wiredmax", "ENOMEM", "wiredmax")
async def _mmap_wiredmax(w: World) -> Call:
    top = wiring.getrlimit(w.uvm, w.p, OWN, RLIMIT_MEMLOCK)[1]
    wiring.setrlimit(w.uvm, w.p, OWN, RLIMIT_MEMLOCK, top, top)
    await wiring.mlockall(w.uvm, w.p, OWN, MCL_FUTURE)
    w.uvm.wiredmax = 2
    return lambda: mmap.mmap(w.uvm, w.p, OWN, 3 * P, RW)


@case("munmap-EINVAL-unaligned-address", "EINVAL", "aligned")
async def _munmap_unaligned(w: World) -> Call:
    return lambda: mmap.munmap(w.uvm, w.p, OWN, w.va + 1, P)


@case("munmap-EINVAL-range-leaves-user-space", "EINVAL", "outside")
async def _munmap_outside(w: World) -> Call:
    return lambda: mmap.munmap(w.uvm, w.p, OWN, USER_TOP - P, 2 * P)


@case("munmap-EINVAL-null-page", "EINVAL", "outside")
async def _munmap_null(w: World) -> Call:
    return lambda: mmap.munmap(w.uvm, w.p, OWN, 0, P)


@case("mprotect-EINVAL-unaligned-address", "EINVAL", "aligned")
async def _mprotect_unaligned(w: World) -> Call:
    return lambda: mmap.mprotect(w.uvm, w.p, OWN, w.va + 1, P, Prot.READ)


@case("mprotect-EINVAL-range-leaves-user-space", "EINVAL", "outside")
async def _mprotect_outside(w: World) -> Call:
    return lambda: mmap.mprotect(w.uvm, w.p, OWN, USER_TOP - P, 2 * P, Prot.READ)


@case("minherit-EINVAL-range-wraps", "EINVAL")
async def _minherit_wraps(w: World) -> Call:
    return lambda: advice.minherit(w.uvm, w.p, OWN, TOP64 - P, 2 * P, MAP_INHERIT_NONE)


@case("madvise-EINVAL-range-wraps", "EINVAL")
async def _madvise_wraps(w: World) -> Call:
    return lambda: advice.madvise(w.uvm, w.p, OWN, TOP64 - P, 2 * P, MADV_NORMAL)


@case("madvise-ENOMEM-split-beyond-maxentries", "ENOMEM", "maxentries")
async def _madvise_maxentries(w: World) -> Call:
    w.uvm.limits = Limits(maxentries=w.uvm.entry_pool.nentries + 1)  # a middle needs 2
    return lambda: advice.madvise(w.uvm, w.p, OWN, w.va + P, P, MADV_RANDOM)


@case("mincore-EINVAL-range-wraps", "EINVAL", "wraps")
async def _mincore_wraps(w: World) -> Call:
    return lambda: advice.mincore(w.uvm, w.p, OWN, TOP64 - P, 2 * P)


@case("mincore-EINVAL-length-wraps-to-the-address", "EINVAL", "wraps")
async def _mincore_wraps_exactly(w: World) -> Call:
    return lambda: advice.mincore(w.uvm, w.p, OWN, w.va, TOP64 - w.va)


@case("mlock-ENOMEM-range-wraps", "ENOMEM", "wraps")
async def _mlock_wraps(w: World) -> Call:
    return lambda: wiring.mlock(w.uvm, w.p, OWN, TOP64 - P, 2 * P)


@case("munlock-ENOMEM-range-wraps", "ENOMEM", "wraps")
async def _munlock_wraps(w: World) -> Call:
    await wiring.mlock(w.uvm, w.p, OWN, w.va, P)
    return lambda: wiring.munlock(w.uvm, w.p, OWN, TOP64 - P, 2 * P)


@case("mlock-EAGAIN-wiredmax-checked-first", "EAGAIN", "wiredmax")
async def _mlock_both_limits(w: World) -> Call:
    wiring.setrlimit(w.uvm, w.p, OWN, RLIMIT_MEMLOCK, P, P)
    w.uvm.wiredmax = 1
    return lambda: wiring.mlock(w.uvm, w.p, OWN, w.va, 2 * P)  # beyond both


@case("setrlimit-EPERM-rlim-infinity", "EPERM", "root")
async def _setrlimit_infinity(w: World) -> Call:
    return lambda: wiring.setrlimit(w.uvm, w.p, OWN, RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY)


@case("setrlimit-EINVAL-rlim-infinity-over-the-hard-limit", "EINVAL", "cur")
async def _setrlimit_cur_infinity(w: World) -> Call:
    top = wiring.getrlimit(w.uvm, w.p, OWN, RLIMIT_MEMLOCK)[1]
    return lambda: wiring.setrlimit(w.uvm, w.p, OWN, RLIMIT_MEMLOCK, RLIM_INFINITY, top)


@case("open-EIO-the-host-fails", "EIO", "Input/output")
async def _open_eio(w: World) -> Call:
    def call() -> Any:
        def boom(fd: int) -> os.stat_result:
            raise OSError(host_errno.EIO, "Input/output error")

        with w.mp.context() as m:
            m.setattr(os, "fstat", boom)
            return files.open(w.uvm, OWN, "f", False, None)

    return call


@case("close-EBADF-no-such-handle", "EBADF")
async def _close_unknown(w: World) -> Call:
    return lambda: files.close(w.uvm, OWN, 999)


@case("close-EBADF-another-sessions-handle", "EBADF")
async def _close_other(w: World) -> Call:
    return lambda: files.close(w.uvm, OTHER, w.h)


@case("close-EBADF-closed-already", "EBADF")
async def _close_twice(w: World) -> Call:
    h, _ = files.open(w.uvm, OWN, "f", False, None)
    await files.close(w.uvm, OWN, h)
    return lambda: files.close(w.uvm, OWN, h)


@pytest.mark.parametrize("name", sorted(CASES))
async def test_refused(world: World, name: str) -> None:
    """Each case: its errno (and the words of its detail), nothing changed, audit clean."""
    w = world
    errno, detail, prepare = CASES[name]
    call = await prepare(w)
    assert await audit(w.uvm) == []
    before = snapshot(w)
    with pytest.raises(UserError) as ei:
        await run(call)
    assert ei.value.errno == errno, ei.value
    assert detail in ei.value.detail
    assert snapshot(w) == before
    assert await audit(w.uvm) == []
    assert await cpu_load(w.uvm, w.mmu, w.p, w.va, 4) == b"kept"
    assert await cpu_load(w.uvm, w.mmu, w.p, w.fva, 4) == b"file"


# -- every call of a process: ESRCH for another session's or an exited process -----------------

PROCESS_CALLS: dict[str, Callable[[Uvm, int, int, int], Any]] = {
    "mmap": lambda u, a, o, va: mmap.mmap(u, a, o, P, RW),
    "munmap": lambda u, a, o, va: mmap.munmap(u, a, o, va, P),
    "mprotect": lambda u, a, o, va: mmap.mprotect(u, a, o, va, P, Prot.READ),
    "fork": lambda u, a, o, va: mmap.fork(u, a, o),
    "minherit": lambda u, a, o, va: advice.minherit(u, a, o, va, P, MAP_INHERIT_NONE),
    "madvise": lambda u, a, o, va: advice.madvise(u, a, o, va, P, MADV_RANDOM),
    "mincore": lambda u, a, o, va: advice.mincore(u, a, o, va, P),
    "mlock": lambda u, a, o, va: wiring.mlock(u, a, o, va, P),
    "munlock": lambda u, a, o, va: wiring.munlock(u, a, o, va, P),
    "mlockall": lambda u, a, o, va: wiring.mlockall(u, a, o, MCL_CURRENT),
    "munlockall": lambda u, a, o, va: wiring.munlockall(u, a, o),
    "getrlimit": lambda u, a, o, va: wiring.getrlimit(u, a, o, RLIMIT_MEMLOCK),
    "setrlimit": lambda u, a, o, va: wiring.setrlimit(u, a, o, RLIMIT_MEMLOCK, 0, 0),
    "msync": lambda u, a, o, va: files.msync(u, a, o, va, P),
}


@pytest.mark.parametrize("call", sorted(PROCESS_CALLS))
async def test_every_process_call_is_esrch_for_another_session_or_an_exited_process(
    world: World, call: str
) -> None:
    w = world
    gone = await mmap.spawn(w.uvm, OWN)
    await mmap.exit(w.uvm, gone, OWN)
    before = snapshot(w)
    for asid, owner in ((w.p, OTHER), (gone, OWN), (w.p + 99, OWN)):
        with pytest.raises(UserError) as ei:
            await run(lambda: PROCESS_CALLS[call](w.uvm, asid, owner, w.va))  # noqa: B023
        assert ei.value.errno == "ESRCH", (asid, owner)
        assert snapshot(w) == before
    assert await audit(w.uvm) == []


# -- refusals the table says change something ---------------------------------------------------


async def _exhaust(uvm: Uvm, mmu: Mmu) -> None:
    """Take every free frame (no page daemon here: the faults give up quickly)."""
    hog = await mmap.spawn(uvm, OTHER)
    n = uvm.pages.npages
    hva = await mmap.mmap(uvm, hog, OTHER, n * P, RW)

    async def touch_all() -> None:
        for i in range(n):
            f = mmu.store(hog, hva + i * P, b"h")
            if f is not None:
                await fault(uvm, hog, OTHER, f.va, f.access)

    with pytest.raises(UserError) as ei:
        await touch_all()
    assert ei.value.errno == "ENOMEM"


async def test_ftruncate_enomem_when_a_loaned_last_page_cannot_be_copied(world: World) -> None:
    """The size has changed, the loaned last page stays the object's with its tail not
    zeroed (the loan keeps its bytes), nothing else moved; the audit is clean."""
    w = world
    uvm = w.uvm
    await cpu_store(uvm, w.mmu, w.p, w.fva + P, b"2nd")
    obj = uvm.handles[(OWN, w.h)]
    [lent] = await loan.loan_to_kernel(uvm, w.p, OWN, w.fva + P, 1)
    assert obj.pages[1] == lent
    await _exhaust(uvm, w.mmu)
    pages = dict(obj.pages)
    with pytest.raises(UserError) as ei:
        await files.ftruncate(uvm, OWN, w.h, P + P // 2)  # page 1 is the last, partly
    assert ei.value.errno == "ENOMEM"
    assert obj.file is not None
    assert obj.file.size == P + P // 2
    assert uvm.disk is not None
    assert (uvm.disk / "f").stat().st_size == P + P // 2
    assert obj.pages == pages
    assert bytes(uvm.ram.frame(lent)[:3]) == b"2nd"
    assert bytes(uvm.ram.frame(lent)[P // 2 : P // 2 + 4]) == b"ffff"  # the tail, not zeroed
    assert uvm.stats.truncloanbreaks == 0
    assert await audit(uvm) == []
    loan.unloan_pages(uvm, [lent])
    assert await audit(uvm) == []


async def test_map_fixed_under_mcl_future_beyond_the_limit_leaves_the_range_unmapped(
    world: World,
) -> None:
    """uvm_mmap: the replace happened, the new mapping cannot be wired and is undone."""
    w = world
    uvm = w.uvm
    top = wiring.getrlimit(uvm, w.p, OWN, RLIMIT_MEMLOCK)[1]
    await wiring.mlockall(uvm, w.p, OWN, MCL_CURRENT | MCL_FUTURE)
    assert uvm.pages.wired == 6
    wiring.setrlimit(uvm, w.p, OWN, RLIMIT_MEMLOCK, 5 * P, top)  # lowered: nothing unwired
    mmaps = uvm.stats.mmaps
    with pytest.raises(UserError) as ei:  # 4 new pages + the file's 2 wired: beyond 5
        await mmap.mmap(uvm, w.p, OWN, 4 * P, RW, va=w.va, fixed=True)
    assert ei.value.errno == "ENOMEM"
    sp = uvm.spaces[w.p]
    assert [(e.start, e.end, e.wired_count) for e in sp.map.entries] == [(w.fva, w.fva + 2 * P, 1)]
    assert uvm.pages.wired == 2  # the file mapping's: the 4 replaced pages went
    assert uvm.stats.mmaps == mmaps
    assert sp.map.all_locked
    assert await audit(uvm) == []
    with pytest.raises(UserError) as segv:
        await cpu_load(uvm, w.mmu, w.p, w.va, 4)
    assert segv.value.errno == "EFAULT"
    assert await cpu_load(uvm, w.mmu, w.p, w.fva, 4) == b"file"
