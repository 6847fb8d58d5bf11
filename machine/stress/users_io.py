"""The I/O and session users: sender (the wire), files (file mappings), churn (sessions).

  SenderUser  one process, a socket and a 1 MiB + 1 page buffer. A scenario
              fills a range with fresh random bytes, sends it (1 B .. 1 MiB,
              log-uniform; at or above the profile's LOAN_THRESHOLD the pages
              are loaned, below it copied: SendResult.loaned_pages and
              copied_bytes, which must add up to no more than the send), and
              right after the send one of: `overwrite` the buffer, `fork` (the
              child writes its copy, then exits; the parent's bytes must not
              change), `munmap` (a new buffer is mapped), `exit` (a new
              process and socket next time). Then it reads its session's wire
              until that send's packet (matched by (sock, seq)) arrives and
              checks the payload against what memory held at send. A send the
              wire dropped (overload: GreenWire.dropped / lost) is the
              failure "sender.lost", not corruption.
  FilesUser   a file of its own (FILE_PAGES), mapped shared and private in
              one process: stores to both, loads of both checked (the private
              mapping is copy-on-write per page: PrivateFileModel), msync of
              the shared one, then, when the machine's state dir is on this
              host, the host file <state_dir>/disk/<name> is read and checked
              byte for byte (private stores must never reach it). Every
              ROUNDS scenarios the process exits (its shared pages reach the
              file), the host file is checked again and a new process maps it.
  ChurnUser   a second session: attach, spawn, map, touch, check, exit,
              detach; the user's own session stays attached.

Invariant: a sent payload's expected bytes are taken from the model at the
moment the send returned (the send's semantics: what memory held then); the
model changes only after the stores that follow it.
"""

from __future__ import annotations

from machine.client.errors import MachineTimeout, RequestError, Segv, Sigbus
from machine.proto import MS_ASYNC, MS_INVALIDATE, MS_SYNC, Errno
from machine.stress.green import GreenFile, GreenMachine, GreenProcess, GreenSocket, GreenWire
from machine.stress.model import (
    ByteModel,
    PrivateFileModel,
    SendLedger,
    Sent,
    compare,
    log_uniform,
    random_range,
)
from machine.stress.users_common import Lost, VerifyingUser, quietly, renamed, unique_name

ACTIONS = ("overwrite", "fork", "munmap", "exit")


class SenderUser(VerifyingUser):
    """Sends, then overwrite / fork / munmap / exit, every payload checked on the wire."""

    kind = "sender"
    MAX_SEND = 1 << 20
    WIRE_TIMEOUT_S = 20.0

    def on_start(self) -> None:
        super().on_start()
        self.p: GreenProcess | None = None
        self.sock: GreenSocket | None = None
        self.wire: GreenWire | None = None
        self.ledger = SendLedger()
        self.size = self.MAX_SEND + self.page
        self.va = 0
        self.model = ByteModel(self.size)

    def reset(self) -> None:
        self.exit_quietly(self.p)
        self.p, self.sock = None, None
        self.ledger = SendLedger()  # packets of those sends that still come are ignored

    def cleanup(self) -> None:
        if self.wire is not None:
            self.wire.close()

    def _begin(self) -> GreenProcess:
        if self.wire is None:
            with self.op("sender.listen"):
                self.wire = self.m.wire().open()
        with self.op("sender.map"):
            p = self.m.spawn()
            self.sock = p.socket()
            self.va = p.mmap(self.size)
        self.model = ByteModel(self.size)
        self.p = p
        return p

    def scenario(self) -> None:
        p = self.p if self.p is not None else self._begin()
        assert self.sock is not None
        sock = self.sock
        n = log_uniform(self.rng, 1, self.MAX_SEND)
        off = self.rng.randrange(0, self.size - n + 1)
        data = self.rng.randbytes(n)
        with self.op("sender.fill") as t:
            p.store(self.va + off, data)
            t.nbytes = n
        self.model.store(off, data)
        action = self.rng.choice(ACTIONS)
        with self.op("sender.send") as t:
            r = p.send(sock, self.va + off, n)
            t.nbytes = n
            if not 0 <= r.copied_bytes <= n or (r.loaned_pages == 0 and r.copied_bytes != n):
                how = f"{r.loaned_pages} pages loaned, {r.copied_bytes} B copied"
                raise RequestError(Errno.EBADMSG, f"a send of {n} B: {how}")
        self.ledger.record(Sent(sock.id, r.seq, self.va + off, self.model.expect(off, n), action))
        self._act(p, action, off, n)
        self._receive(sock.id, r.seq)

    def _act(self, p: GreenProcess, action: str, off: int, n: int) -> None:
        """What the process does right after its send returned."""
        va = self.va + off
        if action == "overwrite":
            data = self.rng.randbytes(n)
            with self.op("sender.overwrite") as t:
                p.store(va, data)
                t.nbytes = n
            self.model.store(off, data)
        elif action == "fork":
            with self.op("sender.fork") as t:
                c = p.fork()
                c.store(va, self.rng.randbytes(n))  # the child's copy, not the parent's
                c.exit()
                got = p.load(va, n)
                t.nbytes = n
                self.check("sender.fork", self.model.diff(off, got), va=va, n=n)
        elif action == "munmap":
            with self.op("sender.munmap"):
                p.munmap(self.va, self.size)
                self.va = p.mmap(self.size)
            self.model = ByteModel(self.size)
        else:
            with self.op("sender.exit"):
                p.exit()
            self.p, self.sock = None, None

    def _receive(self, sock: int, seq: int) -> None:
        """Read the wire until packet (sock, seq) arrived; check every packet of ours."""
        assert self.wire is not None
        w = self.wire
        dropped, lost = w.dropped, w.lost
        with self.op("sender.wire") as t, renamed(t, "sender.lost", _is_lost):
            while (sock, seq) in self.ledger.pending:
                try:
                    pkt = w.get(timeout_s=self.WIRE_TIMEOUT_S)
                except MachineTimeout:
                    if w.dropped > dropped or w.lost > lost:
                        raise Lost(f"send {sock}:{seq} never arrived whole") from None
                    raise
                s, gone = self.ledger.match(pkt.sock, pkt.seq)
                if s is not None:
                    t.nbytes += len(pkt.payload)
                    mm = compare(0, s.payload, pkt.payload)
                    ctx = {"sock": s.sock, "seq": s.seq, "va": s.va, "action": s.action}
                    self.check("sender.wire", mm, loaned=pkt.loaned, **ctx)
                if gone:
                    what = ", ".join(f"{x.sock}:{x.seq}" for x in gone)
                    raise Lost(f"sends {what} never arrived whole (wire dropped)")


def _is_lost(e: BaseException) -> bool:
    return isinstance(e, Lost)


class FilesUser(VerifyingUser):
    """Shared and private mappings of a file of its own, msync, the host file checked."""

    kind = "files"
    FILE_PAGES = 16
    ROUNDS = 6  # scenarios a process lives
    STORES = 4
    TRUNCATE = 1 / 3  # the share of scenarios that end with ftruncate
    MSYNC_FLAGS = (MS_SYNC, MS_SYNC | MS_INVALIDATE, MS_ASYNC, MS_ASYNC | MS_INVALIDATE)

    def on_start(self) -> None:
        super().on_start()
        self.file: GreenFile | None = None
        self.p: GreenProcess | None = None
        self.names: list[str] = []
        self.size = self.FILE_PAGES * self.page
        self.fmodel = ByteModel(self.size)
        self.rounds = 0

    def reset(self) -> None:
        self.exit_quietly(self.p)
        self.p = None
        if self.file is not None:  # its bytes are unknown now: a new file next time
            quietly(self.file.close)
            self.file = None

    def cleanup(self) -> None:
        self.reset()
        self.unlink_files(self.names)

    def _begin(self) -> GreenProcess:
        if self.file is None:
            name = unique_name("files")
            self.names.append(name)
            with self.op("files.open"):
                self.file = self.m.open(name, create=True, size=self.size)
            self.fmodel = ByteModel(self.size)
        with self.op("files.map"):
            p = self.m.spawn()
            self.vs = p.mmap(self.size, file=self.file, shared=True)
            self.vp = p.mmap(self.size, file=self.file, shared=False)
        self.priv = PrivateFileModel(self.fmodel, 0, self.size, self.page)
        self.p, self.rounds = p, 0
        return p

    def _host_check(self, when: str, size: int | None = None) -> None:
        """The host file against the model (its first `size` bytes: the file's length),
        byte for byte (when disk/ is on this host)."""
        disk = self.host_disk()
        if disk is None or self.file is None:
            return
        name = self.file.name
        want = self.fmodel.buf[: self.size if size is None else size]
        with self.op("files.host") as t:
            got = (disk / name).read_bytes()
            t.nbytes = len(got)
            self.check("files.host", compare(0, want, got), file=name, when=when)

    def _truncate(self, p: GreenProcess) -> None:
        """ftruncate to a random length, the views and the host file checked, grown back."""
        assert self.file is not None
        pg = self.page
        cut = self.rng.randrange(0, self.size)
        if self.rng.random() < 0.5:
            cut -= cut % pg
        end = -(-cut // pg) * pg  # the file's pages end here
        with self.op("files.ftruncate"):
            self.file.ftruncate(cut)
        self.fmodel.buf[cut:] = bytes(self.size - cut)  # what it reads there when grown
        with self.op("files.truncated") as t:
            got = p.load(self.vs, end)
            t.nbytes = end
            self.check("files.truncated", self.fmodel.diff(0, got), cut=cut)
            if end < self.size:  # its first and last pages beyond the end
                _fault(p, self.vs + end, Sigbus, "the shared view beyond the end")
                _fault(p, self.vs + self.size - pg, Sigbus, "the shared view beyond the end")
                _fault(p, self.vs + end, Sigbus, "a store beyond the end", store=True)
            pi = self.rng.randrange(self.FILE_PAGES)
            if pi in self.priv.own or pi * pg < end:
                got = p.load(self.vp + pi * pg, pg)
                self.check("files.truncated", self.priv.diff(pi * pg, got), cut=cut, page=pi)
            else:
                _fault(p, self.vp + pi * pg, Sigbus, "the private view beyond the end")
        with self.op("files.msync"):
            p.msync(self.vs, self.size)
        self._host_check("ftruncate", cut)
        with self.op("files.ftruncate"):
            self.file.ftruncate(self.size)

    def scenario(self) -> None:
        p = self.p if self.p is not None else self._begin()
        for _ in range(self.STORES):
            off, n = random_range(self.rng, self.size, 2 * self.page)
            data = self.rng.randbytes(n)
            shared = self.rng.random() < 0.5
            with self.op("files.store") as t:
                p.store((self.vs if shared else self.vp) + off, data)
                t.nbytes = n
            (self.fmodel if shared else self.priv).store(off, data)
        for shared in (True, False):
            off, n = random_range(self.rng, self.size, self.size)
            with self.op("files.load") as t:
                got = p.load((self.vs if shared else self.vp) + off, n)
                t.nbytes = n
                what = "files.shared" if shared else "files.private"
                self.check(what, (self.fmodel if shared else self.priv).diff(off, got), n=n)
        flags = self.rng.choice(self.MSYNC_FLAGS)
        with self.op("files.msync"):
            p.msync(self.vs, self.size, flags)
        if flags & MS_SYNC:  # MS_ASYNC: written in the background, maybe not yet
            self._host_check("msync")
        if self.rng.random() < self.TRUNCATE:
            self._truncate(p)
        self.rounds += 1
        if self.rounds >= self.ROUNDS:
            with self.op("files.exit"):
                p.exit()
            self.p = None
            self._host_check("exit")


class ChurnUser(VerifyingUser):
    """A second session: attach, spawn, map, touch, check, exit, detach."""

    kind = "churn"
    PAGES = 8

    def scenario(self) -> None:
        with self.op("churn.attach"):
            m2 = GreenMachine.attach(self.m.endpoint, watch=self.m.watch)
        try:
            self._use(m2)
        finally:
            with self.op("churn.detach"):
                m2.close()

    def _use(self, m2: GreenMachine) -> None:
        pg = self.page
        with self.op("churn.spawn"):
            p = m2.spawn()
        with self.op("churn.map"):
            va = p.mmap(self.PAGES * pg)
        with self.op("churn.touch") as t:
            p.touch(va, self.PAGES)
            t.nbytes = self.PAGES
        model = ByteModel(self.PAGES * pg)
        for i in range(self.PAGES):
            model.store(i * pg, b"\x01")  # touch writes one byte at each page's start
        tag = self.rng.randbytes(16)
        with self.op("churn.store"):
            p.store(va + pg - 8, tag)  # across the first page boundary
        model.store(pg - 8, tag)
        with self.op("churn.load") as t:
            got = p.load(va, model.size)
            t.nbytes = len(got)
            self.check("churn.load", model.diff(0, got), va=va, session=m2.session)
        with self.op("churn.exit"):
            p.exit()


def _fault(
    p: GreenProcess, va: int, signal: type[Segv | Sigbus], what: str, store: bool = False
) -> None:
    """A load (or a one-byte store) at va must raise `signal`: else a failure (EBADMSG)."""
    try:
        if store:
            p.store(va, b"\xbb")
        else:
            p.load(va, 1)
    except (Segv, Sigbus) as e:
        if isinstance(e, signal):
            return
        raise RequestError(Errno.EBADMSG, f"{what} at {va:#x}: {type(e).__name__}") from None
    raise RequestError(Errno.EBADMSG, f"{what} at {va:#x}: no {signal.__name__}")
