"""Wire integrity: every payload against what its sender's memory held at `send`.

The sender records, when send returns, the bytes its memory held (a test
client knows what it wrote); the receiver hands every packet from the wire
to check(): the session's own `m.wire()` when only its sends are checked, or
the operator's tap (`Wire.tap(kcall)`, every session's packets). A payload
that differs is corruption, reported with the first differing offsets and
both values; a send that never arrives is reported by missing().

    check = WireCheck()
    r = await p.send(s, va, n); check.expect(r, data)
    check.check(await wire.get())          # raises WireCorruption on a mismatch
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class WireCorruption(Exception):
    """A payload on the wire is not what the sender's memory held at send."""

    def __init__(self, detail: str, evidence: dict[str, Any]) -> None:
        super().__init__(detail)
        self.detail = detail
        self.evidence = evidence


@dataclass
class WireCheck:
    expected: dict[tuple[int, int], bytes] = field(default_factory=dict)  # (sock, seq) -> bytes
    checked: int = 0

    def expect(self, result: Any, data: bytes) -> None:
        """Record what memory held when the send (a client.SendResult) returned."""
        self.expected[(result.sock, result.seq)] = bytes(data)

    def check(self, pkt: Any) -> None:
        """Compare one packet (a client.Packet) with its send. => WireCorruption."""
        key = (pkt.sock, pkt.seq)
        want = self.expected.pop(key, None)
        if want is None:
            raise WireCorruption(
                f"socket {pkt.sock} send {pkt.seq}: a packet nobody sent (or sent twice)",
                {"sock": pkt.sock, "seq": pkt.seq},
            )
        self.checked += 1
        got = pkt.payload
        if got == want:
            return
        diffs = [i for i in range(min(len(got), len(want))) if got[i] != want[i]]
        first = diffs[:8]
        detail = (
            f"socket {pkt.sock} send {pkt.seq} ({'loaned' if pkt.loaned else 'copied'}): "
            f"{len(diffs)} of {len(want)} bytes differ"
            + (f", length {len(got)} != {len(want)}" if len(got) != len(want) else "")
            + (
                "; first at offsets "
                + ", ".join(f"{i:#x} (sent {want[i]:#04x}, wire {got[i]:#04x})" for i in first)
                if first
                else ""
            )
        )
        raise WireCorruption(
            detail,
            {
                "sock": pkt.sock,
                "seq": pkt.seq,
                "differ": len(diffs),
                "offsets": first,
                "sent": [want[i] for i in first],
                "wire": [got[i] for i in first],
            },
        )

    def missing(self) -> list[tuple[int, int]]:
        return sorted(self.expected)
