"""THE protocol, defined once: every message of uvm-machine.

Import messages from here; docs/protocol.md is generated from these classes
(machine.proto.gendoc) and a test fails when it is stale.
"""

from machine.proto.base import (
    NO_HEADER as NO_HEADER,
)
from machine.proto.base import (
    PROTOCOL_VERSION as PROTOCOL_VERSION,
)
from machine.proto.base import BadAddress as BadAddress
from machine.proto.base import (
    Errno as Errno,
)
from machine.proto.base import ErrnoError as ErrnoError
from machine.proto.base import (
    ErrorReply as ErrorReply,
)
from machine.proto.base import (
    Event as Event,
)
from machine.proto.base import (
    Header as Header,
)
from machine.proto.base import (
    Msg as Msg,
)
from machine.proto.base import (
    Reply as Reply,
)
from machine.proto.base import (
    Request as Request,
)
from machine.proto.base import (
    Scope as Scope,
)
from machine.proto.base import (
    Status as Status,
)
from machine.proto.base import UserError as UserError
from machine.proto.codec import (
    BY_TAG as BY_TAG,
)
from machine.proto.codec import (
    EVENTS as EVENTS,
)
from machine.proto.codec import (
    REPLIES as REPLIES,
)
from machine.proto.codec import (
    REQUESTS as REQUESTS,
)
from machine.proto.codec import (
    BadMessage as BadMessage,
)
from machine.proto.codec import (
    decode_event as decode_event,
)
from machine.proto.codec import (
    decode_reply as decode_reply,
)
from machine.proto.codec import (
    decode_request as decode_request,
)
from machine.proto.codec import (
    encode as encode,
)
from machine.proto.codec import (
    salvage_msg_id as salvage_msg_id,
)
from machine.proto.codec import (
    tag_of as tag_of,
)
from machine.proto.codec import (
    with_header as with_header,
)
from machine.proto.control import (
    CtlAck as CtlAck,
)
from machine.proto.control import (
    CtlDirectory as CtlDirectory,
)
from machine.proto.control import (
    CtlDirectoryReply as CtlDirectoryReply,
)
from machine.proto.control import (
    CtlDump as CtlDump,
)
from machine.proto.control import (
    CtlDumpReply as CtlDumpReply,
)
from machine.proto.control import (
    CtlHalt as CtlHalt,
)
from machine.proto.control import (
    CtlHello as CtlHello,
)
from machine.proto.control import (
    CtlHelloReply as CtlHelloReply,
)
from machine.proto.control import (
    CtlKpanic as CtlKpanic,
)
from machine.proto.control import (
    CtlPanic as CtlPanic,
)
from machine.proto.control import (
    CtlPing as CtlPing,
)
from machine.proto.control import (
    CtlPingReply as CtlPingReply,
)
from machine.proto.control import (
    CtlRoleMissing as CtlRoleMissing,
)
from machine.proto.control import (
    CtlRoleStarted as CtlRoleStarted,
)
from machine.proto.control import (
    CtlShutdown as CtlShutdown,
)
from machine.proto.control import (
    CtlStats as CtlStats,
)
from machine.proto.control import (
    CtlStatsReply as CtlStatsReply,
)
from machine.proto.control import (
    CtlStatus as CtlStatus,
)
from machine.proto.control import (
    CtlStatusReply as CtlStatusReply,
)
from machine.proto.control import (
    CtlStopping as CtlStopping,
)
from machine.proto.control import (
    RoleEndpoints as RoleEndpoints,
)
from machine.proto.control import (
    RoleStatus as RoleStatus,
)
from machine.proto.net import (
    NetClose as NetClose,
)
from machine.proto.net import (
    NetLink as NetLink,
)
from machine.proto.net import (
    NetLinkUp as NetLinkUp,
)
from machine.proto.net import (
    NetListen as NetListen,
)
from machine.proto.net import (
    NetMark as NetMark,
)
from machine.proto.net import (
    NetPacket as NetPacket,
)
from machine.proto.net import (
    NetRecv as NetRecv,
)
from machine.proto.net import (
    NetRecvReply as NetRecvReply,
)
from machine.proto.net import (
    NetSend as NetSend,
)
from machine.proto.net import (
    NetSendReply as NetSendReply,
)
from machine.proto.net import (
    NetSocket as NetSocket,
)
from machine.proto.net import (
    NetSocketReply as NetSocketReply,
)
from machine.proto.net import (
    NetTapListen as NetTapListen,
)
from machine.proto.net import (
    NetTapListenReply as NetTapListenReply,
)
from machine.proto.net import (
    NetTapRecv as NetTapRecv,
)
from machine.proto.net import (
    NetTapUnlisten as NetTapUnlisten,
)
from machine.proto.net import (
    NetUnlisten as NetUnlisten,
)
from machine.proto.net import (
    WirePacket as WirePacket,
)
from machine.proto.pdaemon import (
    PdWakeup as PdWakeup,
)
from machine.proto.pdaemon import (
    PdWoke as PdWoke,
)
from machine.proto.pmap import (
    MmuAccessReply as MmuAccessReply,
)
from machine.proto.pmap import (
    MmuCopyin as MmuCopyin,
)
from machine.proto.pmap import (
    MmuKload as MmuKload,
)
from machine.proto.pmap import (
    MmuLoad as MmuLoad,
)
from machine.proto.pmap import (
    MmuStore as MmuStore,
)
from machine.proto.pmap import (
    PmapAttrs as PmapAttrs,
)
from machine.proto.pmap import (
    PmapAttrsReply as PmapAttrsReply,
)
from machine.proto.pmap import (
    PmapCheck as PmapCheck,
)
from machine.proto.pmap import (
    PmapCheckReply as PmapCheckReply,
)
from machine.proto.pmap import (
    PmapCountReply as PmapCountReply,
)
from machine.proto.pmap import (
    PmapCreate as PmapCreate,
)
from machine.proto.pmap import (
    PmapDestroy as PmapDestroy,
)
from machine.proto.pmap import (
    PmapEnter as PmapEnter,
)
from machine.proto.pmap import (
    PmapExtract as PmapExtract,
)
from machine.proto.pmap import (
    PmapExtractReply as PmapExtractReply,
)
from machine.proto.pmap import (
    PmapKenter as PmapKenter,
)
from machine.proto.pmap import (
    PmapKextract as PmapKextract,
)
from machine.proto.pmap import (
    PmapKextractReply as PmapKextractReply,
)
from machine.proto.pmap import (
    PmapKremove as PmapKremove,
)
from machine.proto.pmap import (
    PmapMappings as PmapMappings,
)
from machine.proto.pmap import (
    PmapMappingsReply as PmapMappingsReply,
)
from machine.proto.pmap import (
    PmapPageProtect as PmapPageProtect,
)
from machine.proto.pmap import (
    PmapProtect as PmapProtect,
)
from machine.proto.pmap import (
    PmapPv as PmapPv,
)
from machine.proto.pmap import (
    PmapPvReply as PmapPvReply,
)
from machine.proto.pmap import (
    PmapRemove as PmapRemove,
)
from machine.proto.pmap import (
    PmapUnwire as PmapUnwire,
)
from machine.proto.uvm import (
    UvmAttach as UvmAttach,
)
from machine.proto.uvm import (
    UvmAttachReply as UvmAttachReply,
)
from machine.proto.uvm import (
    UvmAudit as UvmAudit,
)
from machine.proto.uvm import (
    UvmAuditReply as UvmAuditReply,
)
from machine.proto.uvm import (
    UvmClose as UvmClose,
)
from machine.proto.uvm import (
    UvmDetach as UvmDetach,
)
from machine.proto.uvm import (
    UvmDetachReply as UvmDetachReply,
)
from machine.proto.uvm import (
    UvmExit as UvmExit,
)
from machine.proto.uvm import (
    UvmFault as UvmFault,
)
from machine.proto.uvm import (
    UvmFork as UvmFork,
)
from machine.proto.uvm import (
    UvmForkReply as UvmForkReply,
)
from machine.proto.uvm import (
    UvmKfault as UvmKfault,
)
from machine.proto.uvm import (
    UvmLoan as UvmLoan,
)
from machine.proto.uvm import (
    UvmLoanReply as UvmLoanReply,
)
from machine.proto.uvm import (
    UvmMmap as UvmMmap,
)
from machine.proto.uvm import (
    UvmMmapReply as UvmMmapReply,
)
from machine.proto.uvm import (
    UvmMprotect as UvmMprotect,
)
from machine.proto.uvm import (
    UvmMsync as UvmMsync,
)
from machine.proto.uvm import (
    UvmMsyncReply as UvmMsyncReply,
)
from machine.proto.uvm import (
    UvmMunmap as UvmMunmap,
)
from machine.proto.uvm import (
    UvmOpen as UvmOpen,
)
from machine.proto.uvm import (
    UvmOpenReply as UvmOpenReply,
)
from machine.proto.uvm import (
    UvmOwners as UvmOwners,
)
from machine.proto.uvm import (
    UvmOwnersReply as UvmOwnersReply,
)
from machine.proto.uvm import (
    UvmPageout as UvmPageout,
)
from machine.proto.uvm import (
    UvmPageoutReply as UvmPageoutReply,
)
from machine.proto.uvm import (
    UvmPdClaim as UvmPdClaim,
)
from machine.proto.uvm import (
    UvmPdClaimReply as UvmPdClaimReply,
)
from machine.proto.uvm import (
    UvmPdFinish as UvmPdFinish,
)
from machine.proto.uvm import (
    UvmPdFinishReply as UvmPdFinishReply,
)
from machine.proto.uvm import (
    UvmPdSnapshot as UvmPdSnapshot,
)
from machine.proto.uvm import (
    UvmPdSnapshotReply as UvmPdSnapshotReply,
)
from machine.proto.uvm import (
    UvmPressure as UvmPressure,
)
from machine.proto.uvm import (
    UvmProcExited as UvmProcExited,
)
from machine.proto.uvm import (
    UvmSpawn as UvmSpawn,
)
from machine.proto.uvm import (
    UvmSpawnReply as UvmSpawnReply,
)
from machine.proto.uvm import (
    UvmUnloan as UvmUnloan,
)
from machine.proto.uvm import (
    UvmUnwire as UvmUnwire,
)
from machine.proto.uvm import (
    UvmWire as UvmWire,
)
