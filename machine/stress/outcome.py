"""What a stress run found, and its verdict: corruption, the panic, thresholds, summary.json.

Pure (no gevent, no Locust): the locustfile feeds it and writes what it returns.

A **corruption** is a wrong byte: a user read memory, a file or the wire and a byte
differed from its model. It is reported as a Locust failure (`Corruption`, whose
message names the offset and both values) and recorded here with its detail.
A **panic** stops the run at once; the record keeps the first one with the
panicking role, its message and the dump's path.

Exit status (`verdict`), the worst that happened wins:
  4  corruption (a wrong byte anywhere: the machine lost data)
  3  a panic (the machine stopped itself)
  1  a threshold missed, a failure beyond --max-fail-ratio, frames not back, the
     auditor's problems once they are back (uvm.audit of the quiet machine), an
     exception in a user (Locust's user error: a bug, or a user that could not
     attach), no operation at all, or a nemesis fault whose undo failed (it may
     still be applied: the run measured something else)
  0  all held
Invariants: `Record.corruptions` keeps at most MAX_DETAILS details but
`corruption` counts every one; `panic` is set once and never replaced by a
later, less informed report (one that lacks the role or the dump).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_DETAILS = 50  # corruption details kept (each is counted)
WINDOW = 8  # bytes shown either side of the first wrong byte

EXIT_OK, EXIT_FAILED, EXIT_PANIC, EXIT_CORRUPTION = 0, 1, 3, 4


def first_difference(expected: bytes, got: bytes) -> int | None:
    """The offset of the first byte that differs (a length difference counts), or None."""
    if expected == got:
        return None
    n = min(len(expected), len(got))
    for i in range(n):
        if expected[i] != got[i]:
            return i
    return n


class Corruption(Exception):
    """A wrong byte. `offset` is from the start of what was checked (`base`: its address
    or file offset, in ctx); `expected` and `got` are the windows around it."""

    def __init__(self, what: str, offset: int, expected: bytes, got: bytes, **ctx: Any) -> None:
        lo = max(0, offset - WINDOW)
        self.what, self.offset, self.ctx = what, offset, ctx
        self.expected = bytes(expected[lo : offset + WINDOW])
        self.got = bytes(got[lo : offset + WINDOW])
        self.window_start = lo
        where = " ".join(f"{k}={_show(v)}" for k, v in ctx.items())
        super().__init__(
            f"corruption in {what} at offset {offset}{' (' + where + ')' if where else ''}: "
            f"expected {self.expected.hex(' ')} got {self.got.hex(' ')} "
            f"(bytes from offset {lo})"
        )

    @classmethod
    def check(cls, what: str, expected: bytes, got: bytes, **ctx: Any) -> None:
        """Raise Corruption at the first differing byte, if any."""
        off = first_difference(expected, got)
        if off is not None:
            raise cls(what, off, expected, got, **ctx)

    def detail(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "offset": self.offset,
            "window_start": self.window_start,
            "expected": self.expected.hex(),
            "got": self.got.hex(),
            **{k: _show(v) for k, v in self.ctx.items()},
        }


def _show(v: Any) -> Any:
    return hex(v) if isinstance(v, int) and v > 4096 else v


@dataclass
class Record:
    """What a run found (kept by the master, or the one process of a local run)."""

    corruption: int = 0
    corruptions: list[dict[str, Any]] = field(default_factory=list)
    panic: dict[str, Any] | None = None

    def add_corruption(self, detail: dict[str, Any]) -> None:
        self.corruption += 1
        if len(self.corruptions) < MAX_DETAILS:
            self.corruptions.append(detail)

    def add_panic(self, role: str, message: str, dump: str = "") -> bool:
        """Keep the first panic; a later report may only fill in what it lacked.
        => True if this is the first report of a panic."""
        first = self.panic is None
        if self.panic is None:
            self.panic = {"role": role, "message": message, "dump": dump}
        else:
            for k, v in (("role", role), ("dump", dump)):
                if v and not self.panic[k]:
                    self.panic[k] = v
        return first


@dataclass(frozen=True)
class Thresholds:
    max_p99_ms: float | None = None
    max_fail_ratio: float = 0.0
    min_ops_per_s: float | None = None

    def judge(self, ops: int, failures: int, ops_per_s: float, p99_ms: float) -> dict[str, Any]:
        """Each threshold: its limit, the measured value, and whether it held."""
        ratio = failures / ops if ops else 0.0
        out: dict[str, Any] = {
            "max_fail_ratio": {
                "limit": self.max_fail_ratio,
                "value": round(ratio, 6),
                "held": ratio <= self.max_fail_ratio,
            }
        }
        if self.max_p99_ms is not None:
            out["max_p99_ms"] = {
                "limit": self.max_p99_ms,
                "value": p99_ms,
                "held": p99_ms <= self.max_p99_ms,
            }
        if self.min_ops_per_s is not None:
            out["min_ops_per_s"] = {
                "limit": self.min_ops_per_s,
                "value": round(ops_per_s, 1),
                "held": ops_per_s >= self.min_ops_per_s,
            }
        return out


def verdict(summary: dict[str, Any]) -> int:
    """The exit status a summary stands for (the module docstring's table)."""
    if summary.get("corruption"):
        return EXIT_CORRUPTION
    if summary.get("panic"):
        return EXIT_PANIC
    held = all(t["held"] for t in summary.get("thresholds", {}).values())
    frames_back = summary.get("vm", {}).get("frames_back", True)
    audited = not summary.get("vm", {}).get("audit")  # None: not run; []: every check held
    ran = summary.get("ops", 1) > 0 and not summary.get("user_errors", 0)
    windows = [w.get("detail") or {} for w in summary.get("nemesis", [])]
    # every fault undone, and every killed client's session reaped (its frames back)
    healed = not any("undo_error" in d or d.get("reaped") is False for d in windows)
    ok = held and ran and healed and audited and frames_back is not False
    return EXIT_OK if ok else EXIT_FAILED


def verdict_line(summary: dict[str, Any]) -> str:
    """The verdict in one line (the Locust master's last word, e.g. in compose's logs)."""
    p = summary.get("panic")
    missed = [k for k, t in summary.get("thresholds", {}).items() if not t["held"]]
    return (
        f"{summary.get('ops', 0)} ops, {summary.get('failures', 0)} failures, "
        f"{summary.get('corruption', 0)} corruption, "
        + (f"panic in {p.get('role') or '?'}: {p.get('message', '')[:200]}" if p else "no panic")
        + f", frames back: {summary.get('vm', {}).get('frames_back')}"
        + (f", audit: {summary['vm']['audit'][0]}" if summary.get("vm", {}).get("audit") else "")
        + (f", missed: {', '.join(missed)}" if missed else "")
    )


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1, sort_keys=False) + "\n")
