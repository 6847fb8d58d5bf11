"""uvm's counters, named after NetBSD's struct uvmexp where one exists."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class UvmStats:
    faults: int = 0  # uvm_fault calls
    flt_anon: int = 0  # upper layer: resident anon page mapped
    flt_acow: int = 0  # upper layer: copy-on-write of a shared anon
    flt_obj: int = 0  # lower layer: object page mapped directly
    flt_prcopy: int = 0  # lower layer: object page promoted (copied) into an anon
    flt_przero: int = 0  # lower layer: zero-filled a new anon page
    fltget: int = 0  # object pages read in by the pager (pgo_get)
    fltanget: int = 0  # anon pages read back from swap
    fltamcopy: int = 0  # amap copies (NEEDSCOPY resolved)
    fltpgwait: int = 0  # faults that waited for a busy page
    fltnoram: int = 0  # no free frame for a fault
    segv: int = 0  # faults answered SIGSEGV
    sigbus: int = 0  # faults answered SIGBUS (a file page beyond the file's end)
    zeropages: int = 0  # pages zeroed
    pgfrees: int = 0  # pages freed
    pageouts: int = 0  # pages written out and freed on request (uvm.pageout)
    flushes: int = 0  # dirty file pages written back (msync, munmap, exit, shutdown)
    truncations: int = 0  # file sizes changed (ftruncate, O_TRUNC): uvm_vnp_setsize
    truncpages: int = 0  # file pages taken out by a shrink (wholly beyond the new end)
    truncloanbreaks: int = 0  # loaned last pages copied before their tail was zeroed
    msyncinval: int = 0  # file pages freed by msync(MS_INVALIDATE)
    forks: int = 0
    wirings: int = 0  # mlock calls that wired their range
    unwirings: int = 0  # munlock calls that unlocked their range
    mlockalls: int = 0  # mlockall calls that succeeded
    munlockalls: int = 0  # munlockall calls
    wirefutures: int = 0  # mappings wired as they were made (mlockall's MCL_FUTURE)
    spawns: int = 0
    attaches: int = 0  # client sessions made (uvm.attach)
    sessreclaimed: int = 0  # idle sessions holding nothing ended to make room for an attach
    exits: int = 0
    reaped: int = 0  # processes of vanished client sessions
    pddeadlock: int = 0  # the page daemon would have waited for itself
    oomkills: int = 0  # processes killed because neither RAM nor swap could serve a fault
    mmaps: int = 0
    munmaps: int = 0
    pressure_events: int = 0
    loans: int = 0  # pages loaned to the kernel
    unloans: int = 0  # kernel loans ended
    unloans_busy: int = 0  # last loans ended on a page released while BUSY (its holder frees it)
    loanrefused: int = 0  # loans refused (modern: wired page)
    loanzero: int = 0  # zero-page loans (untouched anonymous memory)
    loanbreaks: int = 0  # write faults that broke a loan (the owner got a copy)
    adoptions: int = 0  # orphans taken over by the anon that borrowed them (5.4)
    orphans: int = 0  # loaned pages their owner freed (kept alive by the loans)
    injected: int = 0  # QUEUE_INVARIANT=violated: loaned pages left on the active queue
    pqdoubleins: int = 0  # 1999 uvm_pageunwire double insertions detected
    kfaults: int = 0  # kernel-mode page faults (trap at loan KVA)
    kfault_zero: int = 0  # ... "resolved" with a kernel_object zero page (LOAN_KVA)
    # advice (machine.uvm.advice, machine.uvm.ahead)
    madv_willneed: int = 0  # pages madvise(MADV_WILLNEED) read in (file, swap), unmapped
    madv_dontneed: int = 0  # pages madvise deactivated (DONTNEED; FREE of shared memory)
    madv_free: int = 0  # pages madvise(MADV_FREE) freed (anons and clean file pages)
    fltnamap: int = 0  # fault-ahead: resident anon neighbours mapped (uvmexp.fltnamap)
    fltnomap: int = 0  # fault-ahead: resident object neighbours mapped (uvmexp.fltnomap)
    fltbehind: int = 0  # MADV_SEQUENTIAL: pages behind a fault deactivated (no fault-back)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
