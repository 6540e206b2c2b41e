"""The national JSON gateway: envelope in, router over gRPC, envelope out.

One request = one national message. The steps, each of which can only answer infcode -1 and
write nothing when it fails:

1. signature (when a key is configured), 2. JSON (numbers → Decimal, never float),
3. the envelope schema, 4. infno → that transaction's input schema (amounts → exact fen),
5. the institution's credential (when credentials are required: `credentials.check_credential`),
6. sign_no (when sign-in is required), 7. msgid replay: a message seen before with the same
content gets the first answer byte for byte; the same msgid with other content is refused.

Then the transaction is dispatched to the router (msgid passed through as the idempotency key end
to end), its answer is translated into the national output, and the whole answer is stored under
the msgid (`gw:{msg:<msgid>}`, SET NX, so concurrent duplicates agree on the first:
answer_store.py). Refusals are not stored, as in the registries: a resend after fixing the cause is
judged afresh.

This module reads, checks, dispatches and answers a message, and calls the router; the handlers of
the transactions are in transactions.py (1101, 2206/2207, 2208, 2601, 5203), credentials.py (9001,
9002, and the credential checks) and reconcile.py (3201, 3202, 9101, 9102).

The keys the gateway writes are that answer store, sign-ins (`gw:{sign:<sign_no>}`) and files
(`gw:{file:<file_qury_no>}`: 9101 uploads and 3202 result files, files.py). A 9102 download reads
only: it is answered with the file itself (or the envelope of its refusal) and is not stored.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from medaid.common import errors, metrics, rpc, tracing
from medaid.common import msgid as msgids
from medaid.common.clock import Clock
from medaid.common.logs import answer_level
from medaid.common.redis_client import ping
from medaid.common.transport import store_error
from medaid.gateway import answer_store, credentials, fields, reconcile, transactions, wire
from medaid.gateway import schemas as s
from medaid.gateway import schemas_reconcile as rs
from medaid.gateway.answers import Answer, GatewayError, fmt_ms
from medaid.gateway.context import AUTHORIZATION, NOTED
from medaid.gateway.reasons import operator_message
from medaid.gateway.signing import SignatureInvalid, Verifier
from medaid.router.security import InstitutionGate
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc

log = logging.getLogger("medaid.gateway")

SERVICE = pb.DESCRIPTOR.services_by_name["RouterService"].full_name


@dataclass
class Settings:
    admdvs: str = "100000"
    require_sign_in: bool = False
    sign_ttl_s: int = 86_400
    msgid_ttl_s: int = 604_800
    deadline_s: float = 10.0
    verifier: Verifier | None = None
    store_timeout_s: float = 0.5  # /healthz: a Redis ping slower than this is DOWN
    # Every call but 9001 must name its institution by a credential (the mTLS profile's default).
    require_credential: bool = False
    tokens: Mapping[str, str] = field(default_factory=dict)  # sha256 hex of a bearer token → fixmedins_code
    file_ttl_s: int = 172_800  # how long a 9101 upload or a 3202 result file is kept (dld_endtime)


def _compact_ms(ms: int) -> str:
    """yyyyMMddHHmmssSSS, as refmsg_time / respond_time are written by the platform."""
    return fmt_ms(ms, "%Y%m%d%H%M%S") + f"{ms % 1000:03d}"


def _wire_field(name: str) -> str:
    """The envelope's name of a field a service named (`amount_fen` → `amount`; the registry's
    `settlement_id` is the envelope's `setl_id`)."""
    return "setl_id" if name == "settlement_id" else name.removesuffix("_fen")


# A 3202 answer lists every mismatch with the platform's figures: a day of a large hospital's
# settlements can pass gRPC's default 4 MiB.
ROUTER_ANSWER_BYTES = 64 * 1024 * 1024
# A message this large (a 9101 upload, an inline 3202 detail), and every 3202 answer, is read,
# checked and written in a worker thread: reading a 640 KiB upload or writing the mismatches of a
# large hospital's day takes a tenth of a second and more, and the gateway's event loop keeps serving
# every other institution meanwhile (Python switches threads every few milliseconds).
LARGE_BODY_BYTES = 64 * 1024

Handler = Callable[[s.Envelope, Any], Awaitable[tuple[BaseModel, list[str]]]]


class Gateway:
    def __init__(self, router_address: str, client: aioredis.Redis | aioredis.RedisCluster, *,
                 clock: Clock | None = None, settings: Settings | None = None) -> None:
        self.clock = clock or Clock()
        self.settings = settings or Settings()
        self.redis = client
        self._channel = rpc.channel(router_address, [SERVICE], max_receive_bytes=ROUTER_ANSWER_BYTES)
        self._router = pb_grpc.RouterServiceStub(self._channel)
        # ReconcileDetails in bytes both ways: a large hospital's 3202 (megabytes each way) is written
        # and read in a worker thread (reconcile.py), not on the event loop.
        self.details_bytes: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(
            f"/{SERVICE}/ReconcileDetails")
        self._health_check = rpc.health_check(self._channel)
        self._seq = itertools.count(secrets.randbelow(10**9))
        self.tokens = InstitutionGate(self.settings.tokens, authenticate=True, limiter=None)
        self._handlers: dict[str, Handler] = {
            "9001": partial(credentials.sign_in, self), "9002": partial(credentials.sign_out, self),
            "1101": partial(transactions.person, self), "2206": partial(transactions.presettle, self),
            "2207": partial(transactions.settle, self), "2208": partial(transactions.reverse, self),
            "2601": partial(transactions.undo, self), "5203": partial(transactions.query, self),
            "3201": partial(reconcile.reconcile_totals, self), "3202": partial(reconcile.reconcile_details, self),
            "9101": partial(reconcile.upload, self),
        }

    async def close(self) -> None:
        await self._channel.close()

    # --- the envelope ----------------------------------------------------------------------------

    def _refmsgid(self, now_ms: int) -> str:
        """inf_refmsgid: this platform's admdvs (6) + yyyyMMddHHmmss (14) + sequence (10)."""
        return f"{self.settings.admdvs}{fmt_ms(now_ms, '%Y%m%d%H%M%S')}{next(self._seq) % 10**10:010d}"

    def _answer(self, infcode: int, received_ms: int, *, output: dict[str, Any], err_msg: str = "",
                warn_msg: str = "") -> bytes:
        now = self.clock.now_ms()
        env = s.ResponseEnvelope(
            infcode=infcode, inf_refmsgid=self._refmsgid(now), refmsg_time=_compact_ms(received_ms),
            respond_time=_compact_ms(now), err_msg=err_msg, warn_msg=warn_msg, cainfo="", signtype="",
            output=output)
        return wire.dumps(env.model_dump()).encode("utf-8")

    async def handle(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        """The answer to one message, in the charset the message was read in (`wire.body_charset`)."""
        charset = wire.body_charset(next((v for k, v in headers.items() if k.lower() == "content-type"), None), body)
        answer = await self._handle(body, headers, charset)
        answer.charset = charset
        return answer

    async def _handle(self, body: bytes, headers: Mapping[str, str], charset: str) -> Answer:
        received_ms = self.clock.now_ms()
        infno = msgid = ""
        AUTHORIZATION.set(next((v for k, v in headers.items() if k.lower() == "authorization"), None))
        NOTED.set({})
        try:
            if self.settings.verifier is not None:
                try:
                    self.settings.verifier.verify(headers, body, received_ms // 1000)
                except SignatureInvalid as exc:
                    raise GatewayError("SIGNATURE_INVALID", str(exc)) from None
            large = len(body) >= LARGE_BODY_BYTES
            try:
                raw = await asyncio.to_thread(wire.loads, body, charset) if large else wire.loads(body, charset)
            except PydanticCustomError as exc:  # its words say where, when there is more to say (wire.NOT_UTF8)
                raise GatewayError("INVALID_JSON", exc.message()) from None
            if not isinstance(raw, dict):
                raise GatewayError("INVALID_ENVELOPE")
            # For the log line: the names as the envelope reads them, in any case.
            named = fields.names_in_any_case(s.Envelope, raw)
            infno, msgid = str(named.get("infno", ""))[:8], str(named.get("msgid", ""))[:40]
            call = tracing.current()
            if call is not None:
                call.request_id = msgid
            try:
                env = s.Envelope.model_validate(raw)
            except ValidationError as exc:
                raise GatewayError(*wire.first_error(exc)) from None
            schema = s.INPUTS.get(env.infno)
            if schema is None:
                raise GatewayError("UNSUPPORTED_INFNO", f"infno {env.infno}")
            try:
                inp = await asyncio.to_thread(schema.model_validate, env.input) if large \
                    else schema.model_validate(env.input)
            except ValidationError as exc:
                raise GatewayError(*wire.first_error(exc, "input.")) from None
            # A 9002 may name the sign_no it signs out as its credential, also when resent.
            signing_out = inp.signOut.sign_no if isinstance(inp, s.Input9002) else ""
            if self.settings.require_credential:
                await credentials.check_credential(self, env, signing_out)
            if self.settings.require_sign_in and env.infno != "9001":
                await credentials.check_sign_no(self, env, signing_out)
            if isinstance(inp, rs.Input9102):  # a read, answered with the file: nothing to replay or store
                return await reconcile.download(self, env, inp, received_ms)
            fp = await asyncio.to_thread(answer_store.fingerprint, env, inp) if large \
                else answer_store.fingerprint(env, inp)
            key = msgids.scoped(env.fixmedins_code, env.msgid)  # a msgid is the institution's own key
            first = await answer_store.first_answer(self.redis, key, fp)
            if first is not None:
                self._log(infno, msgid, 0, "", received_ms, replayed=True)
                return Answer(first, 0, replayed=True)
            output, warnings = await self._handlers[env.infno](env, inp)

            def written() -> bytes:
                return self._answer(0, received_ms, output=output.model_dump(), warn_msg="; ".join(warnings)[:200])

            answer = await asyncio.to_thread(written) if large or env.infno == "3202" else written()
            # A resent 9001 must not hand out a sign_no that has expired, nor a 9101 or 3202 a file that
            # has: keep their answers no longer (a later resend is judged afresh and makes the file again).
            ttl = self.settings.msgid_ttl_s
            if env.infno == "9001":
                ttl = self.settings.sign_ttl_s
            elif env.infno in ("9101", "3202"):
                ttl = min(ttl or self.settings.file_ttl_s, self.settings.file_ttl_s)
            stored = await answer_store.store(self.redis, key, fp, answer, ttl, env.infno)
            self._log(infno, msgid, 0, "", received_ms, replayed=stored != answer)
            return Answer(stored, 0, replayed=stored != answer)
        except GatewayError as exc:
            return self._refusal(exc, infno, msgid, received_ms)
        except Exception as exc:  # noqa: BLE001 - a bug must still answer in the envelope
            # The gateway's own Redis (msgid answers, sign-ins): the `store unavailable` line every service
            # writes, the exception scrubbed where it is logged (transport.store_error); `answered` follows.
            if store_error(exc) is not None:
                return self._refusal(GatewayError(errors.STORE_UNAVAILABLE, retryable=True), infno, msgid,
                                     received_ms)
            log.exception("unexpected error", extra={"fields": {"infno": infno, "msgid": msgid}})
            # Perhaps after the router did what the message asked (its answer could not be written): the
            # outcome is unknown, and the same msgid's resend is answered with the first outcome.
            return self._refusal(GatewayError("INTERNAL_ERROR", retryable=True), infno, msgid, received_ms)

    def refuse(self, exc: GatewayError) -> Answer:
        """The envelope of a refusal decided before the message could be read (the HTTP layer's)."""
        return self._refusal(exc, "", "", self.clock.now_ms())

    def _refusal(self, exc: GatewayError, infno: str, msgid: str, received_ms: int) -> Answer:
        self._log(infno, msgid, -1, exc.code, received_ms)
        ext = {"reason": exc.code, "detail": exc.detail, "metadata": exc.metadata, "retryable": exc.retryable}
        return Answer(self._answer(-1, received_ms, output={"medaid_ext": ext},
                                   err_msg=operator_message(exc.code, exc.context, exc.metadata)), -1,
                      exc.code)

    def _log(self, infno: str, msgid: str, infcode: int, reason: str, received_ms: int, *,
             replayed: bool = False) -> None:
        log.log(answer_level(reason), "answered", extra={"fields": {
            "infno": infno, "msgid": msgid, "infcode": infcode, "reason": reason, "replayed": replayed,
            "ms": self.clock.now_ms() - received_ms, **(NOTED.get() or {})}})
        call = tracing.current()
        if call is not None:  # a message that came over HTTP (web.py started its trace)
            call.reason = reason
            # infno is the caller's text: only the transactions served are label values (bounded series).
            label = infno if infno in s.INPUTS else "other" if infno else "-"
            metrics.gateway_message(label, infcode, reason, time.perf_counter() - call.started)

    # --- the router ----------------------------------------------------------------------------------

    async def _call(self, method: str, request: Any, message: type[BaseModel], *, call: Any = None,
                    sent_as: Mapping[str, str] | None = None) -> Any:
        """The router's `method` (or `call`, a multicallable of the same method) for a message whose
        `input` is `message` (Input2208 …), its refusals as GatewayErrors: a field the refusal names is
        named by its place in the message (`fields.place`: `input.data.setl_id`); `sent_as` renames a
        field the router names otherwise than the message had it."""
        try:
            auth = AUTHORIZATION.get()
            return await (call or getattr(self._router, method))(request, timeout=self.settings.deadline_s,
                                                                 metadata=(("authorization", auth),) if auth else None)
        except grpc.aio.AioRpcError as exc:
            # Resend with the same msgid after an answer whose outcome is unknown (no answer, or a failure
            # inside the router or a service behind it: it may have settled) or a "not now": one rule,
            # errors.RESEND_CODES. A new msgid there could pay the bill twice.
            retryable = exc.code() in errors.RESEND_CODES
            info = errors.error_info(exc)
            if info is None:
                if exc.code() in errors.NO_ANSWER_CODES:  # down, too slow, or the call cancelled on the way
                    # gRPC's own words here name the router's address: for the log, not for the caller.
                    log.warning("router not answering", extra={"fields": {
                        "code": exc.code().name, "error": exc.details() or ""}})
                    raise GatewayError("ROUTER_UNAVAILABLE", retryable=retryable) from None
                raise GatewayError("DOWNSTREAM_ERROR", exc.code().name, detail=exc.details() or "",
                                   retryable=retryable) from None
            meta = dict(info.metadata)
            named = _wire_field(meta.get("field", ""))
            where = fields.place(message, (sent_as or {}).get(named, named))
            raise GatewayError(info.reason, where, detail=exc.details() or "", metadata=meta,
                               retryable=retryable) from None

    @staticmethod
    def _institution(env: s.Envelope) -> pb.Institution:
        return pb.Institution(fixmedins_code=env.fixmedins_code, mdtrtarea_admvs=env.mdtrtarea_admvs)

    # --- health ------------------------------------------------------------------------------------------

    async def health(self) -> tuple[bool, dict[str, str]]:
        report = {"redis": "DOWN", "router": "DOWN"}
        try:
            await ping(self.redis, self.settings.store_timeout_s)
            report["redis"] = "SERVING"
        except Exception:  # noqa: BLE001 - reported as DOWN
            pass
        try:
            resp = await self._health_check(health_pb2.HealthCheckRequest(), timeout=1.0)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                report["router"] = "SERVING"
        except grpc.aio.AioRpcError:
            pass
        ok = all(v == "SERVING" for v in report.values())
        return ok, {"status": "SERVING" if ok else "NOT_SERVING", **report}
