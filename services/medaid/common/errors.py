"""Domain errors and their mapping to google.rpc.Status with ErrorInfo.

Every refusal carries a machine-readable reason (a SPEC code such as HELPER_NOT_EMPLOYEE) in
`google.rpc.ErrorInfo.reason`, domain "medaid", and a readable message.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import grpc
import redis.exceptions as redis_errors
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "medaid"


@dataclass
class DomainError(Exception):
    code: grpc.StatusCode
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    # True when the request already wrote effects before this error: its request-id claim must stay
    # (PENDING, for a retry or the recovery loop to finish) instead of being removed.
    keeps_claim: bool = False

    def after_effects(self) -> DomainError:
        """This error, marked as raised after the request's first effects were written."""
        return replace(self, keeps_claim=True)

    @property
    def retryable(self) -> bool:
        return self.code == grpc.StatusCode.UNAVAILABLE

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def to_status(self) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        detail = any_pb2.Any()
        detail.Pack(info)
        st = status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        return rpc_status.to_status(st)

    # Compact, storable form (for idempotent replays of a refusal).
    def to_dict(self) -> dict[str, object]:
        return {"code": self.code.name, "reason": self.reason, "message": self.message,
                "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> DomainError:
        meta = d.get("metadata") or {}
        assert isinstance(meta, dict)
        return cls(grpc.StatusCode[str(d["code"])], str(d["reason"]), str(d["message"]),
                   {str(k): str(v) for k, v in meta.items()})


def status_code(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a numeric code carried in a message (UNKNOWN for an unknown one)."""
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)


def invalid(reason: str, message: str, **meta: str) -> DomainError:
    return DomainError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, dict(meta))


def refused(reason: str, message: str, **meta: str) -> DomainError:
    return DomainError(grpc.StatusCode.FAILED_PRECONDITION, reason, message, dict(meta))


def not_found(reason: str, message: str, **meta: str) -> DomainError:
    return DomainError(grpc.StatusCode.NOT_FOUND, reason, message, dict(meta))


def exists(reason: str, message: str, **meta: str) -> DomainError:
    return DomainError(grpc.StatusCode.ALREADY_EXISTS, reason, message, dict(meta))


def unavailable(reason: str, message: str, **meta: str) -> DomainError:
    return DomainError(grpc.StatusCode.UNAVAILABLE, reason, message, dict(meta))


def internal() -> DomainError:
    """A failure inside the service that it does not describe (an exception of its own): UNKNOWN, reason
    INTERNAL_ERROR, in words of its own. The exception's text never goes to the caller: it may hold what
    the service read (a name, an id number); the service logs it (`transport.call_or_abort`)."""
    return DomainError(grpc.StatusCode.UNKNOWN, "INTERNAL_ERROR", "the call failed inside the service; it may "
                       "have been done: retry with the same request id")


STORE_UNAVAILABLE = "STORE_UNAVAILABLE"

# UNAVAILABLE reasons that say a service this one calls did not answer. Such an answer comes after
# this service gave that call its whole deadline, its own retries included: a caller that retried
# it at once would only multiply the wait (a frozen province reached a hospital behind the gateway
# after the gateway's 10 s instead of the router's 3 s). They are answered with gRPC's retry
# pushback -1 (gRFC A6: do not retry, `medaid.common.transport`); the caller still hears UNAVAILABLE
# and resends later with the same request id. Contention met without a wait (CONTENDED,
# TRANSFER_BUSY, …_IN_PROGRESS) and a store that did not answer are not among them: a retry a moment
# later may well succeed.
DOWNSTREAM_UNAVAILABLE = frozenset({"REGISTRY_UNAVAILABLE", "WALLET_UNAVAILABLE"})
# Busy after waiting for a person's, a family account's or a wallet's lock (or for another request's
# opening of the wallet): the wait lasts until the caller's deadline is near (common/lock.py), so
# these come after the whole wait too and are not retried by the caller's channel either (retries
# with what is left of the deadline would end in a bare DEADLINE_EXCEEDED, and the caller would hear
# "did not answer" instead of "busy, resend"). A reason is one rule: WALLET_BUSY's rarer forms that
# come without a wait (the owner moved province meanwhile) are not retried by the channel either;
# the caller resends them later like the others.
WAITED_UNAVAILABLE = DOWNSTREAM_UNAVAILABLE | {"PATIENT_BUSY", "FAMILY_BUSY", "WALLET_BUSY"}
# Answers that say a service or a store did not answer: a downstream (above), the gateway's router,
# a Redis (this service's own or one passed on from further down). Every process logs such an answer
# at WARNING (`medaid.common.logs.answer_level`), so that a stopped province or store shows at the
# level benches and quiet deployments run; refusals and contention (PATIENT_BUSY, CONTENDED, …) are
# the caller's to resend and stay INFO.
NOT_ANSWERED = DOWNSTREAM_UNAVAILABLE | {STORE_UNAVAILABLE, "ROUTER_UNAVAILABLE"}
# Answers that say a service further down did answer, but not as the call expects: an error it does not
# describe (DOWNSTREAM_ERROR: no ErrorInfo, e.g. INTERNAL or UNIMPLEMENTED), a wallet's code the registry
# does not expect of it (WALLET_CALL_REFUSED), a wallet refusing the registry's certificate. A defect, a
# version or a certificate to fix, nothing the caller mends by changing its request: logged at WARNING
# like NOT_ANSWERED (`medaid.common.logs.answer_level`), never as a refusal.
ANSWERED_AMISS = frozenset({"DOWNSTREAM_ERROR", "WALLET_CALL_REFUSED", "WALLET_REFUSED_REGISTRY"})
# The gRPC codes of a call whose outcome its caller cannot know: no answer (down, too slow, cancelled
# on the way) or a failure inside the service (UNKNOWN, INTERNAL: an exception it did not describe,
# possibly after it wrote the request's first effects). The service did not say no, so the call may
# still have taken effect: only a resend under the same request id repeats it safely (the first
# outcome answers it). The CLI names that resend; the console keeps the form's request id.
# Its two parts: no answer at all (the reason names the service that did not answer), and a failure
# inside a service that did answer.
NO_ANSWER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
FAILED_INSIDE_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
OUTCOME_UNKNOWN = NO_ANSWER_CODES | FAILED_INSIDE_CODES
# The codes after which the caller resends the same request under the same request id: its outcome is
# unknown (OUTCOME_UNKNOWN: only that id repeats it once, and a new id could do it twice), or the
# service said "not now" without doing anything (RESOURCE_EXHAUSTED: a rate limit; ABORTED: a
# conflict). The gateway's `medaid_ext.retryable` and the console's "submit the form again" are this.
RESEND_CODES = OUTCOME_UNKNOWN | {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
STORE_UNAVAILABLE_MESSAGE = "the data store is not answering; retry later with the same request id"

# What a Redis (or Redis Cluster) that cannot serve right now raises: unreachable, timed out, loading
# its data, failing over, slots unserved. ConnectionError covers BusyLoadingError (LOADING),
# MaxConnectionsError and AuthenticationError; ClusterError covers ClusterDownError / MasterDownError
# and the cluster client's "TTL exhausted". A plain OSError (ConnectionRefusedError, a socket timeout)
# only if some client lets one through: LeanRedis (common/fastredis.py) wraps its own in ConnectionError.
_STORE_DOWN: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ClusterError,
    redis_errors.TryAgainError, redis_errors.ReadOnlyError, redis_errors.SlotNotCoveredError,
    redis_errors.OutOfMemoryError, OSError,
)
# Error replies that redis-py leaves as a plain ResponseError but that say "cannot serve now": writes
# refused because persistence fails (MISCONF), too few replicas acknowledge (NOREPLICAS) or memory is
# full under `noeviction` (OOM; redis-py's OutOfMemoryError outside a pipeline), and a write the
# cluster client could not confirm on a replica in time (replica_wait.WriteNotReplicated); and every
# command refused while a script has run past `busy-reply-threshold` (BUSY: nothing of it was done;
# not BUSYKEY or BUSYGROUP, which are answers about a key).
_STORE_DOWN_REPLIES = ("MISCONF", "NOREPLICAS", "NOTREPLICATED", "OOM ", "BUSY ")
# How redis-py words an error reply met inside a pipeline: "Command # 3 (EVALSHA …) of pipeline caused
# error: ('NOREPLICAS …',)" (the reply's args after the marker, the command before it).
_PIPELINE_ERROR = "of pipeline caused error: "
# The cluster client's own words when no node answers or slots are unserved (a RedisClusterException).
_CLUSTER_DOWN_WORDS = ("Redis Cluster cannot be connected", "All slots are not covered")


def _store_down(exc: BaseException) -> bool:
    if isinstance(exc, _STORE_DOWN):
        return True
    if isinstance(exc, redis_errors.ResponseError):
        reply = str(exc)
        if reply.startswith("Command # ") and _PIPELINE_ERROR in reply:
            reply = reply.rsplit(_PIPELINE_ERROR, 1)[1].lstrip("('\"")
        return reply.startswith(_STORE_DOWN_REPLIES)
    if isinstance(exc, redis_errors.RedisClusterException):
        return str(exc).startswith(_CLUSTER_DOWN_WORDS)
    return False


def from_store(exc: BaseException) -> DomainError | None:
    """The DomainError a caller gets when `exc` means the service's Redis cannot serve right now:
    UNAVAILABLE / STORE_UNAVAILABLE (retryable), with a message that names no host or port; None for
    any other exception (a bug, a script error: not the store's availability).

    `call_or_abort` applies it to every RPC. A batch RPC that answers each item on its own should
    apply it per item before its catch-all (`errors.from_store(exc) or <its INTERNAL_ERROR>`), so a
    store outage reads as UNAVAILABLE there too. Only translates: whatever the failed call wrote is
    what a retry with the same request id completes."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:  # a wrapped cause counts (the cluster client wraps)
        if _store_down(link):
            return unavailable(STORE_UNAVAILABLE, STORE_UNAVAILABLE_MESSAGE)
        seen.add(id(link))
        link = link.__cause__
    return None


def error_info(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """Client side: the ErrorInfo inside a failed call's rich status, if any."""
    # Its stubs want a grpc.Call; it reads only code(), details() and trailing_metadata(), which RpcError has.
    st = rpc_status.from_call(exc)  # type: ignore[arg-type]
    if st is None:
        return None
    for detail in st.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def status_reason(status: grpc.Status) -> str:
    """The ErrorInfo reason inside a rich status (`DomainError.to_status`, a passed-on downstream one)."""
    for key, value in status.trailing_metadata or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):  # False for a detail of another type
                    return info.reason
    return ""


__all__ = ["DomainError", "invalid", "refused", "not_found", "exists", "unavailable", "from_store", "error_info",
           "code_pb2", "STORE_UNAVAILABLE", "DOWNSTREAM_UNAVAILABLE",
           "WAITED_UNAVAILABLE", "NOT_ANSWERED", "ANSWERED_AMISS", "NO_ANSWER_CODES", "FAILED_INSIDE_CODES",
           "OUTCOME_UNKNOWN", "RESEND_CODES"]
