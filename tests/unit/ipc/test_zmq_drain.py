"""How a socket's reader looks at libzmq's mailbox: once per turn, not once per message.

Each ZMQ_EVENTS read, and each read that ends in EAGAIN, makes libzmq process the
socket's commands (a getpid and a poll on its mailbox, at least). A drain reads a
burst with NOBLOCK until EAGAIN; replies sent on another socket while a drain runs
have that socket's mailbox looked at once, when the drain ends; and input such a
send uncovers (its command processing took the fd's edge) is still read. The fake
socket's fd never fires, as in test_zmqtransport.py: input is reached only through
the reads the wrapper makes on its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import zmq

from machine.ipc.zmqsocket import LoopSocket
from machine.testing import poll_for
from tests.unit.ipc.test_zmqtransport import FakeSocket


class CountingSocket(FakeSocket):
    """A FakeSocket that counts its mailbox looks (ZMQ_EVENTS reads, reads ending in
    EAGAIN) and notes, for each ZMQ_EVENTS read, whether `watch` was draining then."""

    def __init__(self, messages: list[list[bytes]]) -> None:
        super().__init__(messages)
        self.events_reads = 0
        self.agains = 0
        self.watch: LoopSocket | None = None
        self.during: list[bool] = []
        self.on_send: list[bytes] | None = None  # queued as input by the next send

    def getsockopt(self, opt: int) -> int:
        if opt == zmq.EVENTS:
            self.events_reads += 1
            self.during.append(self.watch is not None and self.watch._draining)
        return super().getsockopt(opt)

    get = getsockopt

    def recv(self, flags: int = 0, copy: bool = True) -> Any:
        try:
            return super().recv(flags, copy)
        except zmq.Again:
            self.agains += 1
            raise

    def send(self, part: bytes, flags: int = 0) -> None:
        super().send(part, flags)
        if self.on_send is not None and not flags & zmq.SNDMORE:
            # As libzmq may: the send processed the socket's commands, input became
            # readable, and the fd's edge is gone.
            self.queue.append(self.on_send)
            self.on_send = None


async def test_a_burst_costs_two_mailbox_looks_not_one_per_message() -> None:
    fake = CountingSocket([[b"id", b"%d" % i] for i in range(10)])
    got: list[bytes] = []
    ls = LoopSocket(fake, lambda frames: got.append(frames[1]))  # type: ignore[arg-type]
    await poll_for(lambda: len(got) == 10, timeout_s=5, what="the burst")
    await asyncio.sleep(0)
    assert got == [b"%d" % i for i in range(10)]
    # One ZMQ_EVENTS read after the first message (more came: a burst), then reads
    # until the one that fails: two looks for ten messages (eleven before).
    assert (fake.events_reads, fake.agains) == (1, 1)
    ls.close(0)


async def test_a_lone_message_costs_one_look_after_it() -> None:
    fake = CountingSocket([[b"id", b"x"]])
    got: list[bytes] = []
    ls = LoopSocket(fake, lambda frames: got.append(frames[1]))  # type: ignore[arg-type]
    await poll_for(lambda: got == [b"x"], timeout_s=5, what="the message")
    assert (fake.events_reads, fake.agains) == (1, 0)  # ZMQ_EVENTS: no POLLIN, done
    ls.close(0)


async def test_replies_on_another_socket_have_its_mailbox_looked_at_once_after_the_drain() -> None:
    a_fake = CountingSocket([[b"id", b"%d" % i] for i in range(5)])
    b_fake = CountingSocket([])
    b = LoopSocket(b_fake, lambda frames: None)  # type: ignore[arg-type]
    await asyncio.sleep(0)  # b's first drain: nothing to read
    looks = b_fake.events_reads + b_fake.agains
    a = LoopSocket(a_fake, lambda frames: b.send([frames[1]]))  # type: ignore[arg-type]
    b_fake.watch = a
    await poll_for(lambda: len(b_fake.sent) == 5, timeout_s=5, what="five sends on b")
    await asyncio.sleep(0)
    assert b_fake.sent == [[b"%d" % i] for i in range(5)]
    # Five sends during a's drain, one look at b's mailbox, after the drain.
    assert b_fake.events_reads + b_fake.agains - looks == 1
    assert b_fake.during[-1] is False
    a.close(0)
    b.close(0)


async def test_input_a_send_uncovers_is_read_though_the_fd_never_fires() -> None:
    got: list[bytes] = []
    b_fake = CountingSocket([])
    b = LoopSocket(b_fake, lambda frames: got.append(frames[0]))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    # During another socket's drain ...
    b_fake.on_send = [b"during"]
    a_fake = CountingSocket([[b"id", b"x"]])
    a = LoopSocket(a_fake, lambda frames: b.send([b"reply"]))  # type: ignore[arg-type]
    await poll_for(lambda: got == [b"during"], timeout_s=5, what="input after a drain's send")
    # ... and from a plain callback, outside any drain.
    b_fake.on_send = [b"outside"]
    asyncio.get_running_loop().call_soon(b.send, [b"reply"])
    await poll_for(lambda: got == [b"during", b"outside"], timeout_s=5, what="input after a send")
    a.close(0)
    b.close(0)


class PubSocket(CountingSocket):
    """A PUB: its recv fails at once with ENOTSUP, processing no commands."""

    def recv(self, flags: int = 0, copy: bool = True) -> Any:
        raise zmq.ZMQError(zmq.ENOTSUP)


async def test_a_socket_without_a_reader_processes_its_commands_through_zmq_events() -> None:
    fake = PubSocket([])
    ls = LoopSocket(fake, None)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    ls.drain()  # as when its fd fires (a subscriber joined)
    # Every drain looked at the mailbox; none tried a read (which would leave the fd
    # readable, and the loop spinning on it).
    assert (fake.events_reads, fake.agains) == (2, 0)
    ls.close(0)
