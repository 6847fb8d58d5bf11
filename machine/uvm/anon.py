"""vm_anon: one page of anonymous memory, shared copy-on-write by reference count.

An anon's data is in exactly one of: a resident page (page != NIL, swslot 0),
a resident page with a swap copy (page != NIL, swslot != 0, the page may be
dirty with respect to it), or swap only (page == NIL, swslot != 0). An anon
with neither has never been touched and does not exist (zero-fill creates
anons with a page).

Fields [u]: ref (references from amaps; loans arrive later), page, swslot.
Invariants (audit.py):
  A1  ref > 0 for every live anon; the anon is freed when ref drops to 0.
  A2  a resident anon's page is owned by it: uanon == id and PG_ANON set.
  A3  ref == the number of amap slots that hold the anon.
cf. NetBSD sys/uvm/uvm_anon.c (concepts only).
"""

from __future__ import annotations

from dataclasses import dataclass

from machine.uvm.page import NIL


@dataclass(slots=True, eq=False)
class Anon:
    id: int
    ref: int = 1
    page: int = NIL
    swslot: int = 0
