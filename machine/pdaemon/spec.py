"""The page daemon's spec (machine.rolespec): the replacement policy and its passes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from machine.rolespec import RoleContext, RoleSpec

if TYPE_CHECKING:
    from machine.pdaemon.service import PdaemonService


def build(ctx: RoleContext) -> PdaemonService:
    from machine.pdaemon.service import PdaemonService  # when built: naming the roles stays light

    return PdaemonService(
        ctx.transport,
        profile=ctx.profile,
        uvm=ctx.endpoint("uvm"),
        mmu=ctx.endpoint("mmu"),
        uvm_pub=ctx.endpoint("uvm", "pub"),
        **ctx.service_args(),
    )


SPEC = RoleSpec(
    name="pdaemon",
    port_offset=30,
    build=build,
    connects_to=("uvm", "mmu"),
    knobs=("PD_POLICY", "PD_WIRED_CHECK", "DEACT_MODE", "DIAGNOSTIC"),
)
