"""uvm's client errors: an errno name and a detail; the operation changed nothing."""

from __future__ import annotations


class VmError(Exception):
    """A client error: errno name + detail; the operation changed nothing."""

    def __init__(self, errno: str, detail: str) -> None:
        super().__init__(detail)
        self.errno = errno
        self.detail = detail


class Segv(VmError):
    """The fault cannot be resolved: the process gets SIGSEGV."""

    def __init__(self, detail: str) -> None:
        super().__init__("EFAULT", detail)
