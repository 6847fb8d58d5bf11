"""A handler's reply with frames after it: the service's side of transport.Multipart.

A handler may return a Framed (its Reply, the frames that follow it, and the callback
for when the transport has taken their bytes) instead of a Reply: the service encodes
the Reply and hands the transport a Multipart (machine.net.service's net.recv with
`frames`: each payload a frame read straight from RAM).

Invariants:
  * on_sent runs exactly once per Framed: when the transport has sent (or dropped) the
    frames, or at once when the reply cannot be encoded or is decoded in process
    (`decode_out`, after its frames are copied);
  * a reply that is not a Framed is encoded as it always was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from machine.ipc.transport import Multipart
from machine.proto import Reply, attach_frames, decode_reply, encode


class Framed:
    """A reply and the frames sent after it (`on_sent`: their bytes are taken)."""

    __slots__ = ("frames", "on_sent", "reply")

    def __init__(
        self, reply: Reply, frames: Sequence[bytes | memoryview], on_sent: Callable[[], None]
    ) -> None:
        self.reply, self.frames, self.on_sent = reply, frames, on_sent


def encode_out(out: Reply | Framed) -> bytes:
    """A handler's result as the bytes the transport sends."""
    if isinstance(out, Framed):
        try:
            head = encode(out.reply)
        except BaseException:
            out.on_sent()
            raise
        return Multipart.of(head, out.frames, out.on_sent)
    return encode(out)


def decode_out(got: bytes) -> Reply:
    """A reply's bytes as its Reply, a Multipart's frames copied into it (then sent)."""
    if isinstance(got, Multipart):
        frames = [bytes(f) for f in got.frames]
        got.sent()
        return attach_frames(decode_reply(got), frames)
    return decode_reply(got)
