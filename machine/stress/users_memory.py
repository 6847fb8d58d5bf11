"""The memory users: pattern (stores and loads), forker (a fork tree), hog (more than RAM).

  PatternUser  one process maps 64-256 pages, stores random bytes at random
               offsets (a quarter of them spanning a page boundary), loads
               random ranges and checks them against a ByteModel; after
               OPS_PER_PROCESS operations it reads the whole region back and
               exits, and the next scenario starts a new process. A few
               operations are the VM calls: madvise DONTNEED (no byte changes)
               or FREE of whole pages, the range read back at once: each page
               is zeros (freed) or all its bytes (kept: NetBSD's FREE leaves an
               anon out on swap, and one the page daemon holds busy), and the
               model takes what it read; under mlockall FREE is EBUSY, nothing
               changed. mincore (a byte
               per page, 0 or 1: a page may have been paged out since its store,
               so only under mlockall must every one be 1); mlockall(MCL_CURRENT
               | MCL_FUTURE) when the region fits RLIMIT_MEMLOCK (EAGAIN or
               ENOMEM, the machine's own limit, is a refusal: munlockall), and
               munlockall the next time. BATCH (8) operations make one
               scenario (one Locust task).
  ForkerUser   a parent maps private anonymous memory, shared anonymous
               memory and a shared mapping of its own file, writes all three,
               and forks a small tree (1-2 children, maybe a grandchild: at
               most 4 processes). Every process writes its private memory
               (one model per process, copied at fork: the others must never
               see it) and both shared regions (one model each: everyone sees
               everyone's writes), then every process reads all three back
               whole; the children exit. The parent lives ROUNDS scenarios.
               Half the rounds start with minherit(2) on the private memory,
               which the tree's forks follow (a child's mapping keeps it):
               COPY (as the default), SHARE (one model for the whole tree),
               ZERO (a child's starts as zeros) or NONE (a child has none
               there: its load raises Segv).
  HogUser      maps more than RAM: nframes * page * HOG_FACTOR, divided by the
               number of hog users expected (--users times the hog's share
               of the class weights), and sweeps it: each touched page gets
               a signature of (page, generation) at its start and end; after
               each batch it reads CHECKS random pages whole. The page daemon
               must page out and in; an OutOfMemory (or the process found
               killed: ESRCH) is the failure "hog.oom", and a new process starts.

Operation names are "<user>.<step>" (pattern.store, forker.fork, hog.touch, ...);
every load is checked byte for byte (users_common.VerifyingUser.check).
Invariant: each user's models mirror exactly the stores that returned; after
any failure the user resets (users_common) and builds its state anew.
"""

from __future__ import annotations

from machine.client.errors import OutOfMemory, RequestError, Segv
from machine.proto import (
    MADV_DONTNEED,
    MADV_FREE,
    MAP_INHERIT_COPY,
    MAP_INHERIT_NONE,
    MAP_INHERIT_SHARE,
    MAP_INHERIT_ZERO,
    MCL_CURRENT,
    MCL_FUTURE,
    RLIMIT_MEMLOCK,
    Errno,
)
from machine.stress.green import GreenFile, GreenProcess
from machine.stress.model import ByteModel, PageSignatures, log_uniform
from machine.stress.users_common import VerifyingUser, quietly, renamed, unique_name


def _oom(e: BaseException) -> bool:
    """The machine killed the process for memory, or it is found dead (ESRCH)."""
    return isinstance(e, OutOfMemory) or (isinstance(e, RequestError) and e.errno == Errno.ESRCH)


class PatternUser(VerifyingUser):
    """Random stores and loads over many pages of one process (see the module docstring)."""

    kind = "pattern"
    MIN_PAGES, MAX_PAGES = 64, 256
    OPS_PER_PROCESS = 400
    #: the share of operations that are madvise, mincore, mlockall/munlockall
    MADVISE, MINCORE, LOCKALL = 0.02, 0.02, 0.01
    ADVISE_PAGES = 8  # at most, per madvise
    BATCH = 8  # operations per scenario (per Locust task)

    def on_start(self) -> None:
        super().on_start()
        self.p: GreenProcess | None = None
        self.va = 0
        self.model = ByteModel(0)
        self.ops = 0
        self.locked = False  # mlockall(MCL_CURRENT | MCL_FUTURE) in effect

    def reset(self) -> None:
        self.exit_quietly(self.p)
        self.p = None

    def _begin(self) -> None:
        npages = self.rng.randint(self.MIN_PAGES, self.MAX_PAGES)
        with self.op("pattern.map"):
            self.p = self.m.spawn()
            self.va = self.p.mmap(npages * self.page)
        self.model = ByteModel(npages * self.page)
        self.ops, self.locked = 0, False

    def _range(self) -> tuple[int, int]:
        """(offset, length): log-uniform 1 B .. 2 pages; a quarter forced across a page."""
        size = self.model.size
        n = log_uniform(self.rng, 1, 2 * self.page)
        if n >= 2 and self.rng.random() < 0.25:
            boundary = self.rng.randrange(1, size // self.page) * self.page
            off = max(0, min(size - n, boundary - self.rng.randint(1, n - 1)))
        else:
            off = self.rng.randrange(0, size - n + 1)
        return off, n

    def scenario(self) -> None:
        """BATCH operations: one Locust task each would cost Locust's task scheduling
        (and a hub pass) per operation, as much as the operation's own client side."""
        for _ in range(self.BATCH):
            if self.p is None:
                self._begin()
            p = self.p
            assert p is not None
            r = self.rng.random()
            if r < self.MADVISE + self.MINCORE + self.LOCKALL:
                self._vm_call(p, r)
            else:
                self._store_or_load(p)
            self._count(p)

    def _store_or_load(self, p: GreenProcess) -> None:
        off, n = self._range()
        if self.rng.random() < 0.5:
            data = self.rng.randbytes(n)
            with self.op("pattern.store") as t:
                p.store(self.va + off, data)
                t.nbytes = n
            self.model.store(off, data)
        else:
            with self.op("pattern.load") as t:
                got = p.load(self.va + off, n)
                t.nbytes = n
                self.check("pattern.load", self.model.diff(off, got), va=self.va + off, n=n)

    def _vm_call(self, p: GreenProcess, r: float) -> None:
        if r < self.MADVISE:
            self._madvise(p)
        elif r < self.MADVISE + self.MINCORE:
            off, n = self._range()
            self._mincore(p, self.va + off, n)
        elif self.locked:
            with self.op("pattern.munlockall"):
                p.munlockall()
            self.locked = False
        else:
            self._mlockall(p)

    def _madvise(self, p: GreenProcess) -> None:
        """DONTNEED or FREE of whole pages, read back at once (module docstring)."""
        pg, npages = self.page, self.model.size // self.page
        first = self.rng.randrange(npages)
        count = self.rng.randint(1, min(self.ADVISE_PAGES, npages - first))
        free = self.rng.random() < 0.5
        off, n = first * pg, count * pg
        with self.op("pattern.madvise") as t:
            try:
                p.madvise(self.va + off, n, MADV_FREE if free else MADV_DONTNEED)
            except RequestError as e:
                if not (free and self.locked and e.errno == Errno.EBUSY):
                    raise  # FREE of wired memory is EBUSY (NetBSD's sys_madvise)
            got = p.load(self.va + off, n)
            t.nbytes = n
            if free and not self.locked:
                for i in range(count):  # freed (zeros), or kept: out on swap, or busy
                    page = got[i * pg : (i + 1) * pg]
                    if page == bytes(pg):
                        self.model.store(off + i * pg, page)
            self.check("pattern.madvise", self.model.diff(off, got), va=self.va + off, free=free)

    def _mincore(self, p: GreenProcess, va: int, n: int) -> None:
        """mincore of the pages of [va, va+n) (its va page aligned, as NetBSD wants): a
        byte per page, 0 or 1; all 1 under mlockall."""
        pg = self.page
        start = va - va % pg
        want = -(-(va + n) // pg) - start // pg
        with self.op("pattern.mincore"):
            vec = p.mincore(start, va + n - start)
            wrong = len(vec) != want or bool(set(vec) - {0, 1})
            if wrong or (self.locked and set(vec) != {1}):
                why = f"{len(vec)} bytes for {want} pages, locked={self.locked}: {vec[:16]!r}"
                raise RequestError(Errno.EBADMSG, f"mincore({start:#x}, {va + n - start}): {why}")

    def _mlockall(self, p: GreenProcess) -> None:
        """mlockall(MCL_CURRENT | MCL_FUTURE) when the region fits RLIMIT_MEMLOCK."""
        with self.op("pattern.mlockall"):
            cur, _ = p.getrlimit(RLIMIT_MEMLOCK)
            if self.model.size > cur:
                return
            try:
                p.mlockall(MCL_CURRENT | MCL_FUTURE)
            except RequestError as e:
                if e.errno not in (Errno.EAGAIN, Errno.ENOMEM):
                    raise
                p.munlockall()  # refused (the machine's own limit): nothing stays wired
                return
        self.locked = True
        self._mincore(p, self.va, self.model.size)  # every page wired: resident

    def _count(self, p: GreenProcess) -> None:
        """One more operation of this process; its last reads the region and exits."""
        self.ops += 1
        if self.ops >= self.OPS_PER_PROCESS:
            with self.op("pattern.verify") as t:
                got = p.load(self.va, self.model.size)
                t.nbytes = len(got)
                self.check("pattern.verify", self.model.diff(0, got), va=self.va)
            with self.op("pattern.exit"):
                p.exit()
            self.p = None


INHERITS = {
    "copy": MAP_INHERIT_COPY,
    "share": MAP_INHERIT_SHARE,
    "zero": MAP_INHERIT_ZERO,
    "none": MAP_INHERIT_NONE,
}


class ForkerUser(VerifyingUser):
    """A fork tree over private, shared anonymous and shared file memory (module docstring)."""

    kind = "forker"
    PRIV_PAGES, SHARED_PAGES, FILE_PAGES = 8, 8, 8
    ROUNDS = 8  # scenarios a parent lives
    STORES = 3  # stores per process per region per round
    MINHERIT = 0.5  # the share of rounds that begin with minherit on the private memory

    def on_start(self) -> None:
        super().on_start()
        self.parent: GreenProcess | None = None
        self.file: GreenFile | None = None
        self.names: list[str] = []
        self.rounds = 0

    def reset(self) -> None:
        self.exit_quietly(self.parent)
        for p in list(self.m.processes.values()):
            self.exit_quietly(p)
        self.parent = None
        if self.file is not None:  # its bytes are unknown now: the next parent gets a new file
            quietly(self.file.close)
            self.file = None

    def cleanup(self) -> None:
        self.reset()
        self.unlink_files(self.names)

    def _setup(self) -> GreenProcess:
        pg = self.page
        if self.file is None:
            name = unique_name("forker")
            self.names.append(name)
            with self.op("forker.open"):
                self.file = self.m.open(name, create=True, size=self.FILE_PAGES * pg)
            self.fmodel = ByteModel(self.FILE_PAGES * pg)  # a new file: zeros
        with self.op("forker.map"):
            p = self.m.spawn()
            self.va = {
                "private": p.mmap(self.PRIV_PAGES * pg),
                "shared": p.mmap(self.SHARED_PAGES * pg, shared=True),
                "file": p.mmap(self.FILE_PAGES * pg, file=self.file, shared=True),
            }
        # the file mapping's model is the file's: it outlives the parent (shared stores
        # reach the file); the others are new zero-filled memory
        self.shared = ByteModel(self.SHARED_PAGES * pg)
        # None: minherit NONE left the process without private memory there
        self.priv: dict[int, ByteModel | None] = {p.asid: ByteModel(self.PRIV_PAGES * pg)}
        self.parent, self.rounds, self.inherit = p, 0, "copy"
        return p

    def _model(self, p: GreenProcess, region: str) -> ByteModel | None:
        if region == "private":
            return self.priv[p.asid]
        return self.shared if region == "shared" else self.fmodel

    def _minherit(self, p: GreenProcess) -> None:
        """minherit(2) of the private memory: what the round's forks do with it."""
        how = self.rng.choice(sorted(INHERITS))
        with self.op("forker.minherit"):
            p.minherit(self.va["private"], self.PRIV_PAGES * self.page, INHERITS[how])
        self.inherit = how

    def _write(self, p: GreenProcess) -> None:
        for region in ("private", "shared", "file"):
            model = self._model(p, region)
            if model is None:
                continue
            for _ in range(self.STORES):
                n = log_uniform(self.rng, 1, self.page + 64)
                off = self.rng.randrange(0, model.size - n + 1)
                data = self.rng.randbytes(n)
                with self.op("forker.store") as t:
                    p.store(self.va[region] + off, data)
                    t.nbytes = n
                model.store(off, data)

    def _fork(self, p: GreenProcess) -> GreenProcess:
        with self.op("forker.fork"):
            c = p.fork()
        mine = self.priv[p.asid]  # the child's mapping keeps the parent's inheritance
        if mine is None or self.inherit == "none":
            self.priv[c.asid] = None
        elif self.inherit == "share":
            self.priv[c.asid] = mine  # one amap: everyone's stores
        elif self.inherit == "zero":
            self.priv[c.asid] = ByteModel(mine.size)  # fresh zero-filled memory
        else:
            self.priv[c.asid] = mine.copy()  # copy-on-write
        return c

    def _read(self, p: GreenProcess) -> None:
        for region in ("private", "shared", "file"):
            model = self._model(p, region)
            if model is None:  # minherit NONE: nothing mapped there
                with self.op("forker.none"):
                    _segv(p, self.va[region])
                continue
            with self.op("forker.load") as t:
                got = p.load(self.va[region], model.size)
                t.nbytes = len(got)
                mm = model.diff(0, got)
                self.check(f"forker.{region}", mm, va=self.va[region], asid=p.asid)

    def scenario(self) -> None:
        parent = self.parent if self.parent is not None else self._setup()
        if self.rng.random() < self.MINHERIT:
            self._minherit(parent)
        self._write(parent)
        kids = [self._fork(parent) for _ in range(self.rng.randint(1, 2))]
        if self.rng.random() < 0.5:
            self._write(kids[0])  # the grandchild is forked from a child that wrote
            kids.append(self._fork(kids[0]))
        procs = [parent, *kids]
        for p in self.rng.sample(procs, len(procs)):
            self._write(p)
        for p in procs:
            self._read(p)
        for c in reversed(kids):
            with self.op("forker.exit"):
                c.exit()
            del self.priv[c.asid]
        self._read(parent)  # the children's exits took nothing of the parent's
        self.rounds += 1
        if self.rounds >= self.ROUNDS:
            with self.op("forker.exit"):
                parent.exit()
            self.parent = None


def _segv(p: GreenProcess, va: int) -> None:
    """A load at va must raise Segv (nothing is mapped there)."""
    try:
        p.load(va, 1)
    except Segv:
        return
    raise RequestError(Errno.EBADMSG, f"process {p.asid} loaded {va:#x}: minherit NONE left it")


class HogUser(VerifyingUser):
    """More memory than RAM, swept with page signatures (see the module docstring)."""

    kind = "hog"
    HOG_FACTOR = 1.25  # the hogs together map this many times RAM
    BATCH = 16  # pages touched per scenario
    CHECKS = 4  # random pages read back per scenario

    def on_start(self) -> None:
        super().on_start()
        self.p: GreenProcess | None = None
        self.npages = self.hog_pages()

    def expected_hogs(self) -> int:
        """Hog users expected in the run: --users times the hog's share of the weights,
        from --mix (every worker has it) or else the classes' weights."""
        opts = self.environment.parsed_options
        users = int(getattr(opts, "num_users", 0) or 1)
        weights: dict[str, int] = {c.__name__: int(c.weight) for c in self.environment.user_classes}
        mine = weights.get(type(self).__name__, int(type(self).weight))
        mix = str(getattr(opts, "mix", "") or "")
        if mix:
            parts = [p.strip().partition("=") for p in mix.split(",") if p.strip()]
            weights = {n: int(w or 1) for n, _, w in parts}
            mine = weights.get(self.kind, 0)
        total = sum(weights.values()) or 1
        return max(1, round(users * mine / total))

    def hog_pages(self) -> int:
        return max(16, int(self.nframes * self.HOG_FACTOR / self.expected_hogs()))

    def reset(self) -> None:
        self.exit_quietly(self.p)
        self.p = None

    def _begin(self) -> GreenProcess:
        with self.op("hog.map"):
            p = self.m.spawn()
            self.va = p.mmap(self.npages * self.page)
        self.sigs = PageSignatures(self.npages, self.page, salt=self.rng.getrandbits(32))
        self.gen, self.cursor = 0, 0
        self.p = p
        return p

    def scenario(self) -> None:
        p = self.p if self.p is not None else self._begin()
        for _ in range(self.BATCH):
            pi = self.cursor
            with self.op("hog.touch") as t, renamed(t, "hog.oom", _oom):
                for off, data in self.sigs.stores(pi, self.gen):
                    p.store(self.va + pi * self.page + off, data)
                t.nbytes = 2 * self.sigs.SIG
            self.sigs.touch(pi, self.gen)
            self.cursor += 1
            if self.cursor == self.npages:
                self.cursor, self.gen = 0, self.gen + 1
        for _ in range(self.CHECKS):
            pi = self.rng.randrange(self.npages)
            with self.op("hog.check") as t, renamed(t, "hog.oom", _oom):
                got = p.load(self.va + pi * self.page, self.page)
                t.nbytes = len(got)
                self.check("hog.check", self.sigs.diff(pi, got), va=self.va + pi * self.page)
