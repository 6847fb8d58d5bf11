"""Launchers: how the supervisor gets a role running and notices it ending.

* ProcessLauncher: one OS process per role (multiprocess, forkserver start
  method: a supervisor with ZeroMQ threads must never fork itself). The
  child reports its bound endpoints through a pipe; its exit is noticed at
  once through its sentinel fd.
* ExternalLauncher: roles started by someone else (docker compose) at the
  fixed port layout; "starting" is waiting until the role answers hello.
* machine.testing.InprocLauncher: roles as services in this process, on
  the in-memory transport (simulation).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from machine.config import ROLE_START_TIMEOUT_S, RoleConfig
from machine.ipc.peer import CallTimeout, Identity, Peer
from machine.ipc.transport import Transport
from machine.proto import NO_HEADER, CtlHello, CtlHelloReply

OnExit = Callable[[str, int | None], None]


class LaunchError(RuntimeError):
    pass


class Launcher(abc.ABC):
    on_exit: OnExit | None = None

    @abc.abstractmethod
    async def start(self, role: str, peers: dict[str, dict[str, str]]) -> dict[str, Any]:
        """Start `role` wired to `peers`. => {kernel, user, pub, pid, incarnation}."""

    @abc.abstractmethod
    async def stop(self, role: str, timeout_s: float) -> None:
        """Make sure the role has ended (after ctl.shutdown was sent).

        => waits up to timeout_s for a clean exit, then terminates, then kills;
           timeout_s == 0 kills at once (a role that no longer answers).
        """

    def pids(self) -> dict[str, int]:
        return {}


class ProcessLauncher(Launcher):
    def __init__(self, template: RoleConfig, binds: Callable[[str], dict[str, str]]) -> None:
        import multiprocess

        self.ctx = multiprocess.get_context("forkserver")
        self.template = template
        self.binds = binds
        self.procs: dict[str, Any] = {}

    async def start(self, role: str, peers: dict[str, dict[str, str]]) -> dict[str, Any]:
        from machine.rolemain import role_main

        b = self.binds(role)
        cfg = RoleConfig(
            **{
                **self.template.to_dict(),
                "role": role,
                "kernel": b["kernel"],
                "user": b["user"],
                "pub": b["pub"],
                "peers": peers,
            }
        )
        parent, child = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=role_main, args=(cfg.to_dict(), child), name=f"uvm-machine-{role}"
        )
        proc.start()
        child.close()
        self.procs[role] = proc
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, parent.poll, ROLE_START_TIMEOUT_S)
        try:
            info: dict[str, Any] = parent.recv() if ok else {"error": "no ready report"}
        except EOFError:
            info = {"error": f"exited during start (status {proc.exitcode})"}
        parent.close()
        if "error" in info:
            proc.kill()
            raise LaunchError(f"role {role} failed to start: {info['error']}")
        loop.add_reader(proc.sentinel, self._exited, role)
        return info

    def _exited(self, role: str) -> None:
        loop = asyncio.get_event_loop()
        proc = self.procs[role]
        loop.remove_reader(proc.sentinel)
        proc.join(0)
        if self.on_exit is not None:
            self.on_exit(role, proc.exitcode)

    async def stop(self, role: str, timeout_s: float) -> None:
        proc = self.procs.get(role)
        if proc is None:
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(proc.sentinel)
        if timeout_s > 0:
            await loop.run_in_executor(None, proc.join, timeout_s)
            if proc.is_alive():
                proc.terminate()
                await loop.run_in_executor(None, proc.join, 2.0)
        if proc.is_alive():  # timeout 0: a role that stopped answering is killed at once
            proc.kill()
            await loop.run_in_executor(None, proc.join, 2.0)

    def pids(self) -> dict[str, int]:
        return {r: p.pid for r, p in self.procs.items()}


class ExternalLauncher(Launcher):
    """Roles that someone else runs at known endpoints (docker compose)."""

    def __init__(
        self,
        transport: Transport,
        ident: Identity,
        layout: dict[str, dict[str, str]],
        timeout_s: float = 120.0,
    ) -> None:
        self.transport = transport
        self.ident = ident
        self.layout = layout
        self.timeout_s = timeout_s

    async def start(self, role: str, peers: dict[str, dict[str, str]]) -> dict[str, Any]:
        eps = self.layout[role]
        peer = await Peer(self.ident, eps["kernel"]).open(self.transport)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        try:
            while True:
                try:
                    rep = await peer.call_ok(CtlHello(h=_H), CtlHelloReply, timeout_s=1.0)
                    break
                except CallTimeout:
                    if loop.time() > deadline:
                        msg = f"role {role} did not answer at {eps['kernel']}"
                        raise LaunchError(msg) from None
        finally:
            await peer.close()
        return {**eps, "pid": rep.pid, "incarnation": rep.incarnation}

    async def stop(self, role: str, timeout_s: float) -> None:
        return None


_H = NO_HEADER
