"""uvm's side of the trap path: take the mmu's traps, resolve them, answer in order.

The mmu parks a user access that misses and queues a trap (machine.mmu.cpu);
uvm keeps one pmap.trapwait outstanding there (a long poll), and each reply
hands over a batch of traps. Each trap is resolved as uvm_fault does
(machine.uvm.fault: fault_locked under the space's lock), started eagerly:
most faults (a free frame to zero-fill, a resident page) never wait, so a
batch's answers go back together in the next pmap.trapwait, which also asks
for the next traps (a fault costs no message of its own: four one-way hops,
client -> mmu -> uvm -> mmu -> client); a fault that waits (swap-in, a busy
page, memory) becomes a task and answers alone, in a pmap.resolve notice.

Invariants (the ordering rule, docs/design.md "Faults"):
  * an answer travels on uvm's one connection to the mmu, the one every
    pmap.* request of uvm travels on, which delivers in order; so the mmu
    enters it after every revocation uvm sent before it and before every one
    uvm sends after it: no enter lands after a revocation of the same page;
  * the page of a resolved fault (and every fault-ahead neighbour) stays BUSY
    and the space's lock stays held until its answer is sent, then both are
    released: nothing can revoke or free the page between the decision and
    the notice that carries it;
  * every trap handed over gets exactly one answer: the mappings, or an errno
    (EFAULT SIGSEGV, ENOMEM after which the process is killed, ESRCH, EPANIC).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from machine.ipc import eager
from machine.ipc.peer import Peer, PeerPanic, RemoteError, raise_for
from machine.proto import NO_HEADER, Errno, Reply, UserError
from machine.proto.trap import (
    PmapResolve,
    PmapTrapwait,
    PmapTrapwaitReply,
    Trap,
    TrapAnswer,
    TrapMapping,
)
from machine.proto.types import Prot
from machine.uvm.ahead import neighbours
from machine.uvm.fault import fault_locked
from machine.uvm.state import Uvm, VmSpace

#: The long poll has no deadline of its own (the mmu answers when a trap comes); a dead
#: mmu is the supervisor's business (a machine panic).
TRAPWAIT_TIMEOUT_S = 1e9

#: Prot(access).letters() for each access value (the trace line of every trap: an IntFlag's
#: `&` runs in Python, ~1 µs each).
_LETTERS = {int(p): Prot(p).letters() for p in range(8)}


@dataclass(slots=True)
class Outcome:
    """A trap's answer and what to release once it is sent."""

    answer: TrapAnswer
    space: VmSpace | None = None  # its lock is held until the answer is sent
    busy: tuple[int, ...] = ()  # pages BUSY until the answer is sent


class TrapServer:
    """Resolve the mmu's traps for the uvm service.

    `failed(e)` turns an exception of a fault into (errno, detail), panicking the role
    when it is a kernel bug; `oom(asid, owner)` kills a process that ran out of memory;
    `spawn` runs a fault that waits as a background task of the role."""

    def __init__(
        self,
        uvm: Uvm,
        mmu: Peer,
        failed: Callable[[Exception], tuple[str, str]],
        oom: Callable[[int, int], None],
        spawn: Callable[[Coroutine[Any, Any, None], str], Any],
        panicked: Callable[[], str],
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.uvm = uvm
        self.mmu = mmu
        self.failed = failed
        self.oom = oom
        self.spawn = spawn
        self.panicked = panicked
        self.log = log  # the role's trace: one line per trap
        self.traps = 0
        self.batches = 0
        self._ended: asyncio.Future[None] | None = None

    async def run(self) -> None:
        """The long poll: answer the last batch's faults and wait for traps, resolve them,
        and so on. Each step runs in the receive callback of the trapwait reply that
        brings the traps (Peer.call_then: no task wakes per batch); this task only waits
        for an error (which it raises: the role panics) or its cancellation (the role
        closes: no further trapwait is sent). The answers are released (pages unbusied,
        locks dropped) once the trapwait that carries them is sent."""
        self._ended = asyncio.get_running_loop().create_future()
        try:
            self._ask([])
            await self._ended
        finally:
            self._ended = None

    def _ask(self, ready: list[Outcome]) -> None:
        """Send the trapwait carrying `ready`'s answers, then release them."""
        req = PmapTrapwait(h=NO_HEADER, answers=[o.answer for o in ready])
        try:
            self.mmu.call_then(req, self._got, timeout_s=TRAPWAIT_TIMEOUT_S)
        finally:
            self.release(ready)

    def _got(self, rep: Reply | BaseException) -> None:
        """A trapwait's reply: resolve its traps, send the next trapwait with the answers."""
        ended = self._ended
        if ended is None or ended.done():
            return  # closing: the long poll ends here
        try:
            if isinstance(rep, BaseException):
                raise rep
            raise_for(rep)
            if not isinstance(rep, PmapTrapwaitReply):
                raise RemoteError(Errno.EBADMSG, f"expected PmapTrapwaitReply, got {rep!r}")
            self._ask(self.batch(rep.traps) if rep.traps else [])
        except PeerPanic as e:
            # The mmu panicked: no trap will come. Ending here, not raising, leaves the
            # machine's first panic (the mmu's) the one reported.
            self.log(f"trapwait: the mmu panicked ({e.detail[:120]})")
            ended.set_result(None)
        except Exception as e:
            ended.set_exception(e)

    def batch(self, traps: list[Trap]) -> list[Outcome]:
        """Resolve a batch. => the outcomes of the faults that finished at once (they ride
        on the next trapwait); a fault that waits answers alone when it is done."""
        self.batches += 1
        ready: list[Outcome] = []
        for t in traps:
            self.traps += 1
            self.log(f"trap {t.id} from mmu: asid {t.asid} {_LETTERS.get(t.access, '?')} {t.va:#x}")
            started = eager.start(self.resolve(t))
            if isinstance(started, eager.Ready):
                ready.append(started.value)
            else:
                self.spawn(self._later(started), "trap")
        return ready

    async def _later(self, rest: eager.Resumed[Outcome]) -> None:
        self.send([await rest])

    def send(self, outcomes: list[Outcome]) -> None:
        """One pmap.resolve notice for the outcomes, then release them."""
        if not outcomes:
            return
        self.mmu.notify(PmapResolve(h=NO_HEADER, answers=[o.answer for o in outcomes]))
        self.release(outcomes)

    def release(self, outcomes: list[Outcome]) -> None:
        """Unbusy the pages and drop the locks of answers already sent."""
        for o in outcomes:
            for pfn in o.busy:
                self.uvm.unbusy(pfn)
            if o.space is not None:
                o.space.lock.release()

    async def resolve(self, t: Trap) -> Outcome:
        """uvm_fault for trap t. => its outcome; the lock and pages held until sent."""
        uvm = self.uvm
        why = self.panicked()
        if why:
            return Outcome(TrapAnswer(t.id, [], Errno.EPANIC.value, why[:4096]))
        try:
            sp = uvm.space(t.asid, t.owner)
        except UserError as e:
            return Outcome(TrapAnswer(t.id, [], e.errno.value, e.detail))
        uvm.stats.faults += 1
        await sp.lock.acquire()
        try:
            if sp.dead:
                raise UserError(Errno.ESRCH, f"process {t.asid} exited")
            r = await fault_locked(uvm, sp, t.va, Prot(t.access), wire=False)
        except Exception as e:
            sp.lock.release()
            errno, detail = self.failed(e)
            if errno == Errno.ENOMEM:
                self.oom(t.asid, t.owner)
                detail = f"out of memory: process {t.asid} killed ({detail})"
            return Outcome(TrapAnswer(t.id, [], errno, detail[:4096]))
        near = neighbours(uvm, sp, r, t.access)
        maps = [TrapMapping(r.va, r.pfn, r.prot, r.flags)]
        maps += [TrapMapping(n.va, n.pfn, n.prot, n.flags) for n in near]
        busy = (r.pfn, *(n.pfn for n in near))
        return Outcome(TrapAnswer(t.id, maps), sp, busy)
