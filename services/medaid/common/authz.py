"""Per-caller authorization by service identity, as a grpc.aio server interceptor.

On when a process runs with TLS (`medaid.common.tls`): every server then requires a client
certificate from the medaid CA, and this interceptor decides, before the handler runs (so a refusal
writes nothing), whether the authenticated identity may call the method:

* the identity is the peer certificate's subject CN (else its first SAN); its role is the identity,
  or the part before the first `-` for a service (`registry-13` → `registry`);
* a method missing from the policy is refused (default deny): PERMISSION_DENIED / CALLER_NOT_ALLOWED;
* a peer without a verified certificate is UNAUTHENTICATED / PEER_UNAUTHENTICATED (mTLS makes that
  impossible on a TLS port; the check is there in case a server is ever bound otherwise).

The policy (method → roles) is in `POLICIES`; docs/security.md has the table. After the handler,
look-ups and listings are masked for callers that are not `PRIVILEGED` (see `MASKED`).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from medaid.common import errors, rpc, tls, tracing
from medaid.common.idnumber import mask, mask_name, normalise_id_number
from medaid.common.logs import scrub
from medaid.common.tls import TlsConfig

REGISTRY = "medaid.registry.v1.RegistryService"
WALLET = "medaid.wallet.v1.WalletService"
ROUTER = "medaid.router.v1.RouterService"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"

log = logging.getLogger("medaid.authz")

ANY = "*"  # any peer with a certificate from the CA

# Roles. Institutions are not roles: a certificate whose CN is a fixmedins_code is an institution
# (only the router serves institutions; see medaid.router.security).
SERVICE_ROLES = frozenset({"registry", "wallet", "router", "gateway"})
# `console`: the 医保大厅 front-desk web console (medaid.console); it masks id numbers on its pages
# itself and shows one in full only on an operator's logged reveal, so it reads them unmasked.
CLIENT_ROLES = frozenset({"operator", "bench", "console"})
ROLES = SERVICE_ROLES | CLIENT_ROLES
# Callers that see listings unmasked: province staff, and the services that move money by id.
PRIVILEGED = frozenset({"operator", "registry", "wallet", "console"})
# Callers that may act at the router for whichever institution the request names (the gateway has
# authenticated the institution itself: sign-in, signatures; the bench is a load-test client).
INSTITUTION_PROXIES = frozenset({"gateway", "bench"})

_INSTITUTION = re.compile(r"^[A-Z0-9]{12}$")

OPERATORS = frozenset({"operator", "bench"})
# What the front desk does for a person in front of it (SPEC §3, §3b, §4b, §5): no 参保登记, 划入,
# status changes, moves, deaths, clearing or maintenance.
COUNTER = frozenset({*OPERATORS, "console"})
_COMMON: dict[str, frozenset[str]] = {
    f"/{HEALTH}/Check": frozenset({ANY}),
    f"/{HEALTH}/Watch": frozenset({ANY}),
    f"/{REFLECTION}/ServerReflectionInfo": frozenset({ANY}),
}


def _table(service: str, rows: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    return {**_COMMON, **{f"/{service}/{m}": frozenset(roles) for m, roles in rows.items()}}


POLICIES: dict[str, dict[str, frozenset[str]]] = {
    "registry": _table(REGISTRY, {
        # money moves for a bill: the router only
        "PreSettle": {"router"}, "Settle": {"router"}, "SettleBatch": {"router"}, "ReverseSettlement": {"router"},
        # the transfer saga and wallet bookkeeping: the national wallet only
        "DebitForTransfer": {"wallet"}, "DebitForTransferBatch": {"wallet"}, "RefundTransfer": {"wallet"},
        "CreditLotReturn": {"wallet"},
        "NoteWallet": {"wallet"},
        # 参保登记, 划入, bindings: province staff (and the load harness that seeds a population)
        "EnrollPerson": OPERATORS, "UpdatePersonStatus": OPERATORS, "CreditAccount": OPERATORS,
        "BindMutualAid": COUNTER, "UnbindMutualAid": COUNTER, "BindProxy": COUNTER,
        "RemoveProxy": COUNTER, "MovePoolingRegion": OPERATORS, "RecordDeath": OPERATORS,
        # reads: who needs them
        "GetPerson": {"router", "wallet", *COUNTER}, "GetPersons": {"router", "wallet", *COUNTER},
        "ListBindings": {"router", *COUNTER},
        "GetSettlement": {"router", *COUNTER}, "GetSettlements": {"router", *COUNTER},
        # 冲正 (2601): the router only
        "CancelRequest": {"router"}, "UndoReversal": {"router"},
        "GetAccount": COUNTER, "ListProxyBindings": COUNTER, "Diagnose": COUNTER,
        "ListConsumptionRecords": COUNTER,
        # the pooled family account (SPEC §3b): the counter and the app's back office
        "CreateFamilyAccount": COUNTER, "InviteMember": COUNTER, "RespondToInvitation": COUNTER,
        "RemoveMember": COUNTER, "LeaveFamilyAccount": COUNTER, "DissolveFamilyAccount": COUNTER,
        "TransferIntoFamilyAccount": COUNTER, "WithdrawContribution": COUNTER, "GetFamilyAccount": COUNTER,
        # 代缴 (SPEC §4b): the counter and the app's back office; the list goes to the tax bureau's feed
        "PayResidentPremium": COUNTER, "CancelResidentPremium": COUNTER, "ListResidentPremiums": COUNTER,
    }),
    "wallet": _table(WALLET, {
        # waterfall step 2 and lot returns: the registries only
        "SpendWallet": {"registry"}, "RefundWalletSpend": {"registry"}, "ReleaseSenderLots": {"registry"},
        "EndPersonWalletRelationships": {"registry"}, "NoteOwnerStatus": {"registry"},
        "GetWallet": {"registry", "router", *COUNTER},
        "GetWalletBalances": {"registry"},
        # the 医保钱包 front office (no app identity exists yet: operators and the counter)
        "OpenWallet": COUNTER, "CreateTransfer": COUNTER, "AcceptTransfer": COUNTER,
        "PayPremium": COUNTER, "GetTransfer": COUNTER, "ListIncomingTransfers": COUNTER,
        "ListOutgoingTransfers": COUNTER, "ListWalletEntries": COUNTER,
        "GetClearingReport": OPERATORS, "EndWalletRelationship": COUNTER, "ChangeUsePlace": COUNTER,
        "RunMaintenance": {"operator"},
    }),
    "router": _table(ROUTER, {
        # Any certificate holder reaches the handler; medaid.router.security then authenticates the
        # institution (token, institution certificate or a proxy) and rate-limits it.
        "QueryPerson": {ANY}, "PreSettle": {ANY}, "Settle": {ANY}, "ReverseSettlement": {ANY},
        "Undo": {ANY}, "QuerySettlement": {ANY}, "ReconcileTotals": {ANY}, "ReconcileDetails": {ANY},
        "GetDownstreamHealth": {ANY},
    }),
}


def allows(role: str, method: str) -> bool:
    """Whether `role` may call `method` ('/medaid.registry.v1.RegistryService/Diagnose') by `POLICIES`:
    the services' own table, which the console also consults for each signed-in operator's role."""
    service = method.split("/")[1].split(".")[1] if method.count("/") == 2 else ""
    allowed = POLICIES.get(service, {}).get(method, frozenset())
    return ANY in allowed or role in allowed


@dataclass(frozen=True)
class Caller:
    identity: str  # certificate CN (else first SAN); "" when the peer has no certificate
    role: str  # ROLES member, "institution", or "" (unknown)

    @property
    def privileged(self) -> bool:
        return self.role in PRIVILEGED


def role_of(identity: str) -> str:
    if identity in ROLES:
        return identity
    head = identity.split("-", 1)[0]
    if head in SERVICE_ROLES:
        return head
    if _INSTITUTION.match(identity):
        return "institution"
    return ""


def caller_of(context: grpc.aio.ServicerContext) -> Caller:
    auth = context.auth_context()
    names = list(auth.get("x509_common_name") or auth.get("x509_subject_alternative_name") or ())
    identity = names[0].decode() if names else ""
    return Caller(identity, role_of(identity) if identity else "")


_REGISTRY_OF = re.compile(r"^registry-([0-9]{2})$")


def registry_province(identity: str) -> str:
    """The province a registry identity serves (`registry-13` → '13'); '' for any other identity."""
    m = _REGISTRY_OF.match(identity)
    return m.group(1) if m else ""


def acting_province(context: grpc.aio.ServicerContext) -> str | None:
    """For a call a province's registry makes about its own people (SPEC §5): the province the caller
    serves by its certificate (`registry-13` → '13'), '' when its identity names none (a bare
    `registry`), None when the peer has no certificate identity (plaintext: no identity checks)."""
    caller = caller_of(context)
    return registry_province(caller.identity) if caller.identity else None


# --- masking of look-ups and listings --------------------------------------------------------------

def _repeated(fd: FieldDescriptor) -> bool:
    return fd.is_repeated  # protobuf >= 6.31 (pyproject.toml); `label` is gone in 7


def mask_counterparts(msg: Message, keep: frozenset[str]) -> None:
    """In place, at any depth, every person but those in `keep`: each `*id_number` string field, the
    name beside it (`name` of `id_number`, `heir_name` of `heir_id_number`), each 18-character key of a
    string-keyed map, and each id number inside any other text (a ledger `ref`, an event's `detail`, a
    代缴's `contributors`, a string map's values inside an answer) is masked (130102********123X, 张**).
    Refusals are not answers and are not masked here: no refusal names a person its request does not
    (checked by tests/test_security_sweep.py)."""
    hidden: set[str] = set()  # the prefixes ('', 'heir_') whose id number this message masks
    for fd, value in msg.ListFields():
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            entry = fd.message_type
            assert entry is not None  # a message field has a message type
            if entry.GetOptions().map_entry:
                key_fd = entry.fields_by_name["key"]
                val_fd = entry.fields_by_name["value"]
                if key_fd.type == FieldDescriptor.TYPE_STRING and val_fd.type != FieldDescriptor.TYPE_MESSAGE:
                    items = dict(value)
                    value.clear()
                    for k, v in items.items():
                        mk = k if k in keep or len(k) != 18 else mask(k)
                        v = scrub(v, keep) if isinstance(v, str) else v
                        value[mk] = value[mk] + v if mk in value and isinstance(v, int) else v
                continue
            for sub in (value if _repeated(fd) else [value]):
                mask_counterparts(sub, keep)
        elif fd.type != FieldDescriptor.TYPE_STRING or _repeated(fd) or not value:
            continue
        elif fd.name.endswith("id_number"):
            if value not in keep:
                setattr(msg, fd.name, mask(value))
                hidden.add(fd.name[:-len("id_number")])
        elif not fd.name.endswith(("name", "_id")):  # a generated id (settlement_id, transfer_id) is no text
            setattr(msg, fd.name, scrub(value, keep))
    for prefix in hidden:
        if (name := getattr(msg, f"{prefix}name", None)) and isinstance(name, str):
            setattr(msg, f"{prefix}name", mask_name(name))


KeepFn = Callable[[Any, Any], frozenset[str]]


def named(request: Any, response: Any = None) -> frozenset[str]:
    """The id numbers a request names: its `*id_number` fields and its `id_numbers` list, as they are
    stored and answered (a check character written `x` is `X`: `normalise_id_number`)."""
    out = {v for fd, v in request.ListFields()
           if fd.type == FieldDescriptor.TYPE_STRING and fd.name.endswith("id_number") and not _repeated(fd)}
    out.update(getattr(request, "id_numbers", ()))
    return frozenset(normalise_id_number(v) for v in out)


# Every method's masking decision, for a caller that is not PRIVILEGED: which id numbers stay clear
# (KeepFn; the rest are masked as `mask_counterparts` says), or SHOWN (None: the answer goes out as it
# is, for the reason given). A method missing here is masked by `named` (tests/test_security_sweep.py
# fails until it is decided).
SHOWN = None
_SETTLEMENT_ANSWER = SHOWN  # the router's settlement answers go to the institution that billed the patient
_PRIVILEGED_ONLY = SHOWN  # only PRIVILEGED callers may call it: the answer is never masked anyway
_ROUTER_OWN = SHOWN  # the router answers institutions itself (a 1101 masks the helpers; settlements: above)


def _patients(req: Any, resp: Any) -> frozenset[str]:
    return frozenset(s.result.patient_id_number for s in resp.settlements)


MASKED: dict[str, KeepFn | None] = {
    **{m: SHOWN for m in _COMMON},  # health, reflection: no person
    **{f"/{REGISTRY}/{m}": named for m in (
        # look-ups and listings: the person asked about
        "GetPerson", "GetPersons", "GetAccount", "ListBindings", "ListProxyBindings", "Diagnose",
        "ListConsumptionRecords", "GetFamilyAccount",
        # the list for the tax bureau: the payer or the payee asked about (a year's list: neither)
        "ListResidentPremiums",
        # acts at the counter: the people the act names (an answer lists the whole family, the ended
        # bindings of a move or a death, a premium's other party and contributors)
        "EnrollPerson", "UpdatePersonStatus", "CreditAccount", "BindMutualAid", "UnbindMutualAid",
        "BindProxy", "RemoveProxy", "MovePoolingRegion", "RecordDeath",
        "CreateFamilyAccount", "InviteMember", "RespondToInvitation", "RemoveMember", "LeaveFamilyAccount",
        "DissolveFamilyAccount", "TransferIntoFamilyAccount", "WithdrawContribution",
        "PayResidentPremium", "CancelResidentPremium")},
    # the patient stays clear (the router checks a 2208 names the settlement's patient); the helper not
    f"/{REGISTRY}/GetSettlement": lambda req, resp: frozenset({resp.result.patient_id_number}),
    f"/{REGISTRY}/GetSettlements": _patients,
    **{f"/{REGISTRY}/{m}": _SETTLEMENT_ANSWER for m in (
        "PreSettle", "Settle", "SettleBatch", "ReverseSettlement", "CancelRequest", "UndoReversal")},
    **{f"/{REGISTRY}/{m}": _PRIVILEGED_ONLY for m in (
        "DebitForTransfer", "DebitForTransferBatch", "RefundTransfer", "CreditLotReturn", "NoteWallet")},
    # the wallet: the owner, sender or recipient asked about; a transfer looked up by its id: no one
    **{f"/{WALLET}/{m}": named for m in (
        "GetWallet", "GetTransfer", "ListIncomingTransfers", "ListOutgoingTransfers", "ListWalletEntries",
        "OpenWallet", "CreateTransfer", "AcceptTransfer", "PayPremium", "EndWalletRelationship",
        "ChangeUsePlace", "GetClearingReport")},
    **{f"/{WALLET}/{m}": _PRIVILEGED_ONLY for m in (
        "SpendWallet", "RefundWalletSpend", "ReleaseSenderLots", "EndPersonWalletRelationships", "NoteOwnerStatus",
        "GetWalletBalances", "RunMaintenance")},
    **{f"/{ROUTER}/{m}": _ROUTER_OWN for m in (
        "QueryPerson", "PreSettle", "Settle", "ReverseSettlement", "Undo", "QuerySettlement", "ReconcileTotals",
        "ReconcileDetails", "GetDownstreamHealth")},
}


def masked(method: str, request: Any, response: Any) -> Any:
    keep = MASKED.get(method, named)
    if keep is None:
        return response
    out = type(response)()
    out.CopyFrom(response)
    mask_counterparts(out, keep(request, response) - {""})
    return out


# --- the interceptor -------------------------------------------------------------------------------

# (method, request, context, caller) → None, or raises DomainError; runs before the handler.
RequestCheck = Callable[[str, Any, grpc.aio.ServicerContext, "Caller | None"], Awaitable[None]]


def unauthenticated(reason: str, message: str, **meta: str) -> errors.DomainError:
    return errors.DomainError(grpc.StatusCode.UNAUTHENTICATED, reason, message, dict(meta))


def denied(reason: str, message: str, **meta: str) -> errors.DomainError:
    return errors.DomainError(grpc.StatusCode.PERMISSION_DENIED, reason, message, dict(meta))


class AuthzInterceptor(grpc.aio.ServerInterceptor):
    """`policy` None: no identity checks (plaintext), only `request_check` (the router's institution
    tokens and rate limits). Otherwise method → allowed roles, default deny, masking as above."""

    def __init__(self, policy: Mapping[str, frozenset[str]] | None, *,
                 request_check: RequestCheck | None = None, request_check_methods: Iterable[str] = ()) -> None:
        self.policy = policy
        self.request_check = request_check
        self.request_check_methods = frozenset(request_check_methods)

    def _admit(self, method: str, context: grpc.aio.ServicerContext) -> Caller | None:
        """The caller, or raises the refusal. None when no policy applies (plaintext)."""
        if self.policy is None:
            return None
        caller = caller_of(context)
        if not caller.identity:
            raise unauthenticated("PEER_UNAUTHENTICATED", "a client certificate from the medaid CA is required")
        allowed = self.policy.get(method)
        if allowed is None or not (ANY in allowed or caller.role in allowed):
            raise denied("CALLER_NOT_ALLOWED", f"{caller.identity} may not call {method}",
                         method=method, caller=caller.identity)
        return caller

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        check = self.request_check if method in self.request_check_methods else None
        mask_it = MASKED.get(method, named) is not None and self.policy is not None

        async def refuse(context: grpc.aio.ServicerContext, exc: errors.DomainError) -> None:
            tracing.note_reason(exc.reason)
            log.info("refused", extra={"fields": {"method": method, "reason": exc.reason, "code": exc.code.name,
                                                  "caller": caller_of(context).identity, "peer": context.peer()}})
            await context.abort_with_status(exc.to_status())

        if handler.unary_unary is not None:
            # grpc's stubs type a handler's behaviour for the blocking server; on a grpc.aio server it
            # is a coroutine function that takes the aio context.
            behavior = cast(Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], handler.unary_unary)

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    caller = self._admit(method, context)
                    if check is not None:
                        await check(method, request, context, caller)
                except errors.DomainError as exc:
                    await refuse(context, exc)
                    raise AssertionError("unreachable") from None
                response = await behavior(request, context)
                if mask_it and response is not None and caller is not None and not caller.privileged:
                    return masked(method, request, response)
                return response

            return grpc.unary_unary_rpc_method_handler(unary_unary, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)
        # Streaming methods (health Watch, reflection): admission only.
        kind = "unary_stream" if handler.unary_stream is not None else \
            "stream_unary" if handler.stream_unary is not None else "stream_stream"
        behavior = getattr(handler, kind)
        if inspect.isasyncgenfunction(behavior):
            async def gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    self._admit(method, context)
                except errors.DomainError as exc:
                    await refuse(context, exc)
                async for item in behavior(request, context):
                    yield item

            wrapped: Any = gen
        else:
            async def coro(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    self._admit(method, context)
                except errors.DomainError as exc:
                    await refuse(context, exc)
                return await behavior(request, context)

            wrapped = coro
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        wrapped_handler: grpc.RpcMethodHandler = factory(wrapped, request_deserializer=handler.request_deserializer,
                                                         response_serializer=handler.response_serializer)
        return wrapped_handler

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self._wrap(handler_call_details.method, handler)


def setup(role: str, cfg: Mapping[str, Any], identity: str = "") -> tuple[TlsConfig | None,
                                                                        list[grpc.aio.ServerInterceptor]]:
    """At a service's start: its TLS identity (`identity`, default `role`: the certificate `--tls-dir`
    gives it, or the tls_* files) for the server and for every channel it opens, and the interceptors
    its server installs: none in plaintext. A province's registry is `registry-<province>`: the wallet
    lets it act for its own province only."""
    config = tls.from_config(identity or role, cfg)
    rpc.set_tls(config)
    return config, ([AuthzInterceptor(POLICIES[role])] if config is not None and role in POLICIES else [])
