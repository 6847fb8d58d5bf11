"""The uvm role's spec (machine.rolespec): pages, address spaces, faults, loans, files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from machine.rolespec import RoleContext, RoleSpec

if TYPE_CHECKING:
    from machine.uvm.service import UvmService


def build(ctx: RoleContext) -> UvmService:
    from machine.uvm.service import UvmService  # when built: naming the roles stays light

    return UvmService(
        ctx.transport,
        ram=ctx.ram,
        mmu=ctx.endpoint("mmu"),
        lease_s=ctx.lease_s,
        state_dir=ctx.state_dir,
        swap_bytes=ctx.swap_bytes,
        profile=ctx.profile,
        **ctx.service_args(),
    )


SPEC = RoleSpec(
    name="uvm",
    port_offset=20,
    build=build,
    connects_to=("mmu",),
    knobs=(
        "ERA",
        "QUEUE_INVARIANT",
        "PPP_WIRED",
        "LOAN_KVA",
        "DIAGNOSTIC",
        "PD_POLICY",
        "PD_WIRED_CHECK",
    ),
)
