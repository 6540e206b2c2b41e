"""The province registry's application layer: validates, applies the pure rules, drives Redis.

Settlement is a multi-account flow, so it runs under the patient's fenced lock:
  1. `settle_own.lua` (patient slot, fenced): open the settlement record, debit own account;
  2. wallet step through the `WalletPort` seam;
  3. `helper_debit.lua` (helper slot): debit the helper once per settlement id;
  4. `settle_finish.lua` (patient slot, fenced): record the outcome.
A crash between steps leaves the record in OWN_DONE; the retry of the same request id takes
the lock, finds the record and finishes it (step 3 is idempotent by settlement id).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import redis.asyncio as aioredis

from medaid.common import errors
from medaid.common.batcher import unpack_outcome
from medaid.common.clock import Clock
from medaid.common.errors import DomainError
from medaid.common.idempotency import Idempotency, fingerprint, validate_request_id
from medaid.common.idnumber import mask, parse
from medaid.common.lock import FencedLocks, Lease, LockBusy
from medaid.common.logs import event
from medaid.common.rpc import derived_id
from medaid.common.scripts import ScriptSet
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import decode_hash as _decode
from medaid.common.values import text as _s
from medaid.directory import Directory
from medaid.registry import rules, validate
from medaid.registry.keys import Keys
from medaid.registry.policy import Policy
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.wallet_port import NoWallet, WalletPort

log = logging.getLogger("medaid.registry")

SCRIPTS = [
    "enroll", "credit", "settle_fast", "settle_inline", "settle_own", "helper_debit", "settle_finish", "reverse_begin",
    "helper_refund", "reverse_finish", "bind", "unbind", "proxy_bind", "xfer_debit", "xfer_refund",
    "lot_return",
]
LOCK_TTL_MS = 10_000
MAX_BATCH = 512
LOCK_WAIT_MS = 10_000
FAULT_POINTS = (
    "settle.after_claim",
    "settle.after_own_debit",
    "settle.after_wallet_debit",
    "settle.after_helper_debit",
    "settle.after_finish",
    "reverse.after_begin",
    "reverse.after_helper_refund",
    "reverse.after_finish",
    "transfer.after_debit",
    "transfer.after_refund",
)


class InjectedFault(Exception):
    """Raised by the fault hook (tests only) to simulate a crash between two steps."""



def _enum(enum_type: Any, prefix: str, short: str) -> int:
    return int(enum_type.Value(prefix + short))


class Registry:
    def __init__(
        self,
        client: aioredis.Redis,
        policy: Policy,
        *,
        clock: Clock | None = None,
        wallet: WalletPort | None = None,
        directory: Directory | None = None,
        inline_settle: bool | None = None,
    ) -> None:
        self.r = client
        self.policy = policy
        self.k = Keys(policy.province)
        self.clock = clock or Clock()
        self.wallet: WalletPort = wallet or NoWallet()
        self.directory = directory or Directory(client)
        self.idem = Idempotency(client, self.k.ns)
        self.locks = FencedLocks(client)
        self.lua = ScriptSet(client, "medaid.registry", SCRIPTS)
        # On one Redis a settlement that needs no wallet runs as one atomic script, helper step
        # included (settle_inline.lua); on a cluster the helper's keys live on other nodes, so the
        # patient's fenced lock and the staged scripts are used (settle_fast.lua, then the stages).
        self.inline_settle = not isinstance(client, aioredis.RedisCluster) if inline_settle is None \
            else inline_settle
        # Tests set this to raise InjectedFault at a named point (see FAULT_POINTS).
        self.fault_hook: Callable[[str], None] | None = None

    def _fault(self, point: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(point)

    # --- idempotent execution ------------------------------------------------------------

    async def _once(
        self, request: Any, op: str, subject: str, response_type: Any, work: Callable[[], Any]
    ) -> Any:
        return await self.idem.run(request, op, subject, response_type, work, self.clock.now_ms())

    # --- people --------------------------------------------------------------------------

    async def _person(self, pid: str) -> rules.PersonView | None:
        async with self.r.pipeline(transaction=False) as p:
            p.hgetall(self.k.person(pid))
            p.hget(self.k.account(pid), "bal")
            raw, bal = await p.execute()
        if not raw:
            return None
        h = _decode(raw)
        return rules.PersonView(
            id_number=pid,
            insurance_type=h["itype"],
            flexible_tier=int(h.get("tier", "0")),
            status=h["status"],
            region=h["region"],
            province=self.policy.province,
            moved_to=h.get("moved_to", ""),
            balance=int(bal or 0),
            wallet_place=h.get("wallet_place", ""),
        )

    async def _person_pb(self, pid: str) -> pb.Person:
        async with self.r.pipeline(transaction=False) as p:
            p.hgetall(self.k.person(pid))
            p.hget(self.k.account(pid), "bal")
            raw, bal = await p.execute()
        return self._person_from(pid, raw, bal)

    def _not_enrolled(self, pid: str) -> DomainError:
        return errors.not_found("PERSON_NOT_FOUND", f"{mask(pid)} is not enrolled in {self.policy.name}")

    def _person_from(self, pid: str, raw: dict[bytes, bytes], bal: bytes | None) -> pb.Person:
        if not raw:
            raise self._not_enrolled(pid)
        h = _decode(raw)
        facts = parse(pid)
        view = rules.PersonView(pid, h["itype"], int(h.get("tier", "0")), h["status"], h["region"],
                                self.policy.province)
        return pb.Person(
            id_number=pid,
            name=h.get("name", ""),
            insurance_type=_enum(cpb.InsuranceType, "INSURANCE_TYPE_", h["itype"]),
            flexible_tier=int(h.get("tier", "0")),
            status=_enum(cpb.PersonStatus, "PERSON_STATUS_", h["status"]),
            pooling_region=h["region"],
            province=self.policy.province,
            moved_to_province=h.get("moved_to", ""),
            has_personal_account=view.has_account,
            balance_fen=int(bal or 0),
            birth_date=facts.birth_date.strftime("%Y%m%d"),
            sex=facts.sex,
        )

    async def enroll(self, req: pb.EnrollPersonRequest) -> pb.EnrollPersonResponse:
        pid = validate.id_number(req.id_number, "id_number")
        validate.name(req.name)
        itype = validate.enum_name(cpb.InsuranceType, req.insurance_type, "INSURANCE_TYPE_", "insurance_type")
        if itype == "FLEXIBLE" and req.flexible_tier not in (1, 2):
            raise errors.invalid("INVALID_FLEXIBLE_TIER", "FLEXIBLE needs flexible_tier 1 or 2")
        if itype != "FLEXIBLE" and req.flexible_tier != 0:
            raise errors.invalid("INVALID_FLEXIBLE_TIER", "flexible_tier applies to FLEXIBLE only")
        validate.admdvs(req.pooling_region, "pooling_region", required=True)
        if not self.policy.region_allowed(req.pooling_region):
            raise errors.invalid(
                "UNKNOWN_REGION",
                f"pooling_region {req.pooling_region} is not a 统筹区 of {self.policy.name}",
                field="pooling_region",
            )
        view = rules.PersonView(pid, itype, req.flexible_tier, "ACTIVE", req.pooling_region,
                                self.policy.province)

        async def work() -> pb.EnrollPersonResponse:
            fields = {
                "id": pid, "name": req.name, "itype": itype, "tier": req.flexible_tier,
                "status": "ACTIVE", "region": req.pooling_region, "moved_to": "",
                "enrolled_at": self.clock.now_ms(),
            }
            args: list[Any] = ["1" if view.has_account else "0"]
            for key, value in fields.items():
                args += [key, value]
            created = await self.lua["enroll"](keys=[self.k.person(pid), self.k.account(pid)], args=args)
            if int(created) == 0:
                raise errors.exists("ALREADY_ENROLLED", f"{mask(pid)} is already enrolled")
            await self.r.sadd(self.k.people_index(), pid)
            await self.directory.enrolled(pid, self.policy.province)
            event(log, "enrolled", id_number=pid, name=req.name, itype=itype, region=req.pooling_region)
            return pb.EnrollPersonResponse(person=await self._person_pb(pid))

        return await self._once(req, "enroll", pid, pb.EnrollPersonResponse, work)  # type: ignore[no-any-return]

    async def update_status(self, req: pb.UpdatePersonStatusRequest) -> pb.UpdatePersonStatusResponse:
        pid = validate.id_number(req.id_number, "id_number")
        status = validate.enum_name(cpb.PersonStatus, req.status, "PERSON_STATUS_", "status")
        moved_to = req.moved_to_province
        if moved_to:
            validate.province(moved_to, "moved_to_province")
            if status != "TERMINATED":
                raise errors.invalid("INVALID_STATUS", "moving province requires status TERMINATED")
            if moved_to == self.policy.province:
                raise errors.invalid("INVALID_PROVINCE", "moved_to_province is this province")

        async def work() -> pb.UpdatePersonStatusResponse:
            if await self.r.exists(self.k.person(pid)) == 0:
                raise errors.not_found("PERSON_NOT_FOUND", f"{mask(pid)} is not enrolled in {self.policy.name}")
            await self.r.hset(self.k.person(pid), mapping={"status": status, "moved_to": moved_to})
            await self.directory.status_changed(pid, self.policy.province, status, moved_to)
            ended: list[pb.Binding] = []
            if status == "TERMINATED":
                suffix = "MOVED" if moved_to else "TERMINATED"
                ended = await self._end_bindings_of(pid, suffix)
                try:
                    # Quota this person sent to near-kin's wallets comes home (SPEC §5).
                    await self.wallet.release_sender(derived_id("rel", req.request_id), pid, suffix)
                except DomainError as exc:
                    raise exc.after_effects() from exc
            event(log, "status changed", id_number=pid, status=status, moved_to=moved_to,
                  bindings_ended=len(ended))
            return pb.UpdatePersonStatusResponse(person=await self._person_pb(pid), ended_bindings=ended)

        return await self._once(req, "status", pid, pb.UpdatePersonStatusResponse, work)  # type: ignore[no-any-return]

    async def get_person(self, req: pb.GetPersonRequest) -> pb.GetPersonResponse:
        pid = validate.id_number(req.id_number, "id_number")
        return pb.GetPersonResponse(person=await self._person_pb(pid))

    async def get_persons(self, req: pb.GetPersonsRequest) -> pb.GetPersonsResponse:
        """Each item is exactly a GetPerson; all of them read in one round trip."""
        _check_batch(len(req.id_numbers), "id numbers")
        outcomes: list[pb.PersonOutcome | None] = [None] * len(req.id_numbers)
        valid: list[tuple[int, str]] = []
        for i, raw_id in enumerate(req.id_numbers):
            try:
                valid.append((i, validate.id_number(raw_id, "id_numbers")))
            except DomainError as exc:
                outcomes[i] = pb.PersonOutcome(error=_error_item(exc))
        async with self.r.pipeline(transaction=False) as p:
            for _, pid in valid:
                p.hgetall(self.k.person(pid))
                p.hget(self.k.account(pid), "bal")
            replies = await p.execute()
        for n, (i, pid) in enumerate(valid):
            try:
                outcomes[i] = pb.PersonOutcome(person=self._person_from(pid, replies[2 * n], replies[2 * n + 1]))
            except DomainError as exc:
                outcomes[i] = pb.PersonOutcome(error=_error_item(exc))
        return pb.GetPersonsResponse(outcomes=outcomes)

    # --- accounts ------------------------------------------------------------------------

    async def credit(self, req: pb.CreditAccountRequest) -> pb.CreditAccountResponse:
        pid = validate.id_number(req.id_number, "id_number")
        validate.amount(req.amount_fen)
        kind = validate.enum_name(pb.CreditKind, req.kind, "CREDIT_KIND_", "kind")
        if req.period and (len(req.period) != 6 or not req.period.isdigit()):
            raise errors.invalid("INVALID_PERIOD", "period must be YYYYMM", field="period")

        async def work() -> pb.CreditAccountResponse:
            if await self.r.exists(self.k.person(pid)) == 0:
                raise errors.not_found("PERSON_NOT_FOUND", f"{mask(pid)} is not enrolled in {self.policy.name}")
            status, entry = await self.lua["credit"](
                keys=[self.k.person(pid), self.k.account(pid), self.k.ledger(pid), self.k.applied(pid)],
                args=[req.request_id, req.amount_fen, f"CREDIT_{kind}", self.clock.now_ms(),
                      rules.MAX_BALANCE_FEN],
            )
            if _s(status) == "ERR":
                code = _s(entry)
                messages = {
                    "PERSON_NOT_ACTIVE": "only an ACTIVE insured person's account can be credited",
                    "NO_PERSONAL_ACCOUNT": "this person has no personal account (resident or flexible tier 1)",
                    "BALANCE_LIMIT": "the credit would take the balance past the supported maximum",
                }
                raise errors.refused(code, messages[code])
            e = json.loads(_s(entry))
            event(log, "credited", id_number=pid, amount_fen=req.amount_fen, balance_fen=e["bal"])
            return pb.CreditAccountResponse(balance_fen=e["bal"], entry=_ledger_pb(e))

        return await self._once(req, "credit", pid, pb.CreditAccountResponse, work)  # type: ignore[no-any-return]

    async def get_account(self, req: pb.GetAccountRequest) -> pb.GetAccountResponse:
        pid = validate.id_number(req.id_number, "id_number")
        limit = req.ledger_limit or 50
        if not 0 < limit <= 500:
            raise errors.invalid("INVALID_LIMIT", "ledger_limit must be 1..500", field="ledger_limit")
        person = await self._person(pid)
        if person is None:
            raise errors.not_found("PERSON_NOT_FOUND", f"{mask(pid)} is not enrolled in {self.policy.name}")
        if not person.has_account:
            raise errors.refused("NO_PERSONAL_ACCOUNT", "this person has no personal account")
        async with self.r.pipeline(transaction=False) as p:
            p.hgetall(self.k.account(pid))
            p.lrange(self.k.ledger(pid), -limit, -1)
            acct_raw, entries = await p.execute()
        acct = _decode(acct_raw)
        return pb.GetAccountResponse(
            id_number=pid,
            balance_fen=int(acct["bal"]),
            credited_total_fen=int(acct["credited"]),
            debited_total_fen=int(acct["debited"]),
            entries=[_ledger_pb(json.loads(_s(e))) for e in reversed(entries)],
        )

    # --- bindings ------------------------------------------------------------------------

    async def _binding_pb(self, helper: str, member: str) -> pb.Binding | None:
        raw = await self.r.hgetall(self.k.binding(helper, member))
        if not raw:
            return None
        h = _decode(raw)
        return pb.Binding(
            helper_id_number=helper,
            member_id_number=member,
            relation=_enum(cpb.Relation, "RELATION_", h["relation"]),
            bound_at_unix_ms=int(h["bound_at"]),
            seq=int(h["seq"]),
            active=h["active"] == "1",
            ended_at_unix_ms=int(h.get("ended_at", "0")),
            end_reason=h.get("end_reason", ""),
        )

    async def bind(self, req: pb.BindMutualAidRequest) -> pb.BindMutualAidResponse:
        helper_id = validate.id_number(req.helper_id_number, "helper_id_number")
        member_id = validate.id_number(req.member_id_number, "member_id_number")
        relation = validate.enum_name(cpb.Relation, req.relation, "RELATION_", "relation")
        validate.admdvs(req.member_insured_admdvs, "member_insured_admdvs")
        verified = False
        if req.HasField("member_verification"):
            v = req.member_verification
            if v.method:
                validate.enum_name(cpb.VerificationMethod, v.method, "VERIFICATION_METHOD_", "verification_method")
            verified = validate.attestation(v.method, v.attestation_id)

        async def work() -> pb.BindMutualAidResponse:
            helper = await self._person(helper_id)
            member = await self._person(member_id)
            rules.check_bind_people(
                self.policy, helper, member,
                helper_id=helper_id, member_id=member_id, relation=relation, verified=verified,
                member_insured_admdvs=req.member_insured_admdvs, today=self.clock.today(),
            )
            k = self.k
            status, detail = await self.lua["bind"](
                keys=[
                    k.members_of(helper_id), k.helpers_of(member_id), k.binding(helper_id, member_id),
                    k.binding(member_id, helper_id), k.members_of(member_id), k.helpers_of(helper_id),
                    k.binding_seq(), k.all_members_of(helper_id), k.all_helpers_of(member_id),
                ],
                args=[helper_id, member_id, relation, self.clock.now_ms(), self.policy.max_members,
                      "1" if self.policy.exclusive else "0"],
            )
            if _s(status) == "ERR":
                raise rules.bind_structure_error(_s(detail), self.policy)
            event(log, "bound", helper=helper_id, member=member_id, relation=relation)
            binding = await self._binding_pb(helper_id, member_id)
            assert binding is not None
            return pb.BindMutualAidResponse(binding=binding)

        return await self._once(req, "bind", helper_id, pb.BindMutualAidResponse, work)  # type: ignore[no-any-return]

    async def unbind(self, req: pb.UnbindMutualAidRequest) -> pb.UnbindMutualAidResponse:
        helper_id = validate.id_number(req.helper_id_number, "helper_id_number")
        member_id = validate.id_number(req.member_id_number, "member_id_number")

        async def work() -> pb.UnbindMutualAidResponse:
            ended = await self._end_binding(helper_id, member_id, "UNBOUND")
            if not ended:
                raise errors.not_found("BINDING_NOT_FOUND", "this helper has no active binding to this member")
            binding = await self._binding_pb(helper_id, member_id)
            assert binding is not None
            event(log, "unbound", helper=helper_id, member=member_id)
            return pb.UnbindMutualAidResponse(binding=binding)

        return await self._once(req, "unbind", helper_id, pb.UnbindMutualAidResponse, work)  # type: ignore[no-any-return]

    async def _end_binding(self, helper_id: str, member_id: str, reason: str) -> bool:
        k = self.k
        ended = await self.lua["unbind"](
            keys=[k.members_of(helper_id), k.helpers_of(member_id), k.binding(helper_id, member_id)],
            args=[helper_id, member_id, self.clock.now_ms(), reason],
        )
        return int(ended) == 1

    async def _end_bindings_of(self, pid: str, suffix: str) -> list[pb.Binding]:
        """Bindings end automatically when a side is TERMINATED or moves province."""
        ended: list[pb.Binding] = []
        for member in await self.r.zrange(self.k.members_of(pid), 0, -1):
            m = _s(member)
            if await self._end_binding(pid, m, f"HELPER_{suffix}"):
                b = await self._binding_pb(pid, m)
                if b is not None:
                    ended.append(b)
        for helper in await self.r.zrange(self.k.helpers_of(pid), 0, -1):
            h = _s(helper)
            if await self._end_binding(h, pid, f"MEMBER_{suffix}"):
                b = await self._binding_pb(h, pid)
                if b is not None:
                    ended.append(b)
        return ended

    async def list_bindings(self, req: pb.ListBindingsRequest) -> pb.ListBindingsResponse:
        pid = validate.id_number(req.id_number, "id_number")
        if req.include_ended:
            members = await self.r.smembers(self.k.all_members_of(pid))
            helpers = await self.r.smembers(self.k.all_helpers_of(pid))
        else:
            members = await self.r.zrange(self.k.members_of(pid), 0, -1)
            helpers = await self.r.zrange(self.k.helpers_of(pid), 0, -1)
        as_helper = [b for m in members if (b := await self._binding_pb(pid, _s(m))) is not None]
        as_member = [b for h in helpers if (b := await self._binding_pb(_s(h), pid)) is not None]
        as_helper.sort(key=lambda b: b.seq)
        as_member.sort(key=lambda b: b.seq)
        return pb.ListBindingsResponse(as_helper=as_helper, as_member=as_member)

    async def bind_proxy(self, req: pb.BindProxyRequest) -> pb.BindProxyResponse:
        holder = validate.id_number(req.holder_id_number, "holder_id_number")
        relative = validate.id_number(req.relative_id_number, "relative_id_number")
        relation = validate.enum_name(cpb.Relation, req.relation, "RELATION_", "relation")
        if holder == relative:
            raise errors.invalid("SELF_BINDING", "a person cannot add themself as a 亲情账户 relative")

        async def work() -> pb.BindProxyResponse:
            rules.check_relation(self.policy, relation)
            for pid, label in ((holder, "holder"), (relative, "relative")):
                person = await self._person(pid)
                if person is None or not person.active:
                    raise errors.refused(
                        "MEMBER_NOT_INSURED" if label == "relative" else "HELPER_NOT_ACTIVE",
                        f"the {label} must be an ACTIVE insured person of {self.policy.name}",
                    )
            now = self.clock.now_ms()
            record = json.dumps({"holder": holder, "relative": relative, "relation": relation, "at": now})
            created = await self.lua["proxy_bind"](
                keys=[self.k.proxies_of_holder(holder), self.k.proxies_of_relative(relative)],
                args=[holder, relative, record],
            )
            if int(created) == 0:
                raise errors.exists("ALREADY_BOUND", "this 亲情账户 relation already exists")
            event(log, "proxy bound", holder=holder, relative=relative)
            return pb.BindProxyResponse(proxy=pb.ProxyBinding(
                holder_id_number=holder, relative_id_number=relative,
                relation=_enum(cpb.Relation, "RELATION_", relation), bound_at_unix_ms=now))

        return await self._once(req, "proxy", holder, pb.BindProxyResponse, work)  # type: ignore[no-any-return]

    async def list_proxies(self, req: pb.ListProxyBindingsRequest) -> pb.ListProxyBindingsResponse:
        pid = validate.id_number(req.id_number, "id_number")

        def conv(raw: Any) -> pb.ProxyBinding:
            d = json.loads(_s(raw))
            return pb.ProxyBinding(holder_id_number=d["holder"], relative_id_number=d["relative"],
                                   relation=_enum(cpb.Relation, "RELATION_", d["relation"]),
                                   bound_at_unix_ms=d["at"])

        held = await self.r.hvals(self.k.proxies_of_holder(pid))
        of = await self.r.hvals(self.k.proxies_of_relative(pid))
        return pb.ListProxyBindingsResponse(as_holder=[conv(x) for x in held], as_relative=[conv(x) for x in of])

    async def _proxy_between(self, a: str, b: str) -> bool:
        async with self.r.pipeline(transaction=False) as p:
            p.hexists(self.k.proxies_of_holder(a), b)
            p.hexists(self.k.proxies_of_holder(b), a)
            x, y = await p.execute()
        return bool(x or y)

    async def diagnose(self, req: pb.DiagnoseRequest) -> pb.DiagnoseResponse:
        member_id = validate.id_number(req.member_id_number, "member_id_number")
        helper_id = validate.id_number(req.helper_id_number, "helper_id_number")
        validate.admdvs(req.member_insured_admdvs, "member_insured_admdvs")
        category = ""
        if req.category:
            category = validate.enum_name(cpb.Category, req.category, "CATEGORY_", "category")
        if member_id == helper_id:
            raise errors.invalid("SELF_BINDING", "member and helper are the same person")
        member = await self._person(member_id)
        helper = await self._person(helper_id)
        binding = await self._binding_pb(helper_id, member_id)
        bound = binding is not None and binding.active
        proxy = await self._proxy_between(helper_id, member_id)
        findings = rules.diagnose(
            self.policy, member=member, helper=helper, mutual_aid_bound=bound, proxy_bound=proxy,
            category=category, member_insured_admdvs=req.member_insured_admdvs,
        )
        kind = (pb.BINDING_KIND_MUTUAL_AID if bound
                else pb.BINDING_KIND_PROXY_ONLY if proxy else pb.BINDING_KIND_NONE)
        return pb.DiagnoseResponse(
            would_pay=not findings,
            binding_kind=kind,
            findings=[pb.Finding(code=f.code, message=f.message) for f in findings],
            helper_balance_fen=helper.balance if helper is not None else 0,
        )

    # --- settlement ----------------------------------------------------------------------

    def _validate_settle(self, req: Any) -> tuple[str, str]:
        pid = validate.id_number(req.patient_id_number, "patient_id_number")
        validate.amount(req.amount_fen)
        category = validate.enum_name(cpb.Category, req.category, "CATEGORY_", "category")
        validate.institution(req.institution_code)
        validate.admdvs(req.institution_admdvs, "institution_admdvs")
        return pid, category

    async def _payable_patient(self, pid: str) -> rules.PersonView:
        """The patient, or the refusal when they are not enrolled or not ACTIVE (reads only)."""
        patient = await self._person(pid)
        if patient is None:
            raise errors.not_found("PERSON_NOT_FOUND", f"{mask(pid)} is not enrolled in {self.policy.name}")
        if not patient.active:
            raise errors.refused(
                "MEMBER_NOT_INSURED",
                f"the patient's insurance is {patient.status}: accounts cannot pay (原因一)",
            )
        return patient

    @staticmethod
    def place_of(req: Any, patient: rules.PersonView) -> str:
        """Where the bill is settled: the institution's admdvs, else the patient's 统筹区."""
        return str(req.institution_admdvs or patient.region)

    async def _helper_candidates(self, pid: str) -> list[rules.HelperCandidate]:
        """The member's bound helpers with status and balance, read in one round trip."""
        rows = await self.r.zrange(self.k.helpers_of(pid), 0, -1, withscores=True)
        if not rows:
            return []
        async with self.r.pipeline(transaction=False) as p:
            for raw_id, _ in rows:
                hid = _s(raw_id)
                p.hmget(self.k.person(hid), ["status", "itype", "tier"])
                p.hget(self.k.account(hid), "bal")
            replies = await p.execute()
        helpers = []
        for i, (raw_id, seq) in enumerate(rows):
            (status, itype, tier), bal = replies[2 * i], replies[2 * i + 1]
            active = status == b"ACTIVE" and (itype == b"EMPLOYEE" or (itype == b"FLEXIBLE" and tier == b"2"))
            helpers.append(rules.HelperCandidate(id_number=_s(raw_id), balance=int(bal or 0), seq=int(seq),
                                                 active=active))
        return helpers

    async def _plan(self, pid: str, req: Any, known: rules.PersonView | None = None
                    ) -> tuple[rules.PersonView, rules.Plan]:
        """Read what the waterfall needs — and only that: no wallet call unless the person has a
        wallet (the wallet notes it here) and the own account leaves something, no helper lookup when
        nothing remains."""
        patient = known or await self._payable_patient(pid)
        own = min(patient.balance, req.amount_fen) if req.use_account and patient.has_account else 0
        remaining = req.amount_fen - own
        wallet_balance, wallet_missing = None, ""
        if req.use_account and remaining > 0:
            place = self.place_of(req, patient)
            if not patient.wallet_place:
                wallet_missing = "WALLET_NOT_OPENED"
            elif patient.wallet_place != place:
                wallet_missing = "WALLET_OTHER_USE_PLACE"
            else:
                wallet_balance, wallet_missing = await self.wallet.balance(pid, place)
                remaining -= min(wallet_balance or 0, remaining)
        helpers: list[rules.HelperCandidate] = []
        if remaining > 0 or not req.use_account:
            helpers = await self._helper_candidates(pid)
        proxy_only = False
        if req.use_account and remaining > 0 and not helpers:
            async with self.r.pipeline(transaction=False) as p:
                p.hlen(self.k.proxies_of_relative(pid))
                p.hlen(self.k.proxies_of_holder(pid))
                as_relative, as_holder = await p.execute()
            proxy_only = as_relative > 0 or as_holder > 0
        plan = rules.plan_settlement(
            self.policy,
            amount=req.amount_fen,
            use_account=req.use_account,
            own_balance=patient.balance,
            has_own_account=patient.has_account,
            wallet_balance=wallet_balance,
            wallet_missing_reason=wallet_missing,
            helpers=helpers,
            proxy_only=proxy_only,
        )
        return patient, plan

    async def presettle(self, req: pb.PreSettleRequest) -> pb.PreSettleResponse:
        pid, category = self._validate_settle(req)
        rules.check_category(self.policy, category)
        _, plan = await self._plan(pid, req)
        helper_after = 0
        if plan.helper_id:
            helper = await self._person(plan.helper_id)
            helper_after = (helper.balance if helper else 0) - plan.mulaid_pay
        patient = await self._person(pid)
        assert patient is not None
        return pb.PreSettleResponse(result=pb.SettlementResult(
            patient_id_number=pid, amount_fen=plan.amount, acct_pay_fen=plan.acct_pay,
            wallet_pay_fen=plan.wallet_pay, mulaid_pay_fen=plan.mulaid_pay, helper_id_number=plan.helper_id,
            cash_pay_fen=plan.cash_pay, balance_after_fen=patient.balance - plan.acct_pay,
            helper_balance_after_fen=helper_after, helper_reason=plan.helper_reason,
            wallet_reason=plan.wallet_reason, category=req.category, institution_code=req.institution_code,
            settled_at_unix_ms=self.clock.now_ms(), state="PRE_SETTLEMENT",
        ))

    async def settle(self, req: pb.SettleRequest) -> pb.SettleResponse:
        if self.inline_settle:  # one item of the batch path: the same scripts, the same answers
            out = (await self.settle_batch(pb.SettleBatchRequest(requests=[req]))).outcomes[0]
            if out.HasField("error"):
                raise DomainError(errors.status_code(out.error.code), out.error.reason, out.error.message,
                                  dict(out.error.metadata))
            return out.response
        pid, category = self._validate_settle(req)
        rules.check_category(self.policy, category)

        async def work() -> pb.SettleResponse:
            self._fault("settle.after_claim")
            fast = await self._settle_fast(pid, req)
            if isinstance(fast, pb.SettleResponse):
                return fast
            lease, patient = fast
            return await self._settle_locked(pid, req, lease, patient)

        return await self._once(req, "settle", pid, pb.SettleResponse, work)  # type: ignore[no-any-return]

    async def settle_batch(self, req: pb.SettleBatchRequest) -> pb.SettleBatchResponse:
        """Each item is exactly a Settle (own idempotency, own lock when it needs one). On one Redis
        the common case is one pipelined round trip for the whole batch (settle_inline.lua claims,
        settles and records each item), plus one wallet call and one more pipeline for patients whose
        wallet must be asked. On a cluster it is three: claim every request id, run every fast-path
        script, record every answer. Items that need the staged multi-account path continue in
        lockstep stages or one by one, concurrently."""
        if len(req.requests) > MAX_BATCH:
            raise errors.invalid("BATCH_TOO_LARGE", f"at most {MAX_BATCH} settlements per batch")
        outcomes: list[pb.SettleOutcome | None] = [None] * len(req.requests)
        valid: list[tuple[int, pb.SettleRequest, str]] = []
        for i, item in enumerate(req.requests):
            try:
                validate_request_id(item.request_id)
                pid, category = self._validate_settle(item)
                rules.check_category(self.policy, category)
                valid.append((i, item, pid))
            except DomainError as exc:
                outcomes[i] = _item_error(exc)
        fresh: list[tuple[int, pb.SettleRequest, str, str]] = []
        inline = self.inline_settle
        if inline:  # the claim is checked and written by settle_inline.lua itself
            fresh = [(i, item, pid, "") for i, item, pid in valid]
        else:
            claims = await self.idem.begin_many(
                [(item.request_id, fingerprint(item), "settle", pid) for _, item, pid in valid], self.clock.now_ms())
            for (i, item, pid), claim in zip(valid, claims, strict=True):
                if isinstance(claim, DomainError):
                    outcomes[i] = _item_error(claim)
                elif claim.state == "DONE":
                    outcomes[i] = _replayed(claim)
                else:
                    fresh.append((i, item, pid, claim.state))
        prepared = [self._fast_call(pid, item) for _, item, pid, _ in fresh]
        replies = await self._run_fast([pid for _, _, pid, _ in fresh], prepared)
        done: list[tuple[str, bytes]] = []
        abandoned: list[str] = []
        slow: list[tuple[int, pb.SettleRequest, str, str, Lease | None, rules.PersonView | None]] = []
        for (i, item, pid, state), prep, reply in zip(fresh, prepared, replies, strict=True):
            if inline and not isinstance(reply, DomainError):
                state, reply = _s(reply[0]), reply[1:]
                replayed = self._inline_replay(item.request_id, reply)
                if replayed is not None:
                    outcomes[i] = replayed
                    continue
            try:
                got = self._fast_outcome(pid, item, prep, reply)
            except DomainError as exc:
                outcomes[i] = _item_error(exc)
                if state == "NEW" and not inline:  # the inline script writes no claim for a refusal
                    abandoned.append(item.request_id)
                continue
            if isinstance(got, pb.SettleResponse):
                outcomes[i] = pb.SettleOutcome(response=got)
                if inline:
                    self._fault("settle.after_finish")
                else:
                    done.append((item.request_id, got.SerializeToString()))
            else:
                slow.append((i, item, pid, state, *got))
        if done or abandoned:
            await self.idem.finish_many(done, abandoned)

        async def slow_one(i: int, item: pb.SettleRequest, pid: str, state: str, lease: Lease | None,
                           patient: rules.PersonView | None) -> None:
            try:
                resp = await self._settle_locked(pid, item, lease, patient)
                await self.idem.finish(item.request_id, resp.SerializeToString())
                outcomes[i] = pb.SettleOutcome(response=resp)
            except DomainError as exc:
                if self.idem.drops_claim(exc, state):
                    await self.idem.abandon(item.request_id)
                outcomes[i] = _item_error(exc)
            except Exception:  # noqa: BLE001 - one item's failure must not fail its neighbours
                log.exception("settle item failed", extra={"fields": {"settlement": item.request_id}})
                outcomes[i] = pb.SettleOutcome(error=pb.ItemError(
                    code=grpc.StatusCode.UNKNOWN.value[0], reason="INTERNAL_ERROR",
                    message="the settlement did not finish; retry with the same request id"))

        staged = [x for x in slow if x[4] is not None and x[5] is not None and not self._needs_wallet(x[1], x[5])]
        rest = [x for x in slow if not (x[4] is not None and x[5] is not None and not self._needs_wallet(x[1], x[5]))]
        fallback = await self._settle_staged(staged, outcomes)
        await asyncio.gather(*(slow_one(*x) for x in rest + fallback))
        return pb.SettleBatchResponse(outcomes=outcomes)

    def _needs_wallet(self, req: pb.SettleRequest, patient: rules.PersonView) -> bool:
        """Would waterfall step 2 have to call the wallet service for this settlement?"""
        own = min(patient.balance, req.amount_fen) if req.use_account and patient.has_account else 0
        return bool(req.use_account and req.amount_fen > own and patient.wallet_place
                    and patient.wallet_place == self.place_of(req, patient))

    async def _settle_staged(
        self,
        group: list[tuple[int, pb.SettleRequest, str, str, Lease | None, rules.PersonView | None]],
        outcomes: list[pb.SettleOutcome | None],
    ) -> list[tuple[int, pb.SettleRequest, str, str, Lease | None, rules.PersonView | None]]:
        """The multi-account path for many settlements in lockstep: each stage (read helpers, debit
        own accounts, debit helpers, finish, record answers and release locks) is one pipeline for
        the whole group — the same scripts, the same checks as `_settle_locked`, so a crash between
        stages is repaired by a retry exactly as there. Items that stray from the common case (own
        balance moved, record already there) are handed back for the one-by-one path, lock still held."""
        if not group:
            return []
        # Stage 1–2: what the waterfall needs beyond the patient (read only).
        async with self.r.pipeline(transaction=False) as pipe:
            for _, _item, pid, _, _, _ in group:
                pipe.zrange(self.k.helpers_of(pid), 0, -1, withscores=True)
            helper_rows = await pipe.execute()
        async with self.r.pipeline(transaction=False) as pipe:
            for (_, _, pid, _, _, _), rows in zip(group, helper_rows, strict=True):
                for raw_id, _ in rows:
                    pipe.hmget(self.k.person(_s(raw_id)), ["status", "itype", "tier"])
                    pipe.hget(self.k.account(_s(raw_id)), "bal")
                if not rows:
                    pipe.hlen(self.k.proxies_of_relative(pid))
                    pipe.hlen(self.k.proxies_of_holder(pid))
            reads = iter(await pipe.execute())
        plans: list[tuple[Any, ...]] = []
        for (i, item, pid, state, lease, patient), rows in zip(group, helper_rows, strict=True):
            assert lease is not None and patient is not None
            helpers = []
            for raw_id, seq in rows:
                (status, itype, tier), bal = next(reads), next(reads)
                active = status == b"ACTIVE" and (itype == b"EMPLOYEE" or (itype == b"FLEXIBLE" and tier == b"2"))
                helpers.append(rules.HelperCandidate(_s(raw_id), int(bal or 0), int(seq), active))
            proxy_only = False
            if not rows:
                proxy_only = (next(reads) or 0) > 0 or (next(reads) or 0) > 0
            own = min(patient.balance, item.amount_fen) if item.use_account and patient.has_account else 0
            missing = ""
            if item.use_account and item.amount_fen > own:
                missing = "WALLET_OTHER_USE_PLACE" if patient.wallet_place else "WALLET_NOT_OPENED"
            plan = rules.plan_settlement(
                self.policy, amount=item.amount_fen, use_account=item.use_account, own_balance=patient.balance,
                has_own_account=patient.has_account, wallet_balance=None, wallet_missing_reason=missing,
                helpers=helpers, proxy_only=proxy_only if item.use_account and item.amount_fen > own else False)
            plans.append((i, item, pid, state, lease, patient, *self._own_call(pid, item, patient, plan, lease)))
        # Stage 3: own accounts (opens each record, fenced).
        async with self.r.pipeline(transaction=False) as pipe:
            for *_, keys, args, _ in plans:
                await self.lua["settle_own"](keys=keys, args=args, client=pipe)
            own_replies = await pipe.execute()
        fallback: list[tuple[int, pb.SettleRequest, str, str, Lease | None, rules.PersonView | None]] = []
        going: list[tuple[int, pb.SettleRequest, str, str, Lease, _Progress]] = []
        released: list[Lease] = []
        for (i, item, pid, state, lease, _patient, _keys, _args, fields), reply in zip(plans, own_replies, strict=True):
            status = _s(reply[0])
            if status == "OK":
                going.append((i, item, pid, state, lease, _Progress.of(pid, item.request_id,
                                                                       _own_record(fields, reply[1], lease))))
            elif status == "STALE":
                outcomes[i] = _item_error(_lock_lost())
                released.append(lease)
            else:  # SHORT (re-plan) or EXISTS (a duplicate opened it): one by one, lock kept
                fallback.append((i, item, pid, state, lease, None))
        # Stage 4: helpers (each once per settlement id).
        paying = [g for g in going if g[5].mulaid > 0]
        if paying:
            async with self.r.pipeline(transaction=False) as pipe:
                for *_, st in paying:
                    keys, args = self._helper_call(st)
                    await self.lua["helper_debit"](keys=keys, args=args, client=pipe)
                for (*_, st), reply in zip(paying, await pipe.execute(), strict=True):
                    st.helper_paid(reply)
        # Stage 5: finish every record (fenced).
        finishing = [(g, *self._finish_call(g[5], g[4])) for g in going]
        async with self.r.pipeline(transaction=False) as pipe:
            for _, keys, args, _ in finishing:
                await self.lua["settle_finish"](keys=keys, args=args, client=pipe)
            finish_replies = await pipe.execute() if finishing else []
        # Stage 6: record the answers, release the locks.
        async with self.r.pipeline(transaction=False) as pipe:
            for ((i, item, _pid, _state, lease, st), _, _, result), reply in zip(finishing, finish_replies,
                                                                                  strict=True):
                try:
                    resp = pb.SettleResponse(result=self._finished(st, result, reply))
                except DomainError as exc:  # money moved: keep the claim, a retry finishes it
                    outcomes[i] = _item_error(exc)
                else:
                    outcomes[i] = pb.SettleOutcome(response=resp)
                    pipe.hset(self.idem.key(item.request_id), mapping={"state": "DONE",
                                                                       "resp": resp.SerializeToString()})
                await self.locks.release_in(pipe, lease)
            for lease in released:
                await self.locks.release_in(pipe, lease)
            await pipe.execute()
        return fallback

    def _fast_call(self, pid: str, req: pb.SettleRequest) -> tuple[list[str], list[Any], str, pb.SettlementResult]:
        """Keys and arguments of settle_fast.lua for one settlement."""
        sid, amount, now = req.request_id, req.amount_fen, self.clock.now_ms()
        result = pb.SettlementResult(
            settlement_id=sid, patient_id_number=pid, amount_fen=amount, acct_pay_fen=amount,
            category=req.category, institution_code=req.institution_code, settled_at_unix_ms=now, state="SETTLED",
        )
        owner = self.locks.new_owner()
        args: list[Any] = [sid, amount, now, result.SerializeToString(), owner, LOCK_TTL_MS,
                           "1" if req.use_account else "0"]
        lock_key, fence_key = self.locks.keys(self.k.person_tag(pid))
        keys = [self.k.person(pid), self.k.account(pid), self.k.ledger(pid), self.k.settlement(pid, sid),
                lock_key, fence_key]
        if self.inline_settle:
            keys += [self.k.helpers_of(pid), self.k.proxies_of_relative(pid), self.k.proxies_of_holder(pid),
                     self.k.consumption(pid), self.k.consumption_index(pid)]
            args += [self.k.person_prefix, self.policy.helper_selection, "1" if self.policy.helper_partial else "0",
                     req.institution_admdvs, req.category, req.institution_code, pid, "", "", fingerprint(req)]
            keys.append(self.idem.key(sid))
        return keys, args, owner, result

    def _inline_replay(self, request_id: str, reply: list[Any]) -> pb.SettleOutcome | None:
        """The outcome when settle_inline.lua found the request id already used, else None."""
        kind = reply[0]
        if kind in (b"REUSED", b"DONE"):  # the same replies as idem_begin.lua's
            try:
                return _replayed(Idempotency.parse_claim(request_id, reply))
            except DomainError as exc:
                return _item_error(exc)
        if kind == b"REPLAY":  # settled by the script: the record is the answer
            flat = reply[1]
            rec = _decode_record(dict(zip(flat[::2], flat[1::2], strict=True)))
            return pb.SettleOutcome(response=pb.SettleResponse(result=self._result_from_record(rec)))
        return None

    @property
    def _fast_script(self) -> str:
        return "settle_inline" if self.inline_settle else "settle_fast"

    async def _run_fast(self, pids: list[str], prepared: list[tuple[list[str], list[Any], str, pb.SettlementResult]]
                        ) -> list[Any]:
        """Run the fast (or inline) script of each settlement in one pipeline. Inline settlements whose
        patient has a wallet usable here answer WALLET: their balances come from the wallet service in
        one call, and those scripts run again, told the balance. A wallet that cannot answer fails
        only those settlements (the reply is the DomainError; nothing was written for them).
        One patient's items apply in batch order: a patient's second item waits for the next wave."""
        replies: list[Any] = [None] * len(prepared)
        todo = list(range(len(prepared)))
        while todo:
            wave: list[int] = []
            later: list[int] = []
            seen: set[str] = set()
            for i in todo:
                (later if pids[i] in seen else wave).append(i)
                seen.add(pids[i])
            await self._run_wave(wave, pids, prepared, replies)
            todo = later
        return replies

    async def _run_wave(self, wave: list[int], pids: list[str],
                        prepared: list[tuple[list[str], list[Any], str, pb.SettlementResult]], replies: list[Any]
                        ) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            for i in wave:
                keys, args, _, _ = prepared[i]
                await self.lua[self._fast_script](keys=keys, args=args, client=pipe)
            for i, reply in zip(wave, await pipe.execute(), strict=True):
                replies[i] = reply
        asking = [i for i in wave if self.inline_settle and replies[i][1] == b"WALLET"]
        if not asking:
            return
        try:
            known = await self.wallet.balances([(pids[i], _s(replies[i][2])) for i in asking])
        except DomainError as exc:
            for i in asking:
                replies[i] = exc
            return
        async with self.r.pipeline(transaction=False) as pipe:
            for i, (bal, why) in zip(asking, known, strict=True):
                keys, args, _, _ = prepared[i]
                args[-3:-1] = ["none", why] if bal is None else [bal, ""]
                await self.lua["settle_inline"](keys=keys, args=args, client=pipe)
            for i, reply in zip(asking, await pipe.execute(), strict=True):
                replies[i] = reply

    def _fast_outcome(
        self, pid: str, req: pb.SettleRequest, prep: tuple[list[str], list[Any], str, pb.SettlementResult],
        reply: list[Any],
    ) -> pb.SettleResponse | tuple[Lease | None, rules.PersonView | None]:
        """Settled outright, or (lease, patient) for the multi-account path ((None, None): the record
        exists or the lock is busy, so take the lock the ordinary way)."""
        keys, _, owner, result = prep
        if isinstance(reply, DomainError):
            raise reply
        status = _s(reply[0])
        if status == "NOPERSON":
            raise errors.not_found("PERSON_NOT_FOUND", f"{mask(pid)} is not enrolled in {self.policy.name}")
        if status == "INACTIVE":
            raise errors.refused("MEMBER_NOT_INSURED",
                                 f"the patient's insurance is {_s(reply[1])}: accounts cannot pay (原因一)")
        if status == "LOCKED":
            token, pstatus, itype, tier, region, wallet_place, moved_to, bal = (_s(x) for x in reply[1:])
            lease = Lease(keys[4], keys[5], owner, int(token))
            patient = rules.PersonView(pid, itype, int(tier or 0), pstatus, region, self.policy.province,
                                       moved_to, int(bal), wallet_place)
            return lease, patient
        if status == "SETTLED":  # settle_inline.lua ran the whole waterfall
            acct_pay, mulaid, helper, cash, helper_reason, wallet_reason, own_after, helper_after = (
                _s(x) for x in reply[1:])
            result.acct_pay_fen, result.mulaid_pay_fen, result.helper_id_number = int(acct_pay), int(mulaid), helper
            result.cash_pay_fen, result.helper_reason, result.wallet_reason = int(cash), helper_reason, wallet_reason
            result.balance_after_fen, result.helper_balance_after_fen = max(int(own_after), 0), int(helper_after)
            event(log, "settled", patient=pid, settlement=req.request_id, amount_fen=req.amount_fen,
                  acct_pay=result.acct_pay_fen, mulaid_pay=result.mulaid_pay_fen, helper=helper,
                  cash_pay=result.cash_pay_fen, helper_reason=helper_reason, path="inline")
            return pb.SettleResponse(result=result)
        if status != "OK":
            return None, None
        result.balance_after_fen = int(_s(reply[1]))
        event(log, "settled", patient=pid, settlement=req.request_id, amount_fen=req.amount_fen,
              acct_pay=req.amount_fen, mulaid_pay=0, helper="", cash_pay=0, helper_reason="", path="fast")
        return pb.SettleResponse(result=result)

    async def _settle_fast(
        self, pid: str, req: pb.SettleRequest
    ) -> pb.SettleResponse | tuple[Lease | None, rules.PersonView | None]:
        """One script on the patient's slot (settle_fast.lua): settles outright when the own account
        covers the bill; otherwise takes the patient's lock for the multi-account path."""
        prep = self._fast_call(pid, req)
        reply = (await self._run_fast([pid], [prep]))[0]
        got = self._fast_outcome(pid, req, prep, reply)
        if isinstance(got, pb.SettleResponse):
            self._fault("settle.after_finish")
        return got

    async def _acquire(self, pid: str) -> Lease:
        try:
            return await self.locks.acquire(self.k.person_tag(pid), LOCK_TTL_MS, LOCK_WAIT_MS)
        except LockBusy:
            raise errors.unavailable("PATIENT_BUSY", "another operation on this patient is in progress; "
                                     "retry with the same request id") from None

    async def _settle_locked(self, pid: str, req: pb.SettleRequest, lease: Lease | None = None,
                             known: rules.PersonView | None = None) -> pb.SettleResponse:
        """The multi-account path under the patient's fenced lock. `lease` and `known` come from
        settle_fast.lua when it took the lock (the record did not exist and the patient was ACTIVE)."""
        sid = req.request_id
        record_key = self.k.settlement(pid, sid)
        if lease is None:
            if not await self.r.exists(record_key):
                # Refuse an unknown or non-ACTIVE patient before taking the lock, so the refusal writes
                # nothing (not even the lock's fence counter). `_plan` re-checks under the lock.
                await self._payable_patient(pid)
            lease = await self._acquire(pid)
        try:
            for _ in range(3):
                rec = {} if known is not None else _decode_record(await self.r.hgetall(record_key))
                if rec:
                    break
                patient, plan = await self._plan(pid, req, known)
                known = None
                keys, args, fields = self._own_call(pid, req, patient, plan, lease)
                status, detail = await self.lua["settle_own"](keys=keys, args=args)
                status = _s(status)
                if status == "STALE":
                    raise _lock_lost()
                if status == "SHORT":
                    continue  # the patient's own balance moved (they are also someone's helper): re-plan
                if status == "OK":
                    rec = _own_record(fields, detail, lease)
                    break
                # EXISTS (a concurrent duplicate opened it): resume from the record, even on the last attempt.
                rec = _decode_record(await self.r.hgetall(record_key))
                break
            else:
                raise errors.unavailable("CONTENDED", "balances kept changing; retry with the same request id")
            if not rec:
                rec = _decode_record(await self.r.hgetall(record_key))
            # Money may have moved from here on: never abandon the claim after this point.
            try:
                return await self._settle_resume(pid, sid, rec, lease)
            except DomainError as exc:
                raise exc.after_effects() from exc
        finally:
            await self.locks.release(lease)

    def _own_call(self, pid: str, req: pb.SettleRequest, patient: rules.PersonView, plan: rules.Plan,
                  lease: Lease) -> tuple[list[str], list[Any], dict[str, Any]]:
        """settle_own.lua's keys and arguments, and the record fields it writes."""
        now = self.clock.now_ms()
        fields: dict[str, Any] = {
            "place": self.place_of(req, patient),
            "patient": pid, "amount": plan.amount, "acct_pay": plan.acct_pay,
            "wallet_pay": plan.wallet_pay, "mulaid_pay": plan.mulaid_pay, "helper": plan.helper_id,
            "cash_pay": plan.cash_pay, "helper_reason": plan.helper_reason,
            "wallet_reason": plan.wallet_reason, "category": req.category,
            "institution": req.institution_code, "at": now,
        }
        args: list[Any] = [lease.token, req.request_id, plan.acct_pay, now]
        for key, value in fields.items():
            args += [key, value]
        keys = [self.k.settlement(pid, req.request_id), self.k.account(pid), self.k.ledger(pid), self.k.fence(pid)]
        return keys, args, fields

    def _helper_call(self, st: _Progress) -> tuple[list[str], list[Any]]:
        """helper_debit.lua's keys and arguments for a settlement's planned helper share."""
        rec, hid = st.rec, st.helper_id
        consumption = json.dumps({
            "sid": st.sid, "role": "HELPER", "helper": hid, "member": st.pid, "mulaid": st.mulaid,
            "category": int(rec["category"]), "institution": rec["institution"], "at": int(rec["at"]),
            "state": "SETTLED",
        })
        keys = [self.k.person(hid), self.k.account(hid), self.k.ledger(hid), self.k.applied(hid),
                self.k.consumption(hid), self.k.consumption_index(hid)]
        return keys, [st.sid, st.mulaid, self.clock.now_ms(), consumption]

    def _finish_call(self, st: _Progress, lease: Lease) -> tuple[list[str], list[Any], pb.SettlementResult]:
        """settle_finish.lua's keys and arguments, and the result it records."""
        rec, pid, sid = st.rec, st.pid, st.sid
        result = pb.SettlementResult(
            settlement_id=sid, patient_id_number=pid, amount_fen=int(rec["amount"]),
            acct_pay_fen=int(rec["acct_pay"]), wallet_pay_fen=st.wallet_pay, mulaid_pay_fen=st.mulaid,
            helper_id_number=st.helper_id, cash_pay_fen=st.cash,
            balance_after_fen=max(int(rec["own_bal_after"]), 0), helper_balance_after_fen=st.helper_after,
            helper_reason=st.helper_reason, wallet_reason=st.wallet_reason,
            wallet_balance_after_fen=st.wallet_after, category=int(rec["category"]),  # type: ignore[arg-type]
            institution_code=rec["institution"], settled_at_unix_ms=int(rec["at"]), state="SETTLED",
        )
        if sum((result.acct_pay_fen, result.wallet_pay_fen, result.mulaid_pay_fen, result.cash_pay_fen)) \
                != result.amount_fen:
            raise AssertionError(f"settlement {sid} does not add up")
        member_consumption = ""
        if st.mulaid > 0:
            member_consumption = json.dumps({
                "sid": sid, "role": "MEMBER", "helper": st.helper_id, "member": pid, "mulaid": st.mulaid,
                "category": result.category, "institution": result.institution_code,
                "at": result.settled_at_unix_ms, "state": "SETTLED",
            })
        keys = [self.k.settlement(pid, sid), self.k.fence(pid), self.k.consumption(pid), self.k.consumption_index(pid)]
        args: list[Any] = [lease.token, sid, result.SerializeToString(), member_consumption,
                           "final_mulaid_pay", st.mulaid, "final_helper", st.helper_id, "final_cash_pay", st.cash,
                           "helper_bal_after", st.helper_after, "final_wallet_pay", st.wallet_pay]
        return keys, args, result

    @staticmethod
    def _finished(st: _Progress, result: pb.SettlementResult, reply: list[Any]) -> pb.SettlementResult:
        status = _s(reply[0])
        if status == "STALE":
            raise _lock_lost()
        if status == "DONE":
            return pb.SettlementResult.FromString(reply[1])
        if status != "OK":
            raise AssertionError(f"settlement {st.sid} in unexpected state {_s(reply[1])}")
        event(log, "settled", patient=st.pid, settlement=st.sid, amount_fen=result.amount_fen,
              acct_pay=result.acct_pay_fen, mulaid_pay=result.mulaid_pay_fen, helper=result.helper_id_number,
              cash_pay=result.cash_pay_fen, helper_reason=result.helper_reason)
        return result

    async def _settle_resume(self, pid: str, sid: str, rec: dict[str, str], lease: Lease) -> pb.SettleResponse:
        if rec["state"] in ("SETTLED", "REVERSING", "REVERSED"):
            return pb.SettleResponse(result=self._result_from_record(rec))
        self._fault("settle.after_own_debit")
        st = _Progress.of(pid, sid, rec)
        if st.wallet_pay > 0:
            after = await self.wallet.debit(sid, pid, st.wallet_pay, int(rec["category"]), rec["place"])
            if after is None:
                # The wallet was spent elsewhere since planning: its share falls to cash.
                st.cash += st.wallet_pay
                st.wallet_pay, st.wallet_reason = 0, "WALLET_INSUFFICIENT"
            else:
                st.wallet_after = after
        self._fault("settle.after_wallet_debit")
        if st.mulaid > 0:
            keys, args = self._helper_call(st)
            st.helper_paid(await self.lua["helper_debit"](keys=keys, args=args))
        self._fault("settle.after_helper_debit")
        keys, args, result = self._finish_call(st, lease)
        result = self._finished(st, result, await self.lua["settle_finish"](keys=keys, args=args))
        self._fault("settle.after_finish")
        return pb.SettleResponse(result=result)

    def _result_from_record(self, rec: dict[str, str]) -> pb.SettlementResult:
        if rec.get("inline") == "1":  # settle_inline.lua records fields, not result bytes
            return pb.SettlementResult(
                settlement_id=rec["sid"], patient_id_number=rec["patient"], amount_fen=int(rec["amount"]),
                acct_pay_fen=int(rec["acct_pay"]), mulaid_pay_fen=int(rec["final_mulaid_pay"]),
                helper_id_number=rec["final_helper"], cash_pay_fen=int(rec["final_cash_pay"]),
                balance_after_fen=max(int(rec["own_bal_after"]), 0),
                helper_balance_after_fen=int(rec["helper_bal_after"]), helper_reason=rec["helper_reason"],
                wallet_reason=rec["wallet_reason"], category=int(rec["category"]),  # type: ignore[arg-type]
                institution_code=rec["institution"], settled_at_unix_ms=int(rec["at"]), state="SETTLED")
        result = pb.SettlementResult.FromString(rec["result"].encode("latin-1"))
        if rec.get("fast") == "1":
            result.balance_after_fen = int(rec["own_bal_after"])
        return result

    async def _record_for(self, sid: str) -> tuple[str, dict[str, str]]:
        op, pid = await self.idem.subject(sid)
        if op != "settle":
            raise errors.not_found("SETTLEMENT_NOT_FOUND", f"no settlement {sid}")
        raw = await self.r.hgetall(self.k.settlement(pid, sid))
        if not raw:
            raise errors.not_found("SETTLEMENT_NOT_FOUND", f"no settlement {sid}")
        return pid, _decode_record(raw)

    async def get_settlement(self, req: pb.GetSettlementRequest) -> pb.GetSettlementResponse:
        validate_request_id(req.settlement_id)
        _, rec = await self._record_for(req.settlement_id)
        if rec["state"] not in ("SETTLED", "REVERSING", "REVERSED"):
            raise errors.unavailable("SETTLEMENT_IN_PROGRESS", "the settlement has not finished; retry it")
        result = self._result_from_record(rec)
        result.state = "REVERSED" if rec["state"] == "REVERSED" else "SETTLED"
        return pb.GetSettlementResponse(result=result)

    # --- reversal ------------------------------------------------------------------------

    async def reverse(self, req: pb.ReverseSettlementRequest) -> pb.ReverseSettlementResponse:
        validate_request_id(req.settlement_id)

        async def work() -> pb.ReverseSettlementResponse:
            pid, rec = await self._record_for(req.settlement_id)
            lease = await self._acquire(pid)
            try:
                return await self._reverse_locked(pid, req, lease)
            finally:
                await self.locks.release(lease)

        return await self._once(req, "reverse", req.settlement_id, pb.ReverseSettlementResponse, work)  # type: ignore[no-any-return]

    async def _reverse_locked(
        self, pid: str, req: pb.ReverseSettlementRequest, lease: Lease
    ) -> pb.ReverseSettlementResponse:
        sid, rid = req.settlement_id, req.request_id
        record_key = self.k.settlement(pid, sid)
        state, owner = await self.lua["reverse_begin"](
            keys=[record_key, self.k.fence(pid)], args=[lease.token, rid, self.clock.now_ms()]
        )
        state, owner = _s(state), _s(owner)
        if state == "STALE":
            raise _lock_lost()
        if state == "BADSTATE":
            raise errors.unavailable("SETTLEMENT_IN_PROGRESS", "the settlement has not finished; retry it first")
        rec = _decode_record(await self.r.hgetall(record_key))
        if owner != rid:
            if state == "REVERSING":
                await self._reverse_drive(pid, sid, rec, lease, owner)
            raise errors.refused("ALREADY_REVERSED", f"settlement {sid} was already reversed by {owner}",
                                 reversal_id=owner)
        try:
            return await self._reverse_drive(pid, sid, rec, lease, rid)
        except DomainError as exc:
            raise exc.after_effects() from exc

    async def _reverse_drive(
        self, pid: str, sid: str, rec: dict[str, str], lease: Lease, rid: str
    ) -> pb.ReverseSettlementResponse:
        self._fault("reverse.after_begin")
        now = self.clock.now_ms()
        result = self._result_from_record(rec)
        helper_after = 0
        if result.mulaid_pay_fen > 0:
            hid = result.helper_id_number
            consumption = json.dumps({
                "sid": sid, "role": "HELPER", "helper": hid, "member": pid, "mulaid": result.mulaid_pay_fen,
                "category": result.category, "institution": result.institution_code,
                "at": result.settled_at_unix_ms, "state": "REVERSED",
            })
            _, detail = await self.lua["helper_refund"](
                keys=[self.k.account(hid), self.k.ledger(hid), self.k.applied(hid), self.k.consumption(hid)],
                args=[f"rev:{sid}", result.mulaid_pay_fen, now, sid, consumption],
            )
            helper_after = int(_s(detail))
        if result.wallet_pay_fen > 0:
            await self.wallet.refund(sid, pid, result.wallet_pay_fen)
        self._fault("reverse.after_helper_refund")
        member_consumption = ""
        if result.mulaid_pay_fen > 0:
            member_consumption = json.dumps({
                "sid": sid, "role": "MEMBER", "helper": result.helper_id_number, "member": pid,
                "mulaid": result.mulaid_pay_fen, "category": result.category,
                "institution": result.institution_code, "at": result.settled_at_unix_ms, "state": "REVERSED",
            })
        status, detail = await self.lua["reverse_finish"](
            keys=[self.k.settlement(pid, sid), self.k.account(pid), self.k.ledger(pid), self.k.fence(pid),
                  self.k.consumption(pid)],
            args=[lease.token, sid, result.acct_pay_fen, now, member_consumption],
        )
        status = _s(status)
        if status == "STALE":
            raise _lock_lost()
        if status not in ("OK", "DONE"):
            raise AssertionError(f"reversal of {sid} found state {_s(detail)}")
        self._fault("reverse.after_finish")
        rec = _decode_record(await self.r.hgetall(self.k.settlement(pid, sid)))
        event(log, "reversed", patient=pid, settlement=sid, acct_refund=result.acct_pay_fen,
              mulaid_refund=result.mulaid_pay_fen)
        return pb.ReverseSettlementResponse(
            settlement_id=sid, reversal_id=rid, acct_refund_fen=result.acct_pay_fen,
            wallet_refund_fen=result.wallet_pay_fen, mulaid_refund_fen=result.mulaid_pay_fen,
            helper_id_number=result.helper_id_number, balance_after_fen=max(int(_s(detail)), 0),
            helper_balance_after_fen=helper_after, reversed_at_unix_ms=int(rec.get("reversed_at", now)),
        )

    # --- consumption records -------------------------------------------------------------

    async def list_consumption(self, req: pb.ListConsumptionRecordsRequest) -> pb.ListConsumptionRecordsResponse:
        pid = validate.id_number(req.id_number, "id_number")
        limit = req.limit or 50
        if not 0 < limit <= 500:
            raise errors.invalid("INVALID_LIMIT", "limit must be 1..500", field="limit")
        sids = await self.r.lrange(self.k.consumption_index(pid), -limit, -1)
        if not sids:
            return pb.ListConsumptionRecordsResponse()
        raws = await self.r.hmget(self.k.consumption(pid), sids)
        records = []
        for raw in reversed(raws):
            if raw is None:
                continue
            d = json.loads(_s(raw))
            records.append(pb.ConsumptionRecord(
                settlement_id=d["sid"], role=d["role"], helper_id_number=d["helper"],
                member_id_number=d["member"], mulaid_pay_fen=d["mulaid"], category=d["category"],
                institution_code=d["institution"], at_unix_ms=d["at"], state=d["state"],
            ))
        return pb.ListConsumptionRecordsResponse(records=records)


    # --- cross-province transfers (called by the national wallet) ------------------------

    async def debit_for_transfer(self, req: pb.DebitForTransferRequest) -> pb.DebitForTransferResponse:
        batch = await self.debit_for_transfer_batch(pb.DebitForTransferBatchRequest(requests=[req]))
        result = unpack_outcome(batch.outcomes[0])
        if isinstance(result, DomainError):
            raise result
        return result  # type: ignore[no-any-return]

    async def debit_for_transfer_batch(self, req: pb.DebitForTransferBatchRequest) -> pb.DebitForTransferBatchResponse:
        """Each item is exactly a DebitForTransfer (xfer_debit.lua: once per transfer id, in the same
        script as the debit); all of them run in one pipelined round trip."""
        _check_batch(len(req.requests), "debits")
        outcomes: list[pb.DebitForTransferOutcome | None] = [None] * len(req.requests)
        valid: list[tuple[int, pb.DebitForTransferRequest, str]] = []
        for i, item in enumerate(req.requests):
            try:
                validate_request_id(item.transfer_id)
                pid = validate.id_number(item.sender_id_number, "sender_id_number")
                validate.amount(item.amount_fen)
                valid.append((i, item, pid))
            except DomainError as exc:
                outcomes[i] = pb.DebitForTransferOutcome(error=_error_item(exc))
        now = self.clock.now_ms()
        async with self.r.pipeline(transaction=False) as p:
            for _, item, pid in valid:
                await self.lua["xfer_debit"](
                    keys=[self.k.person(pid), self.k.account(pid), self.k.ledger(pid), self.k.applied(pid)],
                    args=[item.transfer_id, item.amount_fen, now], client=p)
            replies = await p.execute()
        if any(_s(status) != "ERR" for status, _ in replies):
            self._fault("transfer.after_debit")  # a debit is done (or was already), its answer not yet given
        for (i, item, pid), (status, detail) in zip(valid, replies, strict=True):
            status, detail = _s(status), _s(detail)
            if status == "ERR":
                exc = self._not_enrolled(pid) if detail == "PERSON_NOT_FOUND" else _transfer_error(detail)
                outcomes[i] = pb.DebitForTransferOutcome(error=_error_item(exc))
                continue
            event(log, "transfer debited", id_number=pid, transfer=item.transfer_id, amount_fen=item.amount_fen,
                  replayed=status == "DUP")
            outcomes[i] = pb.DebitForTransferOutcome(response=pb.DebitForTransferResponse(
                balance_after_fen=int(detail), replayed=status == "DUP"))
        return pb.DebitForTransferBatchResponse(outcomes=outcomes)

    async def refund_transfer(self, req: pb.RefundTransferRequest) -> pb.RefundTransferResponse:
        validate_request_id(req.transfer_id)
        pid = validate.id_number(req.sender_id_number, "sender_id_number")
        validate.amount(req.amount_fen)
        if await self.r.exists(self.k.person(pid)) == 0:
            raise errors.not_found("PERSON_NOT_FOUND", f"{mask(pid)} is not enrolled in {self.policy.name}")
        res = await self.lua["xfer_refund"](
            keys=[self.k.account(pid), self.k.ledger(pid), self.k.applied(pid)],
            args=[req.transfer_id, req.amount_fen, self.clock.now_ms()],
        )
        status = _s(res[0])
        if status == "ERR":
            raise _transfer_error(_s(res[1]))
        self._fault("transfer.after_refund")
        event(log, "transfer refunded", id_number=pid, transfer=req.transfer_id, refunded_fen=_s(res[1]))
        return pb.RefundTransferResponse(refunded_fen=int(_s(res[1])), balance_after_fen=int(_s(res[2])),
                                         replayed=status == "DUP")

    async def note_wallet(self, req: pb.NoteWalletRequest) -> pb.NoteWalletResponse:
        pid = validate.id_number(req.id_number, "id_number")
        validate.admdvs(req.use_place_admdvs, "use_place_admdvs", required=True)
        if await self.r.exists(self.k.person(pid)) == 0:
            raise errors.not_found("PERSON_NOT_FOUND", f"{mask(pid)} is not enrolled in {self.policy.name}")
        await self.r.hset(self.k.person(pid), "wallet_place", req.use_place_admdvs)
        return pb.NoteWalletResponse()

    async def credit_lot_return(self, req: pb.CreditLotReturnRequest) -> pb.CreditLotReturnResponse:
        validate_request_id(req.return_id)
        pid = validate.id_number(req.sender_id_number, "sender_id_number")
        validate.amount(req.amount_fen)
        status, detail = await self.lua["lot_return"](
            keys=[self.k.account(pid), self.k.ledger(pid), self.k.applied(pid)],
            args=[req.return_id, req.amount_fen, self.clock.now_ms()],
        )
        status, detail = _s(status), _s(detail)
        if status == "ERR":
            raise _transfer_error(detail)
        event(log, "lot returned", id_number=pid, ref=req.return_id, amount_fen=req.amount_fen)
        return pb.CreditLotReturnResponse(balance_after_fen=int(detail), replayed=status == "DUP")


_TRANSFER_ERRORS = {
    "INSUFFICIENT_BALANCE": "the sender's personal account balance is insufficient",
    "SENDER_NOT_ACTIVE": "the sender's insurance is not ACTIVE",
    "SENDER_NOT_EMPLOYEE": "the sender has no personal account (only employees can send)",
    "TRANSFER_CANCELLED": "this transfer was already returned or cancelled and can never be debited",
    "TRANSFER_MISMATCH": "this transfer id was already used with a different amount",
    "RETURN_MISMATCH": "this return id was already used with a different amount",
    "NO_PERSONAL_ACCOUNT": "this person has no personal account",
}


def _transfer_error(code: str) -> DomainError:
    if code in ("TRANSFER_MISMATCH", "RETURN_MISMATCH"):
        return errors.exists("IDEMPOTENCY_KEY_REUSED", _TRANSFER_ERRORS[code])
    return errors.refused(code, _TRANSFER_ERRORS[code])


@dataclass
class _Progress:
    """A multi-account settlement between its own-account step and its finish."""

    pid: str
    sid: str
    rec: dict[str, str]
    mulaid: int
    helper_id: str
    cash: int
    helper_reason: str
    wallet_pay: int
    wallet_reason: str
    helper_after: int = 0
    wallet_after: int = 0

    @classmethod
    def of(cls, pid: str, sid: str, rec: dict[str, str]) -> _Progress:
        return cls(pid, sid, rec, int(rec["mulaid_pay"]), rec["helper"], int(rec["cash_pay"]),
                   rec["helper_reason"], int(rec["wallet_pay"]), rec["wallet_reason"])

    def helper_paid(self, reply: list[Any]) -> None:
        status, detail = _s(reply[0]), _s(reply[1])
        if status in ("OK", "DUP"):
            self.helper_after = int(detail)
        else:
            # The helper's balance or status changed after planning: all or nothing, so no helper pays.
            self.cash += self.mulaid
            self.helper_reason = "HELPER_INSUFFICIENT" if status == "SHORT" else "NO_ACTIVE_HELPER"
            self.mulaid, self.helper_id = 0, ""


def _own_record(fields: dict[str, Any], detail: Any, lease: Lease) -> dict[str, str]:
    """The record settle_own.lua just wrote (no need to read it back)."""
    rec = {k: str(v) for k, v in fields.items()}
    rec.update(state="OWN_DONE", own_bal_after=_s(detail), token=str(lease.token))
    return rec


def _error_item(exc: DomainError) -> pb.ItemError:
    return pb.ItemError(code=exc.code.value[0], reason=exc.reason, message=exc.message, metadata=exc.metadata)


def _item_error(exc: DomainError) -> pb.SettleOutcome:
    return pb.SettleOutcome(error=_error_item(exc))


def _check_batch(n: int, what: str) -> None:
    if n == 0:
        raise errors.invalid("EMPTY_BATCH", f"a batch needs at least one item ({what})")
    if n > MAX_BATCH:
        raise errors.invalid("BATCH_TOO_LARGE", f"at most {MAX_BATCH} {what} per batch")


def _replayed(claim: Any) -> pb.SettleOutcome:
    """The first answer of a DONE claim: its recorded refusal or response."""
    if claim.error is not None:
        return _item_error(claim.error)
    return pb.SettleOutcome(response=pb.SettleResponse.FromString(claim.response or b""))


def _lock_lost() -> DomainError:
    return errors.unavailable("LOCK_LOST", "a newer holder took this patient's lock; retry with the same request id")


def _decode_record(raw: dict[Any, Any]) -> dict[str, str]:
    """Settlement records hold one binary field (`result`, protobuf bytes): keep it as latin-1 text."""
    out: dict[str, str] = {}
    for k, v in raw.items():
        key = _s(k)
        out[key] = v.decode("latin-1") if key == "result" and isinstance(v, bytes) else _s(v)
    return out


def _ledger_pb(e: dict[str, Any]) -> pb.LedgerEntry:
    return pb.LedgerEntry(seq=e["seq"], kind=e["kind"], amount_fen=e["amount"], balance_after_fen=e["bal"],
                          ref=e["ref"], at_unix_ms=e["at"])
