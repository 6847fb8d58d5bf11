"""A loaned mbuf's DMA straight from RAM: the wire carries views of the loaned frames.

With the kernel's page table in shared memory (machine.kpt), the driver does not copy a
loaned mbuf's bytes into the packet: it pins them (`KernelPageTable.pin`: its reader
stays announced inside every page) and the packet carries views of RAM (a `Dma`).
The bytes leave RAM once, when they are taken:
  * into a net.recv reply asked with `frames`: each view is one ZeroMQ frame of the
    reply, and libzmq copies it into its message inside the send call (machine.ipc.
    zmqtransport: a Multipart reply); the reply's sent callback is the completion;
  * into a reply without frames (old clients, the in-memory bus, the operator's taps):
    joined into bytes when the reply is built;
  * by the timer (`DMA_HOLD_S`): a packet a receiver has not taken by then is copied out
    of RAM (`materialize`), so no receiver, however slow, keeps a frame loaned (the
    mmu's shootdown waits on the reader: a client that never reads must not hold up uvm).
The completion (`done`) leaves the table (the shootdown may proceed) and hands the mbuf to
sopendfree (kremove, unloan). A packet no queue takes (no listener, no tap), or dropped
from every queue that held it, completes at once.

Invariants:
  * until the completion the reader is inside every page of the mbuf: no revocation's
    reply goes out (K3), so uvm neither frees nor reuses a frame whose bytes the wire
    has not taken: the bytes the wire carries are the bytes as they were at send;
  * `done` runs exactly once: when the last holder releases it, or at `materialize`,
    whichever is first; after it the views are gone and `data` holds the bytes if any
    holder still needs them;
  * refs == the wire queues holding the packet + the replies being sent with it (+ the
    driver's own while it delivers).
"""

from __future__ import annotations

from collections.abc import Callable

from machine.proto import WirePacket

DMA_HOLD_S = 0.05  # a pinned packet not taken by then is copied out of RAM


class Dma:
    """The payload of a loaned mbuf on the wire: views of RAM, or its bytes once copied."""

    __slots__ = ("_done", "data", "length", "refs", "since", "views")

    def __init__(
        self, views: list[memoryview], length: int, done: Callable[[], None], since: float
    ) -> None:
        self.views: list[memoryview] | None = views
        self.data: bytes | None = None
        self.length = length
        self.refs = 1  # the driver's, until it has delivered the packet
        self.since = since  # when the DMA started (the hold timer's clock)
        self._done: Callable[[], None] | None = done

    def __len__(self) -> int:
        return self.length

    @property
    def pinned(self) -> bool:
        return self._done is not None

    def buffers(self) -> list[memoryview] | list[bytes]:
        """The payload's frames: the views while pinned, else its bytes."""
        if self.views is not None:
            return self.views
        return [self.data] if self.data is not None else []

    def tobytes(self) -> bytes:
        """The payload as bytes (a copy out of RAM while pinned)."""
        if self.data is not None:
            return self.data
        return b"".join(self.views or ())

    def hold(self) -> None:
        self.refs += 1

    def release(self) -> None:
        """One holder is done with the bytes; the last one completes the DMA."""
        self.refs -= 1
        if self.refs <= 0:
            self._complete()

    def materialize(self) -> None:
        """Copy the bytes out of RAM now and complete the DMA (the hold timer)."""
        if self._done is not None and self.refs > 0:
            self.data = self.tobytes()
        self._complete()

    def _complete(self) -> None:
        self.views = None
        done, self._done = self._done, None
        if done is not None:
            done()


def dma_of(pkt: WirePacket) -> Dma | None:
    """The packet's pinned DMA (net's side only: its payload is typed bytes on the wire)."""
    payload: object = pkt.payload
    return payload if isinstance(payload, Dma) else None
