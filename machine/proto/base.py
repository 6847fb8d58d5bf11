"""Message bases: the header, the one reply shape, errnos and scopes.

Every message is a frozen, keyword-only msgspec Struct whose tag (field "t")
is "area.verb"; replies add ".reply", events use the past tense. On the wire
a message is one msgpack map: {"t": tag, "h": header, ...fields}.

Rules that hold for every message:
  * A request gets exactly one reply, whose header's `re` is the request's
    `msg_id` (a Notice, one-way between roles, gets none). The reply's
    `status` is "ok" or "error"; on error `errno` names
    one Errno and `detail` says why in words.
  * `scope` (a class attribute, not on the wire) says which endpoint accepts
    the request: KERNEL (role<->role), USER (clients) or ANY. A request sent
    to the wrong kind of endpoint gets EPERM and changes nothing.
  * Schema evolution follows msgspec's rules: new fields get defaults,
    existing fields never change type or meaning; PROTOCOL_VERSION's minor
    number rises when messages are added, the major when a change breaks old
    peers (hello refuses another major).
"""

from __future__ import annotations

import enum
from typing import Annotated, ClassVar

import msgspec

PROTOCOL_VERSION: tuple[int, int] = (1, 8)


class Scope(enum.Enum):
    KERNEL = "kernel"
    USER = "user"
    ANY = "any"


class Status(enum.StrEnum):
    OK = "ok"
    ERROR = "error"


class Errno(enum.StrEnum):
    """The one errno table (POSIX names where one fits)."""

    EPERM = "EPERM"  # not allowed from this endpoint, or not signed by the session named
    EACCES = "EACCES"  # protection beyond what the mapping allows
    ENOENT = "ENOENT"  # no such file (or nothing resident to page out)
    EBADF = "EBADF"  # no such open file handle
    EEXIST = "EEXIST"  # uvm.open: the name exists and cannot be made what was asked
    EISDIR = "EISDIR"  # uvm.open: the name is a directory (".", "dir", "dir/")
    ENOTDIR = "ENOTDIR"  # uvm.open: a component on the way is not a directory ("f/x")
    ENAMETOOLONG = "ENAMETOOLONG"  # uvm.open: a component > NAME_MAX or a path >= PATH_MAX
    ELOOP = "ELOOP"  # uvm.open: a symbolic link in the path (never followed)
    EFBIG = "EFBIG"  # uvm.open: a size beyond the filesize limit (see machine/limits.py)
    EIO = "EIO"  # uvm.open: the host file system failed (detail: the host's words)
    ESRCH = "ESRCH"  # no such address space / process
    EINVAL = "EINVAL"  # a field is out of range or the request is malformed
    EBADMSG = "EBADMSG"  # unknown tag, or bytes that do not decode
    EFAULT = "EFAULT"  # access to an address with no valid translation (a trap): SIGSEGV
    SIGBUS = "SIGBUS"  # access beyond the end of a mapped file (uvm_fault's EINVAL) (1.6)
    ENOMEM = "ENOMEM"  # out of memory, frames or address space
    EBUSY = "EBUSY"  # resource busy; try again
    EAGAIN = "EAGAIN"  # a limit on processes or sessions is reached (see machine/limits.py)
    EMFILE = "EMFILE"  # a session's limit on open files or sockets is reached
    ENOSYS = "ENOSYS"  # known message, not served by this role
    EPROTO = "EPROTO"  # protocol version refused at hello
    ETIMEDOUT = "ETIMEDOUT"  # a peer did not answer in time
    EPANIC = "EPANIC"  # the machine has panicked; detail holds the panic message
    ESHUTDOWN = "ESHUTDOWN"  # the machine is shutting down
    #: The request's session has ended (detached, reaped after its lease, or reclaimed):
    #: the one answer every role gives a signed request of an ended session; attach again. (1.7)
    ESESSION = "ESESSION"


class ErrnoError(Exception):
    """Anything answered by, or received as, an error reply: `errno` and `detail`.

    The one base of the project's errno-carrying exceptions: UserError (a
    caller's mistake, raised by the cores and services; nothing changed),
    machine.ipc.peer.RemoteError (an error reply a peer sent) and
    machine.client.RequestError (one the client library received).
    """

    def __init__(self, errno: Errno | str, detail: str) -> None:
        self.errno = Errno(errno)
        self.detail = detail
        super().__init__(f"{self.errno}: {detail}")


class UserError(ErrnoError):
    """A caller's mistake, answered with `errno` and `detail`: the operation changed nothing."""


class BadAddress(UserError):
    """EFAULT: the access cannot be resolved (no mapping, beyond the object, or a
    protection the mapping does not allow); the process gets SIGSEGV."""

    def __init__(self, detail: str) -> None:
        super().__init__(Errno.EFAULT, detail)


class BusError(UserError):
    """SIGBUS: the access is inside a file mapping but beyond the end of the file
    (NetBSD's pager answers EINVAL and trap() delivers SIGBUS, BUS_ADRERR). (1.6)"""

    def __init__(self, detail: str) -> None:
        super().__init__(Errno.SIGBUS, detail)


#: A header number: 0 <= n < 2**63 (msgspec bounds fit an int64; the project's
#: ids are smaller: incarnations and session ids 62 bits, msg_ids counters).
HeaderInt = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
#: A sender's name: a role ("uvm", "supervisor"), "client", a tool's name.
SENDER_MAX = 64
SenderName = Annotated[str, msgspec.Meta(max_length=SENDER_MAX)]


class Header(msgspec.Struct, frozen=True, kw_only=True):
    """Carried by every message.

    msg_id: per-sender counter, > 0 for requests (a signed request's must pass
    its role's replay window, machine.ipc.auth: per session per role, 4096 ids,
    machine.params.REPLAY_WINDOW; ids must roughly increase and never repeat; an
    id 4096 or more below the highest seen, or a repeat within the window, is
    EPERM "replayed request"); re: the msg_id answered (replies; an error reply
    echoes it whenever the request's header could be read, else 0), else 0;
    sender: role name or "client" (at most SENDER_MAX characters); incarnation:
    random per process start (62 bits; a client's is its session id from
    uvm.attach, 0 before it; on a user endpoint a request of a session is
    followed by its tag, see machine.ipc.auth); proto: (major, minor); sent_ns:
    the sender's injected clock.
    => every number is in [0, 2**63) (EINVAL otherwise), so no header can
       carry a value that a role's arithmetic on ids cannot hold;
       a longer sender is EINVAL too (headers go into the role's trace).
    """

    msg_id: HeaderInt
    sender: SenderName
    incarnation: HeaderInt
    re: HeaderInt = 0
    proto: tuple[int, int] = PROTOCOL_VERSION
    sent_ns: HeaderInt = 0


#: The header to build a request with: Peer.call stamps the real one before sending.
NO_HEADER = Header(msg_id=0, sender="", incarnation=0)


class Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="t"):
    """Base of all messages."""

    h: Header


class Request(Msg, frozen=True, kw_only=True):
    """A request; exactly one reply answers it (a Notice: none)."""

    scope: ClassVar[Scope] = Scope.KERNEL
    #: One-way (see Notice): the handler's result is not sent.
    notice: ClassVar[bool] = False


class Notice(Request, frozen=True, kw_only=True):
    """A one-way request between roles: no reply, ever (kernel endpoints only).

    The sender learns nothing back; what it relies on is order: a notice
    travels on the same connection as the sender's requests, so the
    receiver handles it after every request sent before it and before every
    one sent after it (ZeroMQ keeps per-connection order, and so does the
    in-memory transport). A notice that fails its checks is answered with an
    ErrorReply that the sender's Peer drops (it waits for nothing).
    """

    notice: ClassVar[bool] = True


class Reply(Msg, frozen=True, kw_only=True):
    """The one reply shape: status + errno + detail, plus message-specific fields."""

    status: Status = Status.OK
    errno: Errno | None = None
    detail: str = ""


class Event(Msg, frozen=True, kw_only=True):
    """Published on a role's PUB socket; topic = the tag."""


class ErrorReply(Reply, frozen=True, kw_only=True, tag="error.reply"):
    """The reply to a request that could not be decoded or dispatched.

    => status is always "error"; `re` is the request's msg_id when it could be
       read from the bytes, else 0 (then a client cannot match it and drops it).
    """
