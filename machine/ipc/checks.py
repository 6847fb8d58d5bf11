"""The stateless checks of an incoming request (steps 1-3a of machine.ipc.service).

Each function looks only at the bytes or the decoded message and the endpoint they
arrived on, never at a role's state, and answers with a reason to refuse (a string,
which the service turns into an ErrorReply with the errno named here) or None:
  * `decode_frame`: step 1, the bytes. A kernel frame is one msgpack message; a user
    frame is body || 16-byte tag (machine.ipc.auth), or a bare body for the public
    requests. => (message, the signed body, the tag or None); BadMessage (EBADMSG or
    EINVAL) for anything else, carrying the msg_id whenever the header's msg_id could be
    read from either reading of the frame (signed or bare), else 0.
  * `refusal`: steps 2, 3 and the public half of 3a: another major protocol version
    (EPROTO), a kernel message on the user endpoint or the reverse (EPERM), a request
    without a session that is not one of PUBLIC_TAGS (EPERM).
The stateful half of 3a (the tag, the replay window, the session's liveness), the
in-flight limits and steps 4-5 need the role and stay in Service._check.
Invariant: nothing here raises on any input except BadMessage from decode_frame; should
it anyway, the service answers EINVAL (step 7) with `salvaged_msg_id`.
"""

from __future__ import annotations

from machine.ipc.auth import PUBLIC_TAGS, TAG_LEN
from machine.proto import (
    PROTOCOL_VERSION,
    BadMessage,
    Errno,
    Request,
    Scope,
    decode_request,
    salvage_msg_id,
    tag_of,
)


def decode_frame(raw: bytes, endpoint: Scope) -> tuple[Request, bytes | memoryview, bytes | None]:
    """Step 1. => (msg, body, tag); tag is None for a kernel or an unsigned user frame.

    A msgpack message's length follows from its bytes, so at most one of the two
    readings of a user frame decodes as one whole msgpack value. When neither is a
    valid request, the error answered is the one of the reading whose header could be
    read (its msg_id is echoed: a client matching replies on `re` gets its answer,
    say EBADMSG for a signed request with an unknown tag); when neither header could
    be read (re=0), the signed reading's error is the more useful one unless those
    bytes did not decode at all.
    """
    if endpoint is not Scope.USER or len(raw) <= TAG_LEN:
        return decode_request(raw), raw, None
    body = memoryview(raw)[:-TAG_LEN]
    try:
        return decode_request(body), body, raw[-TAG_LEN:]
    except BadMessage as signed:
        try:
            return decode_request(raw), raw, None
        except BadMessage as bare:
            if signed.msg_id or bare.msg_id:
                raise (signed if signed.msg_id else bare) from None
            raise (bare if signed.errno is Errno.EBADMSG else signed) from None


def refusal(msg: Request, endpoint: Scope, role: str) -> tuple[Errno, str] | None:
    """Steps 2, 3 and 3a's public rule. => (errno, detail) to refuse msg, or None."""
    h = msg.h
    if h.proto[0] != PROTOCOL_VERSION[0]:
        return Errno.EPROTO, (
            f"protocol {h.proto[0]}.{h.proto[1]} refused; "
            f"{role} speaks {PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}"
        )
    scope = type(msg).scope
    if scope is not Scope.ANY and scope is not endpoint:
        return Errno.EPERM, (
            f"{tag_of(msg)} is a {scope.value} message; this is the {endpoint.value} endpoint"
        )
    if endpoint is Scope.USER and h.incarnation == 0 and tag_of(msg) not in PUBLIC_TAGS:
        return Errno.EPERM, (
            f"{tag_of(msg)} needs a session: attach (uvm.attach) and sign requests"
        )
    return None


def salvaged_msg_id(raw: bytes) -> int:
    """The msg_id of a frame the checks choked on (signed or not), or 0."""
    return salvage_msg_id(raw[:-TAG_LEN]) or salvage_msg_id(raw)
