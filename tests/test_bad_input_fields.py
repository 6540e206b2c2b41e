"""SPEC §7, one field at a time: every RPC the services declare gets a valid request (below), and each
of its fields in turn is spoiled (a string with a control character or of 10 KB, an unknown enum
number, an int64 of -1 or 2**63-1, an int32 of -1, a repeated field of 10,000 items). Each spoiled
request is refused with a fitting code and a google.rpc.ErrorInfo reason and writes nothing, or is
one of ACCEPTED (a field where that value means something, listed with why). A new RPC fails
test_every_rpc_has_a_field_sweep_request until it gets a request here."""

from __future__ import annotations

import copy
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor as F
from medaid.common.errors import error_info
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.v1 import router_pb2 as opb
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, RESIDENT, bind, credit, enroll, new_id, rid, settle, snapshot

GS = {"region": "620100", "division": "620102"}
BJ = {"region": "110000", "division": "110105"}


def leaves(msg: Any, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    out = []
    for f in msg.DESCRIPTOR.fields:
        if f.type == F.TYPE_MESSAGE and not f.is_repeated:
            out += leaves(getattr(msg, f.name), (*prefix, f.name))
        else:
            out.append(((*prefix, f.name), f))
    return out


def bad_values(f: Any, msg: Any) -> list[tuple[str, Any]]:
    if f.is_repeated:
        cur = list(getattr(msg, f.name))
        if not cur:
            return [("many", None)]
        return [("10000", cur[:1] * 10_000)]
    if f.type == F.TYPE_STRING:
        return [("ctrl", "ab\x01cd"), ("10KB", "9" * 10_240)]
    if f.type == F.TYPE_INT64:
        return [("-1", -1), ("max", 2**63 - 1)]
    if f.type == F.TYPE_INT32:
        return [("-1", -1)]
    if f.type == F.TYPE_ENUM:
        return [("999", 999)]
    return []


def setpath(msg: Any, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        msg = getattr(msg, p)
    f = msg.DESCRIPTOR.fields_by_name[path[-1]]
    if f.is_repeated:
        del getattr(msg, path[-1])[:]
        if f.type == F.TYPE_MESSAGE:
            for v in value:
                getattr(msg, path[-1]).add().CopyFrom(v)
        else:
            getattr(msg, path[-1]).extend(value)
    else:
        setattr(msg, path[-1], value)


def build(national: Any, router: Any) -> dict[str, tuple[Any, Any]]:
    he, bj, gs, w = national.reg("13"), national.reg("11"), national.reg("62"), national.wallet.stub
    H = enroll(he)
    C = enroll(he, itype=RESIDENT, birth="20150101")
    A = enroll(he, birth="19900101")
    A2 = enroll(he, birth="19900101")
    A3 = enroll(he, birth="19900101")
    credit(he, H, 1_000_000)
    credit(he, A, 1_000_000)
    bind(he, H, C)
    sid = settle(he, C, 1000).settlement_id
    sid2 = settle(he, C, 1000).settlement_id
    rev = he.ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=sid2))
    he.BindProxy(rpb.BindProxyRequest(request_id=rid("px"), holder_id_number=H, relative_id_number=A2,
                                      relation=cpb.RELATION_SPOUSE, relative_verification=FACE))
    # gansu family
    G = enroll(gs, **GS)
    GM = enroll(gs, **GS)
    GI = enroll(gs, **GS)
    GP = enroll(gs, **GS)
    GR = enroll(gs, itype=RESIDENT, birth="19500101", **GS)
    GR2 = enroll(gs, itype=RESIDENT, birth="19500101", **GS)
    for p in (G, GM, GI, GP):
        credit(gs, p, 1_000_000)
    promise = cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE, attestation_id="promise-1")
    fid = gs.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(request_id=rid("fam"), creator_id_number=G,
                                                                commitment=promise)).account.family_id
    gs.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=G,
                                            member_id_number=GM, relation=cpb.RELATION_CHILD))
    gs.RespondToInvitation(fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=fid,
                                                          member_id_number=GM, accept=True, verification=FACE))
    gs.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=G,
                                            member_id_number=GP, relation=cpb.RELATION_CHILD))
    gs.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(request_id=rid("hb"), family_id=fid,
                                                                      contributor_id_number=G, amount_fen=10_000))
    gs.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=G, payee_id_number=GR2, relation=cpb.RELATION_PARENT,
        year="2027", source=ppb.PREMIUM_SOURCE_ACCOUNT))
    # wallets
    M = enroll(bj, itype=RESIDENT, birth="19500101", **BJ)
    w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=M, province="11",
                                       use_place_admdvs="110000", real_name=FACE))
    w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=H, province="13",
                                       use_place_admdvs="130100", real_name=FACE))
    w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=A, province="13",
                                       use_place_admdvs="130100", real_name=FACE))
    t1 = w.CreateTransfer(wpb.CreateTransferRequest(request_id=rid("cx"), sender_id_number=H, sender_province="13",
                                                    recipient_id_number=M, relation=cpb.RELATION_PARENT,
                                                    amount_fen=50_000, verification=FACE)).transfer.transfer_id
    w.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("ax"), transfer_id=t1, recipient_id_number=M))
    t2 = w.CreateTransfer(wpb.CreateTransferRequest(request_id=rid("cx"), sender_id_number=H, sender_province="13",
                                                    recipient_id_number=M, relation=cpb.RELATION_PARENT,
                                                    amount_fen=1_000, verification=FACE)).transfer.transfer_id
    spend = rid("sp")
    w.SpendWallet(wpb.SpendWalletRequest(request_id=spend, owner_id_number=M, amount_fen=100,
                                         category=cpb.CATEGORY_OUTPATIENT, spending_admdvs="110000"))
    N = opb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
    seq = iter(range(1000, 9999))

    def msgid() -> str:
        return f"H1301010000120261122103000{next(seq):04d}"

    sin = opb.SettleInput(psn_no=C, psn_part_amt_fen=500, medfee_sumamt_fen=800, acct_used_flag="1",
                          category=cpb.CATEGORY_OUTPATIENT, mdtrt_id="MD0001", insutype="310", med_type="11")
    m1 = msgid()
    setl = router.stub.Settle(opb.SettleRequest(msgid=m1, institution=N, input=sin)).setlinfo.setl_id
    stmt = opb.Statement(stmt_begndate="2026-11-22", stmt_enddate="2026-11-22")
    totals = opb.Totals(medfee_sumamt_fen=800, fixmedins_setl_cnt=1)
    row = opb.DetailRow(setl_id=setl, mdtrt_id="MD0001", psn_no=C, medfee_sumamt_fen=800)
    sreq = rpb.SettleRequest(request_id=rid("s"), patient_id_number=C, amount_fen=100, use_account=True,
                             category=cpb.CATEGORY_OUTPATIENT, institution_code="H13010100001",
                             institution_admdvs="130100")
    reg = {
        "EnrollPerson": rpb.EnrollPersonRequest(request_id="", id_number=new_id(), name="李四",
                                                insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE, pooling_region="130100"),
        "UpdatePersonStatus": rpb.UpdatePersonStatusRequest(id_number=A3, status=cpb.PERSON_STATUS_SUSPENDED),
        "GetPerson": rpb.GetPersonRequest(id_number=H),
        "GetPersons": rpb.GetPersonsRequest(id_numbers=[H]),
        "CreditAccount": rpb.CreditAccountRequest(id_number=H, amount_fen=100, period="202611",
                                                  kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION),
        "GetAccount": rpb.GetAccountRequest(id_number=H, ledger_limit=10),
        "BindMutualAid": rpb.BindMutualAidRequest(helper_id_number=H, member_id_number=A3,
                                                  relation=cpb.RELATION_SPOUSE, member_verification=FACE,
                                                  member_insured_admdvs="130100"),
        "UnbindMutualAid": rpb.UnbindMutualAidRequest(helper_id_number=H, member_id_number=C),
        "ListBindings": rpb.ListBindingsRequest(id_number=H),
        "BindProxy": rpb.BindProxyRequest(holder_id_number=H, relative_id_number=A3, relation=cpb.RELATION_SPOUSE,
                                          relative_verification=FACE),
        "ListProxyBindings": rpb.ListProxyBindingsRequest(id_number=H),
        "Diagnose": rpb.DiagnoseRequest(member_id_number=C, helper_id_number=H, category=cpb.CATEGORY_OUTPATIENT,
                                        member_insured_admdvs="130100"),
        "PreSettle": rpb.PreSettleRequest(patient_id_number=C, amount_fen=100, use_account=True,
                                          category=cpb.CATEGORY_OUTPATIENT, institution_code="H13010100001",
                                          institution_admdvs="130100", insured_region="130100"),
        "Settle": rpb.SettleRequest(patient_id_number=C, amount_fen=100, use_account=True,
                                    category=cpb.CATEGORY_OUTPATIENT, institution_code="H13010100001",
                                    institution_admdvs="130100", insured_region="130100",
                                    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        "SettleBatch": rpb.SettleBatchRequest(requests=[sreq]),
        "ReverseSettlement": rpb.ReverseSettlementRequest(settlement_id=sid),
        "GetSettlement": rpb.GetSettlementRequest(settlement_id=sid),
        "GetSettlements": rpb.GetSettlementsRequest(settlement_ids=[sid]),
        "CancelRequest": rpb.CancelRequestRequest(original_request_id="never-seen-1"),
        "UndoReversal": rpb.UndoReversalRequest(reversal_id=rev.reversal_id),
        "ListConsumptionRecords": rpb.ListConsumptionRecordsRequest(id_number=H, limit=10, page_size=10,
                                                                    since_unix_ms=1, until_unix_ms=1_900_000_000_000),
        "DebitForTransfer": rpb.DebitForTransferRequest(sender_id_number=A, amount_fen=100, recipient_province="11"),
        "DebitForTransferBatch": rpb.DebitForTransferBatchRequest(requests=[rpb.DebitForTransferRequest(
            transfer_id=rid("x"), sender_id_number=A, amount_fen=100, recipient_province="11")]),
        "RefundTransfer": rpb.RefundTransferRequest(sender_id_number=A, amount_fen=100),
        "CreditLotReturn": rpb.CreditLotReturnRequest(sender_id_number=A, amount_fen=100, transfer_id=rid("x")),
        "NoteWallet": rpb.NoteWalletRequest(id_number=A, use_place_admdvs="130100", place_version=99),
        "MovePoolingRegion": rpb.MovePoolingRegionRequest(id_number=A3, pooling_region="130200"),
        "RecordDeath": rpb.RecordDeathRequest(id_number=A2, heir_id_number=H, heir_name="张继承",
                                              date_of_death="20261101"),
        "RemoveProxy": rpb.RemoveProxyRequest(holder_id_number=H, relative_id_number=A2, requested_by_id_number=H),
    }
    fam = {
        "CreateFamilyAccount": fpb.CreateFamilyAccountRequest(creator_id_number=GI, commitment=promise,
                                                              initial_transfer_fen=100),
        "InviteMember": fpb.InviteMemberRequest(family_id=fid, creator_id_number=G, member_id_number=GI,
                                                relation=cpb.RELATION_CHILD),
        "RespondToInvitation": fpb.RespondToInvitationRequest(family_id=fid, member_id_number=GP, accept=True,
                                                              verification=FACE),
        "RemoveMember": fpb.RemoveMemberRequest(family_id=fid, creator_id_number=G, member_id_number=GM),
        "LeaveFamilyAccount": fpb.LeaveFamilyAccountRequest(family_id=fid, member_id_number=GM),
        "DissolveFamilyAccount": fpb.DissolveFamilyAccountRequest(family_id=fid, creator_id_number=G),
        "TransferIntoFamilyAccount": fpb.TransferIntoFamilyAccountRequest(family_id=fid, contributor_id_number=G,
                                                                          amount_fen=100),
        "WithdrawContribution": fpb.WithdrawContributionRequest(family_id=fid, contributor_id_number=G),
        "GetFamilyAccount": fpb.GetFamilyAccountRequest(family_id=fid, id_number=G),
        "PayResidentPremium": ppb.PayResidentPremiumRequest(payer_id_number=G, payee_id_number=GR,
                                                            relation=cpb.RELATION_PARENT, year="2027",
                                                            source=ppb.PREMIUM_SOURCE_ACCOUNT),
        "CancelResidentPremium": ppb.CancelResidentPremiumRequest(payee_id_number=GR2, year="2027",
                                                                  payer_id_number=G),
        "ListResidentPremiums": ppb.ListResidentPremiumsRequest(payer_id_number=G, payee_id_number=GR2,
                                                                year="2027"),
    }
    wal = {
        "OpenWallet": wpb.OpenWalletRequest(owner_id_number=A3, province="13", use_place_admdvs="130100",
                                            real_name=FACE),
        "GetWallet": wpb.GetWalletRequest(owner_id_number=M),
        "ListWalletEntries": wpb.ListWalletEntriesRequest(owner_id_number=M, limit=10),
        "GetWalletBalances": wpb.GetWalletBalancesRequest(owner_id_numbers=[M]),
        "CreateTransfer": wpb.CreateTransferRequest(sender_id_number=A, sender_province="13", recipient_id_number=M,
                                                    relation=cpb.RELATION_PARENT, amount_fen=100,
                                                    verification=FACE),
        "AcceptTransfer": wpb.AcceptTransferRequest(transfer_id=t2, recipient_id_number=M),
        "GetTransfer": wpb.GetTransferRequest(transfer_id=t1),
        "ListIncomingTransfers": wpb.ListIncomingTransfersRequest(recipient_id_number=M, limit=10),
        "ListOutgoingTransfers": wpb.ListOutgoingTransfersRequest(sender_id_number=H, limit=10),
        "SpendWallet": wpb.SpendWalletRequest(owner_id_number=M, amount_fen=100, category=cpb.CATEGORY_OUTPATIENT,
                                              spending_admdvs="110000"),
        "RefundWalletSpend": wpb.RefundWalletSpendRequest(spend_id=spend, owner_id_number=M),
        "PayPremium": wpb.PayPremiumRequest(owner_id_number=M, amount_fen=100, category=cpb.CATEGORY_RESIDENT_PREMIUM,
                                            period="2027"),
        "ReleaseSenderLots": wpb.ReleaseSenderLotsRequest(sender_id_number=H, reason="TERMINATED"),
        "EndWalletRelationship": wpb.EndWalletRelationshipRequest(sender_id_number=H, holder_id_number=M,
                                                                  requested_by_id_number=H),
        "EndPersonWalletRelationships": wpb.EndPersonWalletRelationshipsRequest(id_number=H, reason="DEATH",
                                                                                province="13"),
        "NoteOwnerStatus": wpb.NoteOwnerStatusRequest(id_number=M, province="11"),
        "ChangeUsePlace": wpb.ChangeUsePlaceRequest(owner_id_number=M, use_place_admdvs="130100"),
        "GetClearingReport": wpb.GetClearingReportRequest(month="202611"),
    }
    rou = {
        "QueryPerson": opb.QueryPersonRequest(institution=N, mdtrt_cert_type="02", mdtrt_cert_no=C, psn_name="张三",
                                              insuplc_admdvs="130100"),
        "PreSettle": opb.PreSettleRequest(institution=N, input=sin),
        "Settle": opb.SettleRequest(institution=N, input=sin),
        "ReverseSettlement": opb.ReverseSettlementRequest(institution=N, setl_id=setl, psn_no=C,
                                                          insuplc_admdvs="130100", mdtrt_id="MD0001"),
        "Undo": opb.UndoRequest(institution=N, psn_no=C, insuplc_admdvs="130100", omsgid=m1, oinfno="2207"),
        "QuerySettlement": opb.QuerySettlementRequest(institution=N, psn_no=C, insuplc_admdvs="130100", setl_id=setl,
                                                      mdtrt_id="MD0001"),
        "ReconcileTotals": opb.ReconcileTotalsRequest(institution=N, statement=stmt, totals=totals,
                                                      cash_payamt_given=True),
        "ReconcileDetails": opb.ReconcileDetailsRequest(institution=N, statement=stmt, rows=[row], totals=totals),
    }
    out: dict[str, tuple[Any, Any, Any]] = {}  # name → (stub, request, msgid maker for the router)
    for name, req in reg.items():
        out[f"registry.{name}"] = (he, req, None)
    for name, req in fam.items():
        out[f"registry.{name}"] = (gs, req, None)
    for name, req in wal.items():
        out[f"wallet.{name}"] = (w, req, None)
    for name, req in rou.items():
        out[f"router.{name}"] = (router.stub, req, msgid)
    return out


KEYS = ("request_id", "transfer_id", "return_id")


def fresh(req: Any, msgid: Any, name: str) -> Any:
    r = copy.deepcopy(req)
    fields = r.DESCRIPTOR.fields_by_name
    if "msgid" in fields:
        r.msgid = msgid()
    for k in KEYS:
        if k in fields and not (name.endswith("AcceptTransfer") and k == "transfer_id") \
                and not (name.endswith("CreditLotReturn") and k == "transfer_id"):
            setattr(r, k, rid("p"))
    return r


# (rpc, field, spoil) taken on purpose, each with why.
ACCEPTED = {
    # W3C trace context: a malformed traceparent is ignored (a new trace starts), never stored.
    *{("registry.Settle", "traceparent", v) for v in ("ctrl", "10KB")},
    # Bounds of a period: the far future is a valid upper bound.
    ("registry.ListConsumptionRecords", "until_unix_ms", "max"),
    # The wallet's own version counter: any value orders notes; an older one changes nothing.
    *{("registry.NoteWallet", "place_version", v) for v in ("-1", "max")},
    # The institution's own 3201 / 3202 totals may be anything: they are compared, never summed or stored
    # (negative where refunds outweigh, docs/reconciliation.md).
    *{(f"router.{rpc}", f"totals.{f}", v) for rpc in ("ReconcileTotals", "ReconcileDetails")
      for f in ("medfee_sumamt_fen", "fund_pay_sumamt_fen", "acct_pay_fen", "acct_mulaid_pay_fen", "wallet_pay_fen",
                "cash_payamt_fen", "fixmedins_setl_cnt") for v in ("-1", "max")},
}
NO_INPUT = {"wallet.RunMaintenance", "router.GetDownstreamHealth"}
FITTING = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "OUT_OF_RANGE", "ALREADY_EXISTS",
           "PERMISSION_DENIED"}


def test_every_rpc_has_a_field_sweep_request():
    declared = {f"{name}.{m.name}" for name, sd in (("registry", rpb.DESCRIPTOR.services_by_name["RegistryService"]),
                                                  ("wallet", wpb.DESCRIPTOR.services_by_name["WalletService"]),
                                                  ("router", opb.DESCRIPTOR.services_by_name["RouterService"]))
                for m in sd.methods}
    assert declared - NO_INPUT == set(REQUESTS), "give each new RPC a valid request in build()"


REQUESTS = {*(f"registry.{n}" for n in (
    "EnrollPerson UpdatePersonStatus GetPerson GetPersons CreditAccount GetAccount BindMutualAid UnbindMutualAid "
    "ListBindings BindProxy ListProxyBindings Diagnose PreSettle Settle SettleBatch ReverseSettlement GetSettlement "
    "GetSettlements CancelRequest UndoReversal ListConsumptionRecords DebitForTransfer DebitForTransferBatch "
    "RefundTransfer CreditLotReturn NoteWallet MovePoolingRegion RecordDeath RemoveProxy CreateFamilyAccount "
    "InviteMember RespondToInvitation RemoveMember LeaveFamilyAccount DissolveFamilyAccount TransferIntoFamilyAccount "
    "WithdrawContribution GetFamilyAccount PayResidentPremium CancelResidentPremium ListResidentPremiums").split()),
    *(f"wallet.{n}" for n in (
        "OpenWallet GetWallet ListWalletEntries GetWalletBalances CreateTransfer AcceptTransfer GetTransfer "
        "ListIncomingTransfers ListOutgoingTransfers SpendWallet RefundWalletSpend PayPremium ReleaseSenderLots "
        "EndWalletRelationship EndPersonWalletRelationships NoteOwnerStatus ChangeUsePlace GetClearingReport").split()),
    *(f"router.{n}" for n in (
        "QueryPerson PreSettle Settle ReverseSettlement Undo QuerySettlement ReconcileTotals "
        "ReconcileDetails").split())}


def test_each_field_of_every_rpc_refuses_bad_input(national, start_router, rdb):
    router = start_router()
    cases = build(national, router)
    assert set(cases) == REQUESTS
    failures = []
    # The store as the last refusal left it: nothing else writes to it (the services run in this process,
    # no background loop), so it is the next call's `before` until a call is accepted.
    last: dict[bytes, Any] | None = None
    for name, (stub, base, msgid) in cases.items():
        call = getattr(stub, name.split(".", 1)[1])
        for path, f in leaves(base):
            field = ".".join(path)
            for label, value in bad_values(f, base):
                req = fresh(base, msgid, name)
                setpath(req, path, value)
                before = last if last is not None else snapshot(rdb)
                try:
                    call(req, timeout=20)
                except grpc.RpcError as exc:
                    info = error_info(exc)
                    last = snapshot(rdb)
                    problems = [p for p, bad in (
                        (f"code {exc.code().name}", exc.code().name not in FITTING),
                        ("no ErrorInfo reason", info is None or not info.reason),
                        ("no message", not (exc.details() or "").strip()),
                        ("wrote to Redis", last != before)) if bad]
                    if problems:
                        failures.append(f"{name} {field}={label}: {', '.join(problems)} {exc.details()!r:.120}")
                else:
                    last = None
                    if (name, field, label) not in ACCEPTED:
                        failures.append(f"{name} {field}={label}: accepted")
    assert not failures, "\n".join(failures)
