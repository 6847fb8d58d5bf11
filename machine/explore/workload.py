"""Swarm workloads: which features a run enables, and the operations its clients play.

    w = draw(random.Random("w:17"))
    for line in w.steps(): print(line)       # "3. p2: send 65536 B from anon (loaned) then exit"
    assert Workload.from_json(w.to_json()) == w

Swarm testing (Groce et al.): each run enables a random non-empty subset of
FEATURES, each with probability 1/2, and draws its operations only from that
subset, so one run's hog is not diluted by every other feature and rare
combinations come up. A workload is 2-4 client processes (one if a hog is all
it does), each a short list of Ops played in order (the clients
concurrently), on a machine of `ram` bytes with `swap` bytes of swap and a
link of `link_bps` (0: unthrottled) and `link_latency_us`. There is no
scenario script and no hold of the link: what a run finds, it finds unaided.

Op kinds (args):
  send    size, loan (size >= LOAN_THRESHOLD: sosend loans pages), buf ("anon",
          "shared" or "private": a fresh buffer or file mapping filled with a
          known pattern), then ("", "write", "unmap", "exit", "fork": what the
          sender does right after send returns); test-only: flip (the client's
          model expects one byte flipped: an injected corruption)
  map     pages, shared, msync: a file mapping stored into (and msync'ed)
  mlock   pages, send: mlock'ed anonymous memory (sent from), then munlock
  hog     pages: touch more pages than RAM holds (pressure on the page daemon)
  wakeup  pd.wakeup on the page daemon's kernel endpoint
  leak    what ("hold": hold the link so loans stay; "noexit": a process that
          wires a page and never exits) -- test-only, never drawn

The VM calls of issue 20 (machine.explore.vmops plays them):
  trunc   pages, view ("shared", or "private": a private mapping beside the
          shared one the file is written through), cow (bitmask of the private
          view's pages stored into: copy-on-write copies), cut (the new length
          in bytes, < pages), loan (the shared view is sent, loaned, and the
          file truncated while the send is in flight), grow (then grown back)
  inherit pages, buf (as a send's), inherit ("none", "copy", "share", "zero":
          minherit before fork), send (the range is sent, loaned, before the
          fork)
  advise  pages, buf, advice ("dontneed", "free"), fork (a child holds the
          pages while the advice is given), send (they are sent, loaned, first)
  lockall pages, more (pages mapped after mlockall), flags ("current",
          "future", "both"), send (the later mapping is sent), end
          ("munlockall" then exit, or "exit"): in a process of its own

Recorded ops (a real run's requests rebuilt from its dump by
machine.explore.fromdump, played by machine.explore.calls; never drawn):
  call    one request a client session sent: session (the recorded session
          id, text), role, t (its tag), body (the request's msgpack, header
          blanked, base64), at_us (when it arrived, microseconds after the
          recording's first request), seq (its place in the merged history),
          makes (for spawn, fork, socket, open: the recorded id it created,
          mapped to the replay's)
  kcall   a kernel-side tool's request (the nemesis's net.link, pd.wakeup):
          role, t, body, at_us, seq, and after (it goes once every client has
          issued its calls with a smaller seq)
A workload of recorded ops has the features "recorded" (what its ops are
made by, for the shrinker) and, when its calls keep the recorded pace (each
issued no earlier than `at_us`), "paced"; `bus_us` may slow its bus.

The features of issue 20 (VM_FEATURES) are drawn after everything else, from
the same Random, and their ops are inserted among the drawn ones: a seed's
workload keeps every op, feature and setting it had before they existed
(CLASSIC_FEATURES, drawn first exactly as then), and is the same workload
when none of them is on (1 seed in 16).

Invariants: draw is a pure function of its Random (no sets of str iterated,
no clock); every drawn Op comes from a feature in `features`; a Workload is
immutable and round-trips through to_json/from_json exactly.
"""

from __future__ import annotations

import base64
import math
import random
from dataclasses import dataclass
from typing import Any

import msgspec

from machine.params import PAGE_SIZE
from machine.proto import decode_request

#: The features before issue 20 (drawn first, in this order: old seeds keep their meaning).
CLASSIC_FEATURES: tuple[str, ...] = (
    "send_loan",
    "send_copy",
    "after_write",
    "after_unmap",
    "after_exit",
    "after_fork",
    "file_shared",
    "file_private",
    "mlock",
    "hog",
    "small_ram",
    "slow_link",
    "pd_wakeup",
)
#: The VM calls' features (issue 20): ftruncate while mapped, minherit at fork,
#: madvise DONTNEED/FREE, mlockall; each makes ops of its own (machine.explore.vmops).
VM_FEATURES: tuple[str, ...] = ("truncate", "minherit", "madvise", "mlockall")
FEATURES: tuple[str, ...] = CLASSIC_FEATURES + VM_FEATURES
#: The features that make operations (the others shape the machine or a send's sequel).
CLASSIC_OP_FEATURES = (
    "send_loan",
    "send_copy",
    "file_shared",
    "file_private",
    "mlock",
    "hog",
    "pd_wakeup",
)
OP_FEATURES = CLASSIC_OP_FEATURES + VM_FEATURES
#: The op kind each VM feature makes.
VM_KINDS = {"truncate": "trunc", "minherit": "inherit", "madvise": "advise", "mlockall": "lockall"}
INHERITS = ("none", "copy", "share", "zero")
ADVICES = ("dontneed", "free")
LOCKALL_FLAGS = ("current", "future", "both")
AFTER = {"after_write": "write", "after_unmap": "unmap", "after_exit": "exit", "after_fork": "fork"}
#: SOCK_LOAN_THRESH of every shipped profile (LOAN_THRESHOLD): sosend loans from here up.
LOAN_THRESHOLD = 4096
MAX_SEND = 1 << 20
MIB = 1 << 20
#: The bus's default delay range in us (machine.ipc.schedule's default, 20-200 us).
BUS_US = (20, 200)

Arg = int | str | bool
#: The kinds of a recorded run's ops (module doc), and the features of such a workload.
RECORDED_KINDS = ("call", "kcall")
RECORDED_FEATURES = ("recorded", "paced")


@dataclass(frozen=True)
class Op:
    kind: str
    args: dict[str, Arg]
    client: int = 0  # which client (1-based in steps); set by Workload

    def __str__(self) -> str:
        a = self.args
        who = f"p{self.client}: " if self.client else ""
        if self.kind == "send":
            how = "loaned" if a.get("loan") else "copied"
            text = f"send {a['size']} B from {a.get('buf', 'anon')} ({how})"
            if a.get("then"):
                text += f" then {a['then']}"
            if a.get("flip"):
                text += " [model expects a flipped byte]"
        elif self.kind == "map":
            kind = "shared" if a.get("shared") else "private"
            text = f"map {a['pages']} pages of a file {kind}, store" + (
                ", msync" if a.get("msync") else ""
            )
        elif self.kind == "mlock":
            text = f"mlock {a['pages']} pages" + (", send them" if a.get("send") else "")
            text += ", munlock"
        elif self.kind == "hog":
            text = f"hog: touch {a['pages']} pages (pressure)"
        elif self.kind == "wakeup":
            text = "wake the page daemon (pd.wakeup)"
        elif self.kind in VM_KINDS.values():
            text = describe_vm(self.kind, a)
        elif self.kind in RECORDED_KINDS:
            text = describe_call(a)
        else:
            text = f"{self.kind} {a}"
        return who + text


def describe_vm(kind: str, a: dict[str, Arg]) -> str:
    """A VM call op (issue 20), readable: `truncate a 4-page file shared to 5000 B ...`."""
    if kind == "trunc":
        text = f"map a {a['pages']}-page file {a['view']}"
        if a.get("view") == "private":
            text += f" (COW pages {_bits(int(a.get('cow', 0)))})"
        text += (", send it (loaned)" if a.get("loan") else "") + f", ftruncate to {a['cut']} B"
        return text + (", grow back" if a.get("grow") else "")
    if kind == "inherit":
        text = f"minherit {str(a['inherit']).upper()} {a['pages']} pages of {a['buf']}"
        return text + (", send them (loaned)" if a.get("send") else "") + ", fork, both check"
    if kind == "advise":
        text = f"madvise {str(a['advice']).upper()} {a['pages']} pages of {a['buf']}"
        text += " (a child holds them)" if a.get("fork") else ""
        return text + (" while they are sent (loaned)" if a.get("send") else "")
    text = f"mlockall {a['flags']} over {a['pages']} pages, map {a['more']} more"
    return text + (", send them" if a.get("send") else "") + f", then {a['end']}"


def _bits(mask: int) -> str:
    return "{" + ",".join(str(i) for i in range(mask.bit_length()) if mask >> i & 1) + "}"


def describe_call(a: dict[str, Arg]) -> str:
    """A recorded request, readable: `uvm.mmap(asid=1, length=8192, ...) @1.250 ms`."""
    fields: dict[str, Any] = {}
    try:
        msg = decode_request(base64.b64decode(str(a.get("body", ""))))
        fields = msgspec.structs.asdict(msg)
    except Exception:
        fields = {"body": "(does not decode)"}
    fields.pop("h", None)
    shown = ", ".join(
        f"{k}=<{len(v)} B>" if isinstance(v, bytes) else f"{k}={v!r}" for k, v in fields.items()
    )
    text = f"{a.get('t', '?')}({shown})"
    if "makes" in a:
        text += f" -> recorded id {a['makes']}"
    if "after" in a:
        text = "kernel: " + text
    return text + f" @{int(a.get('at_us', 0)) / 1e3:.3f} ms"


def _op_json(op: Op) -> dict[str, Any]:
    return {"kind": op.kind, "args": dict(op.args)}


@dataclass(frozen=True)
class Workload:
    ram: int
    swap: int
    features: tuple[str, ...]
    link_bps: int
    link_latency_us: int
    clients: tuple[tuple[Op, ...], ...]
    #: The bus's delay range in us (each message in flight between them; schedule.py):
    #: drawn workloads keep the default; a recorded run's replay may slow the bus to a
    #: real machine's pace (machine.explore.repro). In the JSON only when not the default.
    bus_us: tuple[int, int] = BUS_US

    def __post_init__(self) -> None:
        numbered = tuple(
            tuple(op if op.client == i else Op(op.kind, op.args, i) for op in ops)
            for i, ops in enumerate(self.clients, 1)
        )
        object.__setattr__(self, "clients", numbered)

    def steps(self) -> list[str]:
        """Readable, numbered: the machine first, then each client's operations."""
        link = (
            f"{self.link_bps / 1e6:g} Mbit/s, {self.link_latency_us} us"
            if self.link_bps
            else f"unthrottled, {self.link_latency_us} us"
        )
        bus = f", bus {self.bus_us[0]}-{self.bus_us[1]} us" if self.bus_us != BUS_US else ""
        out = [
            f"1. boot: {self.ram // 1024} KiB RAM, {self.swap // 1024} KiB swap, link {link}{bus}"
            f" [{', '.join(self.features)}]"
        ]
        for op in (op for ops in self.clients for op in ops):
            out.append(f"{len(out) + 1}. {op}")
        return out

    def size(self) -> int:
        return sum(len(ops) for ops in self.clients)

    def recorded(self) -> bool:
        """=> whether this is a recorded run's workload (its ops are calls: module doc)."""
        return any(op.kind in RECORDED_KINDS for ops in self.clients for op in ops)

    def to_json(self) -> dict[str, Any]:
        return {
            "ram": self.ram,
            "swap": self.swap,
            "features": list(self.features),
            "link_bps": self.link_bps,
            "link_latency_us": self.link_latency_us,
            "clients": [[_op_json(op) for op in ops] for ops in self.clients],
        } | ({"bus_us": list(self.bus_us)} if self.bus_us != BUS_US else {})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Workload:
        return cls(
            ram=int(d["ram"]),
            swap=int(d["swap"]),
            features=tuple(str(f) for f in d["features"]),
            link_bps=int(d["link_bps"]),
            link_latency_us=int(d["link_latency_us"]),
            clients=tuple(
                tuple(Op(str(o["kind"]), dict(o["args"])) for o in ops) for ops in d["clients"]
            ),
            bus_us=(int(d["bus_us"][0]), int(d["bus_us"][1])) if "bus_us" in d else BUS_US,
        )


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return min(hi, max(lo, int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))))))


def _bytes(op: Op) -> int:
    """The memory an op's process keeps mapped (a send's buffer, a mapping)."""
    if op.kind == "send":
        return -(-int(op.args["size"]) // PAGE_SIZE) * PAGE_SIZE
    if op.kind in ("map", "mlock", "inherit", "advise"):
        return int(op.args["pages"]) * PAGE_SIZE
    if op.kind == "trunc":  # the shared view, and the private one's copies
        return (int(op.args["pages"]) + int(op.args.get("cow", 0)).bit_count()) * PAGE_SIZE
    return 0  # a hog and a lockall run in processes of their own, which exit


def _op(rng: random.Random, feature: str, on: tuple[str, ...], ram: int) -> Op:
    if feature in ("send_loan", "send_copy"):
        loan = feature == "send_loan"
        size = (
            _log_uniform(rng, LOAN_THRESHOLD, MAX_SEND)
            if loan
            else _log_uniform(rng, 1, LOAN_THRESHOLD - 1)
        )
        bufs = _bufs(on)
        afters = [""] + [AFTER[f] for f in AFTER if f in on]
        return Op(
            "send",
            {"size": size, "loan": loan, "buf": rng.choice(bufs), "then": rng.choice(afters)},
        )
    if feature in ("file_shared", "file_private"):
        shared = feature == "file_shared"
        return Op(
            "map",
            {"pages": rng.randint(1, 8), "shared": shared, "msync": shared and rng.random() < 0.5},
        )
    if feature == "mlock":
        sends = "send_loan" in on or "send_copy" in on
        return Op("mlock", {"pages": rng.randint(1, 4), "send": sends and rng.random() < 0.5})
    if feature == "hog":
        return Op("hog", {"pages": int(ram // PAGE_SIZE * rng.uniform(1.1, 1.5))})
    assert feature == "pd_wakeup", feature
    return Op("wakeup", {})


def _bufs(on: tuple[str, ...]) -> list[str]:
    return ["anon"] + [
        k for f, k in (("file_shared", "shared"), ("file_private", "private")) if f in on
    ]


def _vm_op(rng: random.Random, feature: str, on: tuple[str, ...]) -> Op:
    """An op of a VM feature (module doc); what it may add comes from the features `on`."""
    loans = "send_loan" in on
    if feature == "truncate":
        pages = rng.randint(2, 8)
        view = rng.choice(("shared", "private"))
        cow = rng.getrandbits(pages) if view == "private" else 0
        cut = rng.randrange(0, pages) * PAGE_SIZE
        if rng.random() < 0.5:
            cut += rng.randint(1, PAGE_SIZE - 1)  # a partial last page
        return Op(
            "trunc",
            {
                "pages": pages,
                "view": view,
                "cow": cow,
                "cut": cut,
                "loan": loans and rng.random() < 0.5,
                "grow": rng.random() < 0.5,
            },
        )
    if feature == "minherit":
        return Op(
            "inherit",
            {
                "pages": rng.randint(1, 4),
                "buf": rng.choice(_bufs(on)),
                "inherit": rng.choice(INHERITS),
                "send": loans and rng.random() < 0.5,
            },
        )
    if feature == "madvise":
        return Op(
            "advise",
            {
                "pages": rng.randint(1, 8),
                "buf": rng.choice(_bufs(on)),
                "advice": rng.choice(ADVICES),
                "fork": rng.random() < 0.25,
                "send": loans and rng.random() < 0.5,
            },
        )
    assert feature == "mlockall", feature
    return Op(
        "lockall",
        {
            "pages": rng.randint(1, 8),
            "more": rng.randint(1, 8),
            "flags": rng.choice(LOCKALL_FLAGS),
            "send": loans and rng.random() < 0.5,
            "end": rng.choice(("munlockall", "exit")),
        },
    )


def _swap(ram: int, clients: tuple[tuple[Op, ...], ...]) -> int:
    """Swap for the memory the clients keep besides RAM's worth (they exit last)."""
    kept = sum(_bytes(op) for ops in clients for op in ops)
    return 2 * ram + -(-kept // MIB) * MIB


def with_vm_features(rng: random.Random, w: Workload) -> Workload:
    """=> `w` with the VM features (module doc), drawn after it: each on with probability
    1/2; every client gets each one's op with probability 1/2 (the first client always),
    inserted at a random place among its ops. None on: `w` itself."""
    vm = tuple(f for f in VM_FEATURES if rng.random() < 0.5)
    if not vm:
        return w
    on = w.features + vm
    out = [list(ops) for ops in w.clients]
    for i, ops in enumerate(out):
        for f in vm:
            if i == 0 or rng.random() < 0.5:
                ops.insert(rng.randint(0, len(ops)), _vm_op(rng, f, on))
    clients = tuple(tuple(ops) for ops in out)
    return Workload(w.ram, _swap(w.ram, clients), on, w.link_bps, w.link_latency_us, clients)


def draw(rng: random.Random) -> Workload:
    """A swarm workload (module doc): the classic draw, then the VM features' ops from
    the same stream (a seed keeps what it drew before they existed)."""
    return with_vm_features(rng, draw_classic(rng))


def draw_classic(rng: random.Random) -> Workload:
    """The classic features' workload: features first, then RAM, link and the clients'
    ops (what `draw` was before issue 20, the same for every seed)."""
    on = tuple(f for f in CLASSIC_FEATURES if rng.random() < 0.5)
    if not any(f in CLASSIC_OP_FEATURES for f in on):
        extra = rng.choice(CLASSIC_OP_FEATURES)
        on = tuple(f for f in CLASSIC_FEATURES if f in on or f == extra)
    if "hog" in on and "small_ram" not in on:  # a hog of 8-16 MiB costs a second of faults
        on = tuple(f for f in CLASSIC_FEATURES if f in on or f == "small_ram")
    ram = rng.randint(1, 4) * MIB if "small_ram" in on else rng.randint(8, 16) * MIB
    if "slow_link" in on:
        bps = rng.randint(1, 100) * 1_000_000
        latency = rng.randint(0, 5000)
    else:
        bps, latency = 0, 0
    makers = tuple(f for f in CLASSIC_OP_FEATURES if f in on)
    clients: list[tuple[Op, ...]] = []
    for _ in range(rng.randint(2, 4)):
        ops: list[Op] = []
        for _ in range(rng.randint(1, 5)):
            ops.append(_op(rng, rng.choice(makers), on, ram))
            if ops[-1].kind == "hog":  # one hog per workload is pressure enough
                makers = tuple(f for f in makers if f != "hog")
            if not makers:
                break
        clients.append(tuple(ops))
        if not makers:
            break
    return Workload(ram, _swap(ram, tuple(clients)), on, bps, latency, tuple(clients))
