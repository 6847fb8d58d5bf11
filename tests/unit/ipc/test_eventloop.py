"""The machine's event loop (machine.ipc.eventloop): uvloop when installed, asyncio's on
request; running_loop() answers the running loop on either; the ZeroMQ transport serves
requests and events on uvloop as on asyncio's loop."""

from __future__ import annotations

import asyncio
import sys

import pytest

from machine.ipc import eventloop
from machine.ipc.transport import running_loop
from machine.ipc.zmqtransport import ZmqTransport
from machine.testing import poll_for
from tests.unit.ipc.test_loop_fast_paths import each_thread_sees_its_own_loop

uvloop = pytest.importorskip("uvloop")


def test_the_loop_is_uvloop_unless_asyncio_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    async def kind() -> type:
        return type(asyncio.get_running_loop())

    monkeypatch.delenv(eventloop.ENV_VAR, raising=False)
    assert eventloop.run(kind()) is uvloop.Loop
    monkeypatch.setenv(eventloop.ENV_VAR, "asyncio")
    assert eventloop.run(kind()) is not uvloop.Loop
    monkeypatch.setenv(eventloop.ENV_VAR, "uvlop")  # a typo never picks a loop silently
    with pytest.raises(ValueError, match="UVM_MACHINE_LOOP"):
        eventloop.run(kind())


def test_without_uvloop_the_default_is_asyncio_and_asking_for_it_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails
    monkeypatch.delenv(eventloop.ENV_VAR, raising=False)
    assert eventloop.loop_factory() == ("asyncio", None)
    monkeypatch.setenv(eventloop.ENV_VAR, "uvloop")
    with pytest.raises(ValueError, match="not installed"):
        eventloop.loop_factory()


async def _both() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
    return running_loop(), asyncio.get_running_loop()


def test_running_loop_is_the_running_uvloop_loop_after_loop_and_per_thread() -> None:
    for run in (uvloop.run, asyncio.run, uvloop.run, uvloop.run):
        mine, theirs = run(_both())
        assert mine is theirs
    each_thread_sees_its_own_loop(uvloop.run)


def test_requests_and_events_travel_on_uvloop() -> None:
    async def main() -> None:
        t = ZmqTransport()
        srv = await t.bind("tcp://127.0.0.1:*", lambda b: b"re:" + b)
        pub = await t.publisher("tcp://127.0.0.1:*")
        got: list[bytes] = []
        events: list[bytes] = []
        conn = await t.connect(srv.endpoint, got.append)
        sub = await t.subscribe(pub.endpoint, "ev.", events.append)
        try:
            for n in range(100):
                conn.send(b"%d" % n)
            await poll_for(lambda: len(got) == 100, timeout_s=10, what="replies")
            assert got == [b"re:%d" % n for n in range(100)]

            def published() -> bool:
                pub.publish("ev.x", b"payload")
                return bool(events)

            await poll_for(published, timeout_s=10, what="an event")
        finally:
            await sub.close()
            await conn.close()
            await pub.close()
            await srv.close()
            await t.close()

    uvloop.run(main())
