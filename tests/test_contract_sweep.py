"""SPEC §7 over every RPC the service descriptors declare, each from a plausible request of its own
(`SAMPLES`), so that an RPC added later without a sample fails `test_every_rpc_has_a_sample`:

- every RPC that writes carries a request id (or the id its callers key it by); the others are listed as
  reads;
- with the store down, every RPC answers UNAVAILABLE / STORE_UNAVAILABLE, naming no address; health is
  NOT_SERVING then, SERVING again after;
- each field of each request spoiled on its own (oversize, NUL, negative, > int32, unknown enum) is
  refused with a reason and writes nothing.

One set of in-process servers on a Redis of the module's own, started once."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import redis
from conftest import LoopThread, policy_for
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from medaid.common.errors import error_info
from medaid.common.redis_client import client
from medaid.common.redis_server import RedisServer
from medaid.common.server import StoreCheck, start_server
from medaid.common.v1 import common_pb2 as cpb
from medaid.directory import Directory
from medaid.registry.client import Registries
from medaid.registry.service import Registry
from medaid.registry.servicer import register
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.wallet_port import GrpcWallet
from medaid.router.service import Router
from medaid.router.servicer import register as register_router
from medaid.router.v1 import router_pb2 as xpb
from medaid.wallet.service import Wallet
from medaid.wallet.servicer import register as register_wallet
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, RESIDENT, bind, credit, enroll, new_id, rid, snapshot, test_clock, unmasked_id_numbers

SERVICES: dict[str, ServiceDescriptor] = {
    "registry": pb.DESCRIPTOR.services_by_name["RegistryService"],
    "wallet": wpb.DESCRIPTOR.services_by_name["WalletService"],
    "router": xpb.DESCRIPTOR.services_by_name["RouterService"],
}
GS = {"region": "620100", "division": "620102"}
HOSPITAL = xpb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
T = 10.0
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ALREADY_EXISTS}


@dataclass
class Env:
    server: RedisServer
    rdb: redis.Redis
    channels: dict[str, grpc.Channel]
    addresses: dict[str, str]
    people: dict[str, str] = field(default_factory=dict)
    _msg: Iterator[int] = field(default_factory=lambda: iter(range(1, 100_000)))

    def msgid(self) -> str:
        return f"{HOSPITAL.fixmedins_code}20261122103000{next(self._msg):04d}"

    def stub(self, target: str) -> Any:
        """A stub on `target` (a service, or "registry-11" / "registry-62")."""
        return _Stub(self.channels[target], SERVICES[target.split("-")[0]])


class _Stub:
    def __init__(self, ch: grpc.Channel, sd: ServiceDescriptor) -> None:
        self.ch, self.sd = ch, sd

    def __getattr__(self, name: str) -> Callable[..., Any]:
        m = self.sd.methods_by_name[name]
        return lambda req, timeout=T: call(self.ch, self.sd, m, req, timeout)


def call(ch: grpc.Channel, sd: ServiceDescriptor, m: MethodDescriptor, req: Any, timeout: float = T) -> Any:
    response = message_factory.GetMessageClass(m.output_type)
    return ch.unary_unary(f"/{sd.full_name}/{m.name}", request_serializer=lambda r: r.SerializeToString(),
                          response_deserializer=response.FromString)(req, timeout=timeout)


@pytest.fixture(scope="module")
def env(loop_thread: LoopThread) -> Iterator[Env]:
    server = RedisServer(appendfsync="always").start()
    clock = test_clock()
    running: list[Any] = []
    clients: list[Any] = []
    check = StoreCheck(interval_s=0.1, timeout_s=0.3)

    def store() -> Any:  # the services' own client (its retries and timeouts)
        clients.append(client(f"redis://127.0.0.1:{server.port}/0"))
        return clients[-1]

    async def boot() -> dict[str, str]:
        addresses: dict[str, str] = {}
        regs: dict[str, Registry] = {}
        for p in ("13", "11", "62"):
            s = store()
            # 甘肃 with 回拨 allowed, so that WithdrawContribution reaches the store
            pol = dataclasses.replace(policy_for(p), contributor_withdrawal=True) if p == "62" else policy_for(p)
            regs[p] = Registry(s, pol, clock=clock)
            r = await start_server(lambda srv, reg=regs[p]: register(srv, reg), port=0, store=s, store_check=check)
            running.append(r)
            addresses[f"registry-{p}"] = f"127.0.0.1:{r.port}"
        s = store()
        wallet = Wallet(s, Registries({p: addresses[f"registry-{p}"] for p in regs}), clock=clock,
                        recovery_grace_ms=0)
        r = await start_server(lambda srv: register_wallet(srv, wallet), port=0, store=s, store_check=check)
        running.append(r)
        addresses["wallet"] = f"127.0.0.1:{r.port}"
        for reg in regs.values():
            reg.wallet = GrpcWallet(addresses["wallet"])
        s = store()
        router = Router(Directory(s), Registries({p: addresses[f"registry-{p}"] for p in regs}),
                        wallet_address=addresses["wallet"], clock=clock, batch=True)
        r = await start_server(lambda srv: register_router(srv, router), port=0, store=s, store_check=check)
        running.append(r)
        addresses["router"] = f"127.0.0.1:{r.port}"
        running.append(router)
        return addresses

    addresses = loop_thread.run(boot())
    channels = {n: grpc.insecure_channel(a) for n, a in addresses.items()}
    channels["registry"] = channels["registry-13"]
    rdb = server.connection()
    try:
        e = Env(server, rdb, channels, addresses)
        _people(e)
        yield e
    finally:
        for ch in channels.values():
            ch.close()
        rdb.close()
        if server.proc is None or server.proc.poll() is not None:
            server.start()

        async def stop() -> None:
            for r in running:
                if isinstance(r, Router):
                    await r.close()
                else:
                    await r.stop(0)
            for c in clients:
                await c.aclose()

        loop_thread.run(stop())
        server.cleanup()


def _people(e: Env) -> None:
    reg, gs, w, bj = e.stub("registry"), e.stub("registry-62"), e.stub("wallet"), e.stub("registry-11")
    P = e.people
    P["helper"] = enroll(reg, name="张伟")
    P["patient"] = enroll(reg, itype=RESIDENT, birth="20160101", name="张小雨")
    P["other"] = enroll(reg, name="李四")
    credit(reg, P["helper"], 500_000)
    bind(reg, P["helper"], P["patient"])
    P["bj"] = enroll(bj, region="110000", division="110105", name="王五")
    credit(bj, P["bj"], 500_000)
    P["creator"] = enroll(gs, name="赵六", **GS)
    P["child62"] = enroll(gs, itype=RESIDENT, birth="20150101", name="赵小", **GS)
    credit(gs, P["creator"], 500_000)
    P["family"] = gs.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=P["creator"], commitment=FACE)).account.family_id
    for owner, prov, place in ((P["helper"], "13", "130100"), (P["bj"], "11", "110000")):
        w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner, province=prov,
                                           use_place_admdvs=place, real_name=FACE))
    t = w.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=P["bj"], sender_province="11", recipient_id_number=P["helper"],
        relation=cpb.RELATION_PARENT, amount_fen=10_000, verification=FACE)).transfer
    P["transfer"] = t.transfer_id
    s = reg.Settle(pb.SettleRequest(request_id=rid("settle"), patient_id_number=P["patient"], amount_fen=1_000,
                                    use_account=True, category=cpb.CATEGORY_OUTPATIENT,
                                    institution_code="H13010100001", institution_admdvs="130100"))
    P["settlement"] = s.result.settlement_id


def _settle_input(e: Env) -> xpb.SettleInput:
    return xpb.SettleInput(psn_no=e.people["patient"], insuplc_admdvs="130100", psn_part_amt_fen=1_000,
                           medfee_sumamt_fen=1_000, acct_used_flag="1", category=cpb.CATEGORY_OUTPATIENT,
                           mdtrt_id="MZ00000001")


Sample = Callable[[Env], Any]
STATEMENT = xpb.Statement(stmt_begndate="2026-11-01", stmt_enddate="2026-11-22")


def _p(e: Env, k: str) -> str:
    return e.people[k]


# Every RPC of every service: a request that passes validation (people and ids that exist).
SAMPLES: dict[str, Sample] = {
    "registry.EnrollPerson": lambda e: pb.EnrollPersonRequest(
        request_id=rid("enroll"), id_number=new_id(), name="孙七", insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
        pooling_region="130100"),
    "registry.UpdatePersonStatus": lambda e: pb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=_p(e, "other"), status=cpb.PERSON_STATUS_SUSPENDED,
        occurred_at_unix_ms=1_763_000_000_000),
    "registry.GetPerson": lambda e: pb.GetPersonRequest(id_number=_p(e, "helper")),
    "registry.GetPersons": lambda e: pb.GetPersonsRequest(id_numbers=[_p(e, "helper"), _p(e, "patient")]),
    "registry.CreditAccount": lambda e: pb.CreditAccountRequest(
        request_id=rid("credit"), id_number=_p(e, "helper"), amount_fen=100,
        kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"),
    "registry.GetAccount": lambda e: pb.GetAccountRequest(id_number=_p(e, "helper"), ledger_limit=10),
    "registry.BindMutualAid": lambda e: pb.BindMutualAidRequest(
        request_id=rid("bind"), helper_id_number=_p(e, "helper"), member_id_number=_p(e, "patient"),
        relation=cpb.RELATION_CHILD, member_verification=FACE),
    "registry.UnbindMutualAid": lambda e: pb.UnbindMutualAidRequest(
        request_id=rid("unbind"), helper_id_number=_p(e, "helper"), member_id_number=_p(e, "other")),
    "registry.ListBindings": lambda e: pb.ListBindingsRequest(id_number=_p(e, "helper"), include_ended=True),
    "registry.BindProxy": lambda e: pb.BindProxyRequest(
        request_id=rid("proxy"), holder_id_number=_p(e, "helper"), relative_id_number=_p(e, "patient"),
        relation=cpb.RELATION_CHILD, relative_verification=FACE),
    "registry.ListProxyBindings": lambda e: pb.ListProxyBindingsRequest(id_number=_p(e, "helper")),
    "registry.Diagnose": lambda e: pb.DiagnoseRequest(
        member_id_number=_p(e, "patient"), helper_id_number=_p(e, "helper"), category=cpb.CATEGORY_OUTPATIENT),
    "registry.PreSettle": lambda e: pb.PreSettleRequest(
        patient_id_number=_p(e, "patient"), amount_fen=1_000, use_account=True, category=cpb.CATEGORY_OUTPATIENT,
        institution_code="H13010100001", institution_admdvs="130100"),
    "registry.Settle": lambda e: pb.SettleRequest(
        request_id=rid("settle"), patient_id_number=_p(e, "patient"), amount_fen=1_000, use_account=True,
        category=cpb.CATEGORY_OUTPATIENT, institution_code="H13010100001", institution_admdvs="130100"),
    "registry.SettleBatch": lambda e: pb.SettleBatchRequest(requests=[SAMPLES["registry.Settle"](e)]),
    "registry.ReverseSettlement": lambda e: pb.ReverseSettlementRequest(
        request_id=rid("rev"), settlement_id=_p(e, "settlement")),
    "registry.GetSettlement": lambda e: pb.GetSettlementRequest(settlement_id=_p(e, "settlement")),
    "registry.GetSettlements": lambda e: pb.GetSettlementsRequest(settlement_ids=[_p(e, "settlement")]),
    "registry.CancelRequest": lambda e: pb.CancelRequestRequest(
        request_id=rid("cancel"), original_request_id=rid("never")),
    "registry.UndoReversal": lambda e: pb.UndoReversalRequest(request_id=rid("undo"), reversal_id=rid("rev")),
    "registry.ListConsumptionRecords": lambda e: pb.ListConsumptionRecordsRequest(
        id_number=_p(e, "patient"), page_size=10),
    "registry.DebitForTransfer": lambda e: pb.DebitForTransferRequest(
        transfer_id=rid("T"), sender_id_number=_p(e, "helper"), amount_fen=100, recipient_province="11"),
    "registry.DebitForTransferBatch": lambda e: pb.DebitForTransferBatchRequest(
        requests=[SAMPLES["registry.DebitForTransfer"](e)]),
    "registry.RefundTransfer": lambda e: pb.RefundTransferRequest(
        transfer_id=rid("T"), sender_id_number=_p(e, "helper"), amount_fen=100),
    "registry.CreditLotReturn": lambda e: pb.CreditLotReturnRequest(
        return_id=rid("ret"), sender_id_number=_p(e, "helper"), amount_fen=100, transfer_id=rid("T")),
    "registry.NoteWallet": lambda e: pb.NoteWalletRequest(
        id_number=_p(e, "helper"), use_place_admdvs="130100", place_version=1),
    "registry.MovePoolingRegion": lambda e: pb.MovePoolingRegionRequest(
        request_id=rid("move"), id_number=_p(e, "other"), pooling_region="130200",
        occurred_at_unix_ms=1_763_000_000_000),
    "registry.RecordDeath": lambda e: pb.RecordDeathRequest(
        request_id=rid("death"), id_number=_p(e, "other"), heir_id_number=_p(e, "helper"), heir_name="张伟",
        date_of_death="20261101"),
    "registry.RemoveProxy": lambda e: pb.RemoveProxyRequest(
        request_id=rid("rmproxy"), holder_id_number=_p(e, "helper"), relative_id_number=_p(e, "patient"),
        requested_by_id_number=_p(e, "helper")),
    "registry.CreateFamilyAccount": lambda e: fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=_p(e, "creator"), commitment=FACE, initial_transfer_fen=100),
    "registry.InviteMember": lambda e: fpb.InviteMemberRequest(
        request_id=rid("inv"), family_id=_p(e, "family"), creator_id_number=_p(e, "creator"),
        member_id_number=_p(e, "child62"), relation=cpb.RELATION_CHILD),
    "registry.RespondToInvitation": lambda e: fpb.RespondToInvitationRequest(
        request_id=rid("resp"), family_id=_p(e, "family"), member_id_number=_p(e, "child62"), accept=True,
        verification=FACE),
    "registry.RemoveMember": lambda e: fpb.RemoveMemberRequest(
        request_id=rid("rm"), family_id=_p(e, "family"), creator_id_number=_p(e, "creator"),
        member_id_number=_p(e, "child62")),
    "registry.LeaveFamilyAccount": lambda e: fpb.LeaveFamilyAccountRequest(
        request_id=rid("leave"), family_id=_p(e, "family"), member_id_number=_p(e, "child62")),
    "registry.DissolveFamilyAccount": lambda e: fpb.DissolveFamilyAccountRequest(
        request_id=rid("dissolve"), family_id=_p(e, "family"), creator_id_number=_p(e, "creator")),
    "registry.TransferIntoFamilyAccount": lambda e: fpb.TransferIntoFamilyAccountRequest(
        request_id=rid("huabo"), family_id=_p(e, "family"), contributor_id_number=_p(e, "creator"),
        amount_fen=100),
    "registry.WithdrawContribution": lambda e: fpb.WithdrawContributionRequest(
        request_id=rid("wd"), family_id=_p(e, "family"), contributor_id_number=_p(e, "creator")),
    "registry.GetFamilyAccount": lambda e: fpb.GetFamilyAccountRequest(
        family_id=_p(e, "family"), id_number=_p(e, "creator")),
    "registry.PayResidentPremium": lambda e: ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=_p(e, "helper"), payee_id_number=_p(e, "patient"),
        relation=cpb.RELATION_CHILD, year="2027", source=ppb.PREMIUM_SOURCE_ACCOUNT),
    "registry.CancelResidentPremium": lambda e: ppb.CancelResidentPremiumRequest(
        request_id=rid("pcancel"), payee_id_number=_p(e, "patient"), year="2027",
        payer_id_number=_p(e, "helper")),
    "registry.ListResidentPremiums": lambda e: ppb.ListResidentPremiumsRequest(
        payer_id_number=_p(e, "helper"), year="2027"),
    "wallet.OpenWallet": lambda e: wpb.OpenWalletRequest(
        request_id=rid("open"), owner_id_number=_p(e, "patient"), province="13", use_place_admdvs="130100",
        real_name=FACE),
    "wallet.GetWallet": lambda e: wpb.GetWalletRequest(owner_id_number=_p(e, "helper")),
    "wallet.ListWalletEntries": lambda e: wpb.ListWalletEntriesRequest(owner_id_number=_p(e, "helper"), limit=10),
    "wallet.GetWalletBalances": lambda e: wpb.GetWalletBalancesRequest(owner_id_numbers=[_p(e, "helper")]),
    "wallet.CreateTransfer": lambda e: wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=_p(e, "bj"), sender_province="11",
        recipient_id_number=_p(e, "helper"), relation=cpb.RELATION_PARENT, amount_fen=100, verification=FACE),
    "wallet.AcceptTransfer": lambda e: wpb.AcceptTransferRequest(
        request_id=rid("acc"), transfer_id=_p(e, "transfer"), recipient_id_number=_p(e, "helper")),
    "wallet.GetTransfer": lambda e: wpb.GetTransferRequest(transfer_id=_p(e, "transfer")),
    "wallet.ListIncomingTransfers": lambda e: wpb.ListIncomingTransfersRequest(
        recipient_id_number=_p(e, "helper"), limit=10),
    "wallet.ListOutgoingTransfers": lambda e: wpb.ListOutgoingTransfersRequest(
        sender_id_number=_p(e, "bj"), limit=10),
    "wallet.SpendWallet": lambda e: wpb.SpendWalletRequest(
        request_id=rid("spend"), owner_id_number=_p(e, "helper"), amount_fen=100, category=cpb.CATEGORY_OUTPATIENT,
        spending_admdvs="130100"),
    "wallet.RefundWalletSpend": lambda e: wpb.RefundWalletSpendRequest(
        request_id=rid("refund"), spend_id=rid("spend"), owner_id_number=_p(e, "helper")),
    "wallet.PayPremium": lambda e: wpb.PayPremiumRequest(
        request_id=rid("wprem"), owner_id_number=_p(e, "helper"), amount_fen=100,
        category=cpb.CATEGORY_LONG_TERM_CARE_PREMIUM,
        period="2027"),
    "wallet.ReleaseSenderLots": lambda e: wpb.ReleaseSenderLotsRequest(
        request_id=rid("release"), sender_id_number=_p(e, "bj"), reason="TERMINATED",
        event_at_unix_ms=1_763_000_000_000),
    "wallet.EndWalletRelationship": lambda e: wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=_p(e, "bj"), holder_id_number=_p(e, "helper"),
        requested_by_id_number=_p(e, "helper")),
    "wallet.EndPersonWalletRelationships": lambda e: wpb.EndPersonWalletRelationshipsRequest(
        request_id=rid("endall"), id_number=_p(e, "bj"), reason="DECEASED", province="11",
        event_at_unix_ms=1_763_000_000_000),
    "wallet.NoteOwnerStatus": lambda e: wpb.NoteOwnerStatusRequest(id_number=_p(e, "helper"), province="13"),
    "wallet.ChangeUsePlace": lambda e: wpb.ChangeUsePlaceRequest(
        request_id=rid("place"), owner_id_number=_p(e, "helper"), use_place_admdvs="130200"),
    "wallet.GetClearingReport": lambda e: wpb.GetClearingReportRequest(month="202611"),
    "wallet.RunMaintenance": lambda e: wpb.RunMaintenanceRequest(),
    "router.QueryPerson": lambda e: xpb.QueryPersonRequest(
        msgid=e.msgid(), institution=HOSPITAL, mdtrt_cert_type="02", mdtrt_cert_no=_p(e, "patient")),
    "router.PreSettle": lambda e: xpb.PreSettleRequest(msgid=e.msgid(), institution=HOSPITAL,
                                                      input=_settle_input(e)),
    "router.Settle": lambda e: xpb.SettleRequest(msgid=e.msgid(), institution=HOSPITAL, input=_settle_input(e)),
    "router.ReverseSettlement": lambda e: xpb.ReverseSettlementRequest(
        msgid=e.msgid(), institution=HOSPITAL, setl_id=e.msgid(), psn_no=_p(e, "patient"), insuplc_admdvs="130100"),
    "router.Undo": lambda e: xpb.UndoRequest(
        msgid=e.msgid(), institution=HOSPITAL, psn_no=_p(e, "patient"), insuplc_admdvs="130100", omsgid=e.msgid(),
        oinfno="2207"),
    "router.QuerySettlement": lambda e: xpb.QuerySettlementRequest(
        msgid=e.msgid(), institution=HOSPITAL, psn_no=_p(e, "patient"), insuplc_admdvs="130100", setl_id=e.msgid()),
    "router.ReconcileTotals": lambda e: xpb.ReconcileTotalsRequest(
        msgid=e.msgid(), institution=HOSPITAL, statement=STATEMENT, totals=xpb.Totals(medfee_sumamt_fen=1_000)),
    "router.ReconcileDetails": lambda e: xpb.ReconcileDetailsRequest(
        msgid=e.msgid(), institution=HOSPITAL, statement=STATEMENT, totals=xpb.Totals(medfee_sumamt_fen=1_000),
        rows=[xpb.DetailRow(setl_id=e.msgid(), mdtrt_id="MZ00000001", psn_no=_p(e, "patient"),
                            medfee_sumamt_fen=1_000, refd_setl_flag="0")]),
    "router.GetDownstreamHealth": lambda e: xpb.GetDownstreamHealthRequest(),
}

# RPCs that change nothing a caller could resend: every other RPC carries the id it is keyed by.
READS = {
    "registry.GetPerson", "registry.GetPersons", "registry.GetAccount", "registry.ListBindings",
    "registry.ListProxyBindings", "registry.Diagnose", "registry.PreSettle", "registry.GetSettlement",
    "registry.GetSettlements", "registry.ListConsumptionRecords", "registry.GetFamilyAccount",
    "registry.ListResidentPremiums", "wallet.GetWallet", "wallet.ListWalletEntries", "wallet.GetWalletBalances",
    "wallet.GetTransfer", "wallet.ListIncomingTransfers", "wallet.ListOutgoingTransfers",
    "wallet.GetClearingReport", "router.QueryPerson", "router.PreSettle", "router.QuerySettlement",
    "router.ReconcileTotals", "router.ReconcileDetails", "router.GetDownstreamHealth",
}
# Writes keyed by an id of another name, or by nature repeatable (they set a value to what the store says).
KEYS = {
    "registry.DebitForTransfer": "transfer_id", "registry.RefundTransfer": "transfer_id",
    "registry.CreditLotReturn": "return_id", "registry.NoteWallet": "place_version",
    "registry.SettleBatch": "requests", "registry.DebitForTransferBatch": "requests",
    "wallet.NoteOwnerStatus": "id_number", "wallet.RunMaintenance": "",
    "router.Settle": "msgid", "router.ReverseSettlement": "msgid", "router.Undo": "msgid",
}


def _all_rpcs() -> list[str]:
    return [f"{s}.{m.name}" for s, sd in SERVICES.items() for m in sd.methods]


def test_every_rpc_has_a_sample_and_every_write_a_request_id():
    rpcs = _all_rpcs()
    assert sorted(set(rpcs) - set(SAMPLES)) == [], "an RPC without a sample: add one to SAMPLES"
    assert sorted(set(SAMPLES) - set(rpcs)) == [], "a sample of no RPC"
    unkeyed = []
    for name in rpcs:
        service, rpc = name.split(".")
        fields = SERVICES[service].methods_by_name[rpc].input_type.fields_by_name
        if name in READS:
            continue
        key = KEYS.get(name, "request_id")
        if key and key not in fields:
            unkeyed.append(f"{name} has no {key}")
    assert not unkeyed, unkeyed


def _req(e: Env, name: str) -> tuple[grpc.Channel, ServiceDescriptor, MethodDescriptor, Any]:
    service, rpc = name.split(".")
    req = SAMPLES[name](e)
    ch = e.channels["registry-62" if rpc in FAMILY_RPCS else service]
    sd = SERVICES[service]
    return ch, sd, sd.methods_by_name[rpc], req


FAMILY_RPCS = {m.name for m in SERVICES["registry"].methods
               if m.input_type.file.name.endswith("family.proto")}


# --- (c) one field spoiled at a time ---------------------------------------------------------------------------

STRING_SPOILS = {"oversize": "9" * 300, "nul": "13010219800101001\x00", "emoji": "😀"}
# Free text a spoiled value may legitimately reach the handler in: a name may hold a CJK character outside
# the BMP (𠮷), and a malformed W3C traceparent is ignored, as the W3C says, not refused.
FREE_TEXT = {"name=emoji", "heir_name=emoji", "traceparent=oversize", "traceparent=nul", "traceparent=emoji"}
# An attestation id is the verifier's (1..64 visible characters, registry/validate.py attestation).
OPAQUE = {"relative_verification.attestation_id=emoji", "real_name.attestation_id=emoji",
          "member_verification.attestation_id=emoji", "verification.attestation_id=emoji",
          "commitment.attestation_id=emoji"}
# Accepted on purpose, each with its reason.
OPEN: dict[str, set[str]] = {
    # 就诊ID: the national interface gives it no character set (a visit's id is the HIS's own, echoed
    # back and compared, never read), so a real hospital's id in any printable characters is kept as
    # sent; only what cannot be a visit's id is refused: over 64 characters, blank, a control or
    # invisible character (registry/validate.py mdtrt_id; the 2207, 2208, 5203 and a 3202 row alike).
    "router.PreSettle": {"input.mdtrt_id=emoji"}, "router.Settle": {"input.mdtrt_id=emoji"},
    # The institution's totals are compared, never stored: net of refunds a period's may be negative
    # (docs/reconciliation.md), answered as a difference; one wider than 数值型(16,2) is refused.
    "router.ReconcileTotals": {f"totals.{f}=negative" for f in xpb.Totals.DESCRIPTOR.fields_by_name},
    "router.ReconcileDetails": {f"totals.{f}=negative" for f in xpb.Totals.DESCRIPTOR.fields_by_name}
    | {"rows[0].mdtrt_id=emoji"},
}


def _scalar_paths(msg: Any, prefix: str = "") -> Iterator[tuple[str, Any, FieldDescriptor]]:
    for f in msg.DESCRIPTOR.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if f.is_repeated:
                items = getattr(msg, f.name)
                if items:
                    yield from _scalar_paths(items[0], f"{prefix}{f.name}[0].")
            else:
                yield from _scalar_paths(getattr(msg, f.name), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", msg, f


def _spoils(f: FieldDescriptor) -> list[tuple[str, Any]]:
    if f.type == FieldDescriptor.TYPE_STRING:
        return list(STRING_SPOILS.items())
    if f.type == FieldDescriptor.TYPE_INT64:
        return [("negative", -1), ("min", -(2**63))]
    if f.type == FieldDescriptor.TYPE_INT32:
        return [("negative", -1)]
    if f.type == FieldDescriptor.TYPE_ENUM:
        return [("unknown", 999)]
    return []


def _set(msg: Any, f: FieldDescriptor, value: Any) -> None:
    if f.is_repeated:
        del getattr(msg, f.name)[:]
        getattr(msg, f.name).append(value)
    else:
        setattr(msg, f.name, value)


def _spoiled(e: Env, name: str) -> Iterator[tuple[str, Any]]:
    _, _, _, template = _req(e, name)
    for path, _, f in list(_scalar_paths(template)):
        for label, value in _spoils(f):
            _, _, _, req = _req(e, name)
            owner: Any = req
            for part in path.split(".")[:-1]:
                owner = getattr(owner, part[:-3])[0] if part.endswith("[0]") else getattr(owner, part)
            _set(owner, f, value)
            yield f"{path}={label}", req


def _judge(e: Env, name: str, label: str, ch: grpc.Channel, sd: ServiceDescriptor, m: MethodDescriptor,
           req: Any) -> list[str]:
    before = snapshot(e.rdb)
    problems = []
    try:
        resp = call(ch, sd, m, req)
    except grpc.RpcError as exc:
        info = error_info(exc)
        if exc.code() not in REFUSALS:
            problems.append(f"code {exc.code().name}")
        if info is None or info.domain != "medaid" or not info.reason:
            problems.append("no ErrorInfo reason")
        if unmasked_id_numbers(exc.details() or ""):
            problems.append("an id number in clear")
        detail = f"{exc.code().name} {(info.reason if info else '')} {exc.details()!r}"
    else:
        outcomes = getattr(resp, "outcomes", None)
        if outcomes and all(o.WhichOneof("outcome") == "error" and o.error.reason for o in outcomes):
            detail = "items refused"
        else:
            problems.append("accepted")
            detail = str(resp)[:200].replace("\n", " ")
    if snapshot(e.rdb) != before:
        problems.append("wrote to Redis")
    return [f"{name} {label}: {', '.join(problems)} ({detail})"] if problems else []


@pytest.mark.parametrize("name", [n for n in _all_rpcs() if n not in ("wallet.RunMaintenance",
                                                                        "router.GetDownstreamHealth")])
def test_each_field_spoiled_alone_is_refused_with_a_reason_and_writes_nothing(env, name):
    ch, sd, m, _ = _req(env, name)
    failures = []
    for label, req in _spoiled(env, name):
        leaf = label.split(".")[-1]
        if leaf in FREE_TEXT or label in OPAQUE or label in OPEN.get(name, set()):
            continue
        failures += _judge(env, name, label, ch, sd, m, req)
    assert not failures, "\n".join(failures)


# --- (b) the store down ---------------------------------------------------------------------------------------


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status)


def _wait_health(e: Env, status: int) -> None:
    deadline = time.monotonic() + 5
    while True:
        now = {n: _health(a) for n, a in e.addresses.items()}
        if all(s == status for s in now.values()):
            return
        assert time.monotonic() < deadline, now
        time.sleep(0.1)


NO_STORE = {"router.GetDownstreamHealth"}  # a report of the services behind the router, from no store


def test_every_rpc_answers_store_unavailable_while_the_store_is_down(env):
    """Last in the module: it stops the module's Redis and starts it again."""
    requests = {n: _req(env, n) for n in _all_rpcs()}  # built while the store is up
    env.server.kill()
    failures = []
    try:
        _wait_health(env, health_pb2.HealthCheckResponse.NOT_SERVING)
        for name, (ch, sd, m, req) in requests.items():
            if name in NO_STORE:
                continue
            try:
                resp = call(ch, sd, m, req)
            except grpc.RpcError as exc:
                info = error_info(exc)
                status = rpc_status.from_call(exc)
                wire = (exc.details() or "") + (status.SerializeToString().decode("latin-1") if status else "")
                got = (exc.code(), info.reason if info else None, info.domain if info else None)
                if got != (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", "medaid"):
                    failures.append(f"{name}: {got} {exc.details()!r}")
                elif any(w in wire for w in ("127.0.0.1", "localhost", str(env.server.port))):
                    failures.append(f"{name}: an address in {exc.details()!r}")
            else:
                outcomes = list(getattr(resp, "outcomes", []))
                if not outcomes or any(o.error.reason != "STORE_UNAVAILABLE" for o in outcomes):
                    failures.append(f"{name}: answered {str(resp)[:200]!r}")
    finally:
        env.server.start()
    _wait_health(env, health_pb2.HealthCheckResponse.SERVING)
    assert not failures, "\n".join(failures)
