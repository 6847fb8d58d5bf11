"""WireFeed without a bus: one poll task while a receiver is added, fan-out, clean halt."""

from __future__ import annotations

import asyncio

import pytest

from machine.client.errors import MachineTimeout
from machine.client.feed import WireFeed
from machine.proto import NO_HEADER, NetRecvReply, WirePacket
from machine.testing import poll_for


class FakeNet:
    """listen / recv / unlisten of one receiver queue; recv hands out what was queued."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.replies: asyncio.Queue[NetRecvReply | Exception] = asyncio.Queue()

    async def listen(self) -> None:
        self.calls.append("listen")

    async def recv(self, max_packets: int, wait_ms: int) -> NetRecvReply:
        self.calls.append("recv")
        rep = await self.replies.get()
        if isinstance(rep, Exception):
            raise rep
        return rep

    async def unlisten(self) -> None:
        self.calls.append("unlisten")

    def feed(self) -> WireFeed:
        return WireFeed(self.listen, self.recv, self.unlisten)


class Sink:
    def __init__(self) -> None:
        self.got: list[NetRecvReply] = []

    def on_recv(self, rep: NetRecvReply) -> None:
        self.got.append(rep)


def _reply(seq: int) -> NetRecvReply:
    pkt = WirePacket(session=1, asid=1, sock=1, seq=seq, off=0, total=1, payload=b"x", loaned=False)
    return NetRecvReply(h=NO_HEADER, packets=[pkt], dropped=seq)


def _client_tasks() -> list[str]:
    """The running tasks of the feed (by their coroutine: WireFeed._poll)."""
    names = (getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks())
    return [n for n in names if n == "WireFeed._poll"]


async def test_every_receiver_gets_every_poll_and_the_last_one_out_unlistens() -> None:
    net = FakeNet()
    feed = net.feed()
    a, b = Sink(), Sink()
    await feed.add(a)
    await feed.add(b)
    assert net.calls.count("listen") == 1
    assert len(_client_tasks()) == 1
    net.replies.put_nowait(_reply(1))
    await poll_for(lambda: len(a.got) == 1 and len(b.got) == 1, what="both receivers got it")
    await feed.remove(a)
    assert "unlisten" not in net.calls
    assert len(_client_tasks()) == 1
    await feed.remove(b)
    assert net.calls[-1] == "unlisten"
    assert _client_tasks() == []  # the poll task was cancelled and awaited, not left behind


async def test_an_error_ends_the_poll_and_is_kept_for_the_wires() -> None:
    net = FakeNet()
    feed = net.feed()
    await feed.add(Sink())
    net.replies.put_nowait(MachineTimeout("net did not answer"))
    await poll_for(lambda: feed.error is not None, what="the poll ended")
    assert isinstance(feed.error, MachineTimeout)
    await feed.stop()
    assert "unlisten" not in net.calls  # stop: the session is going, net ends the listener
    assert _client_tasks() == []


@pytest.mark.parametrize("halt", ["remove", "stop"])
async def test_a_halted_feed_listens_again_on_the_next_add(halt: str) -> None:
    net = FakeNet()
    feed = net.feed()
    w = Sink()
    await feed.add(w)
    await (feed.remove(w) if halt == "remove" else feed.stop())
    await feed.add(w)
    assert net.calls.count("listen") == 2
    assert len(_client_tasks()) == 1
    await feed.stop()
