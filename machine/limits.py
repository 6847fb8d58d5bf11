"""Resource limits: what one process and one client session may hold (NetBSD's rlimits).

A client must not be able to bloat the kernel: every structure a user request
can make the kernel allocate is bounded by one of these, and the request that
would exceed it gets an errno and changes nothing:

  name         bound on                                       errno when exceeded
  vsize        bytes of address space mapped by one process   ENOMEM (RLIMIT_AS)
  map_entries  map entries of one process                     ENOMEM (vm.max_map_count)
  maxentries   map entries on the machine, every process      ENOMEM (NetBSD's pool of
               together (fork charges the child's first)      map entries)
  procs        processes of one session                       EAGAIN (RLIMIT_NPROC)
  maxproc      processes on the machine                       EAGAIN (kern.maxproc)
  files        open files of one session                      EMFILE (RLIMIT_NOFILE)
  filesize     bytes of one file under disk/ (open's size)    EFBIG (RLIMIT_FSIZE)
  sockets      sockets of one session                         EMFILE
  mbufs        bytes of copied send data net holds, over all  a copy waits for storage
               sessions (nmbclusters x MCLBYTES)              (m_get M_WAIT)
  sessions     attached sessions on the machine               EAGAIN
  inflight     requests of one session a role is still        EAGAIN
               working on (faults, sends, long polls)
  inflight_total  the same, every session together, per role  EAGAIN
  wire_bytes   bytes of wire packets queued for one session's
               receiver; the oldest are dropped (and counted) beyond it
  wire_total   bytes of wire packets queued over every receiver
               (sessions and taps); beyond it the oldest packets
               of the largest queue are dropped (and counted)
  record_events  inputs one role's flight recorder keeps; beyond
               it the oldest go (machine.ipc.recorder)
  record_bytes   bytes of message bodies one role's flight recorder
               keeps (plus 256 per entry); beyond it the oldest go
  record_body    bytes of one message body the recorder keeps (a
               longer one keeps its first record_body bytes)
  role_memory  bytes of private memory of one role's process:   RLIMIT_DATA (the role's
               at half of it the role resets its user endpoint,  malloc fails: it dies, the
               at three quarters it panics (machine.ipc.         machine panics); the RAM
               memwatch)                                         segment is not counted

Fair shares of the machine-wide caps (machine.share). maxentries, maxproc,
inflight_total and mbufs are shared
among the live sessions: with C the cap, n the live sessions plus one (a share
kept for a session that has not asked yet) and f = C // n, a session within
f is bound by the cap only, and a session past f gets only what the others
(and that newcomer) could not still claim of their shares. So the greedy
session is refused first, with the cap's errno and a detail naming its share:

  cap             live sessions (n - 1)                  past the share
  maxentries      attached (uvm)                         ENOMEM
  maxproc         attached (uvm)                         EAGAIN
  inflight_total  per role: attached at uvm; seen by     EAGAIN
                  the role and not ended at mmu, net,
                  pdaemon (machine.ipc.auth)
  mbufs           seen by net and not ended              the copy waits (m_get
                                                         M_WAIT) while the others'
                                                         copies go; never refused
  wire_total      max-min fair by its drops: the oldest of the largest queue go
                  (machine.net.wire), so a receiver holding at most
                  wire_total // (queues) never loses a packet to wire_total
A lone session therefore gets about half of each cap (the other half is the
newcomer's); the per-session limits (procs, map_entries, inflight, ...) still
apply as they are.

wiredmax (uvmexp.wiredmax, a third of RAM, machine.tuning) is not shared: it is
first come, as in NetBSD, bounded per process by RLIMIT_MEMLOCK. Wiring is what a
memory balloon does on purpose (the stress harness's `squeeze` nemesis wires a
quarter of RAM while every stress session is live), and a session's wired pages
come back when its processes exit or its session ends.

The defaults are generous for every workload in this project (they are far
above what the tests and clients use) and small enough that the kernel's
bookkeeping stays within a few hundred MiB whatever clients do (16384
processes of a few KiB each; maxentries map entries of about 140 bytes, up
to about 800 with an amap holding anons: at most about 200 MiB; wire
packets within wire_total however many sessions listen; each role's flight
recorder within record_bytes plus 256 bytes per entry, about 58 MiB at the
defaults; net's mbufs and wire queues within 384 MiB). role_memory (2 GiB)
sits above all of that: its soft line (1 GiB) is past what a role holds for
its clients at the defaults, so only memory nobody accounts for (libzmq's
parts of unfinished messages) reaches it. `uvm-machine up --limit
NAME=VALUE` (repeatable; env UVM_MACHINE_LIMITS="procs=64,files=128") changes
them; every role reads the same Limits (the ones it enforces).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from machine.params import MAX_REQUEST_BYTES, parse_quantity


@dataclass(frozen=True)
class Limits:
    vsize: int = 1 << 40
    map_entries: int = 65536
    maxentries: int = 1 << 18
    procs: int = 1024
    maxproc: int = 16384
    files: int = 1024
    filesize: int = 64 << 30
    sockets: int = 1024
    mbufs: int = 256 << 20
    sessions: int = 1024
    inflight: int = 1024
    inflight_total: int = 16384
    wire_bytes: int = 16 << 20
    wire_total: int = 128 << 20
    record_events: int = 100_000
    record_bytes: int = 32 << 20
    record_body: int = MAX_REQUEST_BYTES
    role_memory: int = 2 << 30

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Limits:
        """=> Limits with the given fields; unknown names or non-positive values: ValueError."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown limit {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        for k, v in d.items():
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"limit {k} must be a positive integer, not {v!r}")
        return cls(**d)

    def with_text(self, text: str) -> Limits:
        """Apply "name=value[,name=value...]" (values take K/M/G/T suffixes)."""
        out = self.to_dict()
        for item in filter(None, (s.strip() for s in text.split(","))):
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"limit {item!r}: use NAME=VALUE")
            out[name.strip()] = parse_quantity(value.strip())
        return Limits.from_dict(out)
