"""The mmu role's spec (machine.rolespec): the pmaps and every CPU load/store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from machine.rolespec import RoleContext, RoleSpec

if TYPE_CHECKING:
    from machine.mmu.service import MmuService


def build(ctx: RoleContext) -> MmuService:
    from machine.mmu.pmap import Mmu
    from machine.mmu.service import MmuService  # when built: naming the roles stays light

    s = ctx.profile.settings
    return MmuService(
        ctx.transport,
        mmu=Mmu(ctx.ram, s.kenter_mode, s.ppp_wired, ctx.ram.kpt),
        **ctx.service_args(),
    )


SPEC = RoleSpec(
    name="mmu",
    port_offset=10,
    build=build,
    knobs=("KENTER_MODE", "PPP_WIRED"),
)
