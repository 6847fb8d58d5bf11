"""The errors the client library raises: every one is a MachineError.

  Segv            the access had no valid mapping (SIGSEGV); the machine is fine
  Sigbus          the access was beyond the end of a mapped file (SIGBUS)
  OutOfMemory     no frame could be had for the fault (ENOMEM)
  SessionEnded    the session ended (detached, or reaped after a silent lease):
                  the same answer (ESESSION) from every role; attach again
  MachinePanic    the machine panicked; every pending and later call raises it
  MachineStopped  the machine stopped cleanly (or is stopping); every pending
                  and later call raises it, within a second of the stop
  MachineTimeout  a role did not answer in time (the machine may be gone)
  RequestError    any other error reply (errno + detail)

Invariant: a session that has seen MachinePanic or MachineStopped keeps it
(Session.panic / Session.stopped) and raises that same object from then on.
This module imports nothing of the client library (it is the bottom layer).
"""

from __future__ import annotations

from machine.proto import Errno, ErrnoError, Reply
from machine.proto.types import Prot


class MachineError(Exception):
    """Base of every error the client library raises."""


class Segv(MachineError):
    """SIGSEGV: the access to `va` had no valid mapping; `reason` says why."""

    def __init__(self, va: int, access: Prot, reason: str) -> None:
        super().__init__(f"SIGSEGV at {va:#x} ({access.letters()}): {reason}")
        self.va, self.access, self.reason = va, access, reason


class Sigbus(MachineError):
    """SIGBUS: the access to `va` was inside a file mapping but beyond the end of the
    file (after ftruncate, or a mapping longer than its file); `reason` says why."""

    def __init__(self, va: int, access: Prot, reason: str) -> None:
        super().__init__(f"SIGBUS at {va:#x} ({access.letters()}): {reason}")
        self.va, self.access, self.reason = va, access, reason


class MachinePanic(MachineError):
    """The machine panicked. `message` is the panic string; `role` who; `dump` the crash dump."""

    def __init__(self, message: str, role: str = "", dump: str = "") -> None:
        super().__init__(f"machine panic: {role + ': ' if role else ''}{message}")
        self.message, self.role, self.dump = message, role, dump


class MachineStopped(MachineError):
    """The machine stopped (cleanly): `reason` as the supervisor gave it."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"machine stopped: {reason}")
        self.reason = reason


class MachineTimeout(MachineError):
    """A role did not answer within the call's timeout (the machine may be gone)."""


class RequestError(MachineError, ErrnoError):
    """An error reply to a request: `errno` and `detail` as the machine sent them."""


class OutOfMemory(RequestError):
    """ENOMEM: no frame (or swap, or address space, or the range is not mapped for mlock)."""

    def __init__(self, detail: str) -> None:
        super().__init__(Errno.ENOMEM, detail)


class SessionEnded(RequestError):
    """ESESSION: the session has ended (detached, reaped or reclaimed); attach again."""

    def __init__(self, detail: str) -> None:
        super().__init__(Errno.ESESSION, detail)


def reply_error(rep: Reply) -> MachineError:
    """The exception an error reply stands for: EPANIC MachinePanic, ESHUTDOWN
    MachineStopped, ENOMEM OutOfMemory, ESESSION SessionEnded, any other
    RequestError (errno + detail)."""
    if rep.errno is Errno.EPANIC:
        return MachinePanic(rep.detail)
    if rep.errno is Errno.ESHUTDOWN:
        return MachineStopped(rep.detail)
    if rep.errno is Errno.ENOMEM:
        return OutOfMemory(rep.detail)
    if rep.errno is Errno.ESESSION:
        return SessionEnded(rep.detail)
    return RequestError(rep.errno or Errno.EINVAL, rep.detail)
