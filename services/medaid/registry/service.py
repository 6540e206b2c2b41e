"""The province registry's application layer: one object that the servicer, the CLI's in-process
demo and the tests talk to, made of cohesive parts that share one `Context`:

    people.py     enrolment, status changes, personal accounts
    bindings.py   家庭共济 bindings, diagnosis
    proxies.py    亲情账户
    consumption.py  consumption records (共济消费记录), a page at a time
    engine.py     the settlement engine (pre-settlement, settlement, batches)
    reversal.py   reversals
    undo.py       冲正: voiding a request that never arrived, undoing a reversal
    transfers.py  the wallet-facing side (transfer debits and refunds, lot returns)
    recovery.py   the recovery loop that finishes what a dead process left half-done
    store.py      reads of Redis state as domain values; records.py the record formats
"""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from medaid.common.clock import Clock
from medaid.common.errors import DomainError
from medaid.common.idempotency import Idempotency, validate_request_id
from medaid.common.lock import FencedLocks
from medaid.common.scripts import ScriptSet
from medaid.common.v1 import common_pb2 as cpb
from medaid.directory import Directory
from medaid.registry import diagnosis_rules, validate
from medaid.registry.bindings import Bindings
from medaid.registry.consumption import ConsumptionRecords
from medaid.registry.context import FAULT_POINTS, LOCK_TTL_MS, Context, InjectedFault, check_batch
from medaid.registry.engine import Engine
from medaid.registry.family import Family
from medaid.registry.keys import Keys
from medaid.registry.lifecycle import LifeCycle
from medaid.registry.people import People
from medaid.registry.policy import Policy
from medaid.registry.premiums import Premiums
from medaid.registry.recovery import DEFAULT_GRACE_MS, Recovery, RecoveryCounts
from medaid.registry.reversal import Reversals
from medaid.registry.store import Store
from medaid.registry.transfers import TransferSide
from medaid.registry.undo import Undo, lookup
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.wallet_port import NoWallet, WalletPort

__all__ = ["FAULT_POINTS", "InjectedFault", "Registry"]


# Refusals of a Diagnose bill's pre-settlement that a finding already explains: the member not
# enrolled or not ACTIVE (MEMBER_NOT_INSURED, CROSS_PROVINCE), the category not payable.
BILL_NOT_PLANNED = ("PERSON_NOT_FOUND", "MEMBER_NOT_INSURED", "CATEGORY_NOT_PAYABLE")


class Registry:
    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        policy: Policy,
        *,
        clock: Clock | None = None,
        wallet: WalletPort | None = None,
        directory: Directory | None = None,
        atomic: bool | None = None,
        recovery_grace_ms: int = DEFAULT_GRACE_MS,
        lock_ttl_ms: int = LOCK_TTL_MS,
    ) -> None:
        self.ctx = Context(
            r=client, policy=policy, clock=clock or Clock(), wallet=wallet or NoWallet(),
            directory=directory or Directory(client),
            atomic=not isinstance(client, aioredis.RedisCluster) if atomic is None else atomic,
            lock_ttl_ms=lock_ttl_ms,
        )
        self.store = Store(self.ctx)
        self.bindings = Bindings(self.ctx, self.store)
        self.family = Family(self.ctx, self.store)
        self.consumption = ConsumptionRecords(self.ctx)
        self.people = People(self.ctx, self.store, self.bindings, self.family)
        self.lifecycle = LifeCycle(self.ctx, self.store, self.bindings, self.family)
        self.engine = Engine(self.ctx, self.store, self.family)
        self.reversals = Reversals(self.ctx, self.store, self.family)
        self.transfers = TransferSide(self.ctx, self.store)
        self.undo = Undo(self.ctx, self.store, self.family)
        self.premiums = Premiums(self.ctx, self.store, self.family, self.people)
        self.recovery = Recovery(self.ctx, self.store, self.engine, self.reversals, recovery_grace_ms,
                                 undo=self.undo, family=self.family, premiums=self.premiums, people=self.people,
                                 lifecycle=self.lifecycle, bindings=self.bindings)

    # Read-only views of the shared parts (tests look at keys and run scripts directly).
    @property
    def k(self) -> Keys:
        return self.ctx.k

    @property
    def idem(self) -> Idempotency:
        return self.ctx.idem

    @property
    def locks(self) -> FencedLocks:
        return self.ctx.locks

    @property
    def lua(self) -> ScriptSet:
        return self.ctx.lua

    # Settable seams (tests move the clock, connect a wallet, inject faults, force the staged path).
    @property
    def policy(self) -> Policy:
        return self.ctx.policy

    @property
    def clock(self) -> Clock:
        return self.ctx.clock

    @clock.setter
    def clock(self, value: Clock) -> None:
        self.ctx.clock = value

    @property
    def wallet(self) -> WalletPort:
        return self.ctx.wallet

    @wallet.setter
    def wallet(self, value: WalletPort) -> None:
        self.ctx.wallet = value

    @property
    def fault_hook(self) -> Callable[[str], None] | None:
        return self.ctx.fault_hook

    @fault_hook.setter
    def fault_hook(self, value: Callable[[str], None] | None) -> None:
        self.ctx.fault_hook = value

    @property
    def atomic(self) -> bool:
        """One Redis: settlements without a wallet share apply in one atomic script."""
        return self.ctx.atomic

    @atomic.setter
    def atomic(self, value: bool) -> None:
        self.ctx.atomic = value

    async def recover(self) -> RecoveryCounts:
        """One recovery pass (the loop runs it every interval)."""
        return await self.recovery.run_once()

    # --- the RPCs, one method each ---------------------------------------------------------

    async def enroll(self, req: pb.EnrollPersonRequest) -> pb.EnrollPersonResponse:
        return await self.people.enroll(req)

    async def update_status(self, req: pb.UpdatePersonStatusRequest) -> pb.UpdatePersonStatusResponse:
        return await self.people.update_status(req)

    async def get_person(self, req: pb.GetPersonRequest) -> pb.GetPersonResponse:
        return await self.lifecycle.get_person(req)

    async def move_region(self, req: pb.MovePoolingRegionRequest) -> pb.MovePoolingRegionResponse:
        return await self.lifecycle.move_region(req)

    async def record_death(self, req: pb.RecordDeathRequest) -> pb.RecordDeathResponse:
        return await self.lifecycle.record_death(req)

    async def remove_proxy(self, req: pb.RemoveProxyRequest) -> pb.RemoveProxyResponse:
        return await self.bindings.proxies.remove_proxy(req)

    async def get_persons(self, req: pb.GetPersonsRequest) -> pb.GetPersonsResponse:
        return await self.people.get_persons(req)

    async def credit(self, req: pb.CreditAccountRequest) -> pb.CreditAccountResponse:
        return await self.people.credit(req)

    async def get_account(self, req: pb.GetAccountRequest) -> pb.GetAccountResponse:
        return await self.people.get_account(req)

    async def bind(self, req: pb.BindMutualAidRequest) -> pb.BindMutualAidResponse:
        return await self.bindings.bind(req)

    async def unbind(self, req: pb.UnbindMutualAidRequest) -> pb.UnbindMutualAidResponse:
        return await self.bindings.unbind(req)

    async def list_bindings(self, req: pb.ListBindingsRequest) -> pb.ListBindingsResponse:
        return await self.bindings.list_bindings(req)

    async def bind_proxy(self, req: pb.BindProxyRequest) -> pb.BindProxyResponse:
        return await self.bindings.proxies.bind_proxy(req)

    async def list_proxies(self, req: pb.ListProxyBindingsRequest) -> pb.ListProxyBindingsResponse:
        return await self.bindings.proxies.list_proxies(req)

    async def diagnose(self, req: pb.DiagnoseRequest) -> pb.DiagnoseResponse:
        amount = validate.amount(req.amount_fen) if req.amount_fen else 0
        if self.ctx.policy.pooled:  # SPEC §3b: the family account is what would pay
            answer = await self.family.diagnose(req, self.bindings.proxies.proxy_between)
        else:
            answer = await self.bindings.diagnose(req)
        if amount:
            await self._diagnose_bill(req, amount, answer)
        return answer

    async def _diagnose_bill(self, req: pb.DiagnoseRequest, amount: int, answer: pb.DiagnoseResponse) -> None:
        """Diagnose of a bill (`amount_fen`): the split PreSettle would give the member now (the engine's
        own plan, `Engine.pre_settlement`), the helper's part of its 共济, and why not more
        (`diagnosis_rules.bill_finding`). A member no settlement can be planned for (not insured, a
        category not payable) gets no split: the findings already say why."""
        member = validate.id_number(req.member_id_number, "member_id_number")
        helper = validate.id_number(req.helper_id_number, "helper_id_number")
        pre = pb.PreSettleRequest(patient_id_number=member, amount_fen=amount, use_account=True,
                                  category=req.category or cpb.CATEGORY_OUTPATIENT)
        try:
            bill = await self.engine.pre_settlement(pre, member)
        except DomainError as exc:
            if exc.reason in BILL_NOT_PLANNED:
                return
            raise
        if self.ctx.policy.pooled:
            asked = await self.family.account_between(helper, member)
            here = bill.mulaid_pay_fen if bill.family_id and bill.family_id == asked else 0
        else:
            here = sum(c.amount_fen for c in bill.helper_charges if c.helper_id_number == helper)
        split = diagnosis_rules.Bill(amount, bill.acct_pay_fen, bill.wallet_pay_fen, bill.cash_pay_fen,
                                     bill.helper_reason, here)
        before = [diagnosis_rules.Finding(f.code, f.message) for f in answer.findings]
        finding = diagnosis_rules.bill_finding(self.ctx.policy, split, answer.helper_balance_fen, before)
        if finding is not None and finding.code not in {f.code for f in before}:
            answer.findings.append(pb.Finding(code=finding.code, message=finding.message))
        patient = await self.store.person(member)
        wallet = diagnosis_rules.wallet_finding(bill.wallet_reason, patient.wallet_place if patient else "",
                                                patient.region if patient else "")
        if wallet is not None:  # the member's own wallet, not 共济: would_pay stands as the helper's
            answer.findings.append(pb.Finding(code=wallet.code, message=wallet.message))
        answer.would_pay = diagnosis_rules.bill_would_pay(split, before)
        answer.bill.CopyFrom(bill)
        answer.mulaid_pay_fen = here

    async def list_consumption(self, req: pb.ListConsumptionRecordsRequest) -> pb.ListConsumptionRecordsResponse:
        return await self.consumption.list_page(req)

    async def presettle(self, req: pb.PreSettleRequest) -> pb.PreSettleResponse:
        return await self.engine.presettle(req)

    async def settle(self, req: pb.SettleRequest) -> pb.SettleResponse:
        return await self.engine.settle(req)

    async def settle_batch(self, req: pb.SettleBatchRequest) -> pb.SettleBatchResponse:
        return await self.engine.settle_batch(req)

    async def get_settlement(self, req: pb.GetSettlementRequest) -> pb.GetSettlementResponse:
        return await self.engine.get_settlement(req)

    async def reverse(self, req: pb.ReverseSettlementRequest) -> pb.ReverseSettlementResponse:
        return await self.reversals.reverse(req)

    async def get_settlements(self, req: pb.GetSettlementsRequest) -> pb.GetSettlementsResponse:
        check_batch(len(req.settlement_ids), "settlement ids")
        for sid in req.settlement_ids:
            validate_request_id(sid)
        records = await self.store.records_by_ids(list(req.settlement_ids))
        return pb.GetSettlementsResponse(settlements=[lookup(sid, rec) for sid, rec in
                                                      zip(req.settlement_ids, records, strict=True)])

    async def cancel_request(self, req: pb.CancelRequestRequest) -> pb.CancelRequestResponse:
        return await self.undo.cancel_request(req)

    async def undo_reversal(self, req: pb.UndoReversalRequest) -> pb.UndoReversalResponse:
        return await self.undo.undo_reversal(req)

    async def debit_for_transfer(self, req: pb.DebitForTransferRequest) -> pb.DebitForTransferResponse:
        return await self.transfers.debit_for_transfer(req)

    async def debit_for_transfer_batch(self, req: pb.DebitForTransferBatchRequest
                                       ) -> pb.DebitForTransferBatchResponse:
        return await self.transfers.debit_for_transfer_batch(req)

    async def refund_transfer(self, req: pb.RefundTransferRequest) -> pb.RefundTransferResponse:
        return await self.transfers.refund_transfer(req)

    async def note_wallet(self, req: pb.NoteWalletRequest) -> pb.NoteWalletResponse:
        return await self.transfers.note_wallet(req)

    async def credit_lot_return(self, req: pb.CreditLotReturnRequest) -> pb.CreditLotReturnResponse:
        return await self.transfers.credit_lot_return(req)

    # --- the pooled family account (SPEC §3b) -----------------------------------------------

    async def create_family(self, req: fpb.CreateFamilyAccountRequest) -> fpb.CreateFamilyAccountResponse:
        return await self.family.create(req)

    async def invite_member(self, req: fpb.InviteMemberRequest) -> fpb.InviteMemberResponse:
        return await self.family.invite(req)

    async def respond_to_invitation(self, req: fpb.RespondToInvitationRequest) -> fpb.RespondToInvitationResponse:
        return await self.family.respond(req)

    async def remove_member(self, req: fpb.RemoveMemberRequest) -> fpb.RemoveMemberResponse:
        return await self.family.remove(req)

    async def leave_family(self, req: fpb.LeaveFamilyAccountRequest) -> fpb.LeaveFamilyAccountResponse:
        return await self.family.leave(req)

    async def dissolve_family(self, req: fpb.DissolveFamilyAccountRequest) -> fpb.DissolveFamilyAccountResponse:
        return await self.family.dissolve(req)

    async def transfer_into_family(self, req: fpb.TransferIntoFamilyAccountRequest
                                   ) -> fpb.TransferIntoFamilyAccountResponse:
        return await self.family.transfer_in(req)

    async def withdraw_contribution(self, req: fpb.WithdrawContributionRequest) -> fpb.WithdrawContributionResponse:
        return await self.family.withdraw(req)

    async def get_family(self, req: fpb.GetFamilyAccountRequest) -> fpb.GetFamilyAccountResponse:
        return await self.family.get(req)

    # --- 代缴 (SPEC §4b) ----------------------------------------------------------------------

    async def pay_premium(self, req: ppb.PayResidentPremiumRequest) -> ppb.PayResidentPremiumResponse:
        return await self.premiums.pay(req)

    async def cancel_premium(self, req: ppb.CancelResidentPremiumRequest) -> ppb.CancelResidentPremiumResponse:
        return await self.premiums.cancel(req)

    async def list_premiums(self, req: ppb.ListResidentPremiumsRequest) -> ppb.ListResidentPremiumsResponse:
        return await self.premiums.list(req)
