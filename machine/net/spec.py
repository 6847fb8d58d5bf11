"""The net role's spec (machine.rolespec): sockets, sosend, the driver, the wire."""

from __future__ import annotations

from typing import TYPE_CHECKING

from machine.rolespec import RoleContext, RoleSpec

if TYPE_CHECKING:
    from machine.net.service import NetService


def build(ctx: RoleContext) -> NetService:
    from machine.net.service import NetService  # when built: naming the roles stays light

    return NetService(
        ctx.transport,
        ram=ctx.ram,
        profile=ctx.profile,
        uvm=ctx.endpoint("uvm"),
        mmu=ctx.endpoint("mmu"),
        uvm_pub=ctx.endpoint("uvm", "pub"),
        lease_s=ctx.lease_s,
        **ctx.service_args(),
    )


SPEC = RoleSpec(
    name="net",
    port_offset=40,
    build=build,
    connects_to=("uvm", "mmu"),
    knobs=("LOAN_THRESHOLD",),
)
