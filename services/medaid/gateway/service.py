"""The national JSON gateway: envelope in, router over gRPC, envelope out.

One request = one national message. The steps, each of which can only answer infcode -1 and
write nothing when it fails:

1. signature (when a key is configured), 2. JSON (numbers → Decimal, never float),
3. the envelope schema, 4. infno → that transaction's input schema (amounts → exact fen),
5. the institution's credential (when credentials are required: `Gateway.check_credential`),
6. sign_no (when sign-in is required), 7. msgid replay: a message seen before with the same
content gets the first answer byte for byte; the same msgid with other content is refused.

Then the transaction is dispatched to the router (msgid passed through as the idempotency key end
to end), its answer is translated into the national output, and the whole answer is stored under
the msgid (`gw:{msg:<msgid>}`, SET NX, so concurrent duplicates agree on the first). Refusals
are not stored, as in the registries: a resend after fixing the cause is judged afresh.

The keys the gateway writes are that answer store, sign-ins (`gw:{sign:<sign_no>}`) and files
(`gw:{file:<file_qury_no>}`: 9101 uploads and 3202 result files, files.py). A 9102 download reads
only: it is answered with the file itself (or the envelope of its refusal) and is not stored.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from medaid.common import clearing, errors, metrics, rpc, tracing
from medaid.common import msgid as msgids
from medaid.common.clock import Clock
from medaid.common.logs import answer_level, event
from medaid.common.redis_client import ping
from medaid.common.transport import store_error
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import text
from medaid.gateway import fields, reconcile, wire
from medaid.gateway import schemas as s
from medaid.gateway import schemas_reconcile as rs
from medaid.gateway.answers import Answer, GatewayError, fmt_ms
from medaid.gateway.reasons import OUTCOME_ZH, PERSON_WALLET_ZH, operator_message, zh
from medaid.gateway.signing import SignatureInvalid, Verifier
from medaid.router.security import InstitutionGate
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc

log = logging.getLogger("medaid.gateway")

SERVICE = pb.DESCRIPTOR.services_by_name["RouterService"].full_name

# 险种类型 (insutype) and 人员参保状态 (psn_insu_stas) codes of the national dictionary.
INSUTYPE = {cpb.INSURANCE_TYPE_EMPLOYEE: "310", cpb.INSURANCE_TYPE_FLEXIBLE: "310",
            cpb.INSURANCE_TYPE_RESIDENT: "390"}
PSN_INSU_STAS = {cpb.PERSON_STATUS_ACTIVE: "1", cpb.PERSON_STATUS_SUSPENDED: "2",
                 cpb.PERSON_STATUS_TERMINATED: "4", cpb.PERSON_STATUS_DECEASED: "4"}  # a death ends it: 终止
PSN_CERT_TYPE_ID_CARD = "01"  # 居民身份证(户口簿)

# The answer store's fingerprint of a message undone by a 2601: a resend of it is refused.
CANCELLED = "cancelled"

# The HTTP request's `Authorization` header (an institution's bearer token), passed on to the router
# with each call made for that request; the router checks it (medaid.router.security).
_AUTHORIZATION: contextvars.ContextVar[str | None] = contextvars.ContextVar("authorization", default=None)
# What a transaction's handler adds to the message's one "answered" log line (who, which settlement).
_NOTED: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("answered_fields", default=None)


def _note(**fields: Any) -> None:
    noted = _NOTED.get()
    if noted is not None:
        noted.update(fields)


def _helper_pays(pays: Iterable[pb.HelperPay], sign: int = 1) -> list[s.HelperPayOut]:
    """Every helper of a 共济 share as the answer lists them (`sign` -1: a refund, negative like its total)."""
    return [s.HelperPayOut(psn_no=h.psn_no, amount=sign * h.amount_fen, balc=h.balc_fen) for h in pays]


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


# 9002: mark a sign-in of this institution signed out, once; the time it was (nil: no such sign-in).
_SIGN_OUT = """
if redis.call('HGET', KEYS[1], 'fixmedins_code') ~= ARGV[1] then return false end
redis.call('HSETNX', KEYS[1], 'out', ARGV[2])
return redis.call('HGET', KEYS[1], 'out')
"""

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
        self._tokens = InstitutionGate(self.settings.tokens, authenticate=True, limiter=None)
        self._handlers: dict[str, Handler] = {
            "9001": self._sign_in, "9002": self._sign_out, "1101": self._person, "2206": self._presettle,
            "2207": self._settle, "2208": self._reverse, "2601": self._undo, "5203": self._query,
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
        _AUTHORIZATION.set(next((v for k, v in headers.items() if k.lower() == "authorization"), None))
        _NOTED.set({})
        try:
            if self.settings.verifier is not None:
                try:
                    self.settings.verifier.verify(headers, body, received_ms // 1000)
                except SignatureInvalid as exc:
                    raise GatewayError("SIGNATURE_INVALID", str(exc)) from None
            large = len(body) >= LARGE_BODY_BYTES
            try:
                raw = await asyncio.to_thread(wire.loads, body, charset) if large else wire.loads(body, charset)
            except PydanticCustomError:
                raise GatewayError("INVALID_JSON") from None
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
                await self.check_credential(env, signing_out)
            if self.settings.require_sign_in and env.infno != "9001":
                await self._check_sign_no(env, signing_out)
            if isinstance(inp, rs.Input9102):  # a read, answered with the file: nothing to replay or store
                return await reconcile.download(self, env, inp, received_ms)
            fp = await asyncio.to_thread(self._fingerprint, env, inp) if large else self._fingerprint(env, inp)
            key = msgids.scoped(env.fixmedins_code, env.msgid)  # a msgid is the institution's own key
            first = await self._first_answer(key, fp)
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
            stored = await self._store(key, fp, answer, ttl, env.infno)
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
            self._log(infno, msgid, -1, "INTERNAL_ERROR", received_ms)
            return Answer(self._answer(-1, received_ms, output={},
                                       err_msg=operator_message("INTERNAL_ERROR")), -1, "INTERNAL_ERROR")

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
            "ms": self.clock.now_ms() - received_ms, **(_NOTED.get() or {})}})
        call = tracing.current()
        if call is not None:  # a message that came over HTTP (web.py started its trace)
            call.reason = reason
            # infno is the caller's text: only the transactions served are label values (bounded series).
            label = infno if infno in s.INPUTS else "other" if infno else "-"
            metrics.gateway_message(label, infcode, reason, time.perf_counter() - call.started)

    # --- msgid: the idempotency key ----------------------------------------------------------------

    @staticmethod
    def _fingerprint(env: s.Envelope, inp: BaseModel) -> str:
        content = {"infno": env.infno, "fixmedins_code": env.fixmedins_code,
                   "mdtrtarea_admvs": env.mdtrtarea_admvs, "insuplc_admdvs": env.insuplc_admdvs,
                   "input": inp.model_dump(mode="json")}
        return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    @staticmethod
    def answer_key(key: str) -> str:
        """The answer store of a message; `key` is its msgid scoped by institution (medaid.common.msgid)."""
        return f"gw:{{msg:{key}}}"

    @staticmethod
    def sign_key(sign_no: str) -> str:
        return f"gw:{{sign:{sign_no}}}"

    def _decode_stored(self, msgid: str, raw: bytes | str, fp: str) -> bytes:
        stored = json.loads(raw)
        if stored["fp"] == CANCELLED:
            raise GatewayError("ORIGINAL_CANCELLED", f"msgid {msgid[-30:]} 已被2601冲正({stored['by']})")
        if stored["fp"] != fp:
            raise GatewayError("IDEMPOTENCY_KEY_REUSED", f"msgid {msgid}")
        return str(stored["answer"]).encode("utf-8")

    async def _first_answer(self, msgid: str, fp: str) -> bytes | None:
        raw = await self.redis.get(self.answer_key(msgid))
        return None if raw is None else self._decode_stored(msgid, raw, fp)

    async def _store(self, msgid: str, fp: str, answer: bytes, ttl_s: int, infno: str) -> bytes:
        value = json.dumps({"fp": fp, "infno": infno, "answer": answer.decode("utf-8")}, ensure_ascii=False)
        if await self.redis.set(self.answer_key(msgid), value, nx=True, ex=ttl_s or None):
            return answer
        # A concurrent duplicate answered first: everyone gets that answer.
        raw = await self.redis.get(self.answer_key(msgid))
        return answer if raw is None else self._decode_stored(msgid, raw, fp)

    # --- institution credentials -----------------------------------------------------------------

    async def check_credential(self, env: s.Envelope, signing_out: str = "") -> None:
        """Which institution sends this? The router trusts the gateway's certificate to act for any
        fixmedins_code, so without a credential anyone who reaches the gateway could settle as any
        hospital. Accepted, in this order: a request signature (checked before the message was read),
        a bearer token from `--institution-tokens` naming this fixmedins_code (the router checks it
        again), or, on every call but 9001, a sign_no from this institution's 9001, which itself
        needed a signature or a token."""
        if self.settings.verifier is not None:
            return
        header = _AUTHORIZATION.get()
        if header is not None:
            try:
                code = self._tokens.by_token(header)
            except errors.DomainError as exc:
                raise GatewayError(exc.reason) from None
            if code != env.fixmedins_code:
                raise GatewayError("INSTITUTION_MISMATCH", f"令牌属于 {code}")
            return
        if env.infno != "9001" and env.sign_no:
            await self._check_sign_no(env, signing_out)
            return
        raise GatewayError("CREDENTIAL_REQUIRED", "9001" if env.infno == "9001" else "")

    # --- 9001 sign-in ------------------------------------------------------------------------------

    async def _check_sign_no(self, env: s.Envelope, signing_out: str = "") -> None:
        """The envelope's sign_no is this institution's and not signed out (9002), unless this is the
        9002 that signs it out (its resend must be answered)."""
        if not env.sign_no:
            raise GatewayError("SIGN_NO_INVALID", "sign_no 为空")
        owner, out = await self.redis.hmget(self.sign_key(env.sign_no), ["fixmedins_code", "out"])
        if owner is None or text(owner) != env.fixmedins_code:
            raise GatewayError("SIGN_NO_INVALID", f"sign_no {env.sign_no[:8]}…")
        if out is not None and env.sign_no != signing_out:
            raise GatewayError("SIGN_NO_INVALID", f"sign_no {env.sign_no[:8]}… 已签退")

    async def _sign_in(self, env: s.Envelope, inp: s.Input9001) -> tuple[BaseModel, list[str]]:
        now = self.clock.now_ms()
        sign_no = secrets.token_hex(15)  # 30 characters: the interface's sign_no is 字符型(30)
        key = self.sign_key(sign_no)
        async with self.redis.pipeline(transaction=True) as p:
            p.hset(key, mapping={"fixmedins_code": env.fixmedins_code, "opter": env.opter,
                                 "opter_no": inp.signIn.opter_no, "at": now})
            p.expire(key, self.settings.sign_ttl_s)
            await p.execute()
        event(log, "signed in", fixmedins=env.fixmedins_code, opter=inp.signIn.opter_no or env.opter)
        return s.Output9001(signinoutb=s.SignInOut(sign_time=fmt_ms(now, "%Y-%m-%d %H:%M:%S"), sign_no=sign_no)), []

    async def _sign_out(self, env: s.Envelope, inp: s.Input9002) -> tuple[BaseModel, list[str]]:
        """9002: the sign_no no longer stands for the institution. Signing out a sign_no already signed
        out answers the first sign-out's time (a HIS that resends under a new msgid is not refused)."""
        no = inp.signOut.sign_no
        out = await self.redis.eval(_SIGN_OUT, 1, self.sign_key(no), env.fixmedins_code, self.clock.now_ms())
        if out is None:
            raise GatewayError("SIGN_NO_INVALID", f"sign_no {no[:8]}…")
        event(log, "signed out", fixmedins=env.fixmedins_code, opter=inp.signOut.opter_no or env.opter)
        return s.Output9002(signoutoutb=s.SignOutOut(sign_time=fmt_ms(int(out), "%Y-%m-%d %H:%M:%S"))), []

    # --- the router ----------------------------------------------------------------------------------

    async def _call(self, method: str, request: Any, *, call: Any = None) -> Any:
        """The router's `method` (or `call`, a multicallable of the same method), its refusals as
        GatewayErrors."""
        try:
            auth = _AUTHORIZATION.get()
            return await (call or getattr(self._router, method))(request, timeout=self.settings.deadline_s,
                                                                 metadata=(("authorization", auth),) if auth else None)
        except grpc.aio.AioRpcError as exc:
            info = errors.error_info(exc)
            if info is None:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    # gRPC's own words here name the router's address: for the log, not for the caller.
                    log.warning("router not answering", extra={"fields": {
                        "code": exc.code().name, "error": exc.details() or ""}})
                    raise GatewayError("ROUTER_UNAVAILABLE", retryable=True) from None
                raise GatewayError("DOWNSTREAM_ERROR", exc.code().name, detail=exc.details() or "") from None
            meta = dict(info.metadata)
            where = _wire_field(meta.get("field", ""))
            raise GatewayError(info.reason, where, detail=exc.details() or "", metadata=meta,
                               retryable=exc.code() == grpc.StatusCode.UNAVAILABLE) from None

    @staticmethod
    def _institution(env: s.Envelope) -> pb.Institution:
        return pb.Institution(fixmedins_code=env.fixmedins_code, mdtrtarea_admvs=env.mdtrtarea_admvs)

    # --- 1101 ------------------------------------------------------------------------------------------

    async def _person(self, env: s.Envelope, inp: s.Input1101) -> tuple[BaseModel, list[str]]:
        d = inp.data
        if d.mdtrt_cert_no and d.mdtrt_cert_type in ("", "02"):
            id_number = d.mdtrt_cert_no  # 02: 居民身份证号
        elif d.certno and d.psn_cert_type in ("", PSN_CERT_TYPE_ID_CARD):
            id_number = d.certno  # the person's 居民身份证号 given beside an 01/03 credential
        elif d.certno:  # certno is another document's number: it is psn_cert_type that is not served
            raise GatewayError("UNSUPPORTED_CERT_TYPE", f"input.data.psn_cert_type {d.psn_cert_type}")
        else:
            raise GatewayError("UNSUPPORTED_CERT_TYPE", f"input.data.mdtrt_cert_type {d.mdtrt_cert_type}")
        resp = await self._call("QueryPerson", pb.QueryPersonRequest(
            msgid=env.msgid, institution=self._institution(env), mdtrt_cert_type="02", mdtrt_cert_no=id_number,
            psn_name=d.psn_name, insuplc_admdvs=env.insuplc_admdvs))
        b = resp.baseinfo
        out = s.Output1101(
            baseinfo=s.BaseInfoOut(psn_no=b.psn_no, psn_cert_type=PSN_CERT_TYPE_ID_CARD, certno=b.certno,
                                   psn_name=b.psn_name, gend=b.gend, naty="", brdy=b.brdy, age=b.age),
            insuinfo=[s.InsuInfoOut(
                balc=i.balc_fen, insutype=INSUTYPE.get(i.insutype, ""), psn_type="",
                psn_insu_stas=PSN_INSU_STAS.get(i.psn_insu_stas, ""), psn_insu_date="", paus_insu_date="",
                cvlserv_flag="", insuplc_admdvs=i.insuplc_admdvs, emp_name="",
                medaid_ext=s.InsuInfoExt(wallet_opened=i.wallet_opened, wallet_balc=i.wallet_balc_fen,
                                         wallet_use_place_admdvs=i.wallet_use_place_admdvs,
                                         wallet_reason=i.wallet_reason,
                                         wallet_msg=PERSON_WALLET_ZH.get(i.wallet_reason, zh(i.wallet_reason))
                                         if i.wallet_reason else ""),
            ) for i in resp.insuinfo],
            idetinfo=[],
            medaid_ext=s.PersonExt(mulaid_helpers=[
                s.MulaidHelperOut(psn_no=h.psn_no, relation=cpb.Relation.Name(h.relation).removeprefix("RELATION_"))
                for h in resp.helpers]),
        )
        # The front desk reads warn_msg: the wallet part of the answer is unknown.
        unknown = dict.fromkeys(i.wallet_reason for i in resp.insuinfo if i.wallet_reason)
        return out, [f"{code}: {PERSON_WALLET_ZH.get(code, zh(code))}" for code in unknown]

    # --- 2206 / 2207 ------------------------------------------------------------------------------------

    def _settle_input(self, d: s.Data2207, env: s.Envelope) -> pb.SettleInput:
        return pb.SettleInput(
            psn_no=d.psn_no, insuplc_admdvs=env.insuplc_admdvs, psn_part_amt_fen=d.settled_fen,
            medfee_sumamt_fen=d.medfee_sumamt, acct_used_flag=d.acct_used_flag,
            category=cpb.Category.Value("CATEGORY_" + s.MED_TYPES[d.med_type]), mdtrt_id=d.mdtrt_id,
            insutype=d.insutype, med_type=d.med_type, fulamt_ownpay_amt_fen=d.fulamt_ownpay_amt or 0,
            overlmt_selfpay_fen=d.overlmt_selfpay or 0, preselfpay_amt_fen=d.preselfpay_amt or 0,
            inscp_scp_amt_fen=d.inscp_scp_amt or 0)

    def _setlinfo(self, r: pb.SetlInfo, insutype: str, med_type: str, env: s.Envelope
                  ) -> tuple[s.Output2207, list[str]]:
        """setlinfo of a 2206 / 2207 and, from the settlement's record, of a 5203: one format, so that a
        5203 answers field by field what the 2207 answered."""
        if r.acct_pay_fen + r.wallet_pay_fen + r.acct_mulaid_pay_fen + r.psn_cash_pay_fen != r.psn_part_amt_fen:
            raise AssertionError(f"settlement {r.setl_id} does not add up")
        # warn_msg: why part of the bill falls to cash (no 共济, no wallet), for the front desk.
        warnings = [operator_message(code) for code in (r.mulaid_reason, r.wallet_reason)
                    if code and r.psn_cash_pay_fen > 0]
        info = s.SetlInfoOut(
            setl_id=r.setl_id, mdtrt_id=r.mdtrt_id, psn_no=r.psn_no, psn_cert_type=PSN_CERT_TYPE_ID_CARD,
            certno=r.psn_no, insutype=insutype, med_type=med_type,
            setl_time=fmt_ms(r.setl_time_unix_ms, "%Y-%m-%d %H:%M:%S") if r.setl_time_unix_ms else "",
            medfee_sumamt=r.medfee_sumamt_fen, fulamt_ownpay_amt=r.fulamt_ownpay_amt_fen,
            overlmt_selfpay=r.overlmt_selfpay_fen, preselfpay_amt=r.preselfpay_amt_fen,
            inscp_scp_amt=r.inscp_scp_amt_fen, fund_pay_sumamt=0, hifp_pay=0,
            psn_part_amt=r.psn_part_amt_fen, acct_pay=r.acct_pay_fen, acct_mulaid_pay=r.acct_mulaid_pay_fen,
            psn_cash_pay=r.psn_cash_pay_fen, hosp_part_amt=0, balc=r.balc_fen,
            medins_setl_id=env.msgid if r.setl_id else "", clr_optins=clearing.clr_optins(r.insuplc_admdvs),
            clr_way="", clr_type=clearing.clr_type(med_type),
            wallet_pay=r.wallet_pay_fen,
            medaid_ext=s.SetlInfoExt(
                mulaid_psn_no=r.mulaid_helper_psn_no, mulaid_helpers=_helper_pays(r.mulaid_helpers),
                mulaid_reason=r.mulaid_reason,
                mulaid_msg=zh(r.mulaid_reason) if r.mulaid_reason else "", wallet_reason=r.wallet_reason,
                wallet_msg=zh(r.wallet_reason) if r.wallet_reason else "", insuplc_admdvs=r.insuplc_admdvs,
                acct_pay_includes_mulaid=False),
        )
        return s.Output2207(setlinfo=info, setldetail=[]), warnings

    async def _settle_call(self, method: str, request: Any, d: s.Data2207) -> Any:
        """PreSettle / Settle. The router names the amount it settles psn_part_amt; a message without
        that extension sent it as medfee_sumamt, and a refusal of it names the field the message has."""
        try:
            return await self._call(method, request)
        except GatewayError as exc:
            if exc.context == "psn_part_amt" and d.psn_part_amt is None:
                exc.context = "medfee_sumamt"
            raise

    async def _presettle(self, env: s.Envelope, inp: s.Input2207) -> tuple[BaseModel, list[str]]:
        resp = await self._settle_call("PreSettle", pb.PreSettleRequest(
            msgid=env.msgid, institution=self._institution(env), input=self._settle_input(inp.data, env)), inp.data)
        return self._setlinfo(resp.setlinfo, inp.data.insutype, inp.data.med_type, env)

    async def _settle(self, env: s.Envelope, inp: s.Input2207) -> tuple[BaseModel, list[str]]:
        resp = await self._settle_call("Settle", pb.SettleRequest(
            msgid=env.msgid, institution=self._institution(env), input=self._settle_input(inp.data, env)), inp.data)
        _note(id_number=inp.data.psn_no, setl_id=resp.setlinfo.setl_id)
        return self._setlinfo(resp.setlinfo, inp.data.insutype, inp.data.med_type, env)

    # --- 2208 ------------------------------------------------------------------------------------------

    async def _reverse(self, env: s.Envelope, inp: s.Input2208) -> tuple[BaseModel, list[str]]:
        d = inp.data
        resp = await self._call("ReverseSettlement", pb.ReverseSettlementRequest(
            msgid=env.msgid, institution=self._institution(env), setl_id=d.setl_id, psn_no=d.psn_no,
            insuplc_admdvs=env.insuplc_admdvs, mdtrt_id=d.mdtrt_id))
        _note(id_number=d.psn_no, setl_id=d.setl_id)
        o = resp.original
        if resp.acct_refund_fen + resp.wallet_refund_fen + resp.mulaid_refund_fen + o.setlinfo.psn_cash_pay_fen \
                != o.setlinfo.psn_part_amt_fen:
            raise AssertionError(f"reversal {resp.reversal_id} does not add up")
        out = s.Output2208(setlinfo=s.ReversalOut(
            setl_id=resp.reversal_id, init_setl_id=resp.setl_id, mdtrt_id=o.setlinfo.mdtrt_id or d.mdtrt_id,
            psn_no=d.psn_no, psn_cert_type=PSN_CERT_TYPE_ID_CARD, certno=d.psn_no, insutype=o.insutype,
            med_type=o.med_type,
            setl_time=fmt_ms(resp.reversed_at_unix_ms or self.clock.now_ms(), "%Y-%m-%d %H:%M:%S"),
            medfee_sumamt=-o.setlinfo.medfee_sumamt_fen, fulamt_ownpay_amt=-o.setlinfo.fulamt_ownpay_amt_fen,
            overlmt_selfpay=-o.setlinfo.overlmt_selfpay_fen, preselfpay_amt=-o.setlinfo.preselfpay_amt_fen,
            inscp_scp_amt=-o.setlinfo.inscp_scp_amt_fen, fund_pay_sumamt=0, hifp_pay=0,
            psn_part_amt=-o.setlinfo.psn_part_amt_fen, acct_pay=-resp.acct_refund_fen,
            acct_mulaid_pay=-resp.mulaid_refund_fen, psn_cash_pay=-o.setlinfo.psn_cash_pay_fen, hosp_part_amt=0,
            balc=resp.balc_fen, medins_setl_id=env.msgid, clr_optins=clearing.clr_optins(o.setlinfo.insuplc_admdvs),
            clr_way="", clr_type=clearing.clr_type(o.med_type),
            wallet_pay=-resp.wallet_refund_fen,
            medaid_ext=s.ReversalExt(mulaid_psn_no=resp.mulaid_helper_psn_no,
                                     mulaid_helpers=_helper_pays(resp.mulaid_helpers, sign=-1))),
            setldetail=[])
        return out, []

    # --- 2601 冲正 ----------------------------------------------------------------------------------

    async def _undo(self, env: s.Envelope, inp: s.Input2601) -> tuple[BaseModel, list[str]]:
        d = inp.data
        # A msgid this gateway answered as another transaction (a 1101, 2206, 5203 …) is no 2207 or 2208
        # that never arrived: refused before the router would void it and so block its own resend.
        raw = await self.redis.get(self.answer_key(msgids.scoped(env.fixmedins_code, d.omsgid)))
        stored = json.loads(raw) if raw is not None else {}
        kind = stored.get("infno", "")
        if kind and kind != d.oinfno:
            raise GatewayError("ORIGINAL_MISMATCH", f"omsgid {d.omsgid} 是 {kind} 交易,不是 {d.oinfno}")
        resp = await self._call("Undo", pb.UndoRequest(
            msgid=env.msgid, institution=self._institution(env), psn_no=d.psn_no,
            insuplc_admdvs=env.insuplc_admdvs, omsgid=d.omsgid, oinfno=d.oinfno))
        # The original's stored answer (if the gateway answered it, and the answer was lost on the way)
        # must not be replayed as if it still stood: a resend of it is refused from now on, naming the
        # 2601 that cancelled it; a later 2601 of it changed nothing and leaves that record as it is.
        if stored.get("fp") != CANCELLED:
            value = json.dumps({"fp": CANCELLED, "by": env.msgid, "answer": ""})
            await self.redis.set(self.answer_key(msgids.scoped(env.fixmedins_code, d.omsgid)), value,
                                 ex=self.settings.msgid_ttl_s or None)
        _note(omsgid=d.omsgid, oinfno=d.oinfno, outcome=resp.outcome)
        warnings = [] if resp.outcome in ("REVERSED", "RESTORED") else [
            f"{resp.outcome}: {OUTCOME_ZH.get(resp.outcome, '')}"]
        return s.Output2601(medaid_ext=s.UndoExt(
            outcome=resp.outcome, setl_id=resp.setl_id, acct_pay=resp.acct_pay_fen, wallet_pay=resp.wallet_pay_fen,
            acct_mulaid_pay=resp.acct_mulaid_pay_fen, mulaid_psn_no=resp.mulaid_helper_psn_no,
            mulaid_helpers=_helper_pays(resp.mulaid_helpers))), warnings

    # --- 5203 结算信息查询 ------------------------------------------------------------------------------

    async def _query(self, env: s.Envelope, inp: s.Input5203) -> tuple[BaseModel, list[str]]:
        d = inp.data
        resp = await self._call("QuerySettlement", pb.QuerySettlementRequest(
            msgid=env.msgid, institution=self._institution(env), psn_no=d.psn_no,
            insuplc_admdvs=env.insuplc_admdvs, setl_id=d.setl_id, mdtrt_id=d.mdtrt_id))
        e = resp.settlement
        r = e.setlinfo
        out, _ = self._setlinfo(r, e.insutype, e.med_type, env)
        out.setlinfo.medins_setl_id = e.msgid
        out.setlinfo.refd_setl_flag = "1" if e.init_setl_id else "0"  # a refund record names what it refunded
        return s.Output5203(setlinfo=out.setlinfo, setldetail=[], medaid_ext=s.QueryExt(
            setl_stas=e.state, reversal_id=e.reversal_id,
            reversed_time=fmt_ms(e.reversed_at_unix_ms, "%Y-%m-%d %H:%M:%S") if e.reversed_at_unix_ms else "",
            setl_ids=list(resp.setl_ids), init_setl_id=e.init_setl_id)), []

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
