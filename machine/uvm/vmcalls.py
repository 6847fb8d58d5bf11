"""The handlers of the VM calls beside mmap, munmap, mprotect and fork (the messages of
machine.proto.vmcalls): files, wiring and advice, as a mixin of UvmService.

Each handler names the caller's session (the header's incarnation) as the owner, so a
process or a handle of another session is ESRCH or EBADF, and passes the fields to
the core function of the same name (machine.uvm.files, wiring, advice), which
checks them and raises UserError with NetBSD's errno before it changes anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from machine.proto import (
    CtlAck,
    Reply,
    Request,
    UvmClose,
    UvmFtruncate,
    UvmGetrlimit,
    UvmMadvise,
    UvmMincore,
    UvmMincoreReply,
    UvmMinherit,
    UvmMlockall,
    UvmMsync,
    UvmMsyncReply,
    UvmMunlockall,
    UvmOpen,
    UvmOpenReply,
    UvmRlimitReply,
    UvmSetrlimit,
    UvmUnwire,
    UvmWire,
)
from machine.uvm import advice, files, wiring
from machine.uvm.state import Uvm

R = TypeVar("R", bound=Reply)


class VmCallHandlers:
    """on_<verb> for uvm.wire ... uvm.ftruncate; the service provides vm, reply, ack."""

    vm: Uvm
    VM_CALLS: ClassVar[tuple[type[Request], ...]] = (
        UvmWire,
        UvmUnwire,
        UvmMlockall,
        UvmMunlockall,
        UvmGetrlimit,
        UvmSetrlimit,
        UvmMinherit,
        UvmMadvise,
        UvmMincore,
        UvmMsync,
        UvmOpen,
        UvmClose,
        UvmFtruncate,
    )

    if TYPE_CHECKING:  # the Service's (the mixin must not shadow them at run time)

        def reply(self, req: Request, cls: type[R], **fields: Any) -> R: ...

        def ack(self, req: Request) -> CtlAck: ...

    # -- wiring ---------------------------------------------------------------------

    async def on_wire(self, msg: UvmWire) -> Reply:
        await wiring.mlock(self.vm, msg.asid, msg.h.incarnation, msg.va, msg.length)
        return self.ack(msg)

    async def on_unwire(self, msg: UvmUnwire) -> Reply:
        await wiring.munlock(self.vm, msg.asid, msg.h.incarnation, msg.va, msg.length)
        return self.ack(msg)

    async def on_mlockall(self, msg: UvmMlockall) -> Reply:
        await wiring.mlockall(self.vm, msg.asid, msg.h.incarnation, msg.flags)
        return self.ack(msg)

    async def on_munlockall(self, msg: UvmMunlockall) -> Reply:
        await wiring.munlockall(self.vm, msg.asid, msg.h.incarnation)
        return self.ack(msg)

    def on_getrlimit(self, msg: UvmGetrlimit) -> Reply:
        cur, max_ = wiring.getrlimit(self.vm, msg.asid, msg.h.incarnation, msg.resource)
        return self.reply(msg, UvmRlimitReply, cur=cur, max=max_)

    def on_setrlimit(self, msg: UvmSetrlimit) -> Reply:
        cur, max_ = wiring.setrlimit(
            self.vm, msg.asid, msg.h.incarnation, msg.resource, msg.cur, msg.max
        )
        return self.reply(msg, UvmRlimitReply, cur=cur, max=max_)

    # -- advice ---------------------------------------------------------------------

    async def on_minherit(self, msg: UvmMinherit) -> Reply:
        await advice.minherit(self.vm, msg.asid, msg.h.incarnation, msg.va, msg.length, msg.inherit)
        return self.ack(msg)

    async def on_madvise(self, msg: UvmMadvise) -> Reply:
        await advice.madvise(self.vm, msg.asid, msg.h.incarnation, msg.va, msg.length, msg.advice)
        return self.ack(msg)

    async def on_mincore(self, msg: UvmMincore) -> Reply:
        vec = await advice.mincore(self.vm, msg.asid, msg.h.incarnation, msg.va, msg.length)
        return self.reply(msg, UvmMincoreReply, vec=vec)

    # -- files ----------------------------------------------------------------------

    async def on_msync(self, msg: UvmMsync) -> Reply:
        n = await files.msync(self.vm, msg.asid, msg.h.incarnation, msg.va, msg.length, msg.flags)
        return self.reply(msg, UvmMsyncReply, pages=n)

    async def on_open(self, msg: UvmOpen) -> Reply:
        size = None if msg.size < 0 else msg.size
        handle, size = await files.vn_open(
            self.vm, msg.h.incarnation, msg.name, msg.create, size, msg.flags
        )
        return self.reply(msg, UvmOpenReply, handle=handle, size=size)

    async def on_close(self, msg: UvmClose) -> Reply:
        await files.close(self.vm, msg.h.incarnation, msg.handle)
        return self.ack(msg)

    async def on_ftruncate(self, msg: UvmFtruncate) -> Reply:
        await files.ftruncate(self.vm, msg.h.incarnation, msg.handle, msg.length)
        return self.ack(msg)
