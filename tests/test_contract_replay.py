"""SPEC §7 over every RPC that writes, from the service descriptors (`test_contract_sweep.py` lists them):
"every request id has exactly one effect; a replay returns the first answer; a replay with different fields
is rejected (IDEMPOTENCY_KEY_REUSED)". For each keyed write, on people and ids of its own (`CASES`):

- (a) the request succeeds;
- (b) sent again with the same id it answers byte for byte the same (deterministic serialisation; the
  wallet's ports into a registry set their documented `replayed` flag, `REPLAYED_FLAG`) and writes nothing;
- (c) the same id with one field changed is refused IDEMPOTENCY_KEY_REUSED and writes nothing;
- and, sent first naming a person (or settlement) nobody made, it is refused by a rule, writes nothing,
  and leaves its id to the corrected request, which succeeds.

Where a snapshot ignores something, it is what the existing tests ignore: the router's msgid claims' attempt
count and time (`_but_attempts`, test_replay_after_change.py) and, for the unkeyed NoteOwnerStatus, the lock
fences (`_no_fence`, test_idempotency.py).

One set of servers for the module (the sweep's `env`, started once more here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from medaid.common.errors import error_info
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from medaid.router.v1 import router_pb2 as xpb
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, RESIDENT, bind, credit, enroll, new_id, rid, settle, snapshot
from test_contract_sweep import GS, HOSPITAL, READS, SERVICES, Env, _all_rpcs, call
from test_contract_sweep import env as env  # noqa: F401  (the sweep's servers, started for this module)


@dataclass
class Case:
    target: str  # a channel of the env: "registry" (河北), "registry-62" (甘肃), "wallet", "router"
    req: Any
    changed: Any | None  # the same id with one field changed; None where the RPC has no id to reuse


def _hb(e: Env) -> Any:
    return e.stub("registry")


def _gs(e: Env) -> Any:
    return e.stub("registry-62")


def _bj(e: Env) -> Any:
    return e.stub("registry-11")


def _changed(req: Any, **fields: Any) -> Any:
    out = type(req)()
    out.CopyFrom(req)
    for k, v in fields.items():
        setattr(out, k, v)
    return out


def _employee(e: Env, fen: int = 100_000) -> str:
    pid = enroll(_hb(e), name="张伟")
    credit(_hb(e), pid, fen)
    return pid


def _child(e: Env) -> str:
    return enroll(_hb(e), itype=RESIDENT, birth="20160101", name="张小雨")


def _settled(e: Env, fen: int = 1_000) -> tuple[str, str]:
    patient = _employee(e)
    return patient, settle(_hb(e), patient, fen).settlement_id


def _wallet_pair(e: Env, fen: int = 10_000) -> tuple[str, str, str]:
    """A fresh 北京 employee who sent `fen` to a fresh 河北 parent's wallet, accepted: (sender, holder, transfer)."""
    bj, w = _bj(e), e.stub("wallet")
    sender = enroll(bj, region="110000", division="110105", name="王五")
    credit(bj, sender, 500_000)
    holder = enroll(_hb(e), name="张伟")
    for owner, prov, place in ((holder, "13", "130100"), (sender, "11", "110000")):
        w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner, province=prov,
                                           use_place_admdvs=place, real_name=FACE))
    t = w.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=sender, sender_province="11", recipient_id_number=holder,
        relation=cpb.RELATION_PARENT, amount_fen=fen, verification=FACE)).transfer
    w.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                               recipient_id_number=holder))
    return sender, holder, t.transfer_id


def _family(e: Env, fen: int = 10_000) -> tuple[str, str]:
    gs = _gs(e)
    creator = enroll(gs, name="赵六", **GS)
    credit(gs, creator, 500_000)
    fam = gs.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE, initial_transfer_fen=fen))
    return creator, fam.account.family_id


def _family_member(e: Env) -> tuple[str, str, str]:
    creator, fam = _family(e)
    child = enroll(_gs(e), itype=RESIDENT, birth="20150101", name="赵小", **GS)
    _gs(e).InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fam, creator_id_number=creator,
                                                member_id_number=child, relation=cpb.RELATION_CHILD))
    return creator, fam, child


def _hospital_settle(e: Env, patient: str, fen: int = 1_000) -> xpb.SettleRequest:
    return xpb.SettleRequest(msgid=e.msgid(), institution=HOSPITAL, input=xpb.SettleInput(
        psn_no=patient, insuplc_admdvs="130100", psn_part_amt_fen=fen, medfee_sumamt_fen=fen,
        acct_used_flag="1", category=cpb.CATEGORY_OUTPATIENT, mdtrt_id=f"MZ{rid('m')[2:]}"))


# --- one builder per write RPC ----------------------------------------------------------------------------------


def _enroll(e: Env) -> Case:
    req = pb.EnrollPersonRequest(request_id=rid("enroll"), id_number=new_id(), name="孙七",
                                 insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE, pooling_region="130100")
    return Case("registry", req, _changed(req, name="钱七"))


def _status(e: Env) -> Case:
    req = pb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=_employee(e),
                                       status=cpb.PERSON_STATUS_SUSPENDED, occurred_at_unix_ms=1_763_000_000_000)
    return Case("registry", req, _changed(req, status=cpb.PERSON_STATUS_TERMINATED))


def _credit(e: Env) -> Case:
    req = pb.CreditAccountRequest(request_id=rid("credit"), id_number=_employee(e), amount_fen=100,
                                  kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
    return Case("registry", req, _changed(req, amount_fen=101))


def _bind(e: Env) -> Case:
    req = pb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=_employee(e),
                                  member_id_number=_child(e), relation=cpb.RELATION_CHILD, member_verification=FACE)
    return Case("registry", req, _changed(req, member_id_number=_child(e)))


def _unbind(e: Env) -> Case:
    helper, member, other = _employee(e), _child(e), _child(e)
    bind(_hb(e), helper, member)
    bind(_hb(e), helper, other)
    req = pb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=helper, member_id_number=member)
    return Case("registry", req, _changed(req, member_id_number=other))


def _bind_proxy(e: Env) -> Case:
    req = pb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=_employee(e), relative_id_number=_child(e),
                              relation=cpb.RELATION_CHILD, relative_verification=FACE)
    return Case("registry", req, _changed(req, relative_id_number=_child(e)))


def _settle_req(e: Env) -> pb.SettleRequest:
    return pb.SettleRequest(request_id=rid("settle"), patient_id_number=_employee(e), amount_fen=1_000,
                            use_account=True, category=cpb.CATEGORY_OUTPATIENT, institution_code="H13010100001",
                            institution_admdvs="130100")


def _settle(e: Env) -> Case:
    req = _settle_req(e)
    return Case("registry", req, _changed(req, amount_fen=1_001))


def _settle_batch(e: Env) -> Case:
    one = _settle_req(e)
    return Case("registry", pb.SettleBatchRequest(requests=[one]),
                pb.SettleBatchRequest(requests=[_changed(one, amount_fen=1_001)]))


def _reverse(e: Env) -> Case:
    _, sid = _settled(e)
    _, other = _settled(e)
    req = pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=sid)
    return Case("registry", req, _changed(req, settlement_id=other))


def _cancel(e: Env) -> Case:
    req = pb.CancelRequestRequest(request_id=rid("cancel"), original_request_id=rid("never"))
    return Case("registry", req, _changed(req, original_request_id=rid("never")))


def _undo_reversal(e: Env) -> Case:
    ids = []
    for _ in range(2):
        _, sid = _settled(e)
        ids.append(rid("rev"))
        _hb(e).ReverseSettlement(pb.ReverseSettlementRequest(request_id=ids[-1], settlement_id=sid))
    req = pb.UndoReversalRequest(request_id=rid("undo"), reversal_id=ids[0])
    return Case("registry", req, _changed(req, reversal_id=ids[1]))


def _debit_req(e: Env) -> pb.DebitForTransferRequest:
    return pb.DebitForTransferRequest(transfer_id=rid("T"), sender_id_number=_employee(e), amount_fen=100,
                                      recipient_province="11")


def _debit(e: Env) -> Case:
    req = _debit_req(e)
    return Case("registry", req, _changed(req, amount_fen=101))


def _debit_batch(e: Env) -> Case:
    one = _debit_req(e)
    return Case("registry", pb.DebitForTransferBatchRequest(requests=[one]),
                pb.DebitForTransferBatchRequest(requests=[_changed(one, amount_fen=101)]))


def _refund_transfer(e: Env) -> Case:
    d = _debit_req(e)
    _hb(e).DebitForTransfer(d)
    req = pb.RefundTransferRequest(transfer_id=d.transfer_id, sender_id_number=d.sender_id_number, amount_fen=100)
    return Case("registry", req, _changed(req, amount_fen=99))


def _lot_return(e: Env) -> Case:
    req = pb.CreditLotReturnRequest(return_id=rid("ret"), sender_id_number=_employee(e), amount_fen=100,
                                    transfer_id=rid("T"))
    return Case("registry", req, _changed(req, amount_fen=101))


def _note_wallet(e: Env) -> Case:
    req = pb.NoteWalletRequest(id_number=_employee(e), use_place_admdvs="130100", place_version=1)
    return Case("registry", req, None)


def _move(e: Env) -> Case:
    req = pb.MovePoolingRegionRequest(request_id=rid("move"), id_number=_employee(e), pooling_region="130200",
                                      occurred_at_unix_ms=1_763_000_000_000)
    return Case("registry", req, _changed(req, pooling_region="130300"))


def _death(e: Env) -> Case:
    req = pb.RecordDeathRequest(request_id=rid("death"), id_number=_employee(e), heir_id_number=_employee(e),
                                heir_name="张伟", date_of_death="20261101")
    return Case("registry", req, _changed(req, heir_name="张伟伟"))


def _remove_proxy(e: Env) -> Case:
    holder, relative = _employee(e), _child(e)
    _hb(e).BindProxy(pb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=holder,
                                         relative_id_number=relative, relation=cpb.RELATION_CHILD,
                                         relative_verification=FACE))
    req = pb.RemoveProxyRequest(request_id=rid("rmproxy"), holder_id_number=holder, relative_id_number=relative,
                                requested_by_id_number=holder)
    return Case("registry", req, _changed(req, requested_by_id_number=relative))


def _create_family(e: Env) -> Case:
    creator = enroll(_gs(e), name="赵六", **GS)
    credit(_gs(e), creator, 500_000)
    req = fpb.CreateFamilyAccountRequest(request_id=rid("fam"), creator_id_number=creator, commitment=FACE,
                                         initial_transfer_fen=100)
    return Case("registry-62", req, _changed(req, initial_transfer_fen=101))


def _invite(e: Env) -> Case:
    creator, fam = _family(e)
    child = enroll(_gs(e), itype=RESIDENT, birth="20150101", name="赵小", **GS)
    req = fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fam, creator_id_number=creator,
                                  member_id_number=child, relation=cpb.RELATION_CHILD)
    return Case("registry-62", req, _changed(req, relation=cpb.RELATION_SPOUSE))


def _respond(e: Env) -> Case:
    creator, fam = _family(e)
    adult = enroll(_gs(e), name="赵七", **GS)
    _gs(e).InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fam, creator_id_number=creator,
                                                member_id_number=adult, relation=cpb.RELATION_SPOUSE))
    req = fpb.RespondToInvitationRequest(request_id=rid("resp"), family_id=fam, member_id_number=adult,
                                         accept=True, verification=FACE)
    return Case("registry-62", req, _changed(req, accept=False))


def _remove_member(e: Env) -> Case:
    creator, fam, child = _family_member(e)
    req = fpb.RemoveMemberRequest(request_id=rid("rm"), family_id=fam, creator_id_number=creator,
                                  member_id_number=child)
    return Case("registry-62", req, _changed(req, member_id_number=creator))


def _leave(e: Env) -> Case:
    creator, fam, child = _family_member(e)
    req = fpb.LeaveFamilyAccountRequest(request_id=rid("leave"), family_id=fam, member_id_number=child)
    return Case("registry-62", req, _changed(req, member_id_number=creator))


def _dissolve(e: Env) -> Case:
    creator, fam = _family(e)
    _, other = _family(e)
    req = fpb.DissolveFamilyAccountRequest(request_id=rid("dissolve"), family_id=fam, creator_id_number=creator)
    return Case("registry-62", req, _changed(req, family_id=other))


def _huabo(e: Env) -> Case:
    creator, fam = _family(e)
    req = fpb.TransferIntoFamilyAccountRequest(request_id=rid("huabo"), family_id=fam,
                                               contributor_id_number=creator, amount_fen=100)
    return Case("registry-62", req, _changed(req, amount_fen=101))


def _withdraw(e: Env) -> Case:
    creator, fam = _family(e)
    _, other = _family(e)
    req = fpb.WithdrawContributionRequest(request_id=rid("wd"), family_id=fam, contributor_id_number=creator)
    return Case("registry-62", req, _changed(req, family_id=other))


def _premium(e: Env) -> Case:
    req = ppb.PayResidentPremiumRequest(request_id=rid("prem"), payer_id_number=_employee(e),
                                        payee_id_number=_child(e), relation=cpb.RELATION_CHILD, year="2027",
                                        source=ppb.PREMIUM_SOURCE_ACCOUNT)
    return Case("registry", req, _changed(req, payee_id_number=_child(e)))


def _cancel_premium(e: Env) -> Case:
    payer, payee = _employee(e), _child(e)
    _hb(e).PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=payer, payee_id_number=payee, relation=cpb.RELATION_CHILD,
        year="2027", source=ppb.PREMIUM_SOURCE_ACCOUNT))
    req = ppb.CancelResidentPremiumRequest(request_id=rid("pcancel"), payee_id_number=payee, year="2027",
                                           payer_id_number=payer)
    return Case("registry", req, _changed(req, payee_id_number=_child(e)))


def _open(e: Env) -> Case:
    req = wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=_employee(e), province="13",
                                use_place_admdvs="130100", real_name=FACE)
    return Case("wallet", req, _changed(req, use_place_admdvs="130200"))


def _create_transfer(e: Env) -> Case:
    sender, holder, _ = _wallet_pair(e)
    req = wpb.CreateTransferRequest(request_id=rid("xfer"), sender_id_number=sender, sender_province="11",
                                    recipient_id_number=holder, relation=cpb.RELATION_PARENT, amount_fen=100,
                                    verification=FACE)
    return Case("wallet", req, _changed(req, amount_fen=101))


def _accept(e: Env) -> Case:
    sender, holder, _ = _wallet_pair(e)
    w = e.stub("wallet")
    t = w.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=sender, sender_province="11", recipient_id_number=holder,
        relation=cpb.RELATION_PARENT, amount_fen=100, verification=FACE)).transfer
    _, _, other = _wallet_pair(e)
    req = wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id, recipient_id_number=holder)
    return Case("wallet", req, _changed(req, transfer_id=other))


def _spend_req(holder: str) -> wpb.SpendWalletRequest:
    return wpb.SpendWalletRequest(request_id=rid("spend"), owner_id_number=holder, amount_fen=100,
                                  category=cpb.CATEGORY_OUTPATIENT, spending_admdvs="130100")


def _spend(e: Env) -> Case:
    _, holder, _ = _wallet_pair(e)
    req = _spend_req(holder)
    return Case("wallet", req, _changed(req, amount_fen=101))


def _refund_spend(e: Env) -> Case:
    _, holder, _ = _wallet_pair(e)
    w = e.stub("wallet")
    spends = [_spend_req(holder) for _ in range(2)]
    for s in spends:
        w.SpendWallet(s)
    req = wpb.RefundWalletSpendRequest(request_id=rid("refund"), spend_id=spends[0].request_id,
                                       owner_id_number=holder)
    return Case("wallet", req, _changed(req, spend_id=spends[1].request_id))


def _pay_premium(e: Env) -> Case:
    _, holder, _ = _wallet_pair(e)
    req = wpb.PayPremiumRequest(request_id=rid("wprem"), owner_id_number=holder, amount_fen=100,
                                category=cpb.CATEGORY_LONG_TERM_CARE_PREMIUM, period="2027")
    return Case("wallet", req, _changed(req, amount_fen=101))


def _release(e: Env) -> Case:
    sender, _, _ = _wallet_pair(e)
    req = wpb.ReleaseSenderLotsRequest(request_id=rid("release"), sender_id_number=sender, reason="TERMINATED",
                                       event_at_unix_ms=1_763_000_000_000)
    return Case("wallet", req, _changed(req, event_at_unix_ms=1_763_000_000_001))


def _end(e: Env) -> Case:
    sender, holder, _ = _wallet_pair(e)
    req = wpb.EndWalletRelationshipRequest(request_id=rid("end"), sender_id_number=sender, holder_id_number=holder,
                                           requested_by_id_number=holder)
    return Case("wallet", req, _changed(req, requested_by_id_number=sender))


def _end_all(e: Env) -> Case:
    sender, _, _ = _wallet_pair(e)
    req = wpb.EndPersonWalletRelationshipsRequest(request_id=rid("endall"), id_number=sender, reason="DECEASED",
                                                  province="11", event_at_unix_ms=1_763_000_000_000)
    return Case("wallet", req, _changed(req, reason="TERMINATED"))


def _note_owner(e: Env) -> Case:
    _, holder, _ = _wallet_pair(e)
    return Case("wallet", wpb.NoteOwnerStatusRequest(id_number=holder, province="13"), None)


def _use_place(e: Env) -> Case:
    _, holder, _ = _wallet_pair(e)
    req = wpb.ChangeUsePlaceRequest(request_id=rid("place"), owner_id_number=holder, use_place_admdvs="130200")
    return Case("wallet", req, _changed(req, use_place_admdvs="130300"))


def _router_settle(e: Env) -> Case:
    req = _hospital_settle(e, _employee(e))
    changed = _changed(req)
    changed.input.psn_part_amt_fen = changed.input.medfee_sumamt_fen = 1_001
    return Case("router", req, changed)


def _router_reverse(e: Env) -> Case:
    setl = []
    for _ in range(2):
        patient = _employee(e)
        setl.append((patient, e.stub("router").Settle(_hospital_settle(e, patient)).setlinfo.setl_id))
    req = xpb.ReverseSettlementRequest(msgid=e.msgid(), institution=HOSPITAL, setl_id=setl[0][1],
                                       psn_no=setl[0][0], insuplc_admdvs="130100")
    return Case("router", req, _changed(req, setl_id=setl[1][1], psn_no=setl[1][0]))


def _router_undo(e: Env) -> Case:
    req = xpb.UndoRequest(msgid=e.msgid(), institution=HOSPITAL, psn_no=_employee(e), insuplc_admdvs="130100",
                          omsgid=e.msgid(), oinfno="2207")
    return Case("router", req, _changed(req, omsgid=e.msgid()))


CASES: dict[str, Callable[[Env], Case]] = {
    "registry.EnrollPerson": _enroll, "registry.UpdatePersonStatus": _status, "registry.CreditAccount": _credit,
    "registry.BindMutualAid": _bind, "registry.UnbindMutualAid": _unbind, "registry.BindProxy": _bind_proxy,
    "registry.Settle": _settle, "registry.SettleBatch": _settle_batch, "registry.ReverseSettlement": _reverse,
    "registry.CancelRequest": _cancel, "registry.UndoReversal": _undo_reversal,
    "registry.DebitForTransfer": _debit, "registry.DebitForTransferBatch": _debit_batch,
    "registry.RefundTransfer": _refund_transfer, "registry.CreditLotReturn": _lot_return,
    "registry.NoteWallet": _note_wallet, "registry.MovePoolingRegion": _move, "registry.RecordDeath": _death,
    "registry.RemoveProxy": _remove_proxy, "registry.CreateFamilyAccount": _create_family,
    "registry.InviteMember": _invite, "registry.RespondToInvitation": _respond,
    "registry.RemoveMember": _remove_member, "registry.LeaveFamilyAccount": _leave,
    "registry.DissolveFamilyAccount": _dissolve, "registry.TransferIntoFamilyAccount": _huabo,
    "registry.WithdrawContribution": _withdraw, "registry.PayResidentPremium": _premium,
    "registry.CancelResidentPremium": _cancel_premium,
    "wallet.OpenWallet": _open, "wallet.CreateTransfer": _create_transfer, "wallet.AcceptTransfer": _accept,
    "wallet.SpendWallet": _spend, "wallet.RefundWalletSpend": _refund_spend, "wallet.PayPremium": _pay_premium,
    "wallet.ReleaseSenderLots": _release, "wallet.EndWalletRelationship": _end,
    "wallet.EndPersonWalletRelationships": _end_all, "wallet.NoteOwnerStatus": _note_owner,
    "wallet.ChangeUsePlace": _use_place,
    "router.Settle": _router_settle, "router.ReverseSettlement": _router_reverse, "router.Undo": _router_undo,
}
# Writes with no request of their own to resend: the wallet's scheduled maintenance (its answer counts what it
# found to do, so a second run rightly answers differently).
NO_REPLAY = {"wallet.RunMaintenance"}
WRITES = [n for n in _all_rpcs() if n not in READS and n not in NO_REPLAY]


def test_every_write_rpc_has_a_replay_case():
    assert sorted(set(WRITES) - set(CASES)) == [], "a write RPC without a replay case: add one to CASES"
    assert sorted(set(CASES) - set(WRITES)) == []


def _send(e: Env, case: Case, req: Any) -> Any:
    service = case.target.split("-")[0]
    rpc = type(req).DESCRIPTOR.name.removesuffix("Request")
    sd = SERVICES[service]
    return call(e.channels[case.target], sd, sd.methods_by_name[rpc], req)


def _bytes(resp: Any) -> bytes:
    return bytes(resp.SerializeToString(deterministic=True))


# The wallet's ports into a registry answer a retry with `replayed = true` (registry.proto: "True when this
# transfer id had already been debited (a retry)"), the rest of the answer as it first was.
REPLAYED_FLAG = {"registry.DebitForTransfer", "registry.DebitForTransferBatch", "registry.RefundTransfer",
                 "registry.CreditLotReturn"}


def _but_replayed_flag(resp: Any) -> bytes:
    out = type(resp)()
    out.CopyFrom(resp)
    for r in [o.response for o in getattr(out, "outcomes", [])] or [out]:
        assert r.replayed, "a retry not marked replayed"
        r.replayed = False
    return _bytes(out)


def _but_attempts(snap: dict[bytes, Any]) -> dict[bytes, Any]:
    """A snapshot less the attempt count and time of the router's msgid claims (a resend joins its msgid's
    claim as an attempt: msgid_claim.lua), as test_replay_after_change.py compares them."""
    return {k: (kind, tuple((f, v) for f, v in value if f not in (b"open", b"at")))
            if k.startswith(b"rtr:{mid:") else (kind, value) for k, (kind, value) in snap.items()}


def _no_fence(snap: dict[bytes, Any]) -> dict[bytes, Any]:
    """A snapshot less the lock fences (counted on at every taking of a lock), as test_idempotency.py
    compares them: a note of the owner's status (unkeyed, repeatable) takes the owner's lock each time."""
    return {k: v for k, v in snap.items() if not k.endswith(b":fence")}


def _state(e: Env, name: str) -> dict[bytes, Any]:
    snap = snapshot(e.rdb)
    if name.startswith("router."):
        return _but_attempts(snap)
    return _no_fence(snap) if name == "wallet.NoteOwnerStatus" else snap


def _refusal(e: Env, case: Case, req: Any) -> tuple[str, str]:
    """The code and reason `req` is refused with (an item's, for a batch), or ("OK", "") if accepted."""
    try:
        resp = _send(e, case, req)
    except grpc.RpcError as exc:
        info = error_info(exc)
        return exc.code().name, info.reason if info else ""
    outcomes = list(getattr(resp, "outcomes", []))
    if outcomes and outcomes[0].WhichOneof("outcome") == "error":
        return "ITEM", outcomes[0].error.reason
    return "OK", ""


@pytest.mark.parametrize("name", WRITES)
def test_replay_answers_the_first_answer_and_a_changed_replay_is_refused(env, name):
    case = CASES[name](env)
    before = snapshot(env.rdb)
    first = _send(env, case, case.req)
    for o in getattr(first, "outcomes", []):
        assert o.WhichOneof("outcome") != "error", (name, o)
    assert snapshot(env.rdb) != before, f"{name}: the first request wrote nothing"

    # (b) the same request again: the first answer, byte for byte, and nothing written
    before = _state(env, name)
    again = _send(env, case, case.req)
    got = _but_replayed_flag(again) if name in REPLAYED_FLAG else _bytes(again)
    assert got == _bytes(first), f"{name}: a replay answered\n{again}\nnot\n{first}"
    assert _state(env, name) == before, f"{name}: a replay wrote something"

    # (c) the same id, one field changed: IDEMPOTENCY_KEY_REUSED, nothing written
    if case.changed is None:
        return
    before = _state(env, name)
    refusal = _refusal(env, case, case.changed)
    assert refusal in (("ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED"), ("ITEM", "IDEMPOTENCY_KEY_REUSED")), \
        (name, refusal)
    assert _state(env, name) == before, f"{name}: a reused id wrote something"


def test_a_cancelled_transfers_refund_resent_with_another_amount_is_refused(env):
    """A refund of a transfer never debited cancels it for good; resent with another amount it is a reused
    id, as a refund of a debited one is."""
    reg = env.stub("registry")
    req = pb.RefundTransferRequest(transfer_id=rid("T"), sender_id_number=_employee(env), amount_fen=100)
    first = reg.RefundTransfer(req)
    assert first.refunded_fen == 0 and not first.replayed
    assert _but_replayed_flag(reg.RefundTransfer(req)) == _bytes(first)
    before = snapshot(env.rdb)
    refusal = _refusal(env, Case("registry", req, None), _changed(req, amount_fen=101))
    assert refusal == ("ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED")
    assert snapshot(env.rdb) == before


# --- a refusal by a rule leaves its id free -----------------------------------------------------------------


def _person_fields(msg: Any, prefix: str = "") -> list[tuple[Any, str]]:
    """(message, field) of every id number `msg` names (nested requests and inputs included)."""
    out: list[tuple[Any, str]] = []
    for f in msg.DESCRIPTOR.fields:
        if f.message_type is not None and not f.is_repeated:
            out += _person_fields(getattr(msg, f.name))
        elif f.message_type is not None:
            for item in getattr(msg, f.name)[:1]:
                out += _person_fields(item)
        elif f.name.endswith("id_number") or f.name == "psn_no":
            if getattr(msg, f.name):
                out.append((msg, f.name))
    return out


# Writes for which a person unknown here is no refusal: an enrolment names a person not yet enrolled; the
# wallet's life-cycle events and status notes about a person with nothing in the wallet have nothing to do
# (answered OK); a 2601 of a request never seen voids it (answered VOIDED).
NOBODY_ACCEPTED = {"registry.EnrollPerson", "wallet.ReleaseSenderLots", "wallet.EndPersonWalletRelationships",
                   "wallet.NoteOwnerStatus", "registry.CancelRequest"}
# The field to spoil where it is not the first id number named: what a reversal and its undoing name is a
# settlement or a reversal nobody made; a proxy's removal is asked by its holder, so the relative is unknown.
WRONG_FIELD = {"registry.ReverseSettlement": "settlement_id", "registry.UndoReversal": "reversal_id",
               "registry.RemoveProxy": "relative_id_number"}


@pytest.mark.parametrize("name", [n for n in WRITES if n not in NOBODY_ACCEPTED])
def test_a_request_refused_by_a_rule_leaves_its_id_to_the_corrected_request(env, name):
    """A request naming a person nobody enrolled is refused by a rule (not a field's form), writes
    nothing, and its id is then judged afresh: the corrected request succeeds and is replayed."""
    case = CASES[name](env)
    wrong = type(case.req)()
    wrong.CopyFrom(case.req)
    if name in WRONG_FIELD:
        owner, field_name = wrong, WRONG_FIELD[name]
        setattr(owner, field_name, rid("nosuch") if field_name.endswith("_id") else new_id("130102", "19700101"))
    else:
        fields = _person_fields(wrong)
        assert fields, name
        owner, field_name = fields[0]
        setattr(owner, field_name, new_id("130102", "19700101"))
    before = _state(env, name)
    code, why = _refusal(env, case, wrong)
    assert code not in ("OK", "INVALID_ARGUMENT") and why, (name, field_name, code, why)
    assert _state(env, name) == before, f"{name}: a refusal ({why}) wrote something"
    first = _send(env, case, case.req)
    for o in getattr(first, "outcomes", []):
        assert o.WhichOneof("outcome") != "error", (name, o)
    assert _bytes(_send(env, case, case.req)) == _bytes(first) or name in REPLAYED_FLAG
