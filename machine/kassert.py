"""kassert() and panic(): the kernel's always-on invariant checks.

A violated kernel invariant is a bug, never bad input: it raises KernelPanic,
which a role's service turns into `ctl.panic` (the role stops serving, the
supervisor dumps the machine). Client errors are never reported this way;
they get an errno reply (see machine.proto.base.Errno).

Unaffected by `python -O` (no `assert` statement is used).
"""

from __future__ import annotations


class KernelPanic(Exception):
    """An impossible kernel state. The message follows NetBSD's panic strings."""


def panic(fmt: str, *args: object) -> KernelPanic:
    """Raise a kernel panic with a formatted message (returns for `raise panic(...)` typing)."""
    raise KernelPanic(fmt % args if args else fmt)


def kassert(cond: object, fmt: str, *args: object) -> None:
    """Panic with the message unless `cond` holds."""
    if not cond:
        raise KernelPanic(fmt % args if args else fmt)
