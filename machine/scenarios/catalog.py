"""The scenarios of uvm-semantics.md section 14 that involve loans, the network or profiles.

Each scenario is a workload run by a client on a freshly booted machine, and
a prediction: expect(knobs) says which outcome the profile's knobs must give
(ok, panic or corruption), from the causal chain of section 1.3:

  * a loaned page's mappings revoked by pmap_page_protect(NONE) while the
    kernel still reads it (the page daemon, a loan break, an anon free):
      - PPP_WIRED=panic and the page or the kernel PTE is wired -> panic in
        pmap_page_protect (Silvers: "ill-defined for wired pages");
      - a managed kenter (KENTER_MODE=managed) with PPP_WIRED=remove loses
        the kernel mapping -> the driver's read traps -> LOAN_KVA=none: panic
        ("case 0"), LOAN_KVA=kernel_object: a zero page, corruption;
      - otherwise the kernel mapping survives and the data is intact.
  * the page daemon reaches a loaned page only when it is queued: ERA=1999
    with QUEUE_INVARIANT=violated (and no PD_WIRED_CHECK) under scan1999;
    with DIAGNOSTIC uvm_pagedeactivate panics on the wired page first.

A scenario body raises ScenarioFailure when the machine did something the
section forbids even though nothing crashed (e.g. a loan counted wrong); the
runner reports that as `error`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from machine.ipc.tasks import TaskSet
from machine.params import PAGE_SIZE

OK, PANIC, CORRUPTION, ERROR = "ok", "panic", "corruption", "error"
#: The predictions read the profile's knobs as uvm-semantics.md names them, not the
#: cores' rules (machine.rules): the oracle stays independent of what it judges.
Knobs = dict[str, Any]


class ScenarioFailure(Exception):
    """The machine stayed up but broke a rule the scenario checks."""


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    section: str
    body: Callable[[Any], Awaitable[None]]
    expect: Callable[[Knobs], str]
    overrides: Knobs = field(default_factory=dict)
    ram: int = 1 << 20


def revoked_while_loaned(k: Knobs) -> str:
    """The outcome when a loaned page is revoked (page_protect NONE) during the loan."""
    if k["PPP_WIRED"] == "panic" and (k["ERA"] == "1999" or k["KENTER_MODE"] == "managed"):
        return PANIC
    if k["KENTER_MODE"] == "managed" and k["PPP_WIRED"] == "remove":
        return CORRUPTION if k["LOAN_KVA"] == "kernel_object" else PANIC
    return OK


def daemon_reaches_loan(k: Knobs) -> str:
    """The outcome when the page daemon scans the active queue during a loan."""
    reach = (
        k["ERA"] == "1999"
        and k["QUEUE_INVARIANT"] == "violated"
        and k["PD_WIRED_CHECK"] == "none"
        and k["PD_POLICY"] == "scan1999"
    )
    if not reach:
        return OK
    if k["DIAGNOSTIC"]:
        return PANIC  # uvm_pagedeactivate: caller did not check wire count
    return revoked_while_loaned(k)


def always_ok(k: Knobs) -> str:
    return OK


def wired_loan(k: Knobs) -> str:
    return PANIC if k["ERA"] == "2002" else OK  # 2002 KASSERTs wire_count == 0


def pattern(seed: int, n: int) -> bytes:
    return bytes((seed * 131 + i * 7 + (i >> 12)) & 0xFF for i in range(n))


# -- the bodies (ctx: machine.scenarios.runner.Ctx) --------------------------------------


class Sent(NamedTuple):
    p: Any  # the sending process (machine.client.Process)
    va: int
    n: int
    r: Any  # its SendResult
    f: Any  # the file mapped, or None


async def sent_buffer(ctx: Any, seed: int, npages: int = 4, file: str = "") -> Sent:
    """A process whose buffer (anonymous, or a shared mapping of `file`), filled with a
    pattern, was just sent with the link held: its loans stay outstanding."""
    n = npages * PAGE_SIZE
    f = await ctx.m.open(file, create=True, size=n) if file else None
    p = await ctx.m.spawn()
    va = await p.mmap(n, "rw", file=f, shared=f is not None)
    data = pattern(seed, n)
    await p.store(va, data)
    s = await p.socket()
    await ctx.hold()
    return Sent(p, va, n, await ctx.send(p, s, va, data), f)


async def seed(ctx: Any) -> None:
    """The thread: a file page loaned for an 8 KiB send, the daemon runs, the driver reads."""
    p, _, _, r, f = await sent_buffer(ctx, 1, 2, "seed.bin")
    if ctx.settings.loan_threshold >= 0 and r.loaned_pages != 2:
        raise ScenarioFailure(f"an 8 KiB send loaned {r.loaned_pages} pages, not 2")
    ctx.note(f"loaned {r.loaned_pages} pages")
    await ctx.pdaemon_pass()
    await ctx.release()
    await ctx.receive()
    await ctx.settle()
    uvm = await ctx.counters("uvm")
    if uvm.get("pqdoubleins"):
        ctx.note(
            f"uvm_pageunwire double insertion detected ({uvm['pqdoubleins']} pages): "
            "the injected queue violation met 1999's unchecked unwire"
        )
    await p.exit()
    await f.close()


async def write_after_send(ctx: Any) -> None:
    """The sender overwrites its buffer as soon as send returns (a loan break, 5.2)."""
    p, va, n, _, _ = await sent_buffer(ctx, 2)
    await p.store(va, b"\xee" * n)  # write fault on a loaned page: the owner gets a copy
    await ctx.release()
    await ctx.receive()
    if await p.load(va, n) != b"\xee" * n:
        raise ScenarioFailure("the sender does not see its own new bytes")
    await ctx.settle()
    await p.exit()


async def unmap_after_send(ctx: Any) -> None:
    """The sender unmaps its buffer as soon as send returns (the owner frees, 5.3)."""
    p, va, n, _, _ = await sent_buffer(ctx, 3)
    await p.munmap(va, n)
    await ctx.release()
    await ctx.receive()
    await ctx.settle()
    await p.exit()


async def exit_after_send(ctx: Any) -> None:
    """The sender exits as soon as send returns; its anon pages become orphans."""
    p = (await sent_buffer(ctx, 4)).p
    await p.exit()
    await ctx.release()
    await ctx.receive()
    await ctx.settle()


async def fork_after_send(ctx: Any) -> None:
    """Fork after a send; the child writes: ordinary COW, the loan is untouched (14.7)."""
    p, va, n, _, _ = await sent_buffer(ctx, 5)
    c = await p.fork()
    await c.store(va, b"\xcc" * n)
    if await p.load(va, n) != pattern(5, n):
        raise ScenarioFailure("the child's write reached the parent")
    await ctx.release()
    await ctx.receive()
    await c.exit()
    await ctx.settle()
    await p.exit()


async def sosend_thresholds(ctx: Any) -> None:
    """Below the threshold the bytes are copied; above it, 64 KiB chunks are loaned (14.21)."""
    p = await ctx.m.spawn()
    n = 100 << 10
    va = await p.mmap(n, "rw")
    data = pattern(6, n)
    await p.store(va, data)
    s = await p.socket()
    small = await ctx.send(p, s, va, data[:3000])
    big = await ctx.send(p, s, va, data)
    thresh = ctx.settings.loan_threshold
    if small.copied_bytes != 3000 or small.loaned_pages:
        raise ScenarioFailure(f"3000 bytes: {small}")
    want = 25 if thresh >= 0 else 0
    if big.loaned_pages != want or big.copied_bytes != n - want * PAGE_SIZE:
        raise ScenarioFailure(f"100 KiB with threshold {thresh}: {big}, expected {want} pages")
    ctx.note(f"3000 B copied; 100 KiB: {big.loaned_pages} pages loaned")
    await ctx.receive()
    await ctx.settle()
    await p.exit()


async def kva_exhaustion(ctx: Any) -> None:
    """Loan KVA runs out: the next send waits until sopendfree frees a chunk (14.22)."""
    p = await ctx.m.spawn()
    chunk = 64 << 10
    va = await p.mmap(5 * chunk, "rw")
    data = pattern(7, 5 * chunk)
    await p.store(va, data)
    s = await p.socket(sndbuf=8 * chunk)
    await ctx.hold(somaxkva=4 * chunk)
    for i in range(4):
        await ctx.send(p, s, va + i * chunk, data[i * chunk : (i + 1) * chunk])
    async with TaskSet() as tasks:  # a failure below ends the fifth send too
        fifth = tasks.spawn(ctx.send(p, s, va + 4 * chunk, data[4 * chunk :]), report=False)
        if ctx.settings.loan_threshold >= 0:
            await ctx.poll(
                lambda c: c.get("kvawaits", 0) >= 1, "net", "the fifth send to wait for KVA"
            )
            if fifth.done():
                raise ScenarioFailure("a send beyond somaxkva did not wait for KVA")
            ctx.note("the fifth 64 KiB send waited for loan KVA")
        await ctx.release()
        await fifth
    await ctx.receive()
    await ctx.settle()
    await p.exit()


async def wired_buffer(ctx: Any) -> None:
    """Send from mlock'ed memory: modern refuses the loan and copies (14.25)."""
    p = await ctx.m.spawn()
    n = 4 * PAGE_SIZE
    va = await p.mmap(n, "rw")
    data = pattern(8, n)
    await p.store(va, data)
    await p.mlock(va, n)
    s = await p.socket()
    r = await ctx.send(p, s, va, data)
    if ctx.knobs["ERA"] == "modern" and ctx.settings.loan_threshold >= 0:
        if r.loaned_pages or r.copied_bytes != n:
            raise ScenarioFailure(f"modern loaned wired pages: {r}")
        ctx.note("loan of wired pages refused; copied")
    await ctx.receive()
    await ctx.settle()
    frames = await ctx.frames()
    if frames["wired"] < 4:
        raise ScenarioFailure(f"the mlock'ed pages are no longer wired: {frames}")
    await p.munlock(va, n)
    await p.exit()


async def zero_loan(ctx: Any) -> None:
    """Send never-touched anonymous memory: zero-page loans (14.24)."""
    p = await ctx.m.spawn()
    n = 16 * PAGE_SIZE
    va = await p.mmap(n, "rw")
    s = await p.socket()
    await ctx.hold()
    await ctx.send(p, s, va, bytes(n))
    frames = await ctx.frames()
    ctx.note(f"{frames.get('loaned', 0)} frames loaned for 16 zero pages")
    await ctx.release()
    await ctx.receive()
    await ctx.settle()
    await p.exit()


async def reclaim_while_loaned(ctx: Any) -> None:
    """A loaned file page under real memory pressure (14.4): a hog forces the daemon."""
    p, _, _, _, f = await sent_buffer(ctx, 9, 4, "loaned.bin")
    hog = await ctx.m.spawn()
    hn = 2 * ctx.ram
    hva = await hog.mmap(hn, "rw")
    for off in range(0, hn, PAGE_SIZE):
        await hog.store(hva + off, b"h")
    await hog.exit()
    uvm = await ctx.counters("uvm")
    ctx.note(f"page daemon under pressure; {uvm.get('orphans', 0)} loaned pages disowned")
    await ctx.release()
    await ctx.receive()
    await ctx.settle()
    await p.exit()
    await f.close()


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "seed",
            "the 1999 thread: a loaned file page, the page daemon's pass, the driver's read",
            "14.1-14.4",
            seed,
            daemon_reaches_loan,
        ),
        Scenario(
            "seed-valloc",
            "the seed with loan KVA backed by kernel_object (PR kern/18958): zero fill",
            "1.3 variant, 12.3",
            seed,
            daemon_reaches_loan,
            overrides={"LOAN_KVA": "kernel_object"},
        ),
        Scenario(
            "write-after-send",
            "the sender overwrites its buffer right after send: a loan break",
            "14.5, 14.8, 5.2",
            write_after_send,
            revoked_while_loaned,
        ),
        Scenario(
            "unmap-after-send",
            "the sender unmaps its buffer right after send: uvm_anfree of loaned pages",
            "5.3, 1.3 step 4c",
            unmap_after_send,
            revoked_while_loaned,
        ),
        Scenario(
            "exit-after-send",
            "the sender exits right after send: its loaned pages become orphans",
            "5.3, 2.6",
            exit_after_send,
            revoked_while_loaned,
        ),
        Scenario(
            "fork-after-send",
            "fork after a send, the child writes: ordinary COW, the loan untouched",
            "14.7",
            fork_after_send,
            always_ok,
        ),
        Scenario(
            "sosend-thresholds",
            "3000 bytes are copied, 100 KiB go as 64 KiB loaned chunks",
            "14.21",
            sosend_thresholds,
            always_ok,
        ),
        Scenario(
            "kva-exhaustion",
            "loan KVA exhausted: the next send waits for sopendfree",
            "14.22, 14.23",
            kva_exhaustion,
            always_ok,
        ),
        Scenario(
            "wired-buffer",
            "send from mlock'ed memory: modern refuses the loan and copies",
            "14.25",
            wired_buffer,
            wired_loan,
        ),
        Scenario(
            "zero-loan",
            "send never-touched anonymous memory: zero-page loans",
            "14.24",
            zero_loan,
            always_ok,
        ),
        Scenario(
            "reclaim-while-loaned",
            "a loaned file page while a hog forces the page daemon to reclaim",
            "14.4, 7",
            reclaim_while_loaned,
            daemon_reaches_loan,
            ram=512 << 10,
        ),
    )
}
