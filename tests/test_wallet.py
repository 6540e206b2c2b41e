"""The national 医保钱包 over gRPC with real Redis and the three registries (SPEC §2, §5, §7).

One test per rule. Every refusal is checked for its gRPC code and ErrorInfo reason, and that it
moved no money: the sender's registry balance (GetPerson), the recipient's wallet (GetWallet) and,
where the refusal must write nothing at all, a snapshot of every Redis key.

People: 河北 (13) region 130100 division 130102; 北京 (11) region 110000 division 110105;
甘肃 (62) region 620100 division 620102. "Today" is 2026-11-22 10:00 Asia/Shanghai.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from medaid.bench import money
from medaid.common.clock import SHANGHAI
from medaid.common.errors import error_info
from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway.reasons import operator_message
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import (
    EMPLOYEE,
    FACE,
    FLEXIBLE,
    RESIDENT,
    balance,
    bind,
    credit,
    enroll,
    reason,
    rid,
    snapshot,
    total_balances,
)

FP = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS
PASSWORD = cpb.Verification(method=cpb.VERIFICATION_METHOD_MEDICARE_CODE_PASSWORD, attestation_id="pwd-0001")
PLACE = {"13": "130100", "11": "110000", "62": "620100"}
DIVISION = {"13": "130102", "11": "110105", "62": "620102"}


def at(day: int, hour: int, minute: int = 0, second: int = 0, month: int = 11) -> int:
    """Epoch ms of a wall-clock time in Asia/Shanghai, 2026."""
    return int(dt.datetime(2026, month, day, hour, minute, second, tzinfo=SHANGHAI).timestamp() * 1000)


def shown(err: grpc.RpcError) -> str:
    """What a front desk reads for this refusal (the gateway's and the console's words): the settings it
    names come from its own metadata, so a wallet policy's limits show, not the defaults."""
    info = error_info(err)
    assert info is not None
    return operator_message(info.reason, "", dict(info.metadata))


def refused(code: grpc.StatusCode, why: str, call: Any, req: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as ei:
        call(req)
    assert (ei.value.code(), reason(ei.value)) == (code, why), ei.value.details()
    return ei.value


class Env:
    """Shortcuts over the `national` fixture."""

    def __init__(self, national: Any, rdb: Any) -> None:
        self.n = national
        self.rdb = rdb
        self.w = national.wallet.stub
        self.clock = national.clock

    def reg(self, prov: str) -> Any:
        return self.n.reg(prov)

    # people
    def person(self, prov: str, *, itype: int = EMPLOYEE, bal: int = 0, birth: str = "19800101",
               tier: int = 0, wallet: bool | None = None, region: str | None = None) -> str:
        """Enrol someone; a person given funds is a sender and opens a wallet too (SPEC §5: both
        sides hold one), unless `wallet` says otherwise."""
        pid = enroll(self.reg(prov), itype=itype, region=region or PLACE[prov], division=DIVISION[prov],
                     birth=birth, tier=tier)
        if bal:
            credit(self.reg(prov), pid, bal)
        if wallet if wallet is not None else bal > 0:
            self.open(pid, prov)
        return pid

    def set_status(self, prov: str, pid: str, status: int, moved_to: str = "") -> rpb.UpdatePersonStatusResponse:
        return self.reg(prov).UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
            request_id=rid("status"), id_number=pid, status=status, moved_to_province=moved_to))

    def bal(self, prov: str, pid: str) -> int:
        return balance(self.reg(prov), pid)

    # wallets
    def open_req(self, owner: str, prov: str, use_place: str | None = None, **kw: Any) -> wpb.OpenWalletRequest:
        kw.setdefault("real_name", FACE)
        kw.setdefault("request_id", rid("open"))
        return wpb.OpenWalletRequest(owner_id_number=owner, province=prov,
                                     use_place_admdvs=use_place or PLACE[prov], **kw)

    def open(self, owner: str, prov: str, use_place: str | None = None, **kw: Any) -> wpb.Wallet:
        return self.w.OpenWallet(self.open_req(owner, prov, use_place, **kw)).wallet

    def wallet(self, owner: str) -> wpb.GetWalletResponse:
        return self.w.GetWallet(wpb.GetWalletRequest(owner_id_number=owner))

    def wbal(self, owner: str) -> int:
        return int(self.wallet(owner).wallet.balance_fen)

    def has_wallet(self, owner: str) -> bool:
        try:
            self.wallet(owner)
        except grpc.RpcError as exc:
            assert (exc.code(), reason(exc)) == (NOT_FOUND, "WALLET_NOT_FOUND")
            return False
        return True

    # transfers
    def xfer_req(self, sender: str, sprov: str, recipient: str, amount: int, *,
                 relation: int = cpb.RELATION_PARENT, verification: cpb.Verification | None = FACE,
                 request_id: str | None = None) -> wpb.CreateTransferRequest:
        req = wpb.CreateTransferRequest(request_id=request_id or rid("xfer"), sender_id_number=sender,
                                        sender_province=sprov, recipient_id_number=recipient, relation=relation,
                                        amount_fen=amount)
        if verification is not None:
            req.verification.CopyFrom(verification)
        return req

    def send(self, sender: str, sprov: str, recipient: str, amount: int, **kw: Any) -> wpb.Transfer:
        return self.w.CreateTransfer(self.xfer_req(sender, sprov, recipient, amount, **kw)).transfer

    def accept(self, tid: str, recipient: str, request_id: str | None = None) -> wpb.AcceptTransferResponse:
        return self.w.AcceptTransfer(wpb.AcceptTransferRequest(request_id=request_id or rid("acc"), transfer_id=tid,
                                                               recipient_id_number=recipient))

    def fund(self, sender: str, sprov: str, recipient: str, amount: int, **kw: Any) -> wpb.Transfer:
        t = self.send(sender, sprov, recipient, amount, **kw)
        assert t.state == wpb.TRANSFER_STATE_PENDING_ACCEPT
        return self.accept(t.transfer_id, recipient).transfer

    def transfer(self, tid: str) -> wpb.Transfer:
        return self.w.GetTransfer(wpb.GetTransferRequest(transfer_id=tid)).transfer

    # spending
    def spend_req(self, owner: str, amount: int, *, place: str = "110000",
                  category: int = cpb.CATEGORY_OUTPATIENT, request_id: str | None = None) -> wpb.SpendWalletRequest:
        return wpb.SpendWalletRequest(request_id=request_id or rid("spend"), owner_id_number=owner,
                                      amount_fen=amount, category=category, spending_admdvs=place)

    def spend(self, owner: str, amount: int, **kw: Any) -> wpb.SpendWalletResponse:
        return self.w.SpendWallet(self.spend_req(owner, amount, **kw))

    def maintain(self) -> wpb.RunMaintenanceResponse:
        return self.w.RunMaintenance(wpb.RunMaintenanceRequest())

    def clearing(self, month: str) -> wpb.GetClearingReportResponse:
        return self.w.GetClearingReport(wpb.GetClearingReportRequest(month=month))

    def snap(self) -> dict[bytes, Any]:
        return snapshot(self.rdb)


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


def family(env: Env, son_bal: int = 100_000) -> tuple[str, str]:
    """A 河北 employee son and his 北京 resident mother with a wallet (use-place 110000)."""
    son = env.person("13", bal=son_bal)
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    env.open(mother, "11")
    return son, mother


def lots_of(resp: wpb.GetWalletResponse) -> list[tuple[str, str, str, int, int]]:
    return [(x.transfer_id, x.sender_id_number, x.sender_province, x.amount_fen, x.remaining_fen) for x in resp.lots]


def parts_of(resp: Any) -> list[tuple[str, str, int]]:
    return [(p.transfer_id, p.sender_province, p.amount_fen) for p in resp.parts]


def lines_of(report: wpb.GetClearingReportResponse) -> list[tuple[str, str, int, int]]:
    return [(x.sending_province, x.spending_province, x.amount_fen, x.spend_count) for x in report.lines]


# ================================================================================================
# OpenWallet
# ================================================================================================


def test_open_wallet_active_employee_and_resident(env):
    employee = env.person("13", bal=5_000, wallet=False)
    resident = env.person("11", itype=RESIDENT, birth="19550101")
    flexible = env.person("62", itype=FLEXIBLE, tier=1)
    w1 = env.open(employee, "13", "130200")
    w2 = env.open(resident, "11", real_name=PASSWORD)
    w3 = env.open(flexible, "62")
    now = env.clock.now_ms()
    assert (w1.owner_id_number, w1.province, w1.use_place_admdvs, w1.balance_fen, w1.opened_at_unix_ms,
            w1.opened_by_id_number) == (employee, "13", "130200", 0, now, employee)
    assert (w2.owner_id_number, w2.province, w2.use_place_admdvs, w2.balance_fen, w2.opened_by_id_number) == \
        (resident, "11", "110000", 0, resident)
    assert (w3.province, w3.use_place_admdvs) == ("62", "620100")
    got = env.wallet(resident)
    assert got.wallet == w2 and list(got.lots) == [] and dict(got.remaining_by_sender_fen) == {}
    # Opening a wallet moves no money out of the owner's personal account.
    assert env.bal("13", employee) == 5_000


def test_open_wallet_owner_not_insured(env):
    never_enrolled = env.person("11", itype=RESIDENT)  # enrolled in 北京, not in 河北
    suspended = env.person("11", itype=RESIDENT)
    terminated = env.person("11", bal=0)
    env.set_status("11", suspended, cpb.PERSON_STATUS_SUSPENDED)
    env.set_status("11", terminated, cpb.PERSON_STATUS_TERMINATED)
    before = env.snap()
    refused(FP, "OWNER_NOT_INSURED", env.w.OpenWallet, env.open_req(never_enrolled, "13", "130100"))
    refused(FP, "OWNER_NOT_INSURED", env.w.OpenWallet, env.open_req(suspended, "11"))
    refused(FP, "OWNER_NOT_INSURED", env.w.OpenWallet, env.open_req(terminated, "11"))
    assert env.snap() == before
    assert not env.has_wallet(never_enrolled) and not env.has_wallet(suspended) and not env.has_wallet(terminated)


def test_open_wallet_needs_real_name(env):
    owner = env.person("11", itype=RESIDENT)
    before = env.snap()
    req = env.open_req(owner, "11")
    req.ClearField("real_name")
    refused(FP, "VERIFICATION_REQUIRED", env.w.OpenWallet, req)
    blank = env.open_req(owner, "11", real_name=cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE,
                                                                 attestation_id="  "))
    refused(FP, "VERIFICATION_REQUIRED", env.w.OpenWallet, blank)
    no_method = env.open_req(owner, "11", real_name=cpb.Verification(attestation_id="face-0001"))
    refused(FP, "VERIFICATION_REQUIRED", env.w.OpenWallet, no_method)
    assert env.snap() == before
    assert not env.has_wallet(owner)


def test_open_wallet_unknown_verification_method_refused(env):
    """An unknown method is bad input, as BindMutualAid says: never taken for a verification."""
    owner = env.person("11", itype=RESIDENT, birth="19550101")
    before = env.snap()
    for method in (99, 4, -1):
        refused(INVALID, "UNKNOWN_VERIFICATION_METHOD", env.w.OpenWallet,
                env.open_req(owner, "11", real_name=cpb.Verification(method=method, attestation_id="abc")))
    assert env.snap() == before
    assert not env.has_wallet(owner)


def test_open_wallet_use_place_not_a_pooling_region_refused(env):
    """The use-place is a 统筹区 of the owner's province as its policy names them, not just any
    6-digit code starting with the province's two digits."""
    owner = env.person("13", bal=1_000, wallet=False)
    resident = env.person("11", itype=RESIDENT, birth="19550101")
    before = env.snap()
    for who, prov, place in ((owner, "13", "139999"), (owner, "13", "130000"), (owner, "13", "130102"),
                             (resident, "11", "119999"), (resident, "11", "110105")):
        err = refused(INVALID, "UNKNOWN_REGION", env.w.OpenWallet, env.open_req(who, prov, place))
        assert place in err.details()
    assert env.snap() == before
    assert not env.has_wallet(owner) and not env.has_wallet(resident)
    assert env.open(owner, "13", "130900").use_place_admdvs == "130900"


def test_open_wallet_use_place_outside_province(env):
    owner = env.person("13", bal=1_000, wallet=False)
    before = env.snap()
    err = refused(INVALID, "USE_PLACE_OUTSIDE_PROVINCE", env.w.OpenWallet, env.open_req(owner, "13", "110000"))
    assert "use-place" in err.details()
    refused(INVALID, "USE_PLACE_OUTSIDE_PROVINCE", env.w.OpenWallet, env.open_req(owner, "13", "620100"))
    assert env.snap() == before
    assert not env.has_wallet(owner)
    assert env.open(owner, "13", "131100").use_place_admdvs == "131100"


def test_open_wallet_on_behalf_by_near_kin(env):
    son = env.person("13", bal=1_000, wallet=False)
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    w = env.open(mother, "11", opened_by_id_number=son, opened_by_relation=cpb.RELATION_CHILD)
    assert (w.owner_id_number, w.province, w.use_place_admdvs, w.opened_by_id_number) == \
        (mother, "11", "110000", son)
    assert env.wallet(mother).wallet.opened_by_id_number == son
    assert not env.has_wallet(son)  # the wallet is the owner's, not the opener's
    # Once he holds a wallet of his own, the son can send to it.
    env.open(son, "13")
    assert env.fund(son, "13", mother, 1_000).state == wpb.TRANSFER_STATE_COMPLETED
    assert env.wbal(mother) == 1_000


@pytest.mark.parametrize("relation", [cpb.RELATION_CHILD_IN_LAW, cpb.RELATION_PARENT_IN_LAW,
                                      cpb.RELATION_SIBLING_IN_LAW])
def test_open_wallet_on_behalf_by_in_law_refused(env, relation):
    daughter_in_law = env.person("13", bal=1_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    before = env.snap()
    refused(FP, "NOT_NEAR_KIN", env.w.OpenWallet,
            env.open_req(mother, "11", opened_by_id_number=daughter_in_law, opened_by_relation=relation))
    assert env.snap() == before
    assert not env.has_wallet(mother)


def test_open_wallet_twice_refused(env):
    son, mother = family(env)
    env.fund(son, "13", mother, 7_000)
    before = env.snap()
    refused(EXISTS, "WALLET_EXISTS", env.w.OpenWallet, env.open_req(mother, "11"))
    # Not even with another use-place or on someone's behalf: the wallet and its quota stay.
    refused(EXISTS, "WALLET_EXISTS", env.w.OpenWallet,
            env.open_req(mother, "11", opened_by_id_number=son, opened_by_relation=cpb.RELATION_CHILD))
    assert env.snap() == before
    got = env.wallet(mother)
    assert (got.wallet.balance_fen, got.wallet.opened_by_id_number) == (7_000, mother)


def test_open_wallet_replay_same_request_id(env):
    owner = env.person("11", itype=RESIDENT)
    req = env.open_req(owner, "11")
    first = env.w.OpenWallet(req)
    env.clock.advance(60_000)
    again = env.w.OpenWallet(req)
    assert again == first  # the first answer, opened_at included
    assert again.wallet.opened_at_unix_ms == env.clock.now_ms() - 60_000
    assert env.wallet(owner).wallet == first.wallet
    # The same id with different fields is refused.
    other = env.open_req(owner, "11", request_id=req.request_id, real_name=PASSWORD)
    refused(EXISTS, "IDEMPOTENCY_KEY_REUSED", env.w.OpenWallet, other)


# ================================================================================================
# CreateTransfer: the happy path, then one refusal per rule
# ================================================================================================


def test_transfer_debits_sender_and_waits_for_acceptance(env):
    son, mother = family(env)
    t = env.send(son, "13", mother, 60_000)
    assert (t.sender_id_number, t.sender_province, t.recipient_id_number, t.recipient_province, t.relation,
            t.amount_fen, t.state) == (son, "13", mother, "11", cpb.RELATION_PARENT, 60_000,
                                       wpb.TRANSFER_STATE_PENDING_ACCEPT)
    assert t.created_at_unix_ms == at(22, 10)
    assert t.expires_at_unix_ms == at(23, 6)
    assert env.bal("13", son) == 40_000
    assert env.wbal(mother) == 0  # quota lands only on acceptance
    assert env.transfer(t.transfer_id) == t
    acc = env.accept(t.transfer_id, mother)
    assert acc.transfer.state == wpb.TRANSFER_STATE_COMPLETED
    assert acc.transfer.finished_at_unix_ms == at(22, 10)
    assert acc.wallet.balance_fen == 60_000
    assert env.bal("13", son) == 40_000


def test_incoming_transfers_are_listed_newest_first_for_the_front_desk(env):
    """ListIncomingTransfers: what a recipient has been sent, pending ones included (the 医保大厅
    accepts those for a person who cannot use the App)."""
    son, mother = family(env)
    daughter = env.person("62", bal=5_000)
    env.clock.set(at(22, 10))
    done = env.fund(son, "13", mother, 1_000)
    env.clock.set(at(22, 11))
    pending = env.send(daughter, "62", mother, 2_000)

    def listed(limit: int = 0) -> list[tuple[str, int]]:
        got = env.w.ListIncomingTransfers(wpb.ListIncomingTransfersRequest(recipient_id_number=mother, limit=limit))
        return [(t.transfer_id, t.state) for t in got.transfers]

    assert listed() == [(pending.transfer_id, wpb.TRANSFER_STATE_PENDING_ACCEPT),
                        (done.transfer_id, wpb.TRANSFER_STATE_COMPLETED)]
    assert listed(1) == [(pending.transfer_id, wpb.TRANSFER_STATE_PENDING_ACCEPT)]
    full = env.w.ListIncomingTransfers(wpb.ListIncomingTransfersRequest(recipient_id_number=mother)).transfers[0]
    assert full == env.transfer(pending.transfer_id)
    # Accepted at the desk, it is listed as such; the senders have nothing incoming.
    env.accept(pending.transfer_id, mother)
    assert listed()[0] == (pending.transfer_id, wpb.TRANSFER_STATE_COMPLETED)
    assert env.w.ListIncomingTransfers(wpb.ListIncomingTransfersRequest(recipient_id_number=son)).transfers == []


def sent_two(env: Env) -> tuple[str, str, str, wpb.Transfer, wpb.Transfer]:
    """A son who sent his mother ¥10.00 at 22:10 (accepted) and his father ¥20.00 at 22:11 (waiting)."""
    son, mother = family(env)
    father = env.person("11", itype=RESIDENT, birth="19530101", wallet=True)
    env.clock.set(at(22, 10))
    done = env.fund(son, "13", mother, 1_000)
    env.clock.set(at(22, 11))
    waiting = env.send(son, "13", father, 2_000)
    return son, mother, father, done, waiting


def test_outgoing_transfers_are_listed_newest_first_whatever_became_of_them(env):
    """ListOutgoingTransfers: what a sender started, newest first (the 医保大厅 shows a sender which
    transfer still waits, the one that blocks the next). A refused attempt is not listed."""
    son, mother, father, done, waiting = sent_two(env)
    refused(FP, "PENDING_TRANSFER_EXISTS", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 500))

    def listed(limit: int = 0) -> list[tuple[str, str, int, int]]:
        got = env.w.ListOutgoingTransfers(wpb.ListOutgoingTransfersRequest(sender_id_number=son, limit=limit))
        return [(t.transfer_id, t.recipient_id_number, t.amount_fen, t.state) for t in got.transfers]

    assert listed() == [(waiting.transfer_id, father, 2_000, wpb.TRANSFER_STATE_PENDING_ACCEPT),
                        (done.transfer_id, mother, 1_000, wpb.TRANSFER_STATE_COMPLETED)]
    assert listed(1) == listed()[:1]
    full = env.w.ListOutgoingTransfers(wpb.ListOutgoingTransfersRequest(sender_id_number=son)).transfers[0]
    assert full == env.transfer(waiting.transfer_id)
    # Not accepted by 06:00 the next day, it went back: listed as returned, and the sender may send again.
    env.clock.set(waiting.expires_at_unix_ms + 60_000)
    env.maintain()
    assert listed()[0] == (waiting.transfer_id, father, 2_000, wpb.TRANSFER_STATE_RETURNED)
    assert env.bal("13", son) == 99_000
    # The recipients sent nothing.
    assert env.w.ListOutgoingTransfers(wpb.ListOutgoingTransfersRequest(sender_id_number=mother)).transfers == []


@pytest.mark.parametrize(("method", "person"), [("ListIncomingTransfers", "recipient_id_number"),
                                                ("ListOutgoingTransfers", "sender_id_number")])
def test_transfer_listings_refuse_bad_input_and_write_nothing(env, method, person):
    son, mother = family(env)
    env.send(son, "13", mother, 1_000)
    request = getattr(wpb, f"{method}Request")
    before = env.snap()
    for fields, why in (({person: "123"}, "INVALID_ID_NUMBER"), ({person: son, "limit": 101}, "INVALID_LIMIT"),
                        ({person: son, "limit": -1}, "INVALID_LIMIT")):
        refused(grpc.StatusCode.INVALID_ARGUMENT, why, getattr(env.w, method), request(**fields))
    assert env.snap() == before


def test_transfers_written_before_the_listings_are_indexed_by_maintenance(env):
    """A store written by a wallet without the listings (0.1.0) has transfers in neither: the first
    maintenance pass indexes every transfer record for its recipient and its sender, once."""
    son, mother, father, done, waiting = sent_two(env)

    def incoming(who: str) -> list[str]:
        return [t.transfer_id for t in env.w.ListIncomingTransfers(
            wpb.ListIncomingTransfersRequest(recipient_id_number=who)).transfers]

    def outgoing(who: str) -> list[str]:
        return [t.transfer_id for t in env.w.ListOutgoingTransfers(
            wpb.ListOutgoingTransfersRequest(sender_id_number=who)).transfers]

    listed = (incoming(mother), incoming(father), outgoing(son))
    assert listed == ([done.transfer_id], [waiting.transfer_id], [waiting.transfer_id, done.transfer_id])
    env.maintain()
    marker = env.rdb.get("wal:{maint}:transfers_indexed")
    assert marker is not None
    # As 0.1.0 left it: no listings, no marker.
    env.rdb.delete("wal:{maint}:transfers_indexed", *env.rdb.keys("wal:*:xins"), *env.rdb.keys("wal:*:sent"))
    assert (incoming(mother), incoming(father), outgoing(son)) == ([], [], [])
    before = env.snap()
    env.maintain()
    assert (incoming(mother), incoming(father), outgoing(son)) == listed
    added = set(env.snap()) - set(before)
    assert {k.decode() for k in added} == {"wal:{maint}:transfers_indexed", f"wal:{{w:{mother}}}:xins",
                                          f"wal:{{w:{father}}}:xins", f"wal:{{s:{son}}}:sent"}
    # The scan runs once, not at every pass: a later pass does not look again.
    env.rdb.delete(f"wal:{{w:{mother}}}:xins")
    env.maintain()
    assert incoming(mother) == []


@pytest.mark.parametrize("relation", [cpb.RELATION_PARENT_IN_LAW, cpb.RELATION_CHILD_IN_LAW,
                                      cpb.RELATION_SIBLING_IN_LAW])
def test_transfer_not_near_kin(env, relation):
    son, mother = family(env)
    before = env.snap()
    refused(FP, "NOT_NEAR_KIN", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 1_000, relation=relation))
    assert env.snap() == before
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0


@pytest.mark.parametrize("relation", [cpb.RELATION_SPOUSE, cpb.RELATION_PARENT, cpb.RELATION_CHILD,
                                      cpb.RELATION_SIBLING, cpb.RELATION_GRANDPARENT,
                                      cpb.RELATION_MATERNAL_GRANDPARENT, cpb.RELATION_GRANDCHILD,
                                      cpb.RELATION_MATERNAL_GRANDCHILD])
def test_transfer_every_near_kin_relation_allowed(env, relation):
    son, mother = family(env)
    assert env.fund(son, "13", mother, 1_000, relation=relation).relation == relation
    assert env.bal("13", son) == 99_000 and env.wbal(mother) == 1_000


def test_transfer_recipient_no_wallet(env):
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101")  # insured, no wallet
    stranger = env.person("62", itype=RESIDENT)
    before = env.snap()
    refused(FP, "RECIPIENT_NO_WALLET", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 1_000))
    refused(FP, "RECIPIENT_NO_WALLET", env.w.CreateTransfer, env.xfer_req(son, "13", stranger, 1_000))
    assert env.snap() == before
    assert env.bal("13", son) == 100_000 and not env.has_wallet(mother)


def test_transfer_recipient_not_insured(env):
    son, mother = family(env)
    env.set_status("11", mother, cpb.PERSON_STATUS_SUSPENDED)
    before = env.snap()
    refused(FP, "RECIPIENT_NOT_INSURED", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 1_000))
    assert env.snap() == before
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    env.set_status("11", mother, cpb.PERSON_STATUS_ACTIVE)
    assert env.fund(son, "13", mother, 1_000).state == wpb.TRANSFER_STATE_COMPLETED


def test_transfer_sender_not_employee(env):
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    env.open(mother, "11")
    resident = env.person("13", itype=RESIDENT, wallet=True)
    flexible_1 = env.person("13", itype=FLEXIBLE, tier=1, wallet=True)
    before = env.snap()
    refused(FP, "SENDER_NOT_EMPLOYEE", env.w.CreateTransfer, env.xfer_req(resident, "13", mother, 1_000))
    refused(FP, "SENDER_NOT_EMPLOYEE", env.w.CreateTransfer, env.xfer_req(flexible_1, "13", mother, 1_000))
    assert env.snap() == before
    assert env.wbal(mother) == 0
    # A tier-2 flexible worker has a personal account and may send.
    flexible_2 = env.person("13", itype=FLEXIBLE, tier=2, bal=3_000)
    assert env.fund(flexible_2, "13", mother, 3_000).state == wpb.TRANSFER_STATE_COMPLETED
    assert env.bal("13", flexible_2) == 0


@pytest.mark.parametrize("status", [cpb.PERSON_STATUS_SUSPENDED, cpb.PERSON_STATUS_TERMINATED])
def test_transfer_sender_not_active(env, status):
    son, mother = family(env)
    env.set_status("13", son, status)
    before = env.snap()
    refused(FP, "SENDER_NOT_ACTIVE", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 1_000))
    assert env.snap() == before
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    # Not enrolled in the province named as the sender's.
    refused(FP, "SENDER_NOT_ACTIVE", env.w.CreateTransfer, env.xfer_req(son, "62", mother, 1_000))
    assert env.snap() == before


def test_transfer_amount_over_limit(env):
    son, mother = family(env, son_bal=300_000)
    before = env.snap()
    err = refused(FP, "AMOUNT_OVER_LIMIT", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 200_001))
    assert "200000" in err.details()
    assert shown(err) == "AMOUNT_OVER_LIMIT: 单笔划转金额超过上限(每笔最多2000元),本次未划转;请按上限更正金额后重新发起"
    assert env.snap() == before
    assert env.bal("13", son) == 300_000 and env.wbal(mother) == 0
    t = env.fund(son, "13", mother, 200_000)
    assert t.amount_fen == 200_000
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 200_000


def test_transfer_daily_limit(env):
    son, mother = family(env)
    for i in range(3):
        env.clock.set(at(22, 10, i))
        env.fund(son, "13", mother, 1_000)
    env.clock.set(at(22, 21, 59))
    before = env.snap()
    err = refused(FP, "DAILY_LIMIT_REACHED", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 1_000))
    assert shown(err) == "DAILY_LIMIT_REACHED: 当日划转次数已达上限(每日最多3次),本次未划转;请次日再办理"
    assert env.snap() == before
    assert env.bal("13", son) == 97_000 and env.wbal(mother) == 3_000
    # Per sender: his sister may still send today.
    daughter = env.person("62", bal=5_000)
    env.fund(daughter, "62", mother, 2_000)
    # The next Shanghai day the count starts again.
    env.clock.set(at(22, 10) + 86_400_000)
    env.fund(son, "13", mother, 1_000)
    assert env.bal("13", son) == 96_000 and env.wbal(mother) == 6_000


def test_transfer_outside_transfer_hours(env):
    son, mother = family(env)
    before = env.snap()
    for when in (at(22, 22, 0), at(22, 23, 30), at(23, 0, 0), at(23, 5, 59), at(23, 5, 59, 59)):
        env.clock.set(when)
        err = refused(FP, "OUTSIDE_TRANSFER_HOURS", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 1_000))
        assert shown(err) == ("OUTSIDE_TRANSFER_HOURS: 当前时段不能划转(22:00至次日06:00不能划转),本次未划转;"
                              "请在可划转时段重新发起")
    assert env.snap() == before
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    env.clock.set(at(23, 6, 0))
    t = env.send(son, "13", mother, 1_000)
    assert t.state == wpb.TRANSFER_STATE_PENDING_ACCEPT and t.created_at_unix_ms == at(23, 6)
    assert t.expires_at_unix_ms == at(24, 6)
    env.accept(t.transfer_id, mother)
    env.clock.set(at(23, 21, 59, 59))
    env.fund(son, "13", mother, 1_000)
    assert env.bal("13", son) == 98_000 and env.wbal(mother) == 2_000


def test_transfer_pending_transfer_exists(env):
    son, mother = family(env)
    father = env.person("11", itype=RESIDENT, birth="19530101")
    env.open(father, "11")
    first = env.send(son, "13", mother, 10_000)
    before = env.snap()
    refused(FP, "PENDING_TRANSFER_EXISTS", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 5_000))
    refused(FP, "PENDING_TRANSFER_EXISTS", env.w.CreateTransfer, env.xfer_req(son, "13", father, 5_000))
    assert env.snap() == before
    assert env.bal("13", son) == 90_000 and env.wbal(mother) == 0 and env.wbal(father) == 0
    env.accept(first.transfer_id, mother)
    second = env.send(son, "13", father, 5_000)
    assert second.state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert env.bal("13", son) == 85_000


def test_transfer_verification_required(env):
    son, mother = family(env)
    before = env.snap()
    refused(FP, "VERIFICATION_REQUIRED", env.w.CreateTransfer,
            env.xfer_req(son, "13", mother, 1_000, verification=None))
    refused(FP, "VERIFICATION_REQUIRED", env.w.CreateTransfer,
            env.xfer_req(son, "13", mother, 1_000, verification=cpb.Verification(
                method=cpb.VERIFICATION_METHOD_FACE, attestation_id="")))
    assert env.snap() == before
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    assert env.fund(son, "13", mother, 1_000, verification=PASSWORD).state == wpb.TRANSFER_STATE_COMPLETED


def test_a_counter_check_is_not_a_transfers_verification(env):
    """SPEC §5: each transfer needs face or 医保码-password verification; a counter check opens a
    wallet but sends no money."""
    son, mother = family(env)
    before = env.snap()
    refused(FP, "VERIFICATION_REQUIRED", env.w.CreateTransfer, env.xfer_req(
        son, "13", mother, 1_000, verification=cpb.Verification(method=cpb.VERIFICATION_METHOD_COUNTER,
                                                                attestation_id="承诺书-0001")))
    assert env.snap() == before
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0


def test_transfer_unknown_verification_method_refused(env):
    son, mother = family(env)
    before = env.snap()
    for method in (99, 4):
        refused(INVALID, "UNKNOWN_VERIFICATION_METHOD", env.w.CreateTransfer, env.xfer_req(
            son, "13", mother, 1_000, verification=cpb.Verification(method=method, attestation_id="abc")))
    assert env.snap() == before
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    assert env.fund(son, "13", mother, 1_000).state == wpb.TRANSFER_STATE_COMPLETED


def test_transfer_insufficient_balance(env):
    son, mother = family(env, son_bal=10_000)
    before = env.snap()
    refused(FP, "INSUFFICIENT_BALANCE", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 10_001))
    assert env.snap() == before
    assert env.bal("13", son) == 10_000 and env.wbal(mother) == 0
    env.fund(son, "13", mother, 10_000)
    assert env.bal("13", son) == 0 and env.wbal(mother) == 10_000


def test_transfer_inside_one_province_allowed_and_cleared_as_same_province(env):
    """省内 transfers are allowed (SPEC §5); clearing shows them as same-province lines."""
    son = env.person("13", bal=100_000)
    mother = env.person("13", itype=RESIDENT, birth="19550101")
    env.open(mother, "13")
    t = env.fund(son, "13", mother, 1_000)
    assert (t.state, t.sender_province, t.recipient_province) == (wpb.TRANSFER_STATE_COMPLETED, "13", "13")
    assert env.bal("13", son) == 99_000 and env.wbal(mother) == 1_000
    env.spend(mother, 400, place="130100")
    report = env.clearing("202611")
    assert [(x.sending_province, x.spending_province, x.amount_fen, x.same_province) for x in report.lines] == \
        [("13", "13", 400, True)]


def test_transfer_replay_same_request_id_debits_once(env):
    son, mother = family(env)
    req = env.xfer_req(son, "13", mother, 30_000)
    first = env.w.CreateTransfer(req)
    assert env.w.CreateTransfer(req) == first
    assert env.bal("13", son) == 70_000
    other = env.xfer_req(son, "13", mother, 31_000, request_id=req.request_id)
    refused(EXISTS, "IDEMPOTENCY_KEY_REUSED", env.w.CreateTransfer, other)
    assert env.bal("13", son) == 70_000
    env.accept(first.transfer.transfer_id, mother)
    assert env.w.CreateTransfer(req) == first  # still the first answer after acceptance
    assert env.wbal(mother) == 30_000 and env.bal("13", son) == 70_000


# ================================================================================================
# Acceptance and return
# ================================================================================================


def test_accept_by_non_recipient_not_found(env):
    son, mother = family(env)
    aunt = env.person("11", itype=RESIDENT, birth="19560101")
    env.open(aunt, "11")
    t = env.send(son, "13", mother, 20_000)
    for intruder in (aunt, son):
        refused(NOT_FOUND, "TRANSFER_NOT_FOUND", env.w.AcceptTransfer, wpb.AcceptTransferRequest(
            request_id=rid("acc"), transfer_id=t.transfer_id, recipient_id_number=intruder))
    refused(NOT_FOUND, "TRANSFER_NOT_FOUND", env.w.AcceptTransfer, wpb.AcceptTransferRequest(
        request_id=rid("acc"), transfer_id="no-such-transfer", recipient_id_number=mother))
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert env.wbal(aunt) == 0 and env.wbal(mother) == 0 and env.bal("13", son) == 80_000
    assert env.accept(t.transfer_id, mother).wallet.balance_fen == 20_000


def test_unaccepted_transfer_returned_by_0600_next_day(env):
    son, mother = family(env)
    t = env.send(son, "13", mother, 40_000)
    assert env.bal("13", son) == 60_000
    assert t.expires_at_unix_ms == at(23, 6)
    # One millisecond before the deadline nothing happens.
    env.clock.set(t.expires_at_unix_ms - 1)
    m = env.maintain()
    assert (m.ran, m.expired) == (True, 0)
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert env.bal("13", son) == 60_000
    # Past the deadline the sweeper returns it.
    env.clock.set(t.expires_at_unix_ms + 60_000)
    m = env.maintain()
    assert (m.ran, m.expired) == (True, 1)
    back = env.transfer(t.transfer_id)
    assert back.state == wpb.TRANSFER_STATE_RETURNED
    assert back.finished_at_unix_ms == t.expires_at_unix_ms + 60_000
    assert env.bal("13", son) == 100_000
    got = env.wallet(mother)
    assert got.wallet.balance_fen == 0 and list(got.lots) == []
    # Another pass changes nothing: returned exactly once.
    assert env.maintain().expired == 0
    assert env.bal("13", son) == 100_000
    # The sender may transfer again (the pending slot is free; 06:01 is inside transfer hours).
    again = env.send(son, "13", mother, 25_000)
    assert again.state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert env.bal("13", son) == 75_000
    # The returned transfer can never be accepted.
    refused(FP, "TRANSFER_EXPIRED", env.w.AcceptTransfer, wpb.AcceptTransferRequest(
        request_id=rid("acc"), transfer_id=t.transfer_id, recipient_id_number=mother))
    assert env.wbal(mother) == 0 and env.bal("13", son) == 75_000


def test_accept_after_expiry_refused_and_money_goes_back(env):
    son, mother = family(env)
    t = env.send(son, "13", mother, 40_000)
    env.clock.set(at(23, 6))  # exactly the deadline: too late
    refused(FP, "TRANSFER_EXPIRED", env.w.AcceptTransfer, wpb.AcceptTransferRequest(
        request_id=rid("acc"), transfer_id=t.transfer_id, recipient_id_number=mother))
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 100_000
    assert env.wbal(mother) == 0 and list(env.wallet(mother).lots) == []
    assert env.maintain().expired == 0
    assert env.bal("13", son) == 100_000


def test_an_expired_transfer_neither_blocks_nor_is_accepted_before_the_sweep(env):
    """From its deadline on, an unaccepted transfer is no longer "the one unaccepted transfer" of
    its sender, whenever the sweeper gets to it: at 06:00 sharp, nothing swept yet, the sender sends
    again, and the expired one cannot be accepted. The sweep returns the expired one without freeing
    the slot the new one holds."""
    son, mother = family(env)
    father = env.person("11", itype=RESIDENT, birth="19530101")
    env.open(father, "11")
    old = env.send(son, "13", mother, 40_000)
    env.clock.set(old.expires_at_unix_ms)  # 06:00 the next day; no maintenance pass has run
    assert env.transfer(old.transfer_id).state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    new = env.send(son, "13", father, 10_000)
    assert new.state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    refused(FP, "TRANSFER_EXPIRED", env.w.AcceptTransfer, wpb.AcceptTransferRequest(
        request_id=rid("acc"), transfer_id=old.transfer_id, recipient_id_number=mother))
    env.maintain()
    assert env.transfer(old.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 90_000 and env.wbal(mother) == 0
    # The new transfer still holds the slot: it is unaccepted and inside its time.
    refused(FP, "PENDING_TRANSFER_EXISTS", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 1_000))
    assert env.accept(new.transfer_id, father).wallet.balance_fen == 10_000
    assert env.send(son, "13", mother, 1_000).state == wpb.TRANSFER_STATE_PENDING_ACCEPT


def test_money_in_flight_past_its_deadline_shows_as_overdue_until_the_sweep(env, national, loop_thread):
    """The metrics' in-flight reading (`medaid_wallet_overdue_in_flight_fen`, the alert for stuck money in
    docs/operations.md): a pending transfer is in flight but not overdue; from its deadline on, before
    a pass, its money is overdue; the pass sends it back and nothing is left in flight."""
    son, mother = family(env)
    t = env.send(son, "13", mother, 40_000)
    wallet = national.wallet.wallet
    assert loop_thread.run(wallet.in_flight()) == (1, 40_000, 0)
    env.clock.set(t.expires_at_unix_ms - 1)
    assert loop_thread.run(wallet.in_flight()) == (1, 40_000, 0)
    env.clock.set(t.expires_at_unix_ms)
    assert loop_thread.run(wallet.in_flight()) == (1, 40_000, 40_000)
    assert env.maintain().expired == 1
    assert loop_thread.run(wallet.in_flight()) == (0, 0, 0)
    assert env.bal("13", son) == 100_000


def test_accept_by_a_recipient_not_active_refused(env):
    """Accepting needs an ACTIVE recipient, as creating does: the refusal writes nothing and the
    transfer stays pending; once ACTIVE again (before the deadline) the recipient accepts."""
    son, mother = family(env)
    t = env.send(son, "13", mother, 20_000)
    env.set_status("11", mother, cpb.PERSON_STATUS_SUSPENDED)
    before = env.snap()
    req = wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id, recipient_id_number=mother)
    refused(FP, "RECIPIENT_NOT_INSURED", env.w.AcceptTransfer, req)
    refused(FP, "RECIPIENT_NOT_INSURED", env.w.AcceptTransfer, req)  # a resend is refused the same way
    assert env.snap() == before
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert env.wbal(mother) == 0 and list(env.wallet(mother).lots) == [] and env.bal("13", son) == 80_000
    env.set_status("11", mother, cpb.PERSON_STATUS_ACTIVE)
    done = env.w.AcceptTransfer(req)
    assert (done.transfer.state, done.wallet.balance_fen) == (wpb.TRANSFER_STATE_COMPLETED, 20_000)
    assert env.bal("13", son) == 80_000


def test_transfer_to_a_recipient_suspended_until_the_deadline_goes_back(env):
    son, mother = family(env)
    t = env.send(son, "13", mother, 20_000)
    env.set_status("11", mother, cpb.PERSON_STATUS_SUSPENDED)
    refused(FP, "RECIPIENT_NOT_INSURED", env.w.AcceptTransfer, wpb.AcceptTransferRequest(
        request_id=rid("acc"), transfer_id=t.transfer_id, recipient_id_number=mother))
    env.clock.set(t.expires_at_unix_ms)
    assert env.maintain().expired == 1
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0


def test_accept_twice_with_different_request_ids_one_lot(env):
    son, mother = family(env)
    t = env.send(son, "13", mother, 40_000)
    a1 = env.accept(t.transfer_id, mother)
    env.clock.advance(1_000)
    a2 = env.accept(t.transfer_id, mother)
    assert a1.transfer.state == a2.transfer.state == wpb.TRANSFER_STATE_COMPLETED
    assert a1.wallet.balance_fen == a2.wallet.balance_fen == 40_000
    got = env.wallet(mother)
    assert lots_of(got) == [(t.transfer_id, son, "13", 40_000, 40_000)]
    assert got.wallet.balance_fen == 40_000
    kinds = [e.kind for e in env.w.ListWalletEntries(wpb.ListWalletEntriesRequest(owner_id_number=mother)).entries]
    assert kinds == ["LOT_IN"]
    assert env.bal("13", son) == 60_000


# ================================================================================================
# Quota lots
# ================================================================================================


def test_lots_per_sender_spent_oldest_first(env):
    son = env.person("13", bal=100_000)
    daughter = env.person("62", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    env.open(mother, "11")
    t1 = env.fund(son, "13", mother, 50_000)
    env.clock.advance(5 * 60_000)
    t2 = env.fund(daughter, "62", mother, 30_000, relation=cpb.RELATION_PARENT)
    got = env.wallet(mother)
    assert got.wallet.balance_fen == 80_000
    assert lots_of(got) == [(t1.transfer_id, son, "13", 50_000, 50_000),
                            (t2.transfer_id, daughter, "62", 30_000, 30_000)]
    assert [x.received_at_unix_ms for x in got.lots] == [at(22, 10), at(22, 10, 5)]
    assert dict(got.remaining_by_sender_fen) == {son: 50_000, daughter: 30_000}
    son_before, daughter_before = env.bal("13", son), env.bal("62", daughter)
    # 60,000 spans both lots: all of the son's (oldest), then 10,000 of the daughter's.
    s = env.spend(mother, 60_000)
    assert (s.spent_fen, s.balance_after_fen) == (60_000, 20_000)
    assert parts_of(s) == [(t1.transfer_id, "13", 50_000), (t2.transfer_id, "62", 10_000)]
    got = env.wallet(mother)
    assert lots_of(got) == [(t2.transfer_id, daughter, "62", 30_000, 20_000)]
    assert dict(got.remaining_by_sender_fen) == {daughter: 20_000}
    s2 = env.spend(mother, 5_000)
    assert parts_of(s2) == [(t2.transfer_id, "62", 5_000)]
    assert env.wallet(mother).lots[0].remaining_fen == 15_000
    # The senders' own accounts do not move when the recipient spends.
    assert (env.bal("13", son), env.bal("62", daughter)) == (son_before, daughter_before) == (50_000, 70_000)


# ================================================================================================
# The sender's insurance ends or moves: unspent lots go home
# ================================================================================================


@pytest.mark.parametrize("moved_to", ["", "44"])
def test_sender_terminated_or_moved_unspent_lots_return(env, moved_to):
    son = env.person("13", bal=100_000)
    daughter = env.person("62", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    env.open(mother, "11")
    t1 = env.fund(son, "13", mother, 50_000)
    t2 = env.fund(daughter, "62", mother, 30_000)
    s = env.spend(mother, 20_000)  # oldest first: 20,000 of the son's lot
    assert parts_of(s) == [(t1.transfer_id, "13", 20_000)]
    assert env.bal("13", son) == 50_000
    resp = env.set_status("13", son, cpb.PERSON_STATUS_TERMINATED, moved_to=moved_to)
    assert resp.person.status == cpb.PERSON_STATUS_TERMINATED and resp.person.moved_to_province == moved_to
    # Exactly the unspent 30,000 comes home; the 20,000 already spent stays spent.
    assert env.bal("13", son) == 80_000
    got = env.wallet(mother)
    assert got.wallet.balance_fen == 30_000
    assert lots_of(got) == [(t2.transfer_id, daughter, "62", 30_000, 30_000)]
    assert dict(got.remaining_by_sender_fen) == {daughter: 30_000}
    assert env.bal("62", daughter) == 70_000
    last = env.w.ListWalletEntries(wpb.ListWalletEntriesRequest(owner_id_number=mother, limit=1)).entries[0]
    assert (last.kind, last.amount_fen, last.balance_after_fen) == ("LOT_RELEASE", -30_000, 30_000)
    assert lines_of(env.clearing("202611")) == [("13", "11", 20_000, 1)]
    # A second status change does not return anything twice.
    env.set_status("13", son, cpb.PERSON_STATUS_TERMINATED, moved_to=moved_to)
    assert env.bal("13", son) == 80_000 and env.wbal(mother) == 30_000
    # The remaining quota is the daughter's: spending it touches only her lot.
    assert parts_of(env.spend(mother, 30_000)) == [(t2.transfer_id, "62", 30_000)]
    assert env.bal("13", son) == 80_000


def test_release_sender_lots_across_several_wallets(env):
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    grandma = env.person("62", itype=RESIDENT, birth="19350101")
    env.open(mother, "11")
    env.open(grandma, "62")
    env.fund(son, "13", mother, 10_000)
    env.fund(son, "13", grandma, 7_000, relation=cpb.RELATION_GRANDPARENT)
    env.spend(grandma, 2_000, place="620100")
    rel = env.w.ReleaseSenderLots(wpb.ReleaseSenderLotsRequest(request_id=rid("rel"), sender_id_number=son,
                                                               reason="TERMINATED"))
    assert (rel.returned_fen, rel.wallets_touched) == (15_000, 2)
    assert env.bal("13", son) == 83_000 + 15_000
    assert env.wbal(mother) == 0 and env.wbal(grandma) == 0
    refused(INVALID, "INVALID_REASON", env.w.ReleaseSenderLots, wpb.ReleaseSenderLotsRequest(
        request_id=rid("rel"), sender_id_number=son, reason="BORED"))


def test_a_late_release_of_a_senders_lots_leaves_what_he_sent_after_the_event(env):
    """ReleaseSenderLots stands for an event (his termination, his move) like
    EndPersonWalletRelationships, and may come late (the wallet was down): with the event's time
    (`event_at_unix_ms`) it sends home only the lots of transfers created by then, and leaves the
    one he sent once ACTIVE again. A time ahead of the wallet's clock is refused, writing nothing;
    without a time (an older caller) every lot goes, as before."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    event_at = env.clock.now_ms()
    env.clock.advance(60_000)
    env.fund(son, "13", mother, 5_000)
    ahead = wpb.ReleaseSenderLotsRequest(request_id=rid("rel"), sender_id_number=son, reason="TERMINATED",
                                         event_at_unix_ms=env.clock.now_ms() + 3_600_000)
    before = env.snap()
    refused(INVALID, "INVALID_EVENT_AT", env.w.ReleaseSenderLots, ahead)
    assert env.snap() == before
    rel = env.w.ReleaseSenderLots(wpb.ReleaseSenderLotsRequest(
        request_id=rid("rel"), sender_id_number=son, reason="TERMINATED", event_at_unix_ms=event_at))
    assert (rel.returned_fen, rel.wallets_touched) == (10_000, 1)
    assert env.bal("13", son) == 95_000 and env.wbal(mother) == 5_000
    rest = env.w.ReleaseSenderLots(wpb.ReleaseSenderLotsRequest(request_id=rid("rel"), sender_id_number=son,
                                                                reason="TERMINATED"))
    assert rest.returned_fen == 5_000 and env.wbal(mother) == 0
    assert money.check(env.rdb).conserved


@pytest.mark.parametrize("moved_to", ["", "44"])
def test_pending_transfer_of_a_terminated_sender_goes_back(env, moved_to):
    """A transfer still waiting for acceptance when the sender's insurance ends or moves must not
    become quota of a sender whose relationship ended: it goes back to the sender's account at once,
    and accepting it afterwards is refused."""
    son, mother = family(env)
    t = env.send(son, "13", mother, 40_000)
    assert env.bal("13", son) == 60_000
    env.set_status("13", son, cpb.PERSON_STATUS_TERMINATED, moved_to=moved_to)
    assert env.bal("13", son) == 100_000
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    refused(FP, "TRANSFER_EXPIRED", env.w.AcceptTransfer, wpb.AcceptTransferRequest(
        request_id=rid("acc"), transfer_id=t.transfer_id, recipient_id_number=mother))
    got = env.wallet(mother)
    assert got.wallet.balance_fen == 0 and list(got.lots) == [] and dict(got.remaining_by_sender_fen) == {}
    env.clock.set(at(23, 6, 1))
    assert env.maintain().expired == 0
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0


# ================================================================================================
# Spending
# ================================================================================================


def _funded_mother(env: Env, amount: int = 50_000) -> tuple[str, str, wpb.Transfer]:
    son, mother = family(env)
    return son, mother, env.fund(son, "13", mother, amount)


def test_spend_outside_use_place(env):
    _, mother, _ = _funded_mother(env)
    before = env.snap()
    for place in ("130100", "620100", "110101"):
        err = refused(FP, "OUTSIDE_USE_PLACE", env.w.SpendWallet, env.spend_req(mother, 1_000, place=place))
        assert "110000" in err.details()
    assert env.snap() == before
    assert env.wbal(mother) == 50_000
    assert env.spend(mother, 1_000, place="110000").balance_after_fen == 49_000


@pytest.mark.parametrize("category", [cpb.CATEGORY_CASH_WITHDRAWAL, cpb.CATEGORY_PUBLIC_HEALTH,
                                      cpb.CATEGORY_FITNESS, cpb.CATEGORY_WELLNESS])
def test_spend_category_not_payable(env, category):
    _, mother, _ = _funded_mother(env)
    before = env.snap()
    refused(FP, "CATEGORY_NOT_PAYABLE", env.w.SpendWallet, env.spend_req(mother, 1_000, category=category))
    assert env.snap() == before
    assert env.wbal(mother) == 50_000


@pytest.mark.parametrize("category", [cpb.CATEGORY_OUTPATIENT, cpb.CATEGORY_INPATIENT, cpb.CATEGORY_PHARMACY])
def test_spend_payable_categories(env, category):
    _, mother, _ = _funded_mother(env)
    assert env.spend(mother, 1_234, category=category).balance_after_fen == 50_000 - 1_234


def test_spend_more_than_balance_insufficient_quota(env):
    _, mother, t = _funded_mother(env)
    before = env.snap()
    err = refused(FP, "INSUFFICIENT_QUOTA", env.w.SpendWallet, env.spend_req(mother, 50_001))
    assert "50000" in err.details()
    assert env.snap() == before
    got = env.wallet(mother)
    assert got.wallet.balance_fen == 50_000 and got.lots[0].remaining_fen == 50_000
    assert env.clearing("202611").lines == []
    # Exactly the balance is fine.
    assert env.spend(mother, 50_000).balance_after_fen == 0
    refused(FP, "INSUFFICIENT_QUOTA", env.w.SpendWallet, env.spend_req(mother, 1))
    # No wallet at all.
    nobody = env.person("11", itype=RESIDENT)
    refused(NOT_FOUND, "WALLET_NOT_FOUND", env.w.SpendWallet, env.spend_req(nobody, 1))


def test_pay_premium(env):
    son, mother, t = _funded_mother(env)
    p1 = env.w.PayPremium(wpb.PayPremiumRequest(request_id=rid("prem"), owner_id_number=mother, amount_fen=38_000,
                                                category=cpb.CATEGORY_LONG_TERM_CARE_PREMIUM, period="2027"))
    assert (p1.paid_fen, p1.balance_after_fen) == (38_000, 12_000)
    assert parts_of(p1) == [(t.transfer_id, "13", 38_000)]
    p2 = env.w.PayPremium(wpb.PayPremiumRequest(request_id=rid("prem"), owner_id_number=mother, amount_fen=2_000,
                                                category=cpb.CATEGORY_LONG_TERM_CARE_PREMIUM, period="2027"))
    assert (p2.paid_fen, p2.balance_after_fen) == (2_000, 10_000)
    assert env.wbal(mother) == 10_000
    entries = env.w.ListWalletEntries(wpb.ListWalletEntriesRequest(owner_id_number=mother)).entries
    assert [(e.kind, e.amount_fen) for e in entries[:2]] == [("PREMIUM", -2_000), ("PREMIUM", -38_000)]
    before = env.snap()
    # A 居民医保 premium has its window, amount and once a year (SPEC §4b): the registry's PayResidentPremium.
    for category in (cpb.CATEGORY_RESIDENT_PREMIUM, cpb.CATEGORY_OUTPATIENT, cpb.CATEGORY_CASH_WITHDRAWAL,
                     cpb.CATEGORY_PHARMACY):
        refused(INVALID, "INVALID_PREMIUM_CATEGORY", env.w.PayPremium, wpb.PayPremiumRequest(
            request_id=rid("prem"), owner_id_number=mother, amount_fen=1_000, category=category, period="2027"))
    refused(FP, "INSUFFICIENT_QUOTA", env.w.PayPremium, wpb.PayPremiumRequest(
        request_id=rid("prem"), owner_id_number=mother, amount_fen=10_001,
        category=cpb.CATEGORY_LONG_TERM_CARE_PREMIUM, period="2027"))
    for period in ("２０２７", "27", "20271", "0000", "202x"):
        refused(INVALID, "INVALID_PERIOD", env.w.PayPremium, wpb.PayPremiumRequest(
            request_id=rid("prem"), owner_id_number=mother, amount_fen=1_000,
            category=cpb.CATEGORY_LONG_TERM_CARE_PREMIUM, period=period))
    assert env.snap() == before
    assert env.wbal(mother) == 10_000 and env.bal("13", son) == 50_000


@pytest.mark.parametrize("status", [cpb.PERSON_STATUS_SUSPENDED, cpb.PERSON_STATUS_TERMINATED])
def test_spend_by_an_owner_not_active_refused(env, status):
    """Only ACTIVE people pay (SPEC §1): the wallet refuses a spend or a premium of an owner whose
    insurance is suspended or ended, whoever asks, and writes nothing."""
    _, mother, _ = _funded_mother(env)
    done = env.spend_req(mother, 1_000)
    env.w.SpendWallet(done)
    env.set_status("11", mother, status)
    before = env.snap()
    refused(FP, "OWNER_NOT_INSURED", env.w.SpendWallet, env.spend_req(mother, 1_000))
    refused(FP, "OWNER_NOT_INSURED", env.w.PayPremium, wpb.PayPremiumRequest(
        request_id=rid("prem"), owner_id_number=mother, amount_fen=1_000,
        category=cpb.CATEGORY_LONG_TERM_CARE_PREMIUM, period="2027"))
    # A resend of a spend made while ACTIVE is answered with it.
    assert env.w.SpendWallet(done).spent_fen == 1_000
    # A note from a registry of another province changes nothing.
    note = env.w.NoteOwnerStatus(wpb.NoteOwnerStatusRequest(id_number=mother, province="13"))
    assert note.status == cpb.PERSON_STATUS_UNSPECIFIED
    refused(INVALID, "INVALID_ID_NUMBER", env.w.NoteOwnerStatus, wpb.NoteOwnerStatusRequest(
        id_number="123", province="11"))
    assert env.snap() == before
    if status == cpb.PERSON_STATUS_SUSPENDED:
        env.set_status("11", mother, cpb.PERSON_STATUS_ACTIVE)
        assert env.spend(mother, 1_000).balance_after_fen == 48_000


def test_refund_restores_the_exact_lots(env):
    son = env.person("13", bal=100_000)
    daughter = env.person("62", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    env.open(mother, "11")
    t1 = env.fund(son, "13", mother, 10_000)
    t2 = env.fund(daughter, "62", mother, 20_000)
    env.spend(mother, 4_000)  # t1: 6,000 left
    s_req = env.spend_req(mother, 16_000)
    s = env.w.SpendWallet(s_req)  # t1 6,000 + t2 10,000
    assert parts_of(s) == [(t1.transfer_id, "13", 6_000), (t2.transfer_id, "62", 10_000)]
    assert lots_of(env.wallet(mother)) == [(t2.transfer_id, daughter, "62", 20_000, 10_000)]
    ref_req = wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id=s_req.request_id, owner_id_number=mother)
    r = env.w.RefundWalletSpend(ref_req)
    assert (r.refunded_fen, r.balance_after_fen) == (16_000, 26_000)
    assert lots_of(env.wallet(mother)) == [(t1.transfer_id, son, "13", 10_000, 6_000),
                                           (t2.transfer_id, daughter, "62", 20_000, 20_000)]
    assert dict(env.wallet(mother).remaining_by_sender_fen) == {son: 6_000, daughter: 20_000}
    # Replayed: the same answer, refunded once.
    assert env.w.RefundWalletSpend(ref_req) == r
    # A second refund under another request id is refused and moves nothing.
    refused(grpc.StatusCode.FAILED_PRECONDITION, "SPEND_ALREADY_REFUNDED", env.w.RefundWalletSpend,
            wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id=ref_req.spend_id, owner_id_number=mother))
    assert env.wbal(mother) == 26_000
    assert lots_of(env.wallet(mother))[1][4] == 20_000
    # Unknown spends and another owner's spend are not refundable.
    refused(NOT_FOUND, "SPEND_NOT_FOUND", env.w.RefundWalletSpend, wpb.RefundWalletSpendRequest(
        request_id=rid("ref"), spend_id="no-such-spend", owner_id_number=mother))
    other = env.person("11", itype=RESIDENT)
    env.open(other, "11")
    refused(NOT_FOUND, "SPEND_NOT_FOUND", env.w.RefundWalletSpend, wpb.RefundWalletSpendRequest(
        request_id=rid("ref"), spend_id=ref_req.spend_id, owner_id_number=other))
    assert env.wbal(other) == 0 and env.wbal(mother) == 26_000


def test_cancel_if_absent_bars_a_spend_id_and_refunds_one_that_exists(env):
    """RefundWalletSpend with `cancel_if_absent`: an id no spend has yet is barred (refunded 0), and a
    later spend with it is refused (SPEND_CANCELLED) and writes nothing; a resend of the cancel gets
    the same answer; an id a spend has is refunded exactly as without the flag."""
    _, mother, _ = _funded_mother(env)
    barred = rid("sid")
    cancel = wpb.RefundWalletSpendRequest(request_id=rid("rev"), spend_id=barred, owner_id_number=mother,
                                          cancel_if_absent=True)
    first = env.w.RefundWalletSpend(cancel)
    assert (first.refunded_fen, first.balance_after_fen) == (0, 50_000)
    assert env.w.RefundWalletSpend(cancel) == first
    before = env.snap()
    req = env.spend_req(mother, 10_000)
    req.request_id = barred
    refused(FP, "SPEND_CANCELLED", env.w.SpendWallet, req)
    assert env.snap() == before and env.wbal(mother) == 50_000
    # Without the flag an unknown id is still refused, and bars nothing.
    refused(NOT_FOUND, "SPEND_NOT_FOUND", env.w.RefundWalletSpend, wpb.RefundWalletSpendRequest(
        request_id=rid("rev"), spend_id="never-spent", owner_id_number=mother))
    assert env.spend(mother, 1_000, request_id="never-spent").balance_after_fen == 49_000
    # An id a spend already has: refunded like any refund.
    spent = env.spend_req(mother, 4_000)
    env.w.SpendWallet(spent)
    got = env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(
        request_id=rid("rev"), spend_id=spent.request_id, owner_id_number=mother, cancel_if_absent=True))
    assert (got.refunded_fen, got.balance_after_fen) == (4_000, 49_000)
    assert env.wbal(mother) == 49_000


def test_spend_replay_and_idempotency_key_reused(env):
    _, mother, t = _funded_mother(env)
    req = env.spend_req(mother, 12_000)
    first = env.w.SpendWallet(req)
    assert (first.spent_fen, first.balance_after_fen) == (12_000, 38_000)
    env.spend(mother, 1_000)
    again = env.w.SpendWallet(req)
    assert again == first  # the first answer (balance_after 38,000), spent once
    assert env.wbal(mother) == 37_000
    before = env.snap()
    refused(EXISTS, "IDEMPOTENCY_KEY_REUSED", env.w.SpendWallet, env.spend_req(mother, 12_001,
                                                                             request_id=req.request_id))
    refused(EXISTS, "IDEMPOTENCY_KEY_REUSED", env.w.SpendWallet, env.spend_req(
        mother, 12_000, request_id=req.request_id, category=cpb.CATEGORY_PHARMACY))
    assert env.snap() == before
    assert env.wbal(mother) == 37_000
    assert lines_of(env.clearing("202611")) == [("13", "11", 13_000, 2)]


# ================================================================================================
# Settlement waterfall through the 北京 registry
# ================================================================================================


def settle_bj(env: Env, patient: str, amount: int, *, place: str = "110000", prov: str = "11",
              use_account: bool = True) -> rpb.SettlementResult:
    return env.reg(prov).Settle(rpb.SettleRequest(
        request_id=rid("2207"), patient_id_number=patient, amount_fen=amount, use_account=use_account,
        category=cpb.CATEGORY_OUTPATIENT, institution_code="H11010500001", institution_admdvs=place)).result


def split(res: rpb.SettlementResult) -> tuple[int, int, int, int]:
    return res.acct_pay_fen, res.wallet_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen


def test_waterfall_own_account_then_wallet_then_helper_and_reversal(env):
    son = env.person("13", bal=100_000)
    mother = env.person("11", bal=10_000, birth="19650101", wallet=False)  # a 北京 employee, own account
    husband = env.person("11", bal=100_000, birth="19640101")
    bind(env.reg("11"), husband, mother, cpb.RELATION_SPOUSE)
    env.open(mother, "11")
    t = env.fund(son, "13", mother, 30_000)
    res = settle_bj(env, mother, 50_000)
    assert split(res) == (10_000, 30_000, 10_000, 0)
    assert res.helper_id_number == husband
    assert (res.balance_after_fen, res.wallet_balance_after_fen, res.helper_balance_after_fen) == (0, 0, 90_000)
    assert res.wallet_reason == "WALLET_INSUFFICIENT"  # the wallet paid all it held, a helper the rest
    assert env.bal("11", mother) == 0 and env.wbal(mother) == 0 and env.bal("11", husband) == 90_000
    assert env.bal("13", son) == 70_000
    assert lines_of(env.clearing("202611")) == [("13", "11", 30_000, 1)]
    # Reversal returns every fen where it came from, the wallet share to the very lot.
    rev = env.reg("11").ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rid("2208"),
                                                                       settlement_id=res.settlement_id))
    assert (rev.acct_refund_fen, rev.wallet_refund_fen, rev.mulaid_refund_fen) == (10_000, 30_000, 10_000)
    assert env.bal("11", mother) == 10_000 and env.bal("11", husband) == 100_000
    got = env.wallet(mother)
    assert got.wallet.balance_fen == 30_000
    assert lots_of(got) == [(t.transfer_id, son, "13", 30_000, 30_000)]
    assert env.clearing("202611").total_fen == 0 and env.clearing("202611").lines == []
    assert env.bal("13", son) == 70_000


def test_undoing_a_reversal_takes_the_wallet_share_from_the_same_lots_or_nothing(env):
    """冲正 of a 2208 takes back what the reversal returned, from where it returned it (as a helper's
    share comes from the same helper): the wallet's share from the very lots and amounts it was paid
    from, never another sender's quota, nor quota that went home when its relationship ended."""
    son = env.person("13", bal=100_000)
    daughter = env.person("62", bal=100_000)
    sister = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 5_000)
    from_daughter = env.fund(daughter, "62", mother, 10_000)

    def undo(rev: str) -> wpb.Wallet:
        return env.reg("11").UndoReversal(rpb.UndoReversalRequest(request_id=rid("2601"), reversal_id=rev))

    def reverse(sid: str) -> str:
        rev = rid("2208")
        env.reg("11").ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rev, settlement_id=sid))
        return rev

    # Paid from the son's lot; he ends the relationship; the reversal sends his 5,000 home.
    first = settle_bj(env, mother, 5_000)
    env.w.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=son, holder_id_number=mother, requested_by_id_number=son))
    rev = reverse(first.settlement_id)
    assert (env.bal("13", son), env.wbal(mother)) == (100_000, 10_000)
    # The daughter's quota would cover it, but it is not what paid: refused, and nothing is written.
    before = env.snap()
    err = refused(FP, "UNDO_SOURCE_SHORT", undo, rev)
    assert dict(error_info(err).metadata)["source"] == "wallet_pay"
    assert env.snap() == before
    # Paid from the daughter's lot, reversed, then that lot spent down below the share: the sister's
    # newer quota would cover the wallet's share, but the undo takes it from the daughter's lot or not at all.
    env.clock.advance(60_000)
    from_sister = env.fund(sister, "13", mother, 10_000)
    second = settle_bj(env, mother, 4_000)
    rev2 = reverse(second.settlement_id)
    env.spend(mother, 7_000, request_id="spend-between")
    assert env.wbal(mother) == 13_000
    before = env.snap()
    refused(FP, "UNDO_SOURCE_SHORT", undo, rev2)
    assert env.snap() == before
    env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id="spend-between",
                                                         owner_id_number=mother))
    assert (undo(rev2).outcome, env.wbal(mother)) == ("RESTORED", 16_000)
    assert lots_of(env.wallet(mother)) == [(from_daughter.transfer_id, daughter, "62", 10_000, 6_000),
                                           (from_sister.transfer_id, sister, "13", 10_000, 10_000)]
    assert lines_of(env.clearing("202611")) == [("62", "11", 4_000, 1)]
    # At the wallet: taking the refunded 7,000 again needs the daughter's lot to hold 7,000 (it holds
    # 6,000), whatever else the wallet holds; a check-only spend answers as the spend would, and
    # neither writes anything.
    before = env.snap()
    again = env.spend_req(mother, 7_000)
    again.restores_spend_id = "spend-between"
    refused(FP, "SPEND_NOT_RESTORABLE", env.w.SpendWallet, again)
    again.check_only = True
    refused(FP, "SPEND_NOT_RESTORABLE", env.w.SpendWallet, again)
    question = env.spend_req(mother, 1_000, request_id="")
    question.request_id = ""  # a question needs no request id (a spend does: INVALID_REQUEST_ID)
    refused(INVALID, "INVALID_REQUEST_ID", env.w.SpendWallet, question)
    question.check_only = True
    assert (env.w.SpendWallet(question).spent_fen, env.w.SpendWallet(question).balance_after_fen) == (1_000, 15_000)
    assert env.snap() == before


def test_a_refunded_spend_is_taken_again_once_while_that_stands(env):
    """Undoing a reversal takes the refunded spend's parts again (decision 6): once. A second spend
    naming the same refunded spend, under another request id, would charge the wallet twice for one
    refund; it is refused and writes nothing, until the spend that took it again is refunded in turn."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    env.spend(mother, 5_000, request_id="paid")
    env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id="paid",
                                                         owner_id_number=mother))

    def again(request_id: str) -> wpb.SpendWalletRequest:
        req = env.spend_req(mother, 5_000, request_id=request_id)
        req.restores_spend_id = "paid"
        return req

    assert env.w.SpendWallet(again("undo-1")).spent_fen == 5_000
    assert env.wbal(mother) == 25_000
    before = env.snap()
    refused(FP, "SPEND_NOT_RESTORABLE", env.w.SpendWallet, again("undo-2"))
    question = again("")
    question.check_only = True
    refused(FP, "SPEND_NOT_RESTORABLE", env.w.SpendWallet, question)
    assert env.snap() == before
    assert env.w.SpendWallet(again("undo-1")).spent_fen == 5_000  # its own resend is answered
    assert lines_of(env.clearing("202611")) == [("13", "11", 5_000, 1)]
    # Once the spend that took it again is refunded, the refunded spend may be taken again.
    env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id="undo-1",
                                                         owner_id_number=mother))
    assert env.w.SpendWallet(again("undo-2")).spent_fen == 5_000
    assert env.wbal(mother) == 25_000
    assert lines_of(env.clearing("202611")) == [("13", "11", 5_000, 1)]
    assert money.check(env.rdb).conserved


def test_a_check_only_spend_naming_a_spend_made_is_judged_as_a_question(env):
    """`check_only` asks whether a spend would be taken; a request id it carries is not looked up. A
    question under the id of a spend made, or of one barred, is judged on its own fields (not answered
    as that spend, with its amount and parts), and writes nothing."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    assert env.spend(mother, 5_000, request_id="made").spent_fen == 5_000
    env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(request_id=rid("bar"), spend_id="barred",
                                                         owner_id_number=mother, cancel_if_absent=True))
    before = env.snap()
    for request_id in ("made", "barred"):
        question = env.spend_req(mother, 1_000, request_id=request_id)
        question.check_only = True
        got = env.w.SpendWallet(question)
        assert (got.spent_fen, got.balance_after_fen, list(got.parts)) == (1_000, 24_000, [])
        question.amount_fen = 25_001
        refused(FP, "INSUFFICIENT_QUOTA", env.w.SpendWallet, question)
    assert env.snap() == before
    assert env.spend(mother, 5_000, request_id="made").balance_after_fen == 25_000  # the spend's own resend


def test_waterfall_partial_wallet_rest_cash(env):
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    poor_helper = env.person("11", bal=5_000, birth="19500101")
    bind(env.reg("11"), poor_helper, mother, cpb.RELATION_SPOUSE)
    env.open(mother, "11")
    env.fund(son, "13", mother, 20_000)
    res = settle_bj(env, mother, 50_000)
    # 北京 uses its helpers in turn (按备案顺序), each paying what it can: the poor helper's 5,000 too.
    assert split(res) == (0, 20_000, 5_000, 25_000)
    assert res.wallet_reason == "WALLET_INSUFFICIENT"
    assert res.helper_reason == "HELPER_INSUFFICIENT"
    assert [(c.helper_id_number, c.amount_fen) for c in res.helper_charges] == [(poor_helper, 5_000)]
    assert env.wbal(mother) == 0 and env.bal("11", poor_helper) == 0
    # Cash only (acct_used_flag false): the wallet is not touched.
    env.fund(son, "13", mother, 1_000)
    res2 = settle_bj(env, mother, 500, use_account=False)
    assert split(res2) == (0, 0, 0, 500)
    assert env.wbal(mother) == 1_000
    # Wallet covers it all.
    res3 = settle_bj(env, mother, 600)
    assert split(res3) == (0, 600, 0, 0) and res3.wallet_reason == ""
    assert res3.wallet_balance_after_fen == 400 == env.wbal(mother)


def test_a_wallet_spent_down_since_planning_pays_what_it_still_holds(env, national):
    """SPEC §4 step 2: the wallet pays min(balance, remaining) — its balance when the share is spent.
    Quota that leaves the wallet between the settlement's plan and its wallet debit (here passed on
    to a sister) leaves the wallet paying what it still holds, not nothing; the rest is cash."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    aunt = env.person("62", itype=RESIDENT, birth="19580101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    wallet = national.wallet.wallet
    spend = wallet.spend
    raced: list[str] = []

    async def spend_after_a_transfer_out(req: wpb.SpendWalletRequest,
                                         acting: str | None = None) -> wpb.SpendWalletResponse:
        if not raced:  # her sister takes 25,000 of it while the 2207 is on its way to the wallet
            out = env.xfer_req(mother, "11", aunt, 25_000, relation=cpb.RELATION_SIBLING)
            out.source = wpb.TRANSFER_SOURCE_WALLET
            raced.append((await wallet.create_transfer(out)).transfer.transfer_id)
        return await spend(req, acting)

    wallet.spend = spend_after_a_transfer_out
    res = settle_bj(env, mother, 10_000)
    assert raced and env.transfer(raced[0]).state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert split(res) == (0, 5_000, 0, 5_000)
    assert res.wallet_reason == "WALLET_INSUFFICIENT" and res.wallet_balance_after_fen == 0 == env.wbal(mother)
    # The reversal gives the wallet back exactly what it paid.
    rev = env.reg("11").ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rid("2208"),
                                                                       settlement_id=res.settlement_id))
    assert rev.wallet_refund_fen == 5_000 and env.wbal(mother) == 5_000
    assert money.check(env.rdb).conserved


def test_a_wallet_moved_since_planning_gives_the_settlement_its_real_reason(env, national):
    """A wallet that refuses the share it was planned to pay (here its use-place moved to 唐山 while
    the 2207 was on its way) leaves the share to cash, and the settlement says why: the wallet's
    own reason (no longer spent here), not that it held too little."""
    son = env.person("13", bal=100_000)
    mother = env.person("13", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    wallet = national.wallet.wallet
    spend = wallet.spend
    moved: list[str] = []

    async def spend_after_a_move(req: wpb.SpendWalletRequest, acting: str | None = None) -> wpb.SpendWalletResponse:
        if not moved:
            moved.append((await wallet.change_use_place(wpb.ChangeUsePlaceRequest(
                request_id=rid("place"), owner_id_number=mother, use_place_admdvs="130200"))).wallet.use_place_admdvs)
        return await spend(req, acting)

    wallet.spend = spend_after_a_move
    res = settle_bj(env, mother, 10_000, place="130100", prov="13")
    assert moved == ["130200"]
    assert split(res) == (0, 0, 0, 10_000) and env.wbal(mother) == 30_000
    assert res.wallet_reason == "WALLET_OTHER_USE_PLACE", res.wallet_reason
    assert money.check(env.rdb).conserved


def test_spend_up_to_pays_what_the_wallet_holds_and_only_for_a_share(env):
    son, mother = family(env)
    env.fund(son, "13", mother, 3_000)
    before = env.snap()
    for extra in ({"restores_spend_id": "s-1"}, {"check_only": True}):
        refused(INVALID, "INVALID_UP_TO", env.w.SpendWallet, wpb.SpendWalletRequest(
            request_id=rid("spend"), owner_id_number=mother, amount_fen=5_000, category=cpb.CATEGORY_OUTPATIENT,
            spending_admdvs="110000", up_to=True, **extra))
    assert env.snap() == before
    req = env.spend_req(mother, 5_000)
    req.up_to = True
    got = env.w.SpendWallet(req)
    assert (got.spent_fen, got.balance_after_fen) == (3_000, 0) and env.w.SpendWallet(req) == got
    again = env.spend_req(mother, 5_000)
    again.up_to = True
    before = env.snap()
    refused(FP, "INSUFFICIENT_QUOTA", env.w.SpendWallet, again)  # holding nothing, it pays nothing
    assert env.snap() == before


def test_waterfall_wallet_not_opened(env):
    mother = env.person("11", bal=1_000, birth="19650101", wallet=False)
    res = settle_bj(env, mother, 3_000)
    assert split(res) == (1_000, 0, 0, 2_000)
    assert res.wallet_reason == "WALLET_NOT_OPENED"
    assert env.bal("11", mother) == 0


def test_waterfall_wallet_other_use_place(env):
    # A 河北 resident whose wallet is used in 唐山 (130200) is treated in 石家庄 (130100).
    son = env.person("11", bal=100_000)
    mother = env.person("13", itype=RESIDENT, birth="19550101")
    env.open(mother, "13", "130200")
    env.fund(son, "11", mother, 20_000)
    res = settle_bj(env, mother, 5_000, place="130100", prov="13")
    assert split(res) == (0, 0, 0, 5_000)
    assert res.wallet_reason == "WALLET_OTHER_USE_PLACE"
    assert env.wbal(mother) == 20_000
    res2 = settle_bj(env, mother, 5_000, place="130200", prov="13")
    assert split(res2) == (0, 5_000, 0, 0) and res2.wallet_reason == ""
    assert env.wbal(mother) == 15_000
    assert lines_of(env.clearing("202611")) == [("11", "13", 5_000, 1)]


def test_a_district_code_of_the_use_place_pays_from_the_wallet_and_another_does_not(env):
    """An institution sends the admdvs it sits in: a district (130102 长安区) or a 市本级 code (130199)
    of the wallet's use-place 石家庄 (130100) is that 统筹区 and the wallet pays; a district of another
    city (130203, settled in 唐山 130200) or a code under no 统筹区 of the province (139900, kept as
    it is) is not, and the wallet says so while the settlement goes on. PreSettle gives the split
    Settle then settles."""
    son = env.person("11", bal=100_000)
    mother = env.person("13", itype=RESIDENT, birth="19550101")
    env.open(mother, "13", "130100")
    env.fund(son, "11", mother, 20_000)
    for place, left in (("130102", 17_000), ("130199", 14_000)):
        pre = env.reg("13").PreSettle(rpb.PreSettleRequest(
            patient_id_number=mother, amount_fen=3_000, use_account=True, category=cpb.CATEGORY_OUTPATIENT,
            institution_code="H13010200001", institution_admdvs=place)).result
        res = settle_bj(env, mother, 3_000, place=place, prov="13")
        assert split(pre) == split(res) == (0, 3_000, 0, 0), place
        assert (res.wallet_reason, res.settled_place) == ("", "130100")
        assert env.wbal(mother) == left
    for place, region in (("130203", "130200"), ("139900", "139900")):
        before = env.snap()
        pre = env.reg("13").PreSettle(rpb.PreSettleRequest(
            patient_id_number=mother, amount_fen=3_000, use_account=True, category=cpb.CATEGORY_OUTPATIENT,
            institution_code="H13020300001", institution_admdvs=place)).result
        assert env.snap() == before
        res = settle_bj(env, mother, 3_000, place=place, prov="13")
        assert split(pre) == split(res) == (0, 0, 0, 3_000), place
        assert pre.wallet_reason == res.wallet_reason == "WALLET_OTHER_USE_PLACE"
        assert res.settled_place == region
    assert env.wbal(mother) == 14_000
    assert money.check(env.rdb).conserved


def test_a_beijing_district_code_is_the_city_pooling_region(env):
    """北京 pools at 110000: a hospital sending its district (110105 朝阳区) settles there."""
    daughter = env.person("13", bal=100_000)
    father = env.person("11", itype=RESIDENT, birth="19500101")
    env.open(father, "11", "110000")
    env.fund(daughter, "13", father, 10_000)
    res = settle_bj(env, father, 4_000, place="110105")
    assert split(res) == (0, 4_000, 0, 0) and res.settled_place == "110000"
    assert env.wbal(father) == 6_000


# ================================================================================================
# Monthly clearing
# ================================================================================================


def test_clearing_report_per_sending_province(env):
    son = env.person("13", bal=200_000)
    daughter = env.person("62", bal=200_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    father = env.person("11", itype=RESIDENT, birth="19530101")
    env.open(mother, "11")
    env.open(father, "11")
    env.fund(son, "13", mother, 50_000)
    env.fund(daughter, "62", mother, 40_000)
    env.clock.advance(60_000)
    env.fund(son, "13", father, 10_000, relation=cpb.RELATION_PARENT)
    spends = [
        env.spend(mother, 30_000),   # 13: 30,000
        env.spend(mother, 25_000),   # 13: 20,000 + 62: 5,000
        env.spend(mother, 10_000),   # 62: 10,000
        env.spend(father, 4_000),    # 13: 4,000
        env.spend(mother, 3_000, request_id="spend-to-refund"),    # 62: 3,000 (refunded below)
    ]
    refund_id = "spend-to-refund"
    by_origin: Counter = Counter()
    count: Counter = Counter()
    for s in spends:
        for prov in {p.sender_province for p in s.parts}:
            count[prov] += 1
        for p in s.parts:
            by_origin[p.sender_province] += p.amount_fen
    assert dict(by_origin) == {"13": 54_000, "62": 18_000}
    report = env.clearing("202611")
    assert report.month == "202611"
    assert lines_of(report) == [("13", "11", 54_000, 3), ("62", "11", 18_000, 3)]
    assert report.total_fen == 72_000 == sum(s.spent_fen for s in spends)
    # A refunded spend comes out of the report.
    env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id=refund_id,
                                                         owner_id_number=mother))
    report = env.clearing("202611")
    assert lines_of(report) == [("13", "11", 54_000, 3), ("62", "11", 15_000, 2)]
    assert report.total_fen == 69_000
    # Other months are empty; a December spend is December's.
    for month in ("202610", "202612", "202511"):
        other = env.clearing(month)
        assert (other.month, list(other.lines), other.total_fen) == (month, [], 0)
    env.clock.set(at(1, 9, month=12))
    env.spend(mother, 2_000)
    assert lines_of(env.clearing("202612")) == [("62", "11", 2_000, 1)]
    assert env.clearing("202611").total_fen == 69_000
    # Full-width digits are digits to Python's str.isdigit(), not to a month.
    for bad in ("2026-11", "202613", "202600", "20261", "2026111", "", "abcdef", "２０２６１１", "000011"):
        refused(INVALID, "INVALID_MONTH", env.w.GetClearingReport, wpb.GetClearingReportRequest(month=bad))


def test_a_refund_in_a_later_month_is_counted_in_that_month(env):
    """A month reported between provinces never changes: a November spend refunded in December is
    counted out of December (a negative line), and November still reads what was reported."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    env.open(mother, "11")
    env.clock.set(at(30, 10))
    env.fund(son, "13", mother, 5_000)
    env.clock.set(at(30, 23, 59, 59))
    env.spend(mother, 1_700)
    env.spend(mother, 700, request_id="late-refund")
    november = lines_of(env.clearing("202611"))
    assert november == [("13", "11", 2_400, 2)]
    env.clock.set(at(1, 0, 0, 1, month=12))
    env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id="late-refund",
                                                         owner_id_number=mother))
    assert lines_of(env.clearing("202611")) == november
    december = env.clearing("202612")
    assert lines_of(december) == [("13", "11", -700, -1)] and december.total_fen == -700
    assert env.wbal(mother) == 5_000 - 1_700


# ================================================================================================
# Concurrency: transfers, accepts, spends and refunds on shared wallets
# ================================================================================================


def _with_retry(call: Any, req: Any, stats: Counter) -> Any:
    for _ in range(50):
        try:
            return call(req, timeout=30)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            stats[f"retry:{reason(exc)}"] += 1
            time.sleep(0.005)
    raise AssertionError(f"{req.request_id} still unavailable")


def _scan_wallets(rdb: Any) -> tuple[int, dict[str, int]]:
    """Check every lot and wallet hash in Redis; return (sum of wallet balances, owner -> balance)."""
    balances: dict[str, int] = {}
    for key in rdb.scan_iter(match="wal:*:wallet"):
        h = {k.decode(): v.decode() for k, v in rdb.hgetall(key).items()}
        bal = int(h["bal"])
        assert bal >= 0, (key, bal)
        owner = h["owner"]
        lots_key = key.decode().removesuffix(":wallet") + ":lots"
        lots = [json.loads(v) for v in rdb.hgetall(lots_key).values()]
        for lot in lots:
            assert 0 <= lot["rem"] <= lot["amount"], lot
        assert bal == sum(lot["rem"] for lot in lots), (owner, bal, lots)
        balances[owner] = bal
    for key in rdb.scan_iter(match="wal:*:lots"):
        for v in rdb.hgetall(key).values():
            assert json.loads(v)["rem"] >= 0
    return sum(balances.values()), balances


def test_concurrent_transfers_accepts_and_spends_conserve_money(env, rdb):
    rng = random.Random(20261122)
    stats: Counter = Counter()
    lock = threading.Lock()
    senders = [(env.person("13", bal=450_000), "13") for _ in range(14)] + \
        [(env.person("62", bal=450_000), "62") for _ in range(8)]
    credited = 450_000 * len(senders)
    recipients = [env.person("11", itype=RESIDENT, birth="19500101") for _ in range(5)]
    for r in recipients:
        env.open(r, "11")
    assert total_balances(rdb) == credited

    created: dict[str, int] = {}          # tid -> amount, every transfer that was created
    spent: dict[str, int] = {}            # spend id -> spent_fen
    refunded: set[str] = set()
    unexpected: list[str] = []

    def note(exc: grpc.RpcError, allowed: tuple[str, ...]) -> None:
        why = reason(exc)
        with lock:
            stats[f"refused:{why}"] += 1
            if exc.code() != FP or why not in allowed:
                unexpected.append(f"{exc.code().name} {why}: {exc.details()}")

    def sender_script(sender: str, prov: str, seed: int) -> None:
        r = random.Random(seed)
        for k in range(3):
            recipient = r.choice(recipients)
            req = env.xfer_req(sender, prov, recipient, r.randint(1, 150_000), request_id=f"x-{sender}-{k}")
            try:
                t = _with_retry(env.w.CreateTransfer, req, stats).transfer
            except grpc.RpcError as exc:
                note(exc, ("PENDING_TRANSFER_EXISTS",))
                return
            with lock:
                created[t.transfer_id] = t.amount_fen
                stats["op:create"] += 1
            if r.random() < 0.3:  # the client resends the same request
                again = _with_retry(env.w.CreateTransfer, req, stats).transfer
                assert again.transfer_id == t.transfer_id and again.amount_fen == t.amount_fen
                with lock:
                    stats["op:create-replay"] += 1
            if k == 2 and r.random() < 0.35:
                return  # left waiting for acceptance: in flight at the end
            for _ in range(2 if r.random() < 0.3 else 1):  # sometimes accepted twice
                acc = _with_retry(env.w.AcceptTransfer, wpb.AcceptTransferRequest(
                    request_id=rid("acc"), transfer_id=t.transfer_id, recipient_id_number=recipient), stats)
                assert acc.transfer.state == wpb.TRANSFER_STATE_COMPLETED
                with lock:
                    stats["op:accept"] += 1

    def spender_script(owner: str, seed: int) -> None:
        r = random.Random(seed)
        for _ in range(12):
            req = env.spend_req(owner, r.randint(500, 40_000), request_id=rid("cspend"))
            try:
                s = _with_retry(env.w.SpendWallet, req, stats)
            except grpc.RpcError as exc:
                note(exc, ("INSUFFICIENT_QUOTA",))
                continue
            assert s.spent_fen == req.amount_fen and s.balance_after_fen >= 0
            assert sum(p.amount_fen for p in s.parts) == s.spent_fen
            with lock:
                spent[req.request_id] = s.spent_fen
                stats["op:spend"] += 1
            if r.random() < 0.25:
                rr = _with_retry(env.w.RefundWalletSpend, wpb.RefundWalletSpendRequest(
                    request_id=rid("cref"), spend_id=req.request_id, owner_id_number=owner), stats)
                assert rr.refunded_fen == s.spent_fen
                with lock:
                    refunded.add(req.request_id)
                    stats["op:refund"] += 1
            time.sleep(r.random() * 0.003)

    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(sender_script, s, p, rng.random()) for s, p in senders]
        futures += [pool.submit(spender_script, o, rng.random()) for o in recipients for _ in range(2)]
        for f in futures:
            f.result()

    ops = sum(v for k, v in stats.items() if k.startswith(("op:", "refused:")))
    assert ops >= 150, stats
    assert unexpected == [], unexpected

    def conservation(label: str) -> None:
        wallets_total, by_owner = _scan_wallets(rdb)
        states: Counter = Counter()
        in_flight = 0
        lots_in: Counter = Counter()
        for tid, amount in created.items():
            t = env.transfer(tid)
            states[wpb.TransferState.Name(t.state)] += 1
            assert t.amount_fen == amount
            if t.state == wpb.TRANSFER_STATE_PENDING_ACCEPT:
                in_flight += amount
            if t.state == wpb.TRANSFER_STATE_COMPLETED:
                lots_in[t.recipient_id_number] += amount
        assert set(states) <= {"TRANSFER_STATE_PENDING_ACCEPT", "TRANSFER_STATE_COMPLETED",
                               "TRANSFER_STATE_RETURNED"}, (label, states)
        spent_net = sum(v for k, v in spent.items() if k not in refunded)
        registry_total = total_balances(rdb)
        assert registry_total + wallets_total + spent_net + in_flight == credited, \
            (label, registry_total, wallets_total, spent_net, in_flight, credited)
        assert env.clearing("202611").total_fen == spent_net
        # Per wallet: received lots - net spends == balance.
        for owner in recipients:
            assert by_owner[owner] == env.wbal(owner)
            assert sum(x.amount_fen for x in _all_lots(rdb, owner)) == lots_in[owner], label
        for sender, prov in senders:
            assert env.bal(prov, sender) >= 0

    conservation("after the run")
    assert sum(1 for tid in created if env.transfer(tid).state == wpb.TRANSFER_STATE_PENDING_ACCEPT) > 0
    # Let the waiting transfers run out: they all go home and money is still conserved.
    env.clock.set(at(23, 6, 30))
    m = env.maintain()
    assert m.ran and m.expired > 0
    conservation("after expiry")
    assert all(env.transfer(tid).state != wpb.TRANSFER_STATE_PENDING_ACCEPT for tid in created)


def _all_lots(rdb: Any, owner: str) -> list[wpb.Lot]:
    raw = rdb.hgetall(f"wal:{{w:{owner}}}:lots")
    return [wpb.Lot(transfer_id=v["tid"], amount_fen=v["amount"], remaining_fen=v["rem"])
            for v in (json.loads(x) for x in raw.values())]


def test_concurrent_duplicates_of_one_transfer_have_one_effect(env, rdb):
    """The same CreateTransfer (same request id) sent 8 times at once, for 10 senders who send their
    whole balance; then the same transfer accepted 8 times at once with different request ids."""
    stats: Counter = Counter()
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    env.open(mother, "11")
    senders = [env.person("13", bal=50_000) for _ in range(6)] + [env.person("62", bal=50_000) for _ in range(4)]
    reqs = {s: env.xfer_req(s, "13" if s.startswith("13") else "62", mother, 50_000) for s in senders}
    with ThreadPoolExecutor(max_workers=40) as pool:
        futures = [(s, pool.submit(_with_retry, env.w.CreateTransfer, reqs[s], stats))
                   for _ in range(8) for s in senders]
        answers: dict[str, list[wpb.CreateTransferResponse]] = {s: [] for s in senders}
        errors_seen = []
        for s, f in futures:
            try:
                answers[s].append(f.result())
            except grpc.RpcError as exc:
                errors_seen.append((s, exc.code().name, reason(exc)))
    assert errors_seen == []
    for s in senders:
        tids = {a.transfer.transfer_id for a in answers[s]}
        assert tids == {reqs[s].request_id}
        assert {a.transfer.state for a in answers[s]} == {wpb.TRANSFER_STATE_PENDING_ACCEPT}
        prov = reqs[s].sender_province
        assert env.bal(prov, s) == 0
        assert env.transfer(reqs[s].request_id).state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    with ThreadPoolExecutor(max_workers=40) as pool:
        accepts = [pool.submit(_with_retry, env.w.AcceptTransfer, wpb.AcceptTransferRequest(
            request_id=rid("acc"), transfer_id=reqs[s].request_id, recipient_id_number=mother), stats)
            for _ in range(8) for s in senders]
        for f in accepts:
            assert f.result().transfer.state == wpb.TRANSFER_STATE_COMPLETED
    got = env.wallet(mother)
    assert got.wallet.balance_fen == 500_000
    assert sorted(x.transfer_id for x in got.lots) == sorted(r.request_id for r in reqs.values())
    assert all(x.remaining_fen == 50_000 for x in got.lots)
    assert total_balances(rdb) == 0
    _scan_wallets(rdb)


@pytest.mark.parametrize("attestation", ["\x00", "face\n0001", "face\u202e0001", "face\u200b"])
def test_an_attestation_id_with_an_invisible_character_is_refused_and_writes_nothing(env, attestation):
    """An attestation id is an id like every other (SPEC §7 bad input): one holding a control, format or
    zero-width character is no verification, refused INVALID_ARGUMENT before anything is written; never
    taken for a face check ("\\x00" is not blank)."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    bad = cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE, attestation_id=attestation)
    before = env.snap()
    err = refused(INVALID, "INVALID_VERIFICATION", env.w.OpenWallet, env.open_req(mother, "11", real_name=bad))
    assert error_info(err).metadata["field"] == "real_name"
    env.open(mother, "11")
    before = env.snap()
    err = refused(INVALID, "INVALID_VERIFICATION", env.w.CreateTransfer,
                  env.xfer_req(son, "13", mother, 10_000, verification=bad))
    assert error_info(err).metadata["field"] == "verification"
    assert env.snap() == before


def test_an_unknown_opened_by_relation_is_refused_also_when_the_owner_opens_it(env):
    """SPEC §7: an unknown code is refused with INVALID_ARGUMENT and writes nothing, whether or not the
    request needs it (the owner opening their own wallet names no relation)."""
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    before = env.snap()
    refused(INVALID, "UNKNOWN_RELATION", env.w.OpenWallet, env.open_req(mother, "11", opened_by_relation=999))
    assert env.snap() == before and not env.has_wallet(mother)
