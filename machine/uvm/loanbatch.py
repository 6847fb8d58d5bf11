"""uvm.loan_chunks: the loans of one window of a send, pipelined (machine.uvm.loan).

Each chunk is loaned as loan_to_kernel loans it (under the space lock, page by
page, all or nothing per chunk, the era's effects per page), in order; what
differs is only when its first-loan write-protect is awaited: not before the
next chunk. The protects of the chunks loaned in one turn of the loop go out in
one pmap.page_protect(READ) at the next turn, and the answer waits for every one.

Whole-send loans (kvas given, one kernel VA per chunk): once every chunk is loaned,
the loaned chunks' pages are entered read-only at their KVA in one
pmap.kenter_chunks on uvm's pmap connection, sent right behind the protects (not after
their answers: the mmu applies a connection's requests in the order sent, so it is no
round trip more), and the answer waits for it too: net gets pfns already mapped, with
no kenter of its own.

Invariants:
  * a chunk's protect is sent as soon as loan_chunks first waits after its loan
    (the loop's next turn; the mmu applies a connection's requests in the order
    sent), and answered before uvm.loan_chunks is: when net has the pfns, every
    managed mapping of each page is read-only (I5);
  * a chunk refused (UserError) is answered in its place and loans nothing; if a
    protect fails, its chunks and every later one are unloaned (as if each had
    failed in turn) and the error is raised: the chunks before stay loaned, as
    when separate uvm.loan requests failed at that chunk;
  * with kvas: bad kvas (their number, alignment, kernel range) loan nothing (EINVAL);
    a chunk answered with pfns is mapped at its KVA when net reads the answer; if the
    kenter or a protect fails, what was entered is removed, every chunk is unloaned
    and the error is raised (net copies).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from machine.params import KERNEL_MIN, KERNEL_TOP, PAGE_MASK, PAGE_SIZE
from machine.proto import Errno, UserError, UvmLoanChunks
from machine.proto.types import Prot
from machine.uvm.loan import FIRST_LOAN, loan_range, unloan_pages
from machine.uvm.map import check_range
from machine.uvm.state import Uvm

#: Service.spawn: runs a coroutine as a task the role owns.
Spawn = Callable[[Coroutine[Any, Any, None], str], object]


async def loan_chunks(
    uvm: Uvm, asid: int, owner: int, chunks: list[tuple[int, int]], spawn: Spawn,
    kvas: list[int] | None = None,
) -> dict[str, list[Any]]:  # fmt: skip
    """uvm.loan_chunks: each (va, npages) chunk loaned as loan_to_kernel would, in order,
    as if each were its own uvm.loan. => the reply's fields: per chunk its pfns (errno
    None), or no pfns and the errno and detail of its refusal (a UserError: net copies
    that chunk instead); anything else is raised.

    Pipelined: each chunk is loaned under the space lock as loan_to_kernel does, but its
    first-loan write-protect is not awaited before the next chunk: the protects of the
    chunks loaned in one turn of the loop go out in one pmap.page_protect (in chunk
    order; the mmu applies requests in the order sent), and every one is awaited before
    the answer. If a protect fails, its chunks and every later one are unloaned (as if
    each had failed in turn) and the error is raised. `spawn` runs the sender of each
    batch as a task of the role (Service.spawn). With kvas, every chunk loaned is entered
    at its KVA before the answer (the module's "whole-send loans")."""
    if kvas:
        _check_kvas(chunks, kvas)
    pfns: list[list[int]] = []
    errnos: list[Errno | None] = []
    details: list[str] = []
    batch = _ProtectBatch(uvm, spawn)
    waits: list[tuple[int, asyncio.Future[int] | None]] = []  # chunk, its protect
    try:
        for va, npages in chunks:
            try:
                sp = uvm.space(asid, owner)
                check_range(va, npages * PAGE_SIZE)
                async with sp.lock:
                    loaned, first = await loan_range(uvm, sp, va, npages)
                    waits.append((len(pfns), batch.add(first) if first else None))
                pfns.append(loaned)
                errnos.append(None)
                details.append("")
            except UserError as e:
                pfns.append([])
                errnos.append(Errno(e.errno))
                details.append(e.detail)
        enter = [(kva, p) for kva, p, e in zip(kvas or (), pfns, errnos, strict=False) if e is None]
        # Sent now, behind the protects queued before it (tasks start in the order made;
        # the mmu applies a connection's requests in the order sent): not a round trip more.
        kenter: asyncio.Future[bool] | None = None
        if enter:
            kenter = asyncio.get_running_loop().create_future()
            spawn(_kenter(uvm, enter, kenter), "whole-send kenter")
        failed: BaseException | None = None
        for i, fut in waits:
            if fut is not None and failed is None:
                try:
                    await fut
                except BaseException as e:
                    failed = e
            if failed is not None:
                unloan_pages(uvm, pfns[i])
                pfns[i] = []
            else:
                uvm.stats.loans += len(pfns[i])
        if kenter is not None:
            still = [p for p, e in zip(pfns, errnos, strict=True) if e is None and p]
            await _entered(uvm, kenter, enter, failed, still)
        if failed is not None:
            raise failed
    except BaseException:
        batch.abandon()
        raise
    return {"pfns": pfns, "errnos": errnos, "details": details}


async def loan_message(uvm: Uvm, msg: UvmLoanChunks, spawn: Spawn) -> dict[str, list[Any]]:
    """uvm.loan_chunks as the service hands it over. => the reply's fields."""
    return await loan_chunks(uvm, msg.asid, msg.owner, msg.chunks, spawn, msg.kvas)


def _check_kvas(chunks: list[tuple[int, int]], kvas: list[int]) -> None:
    """Bad kvas are an EINVAL before anything is loaned."""
    if len(kvas) != len(chunks):
        raise UserError(Errno.EINVAL, f"{len(kvas)} kvas for {len(chunks)} chunks")
    for kva, (_, npages) in zip(kvas, chunks, strict=True):
        if kva & PAGE_MASK or not KERNEL_MIN <= kva <= KERNEL_TOP - npages * PAGE_SIZE:
            raise UserError(Errno.EINVAL, f"loan kva {kva:#x} is not page-aligned kernel VA")


async def _kenter(
    uvm: Uvm, chunks: list[tuple[int, list[int]]], done: asyncio.Future[bool]
) -> None:
    """One pmap.kenter_chunks of the loaned chunks, read-only (a task of the service's:
    `spawn`). => `done` set True, or to its error (awaited by _entered on every path)."""
    try:
        await uvm.pmap.kenter_chunks(chunks, int(Prot.READ))
    except BaseException as e:  # the loan's caller raises it (_entered)
        if not done.done():
            done.set_exception(e)
        if not isinstance(e, Exception):
            raise
        return
    if not done.done():
        done.set_result(True)


async def _entered(
    uvm: Uvm, kenter: asyncio.Future[bool], chunks: list[tuple[int, list[int]]],
    failed: BaseException | None, still: list[list[int]],
) -> None:  # fmt: skip
    """Await the kenter. If it or a protect failed (`failed`: the chunks from that one on
    are unloaned already), the mappings it entered are removed and the chunks `still`
    loaned are unloaned too: with kvas a failure loans nothing. The kenter's error is
    raised (a protect's by the caller)."""
    try:
        await kenter
    except BaseException:
        _unloan(uvm, still)
        raise
    if failed is not None:
        await uvm.pmap.kremove_ranges([(kva, len(p)) for kva, p in chunks])
        _unloan(uvm, still)


def _unloan(uvm: Uvm, chunks: list[list[int]]) -> None:
    for p in chunks:
        unloan_pages(uvm, p)
        uvm.stats.loans -= len(p)
        p.clear()


class _ProtectBatch:
    """The first-loan write-protects of consecutive chunks: those queued in one turn of
    the loop go out together, in one pmap.page_protect sent at the next turn (in the
    order queued). `add` => the future of the message that carries the frames."""

    def __init__(self, uvm: Uvm, spawn: Spawn) -> None:
        self.uvm = uvm
        self.spawn = spawn
        self.pfns: list[int] = []
        self.fut: asyncio.Future[int] | None = None

    def add(self, pfns: list[int]) -> asyncio.Future[int]:
        if self.fut is None:
            self.fut = asyncio.get_running_loop().create_future()
            self.spawn(self._send(), "first-loan protects")
        self.pfns += pfns
        return self.fut

    async def _send(self) -> None:
        fut, pfns = self.fut, self.pfns
        assert fut is not None
        self.fut, self.pfns = None, []
        try:
            fut.set_result(await self.uvm.pmap.page_protect(pfns, int(Prot.READ), FIRST_LOAN))
        except Exception as e:
            fut.set_exception(e)
        except BaseException as e:
            fut.set_exception(e)
            raise

    def abandon(self) -> None:
        """The caller gave up: what was queued is still sent; nobody awaits the answer."""
        if self.fut is not None:
            self.fut.add_done_callback(_consume)


def _consume(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled():
        fut.exception()
