"""GetWalletBalances (the wallet's many-owners balance look-up) and the settlement engine's use of it.

On one Redis the engine reads a wave of a batch (each patient's first pending item), and asks the
wallet service for the balances of exactly those patients whose own account leaves something to pay
and whose registry note says their wallet's use-place is the settlement place: ONE GetWalletBalances
call per wave, none when nobody needs it. A wallet that cannot pay (none opened, another use-place,
a zero balance) is part of the plan and the item applies atomically (settle_apply.lua, no lock); a
wallet that pays a share takes the staged path (SpendWallet is a call to another service). A wallet
service that does not answer fails only the items that needed it, with nothing written.

Real processes as elsewhere in the suite: the `national` fixture (registries 13/11/62 and the national
wallet on one real Redis, gRPC over loopback). People of 北京 (11) live in 110000 (division 110105);
the wallet's money comes from real cross-province transfers by 河北 (13) employees, accepted.
"""

from __future__ import annotations

import socket
from typing import Any

import grpc
import pytest
from conftest import policy_for
from medaid.common import authz
from medaid.common.errors import error_info
from medaid.common.idnumber import make
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry import rules
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.wallet_port import GrpcWallet
from medaid.wallet.service import MAX_BALANCES
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import (
    EMPLOYEE,
    FACE,
    RESIDENT,
    balance,
    bind,
    credit,
    enroll,
    new_id,
    reason,
    rid,
    snapshot,
    total_balances,
)

BJ = "110000"
DIVISION = {"13": "130102", "11": "110105"}
REGION = {"13": "130100", "11": "110000"}
INVALID = grpc.StatusCode.INVALID_ARGUMENT


# --- helpers ---------------------------------------------------------------------------------------


def person(national: Any, prov: str, *, itype: int = EMPLOYEE, bal: int = 0, birth: str = "19800101") -> str:
    stub = national.reg(prov)
    pid = enroll(stub, itype=itype, region=REGION[prov], division=DIVISION[prov], birth=birth)
    if bal:
        credit(stub, pid, bal)
    return pid


def open_wallet(national: Any, owner: str, prov: str, place: str) -> wpb.Wallet:
    return national.wallet.stub.OpenWallet(wpb.OpenWalletRequest(
        request_id=rid("open"), owner_id_number=owner, province=prov, use_place_admdvs=place,
        real_name=FACE)).wallet


def fund(national: Any, sender: str, sprov: str, recipient: str, amount: int) -> None:
    """A real cross-province transfer, accepted: the quota lands in the recipient's wallet."""
    w = national.wallet.stub
    try:  # the sender holds a wallet too (SPEC §5)
        open_wallet(national, sender, sprov, REGION[sprov])
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.ALREADY_EXISTS, exc
    t = w.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=sender, sender_province=sprov, recipient_id_number=recipient,
        relation=cpb.RELATION_PARENT, amount_fen=amount, verification=FACE)).transfer
    assert t.state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    acc = w.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                                     recipient_id_number=recipient))
    assert acc.transfer.state == wpb.TRANSFER_STATE_COMPLETED


def wallet_balance(national: Any, owner: str) -> int:
    return int(national.wallet.stub.GetWallet(wpb.GetWalletRequest(owner_id_number=owner)).wallet.balance_fen)


def wallet_total(rdb: Any) -> int:
    return sum(int(rdb.hget(k, "bal") or 0) for k in rdb.scan_iter(match="wal:*:wallet"))


def bj_req(pid: str, amount: int, request_id: str | None = None, use_account: bool = True) -> rpb.SettleRequest:
    return rpb.SettleRequest(request_id=request_id or rid("2207"), patient_id_number=pid, amount_fen=amount,
                             use_account=use_account, category=cpb.CATEGORY_OUTPATIENT,
                             institution_code="H11010500001", institution_admdvs=BJ)


def balances(national: Any, owners: list[str]) -> list[tuple[str, bool, str, int]]:
    resp = national.wallet.stub.GetWalletBalances(wpb.GetWalletBalancesRequest(owner_id_numbers=owners))
    return [(b.owner_id_number, b.opened, b.use_place_admdvs, b.balance_fen) for b in resp.balances]


def split(r: rpb.SettlementResult) -> tuple[int, int, int, str, int, str, str]:
    return (r.acct_pay_fen, r.wallet_pay_fen, r.mulaid_pay_fen, r.helper_id_number, r.cash_pay_fen,
            r.helper_reason, r.wallet_reason)


def plan_split(p: rules.Plan) -> tuple[int, int, int, str, int, str, str]:
    return (p.acct_pay, p.wallet_pay, p.mulaid_pay, p.helper_id, p.cash_pay, p.helper_reason, p.wallet_reason)


def plan(amount: int, *, own: int, has_account: bool, wallet: int | None, missing: str = "",
         helpers: list[rules.HelperCandidate] | None = None) -> tuple[int, int, int, str, int, str, str]:
    return plan_split(rules.plan_settlement(
        policy_for("11"), amount=amount, use_account=True, own_balance=own, has_own_account=has_account,
        wallet_balance=wallet, wallet_missing_reason=missing, helpers=helpers or [], proxy_only=False))


def item_error(o: rpb.SettleOutcome) -> tuple[str, str]:
    assert o.HasField("error"), o
    return next(c.name for c in grpc.StatusCode if c.value[0] == o.error.code), o.error.reason


def paid(results: list[rpb.SettlementResult]) -> int:
    """What left the registries' accounts and the wallets for these bills."""
    return sum(r.acct_pay_fen + r.wallet_pay_fen + r.mulaid_pay_fen for r in results)


class Counting:
    """Wrap a registry's wallet port in-process: record every `balances` (GetWalletBalances) and
    `balance` (GetWallet) call the registry makes; `restore()` puts the plain methods back."""

    def __init__(self, port: Any) -> None:
        self.port = port
        self.many: list[list[tuple[str, str]]] = []
        self.one: list[tuple[str, str]] = []
        orig_many, orig_one = port.balances, port.balance

        async def many(asks: list[tuple[str, str]]) -> Any:
            self.many.append(list(asks))
            return await orig_many(asks)

        async def one(pid: str, place: str) -> Any:
            self.one.append((pid, place))
            return await orig_one(pid, place)

        port.balances, port.balance = many, one

    def restore(self) -> None:
        del self.port.balances, self.port.balance


@pytest.fixture
def counting(national: Any) -> Any:
    c = Counting(national.registries["11"].registry.wallet)
    try:
        yield c
    finally:
        c.restore()


def fence(rdb: Any, national: Any, pid: str) -> int:
    """The patient's fence counter: every taking of the patient's fenced lock (enrolment, life events,
    the staged settlement path, reversals) moves it on. The atomic settlement script takes no lock."""
    return int(rdb.get(national.registries["11"].registry.k.fence(pid)) or 0)


def took_the_lock(rdb: Any, national: Any, pid: str, fence_before: int) -> bool:
    """Whether a settlement of `pid` since its fence was `fence_before` ran the staged path."""
    return fence(rdb, national, pid) > fence_before


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the RPC -------------------------------------------------------------------------------------


def test_balances_answer_each_owner_in_the_order_asked(national):
    son = person(national, "13", bal=100_000)
    mother = person(national, "11", itype=RESIDENT, birth="19550101")
    father = person(national, "11", itype=RESIDENT, birth="19540101")
    aunt = person(national, "13", itype=RESIDENT, birth="19560101")
    no_wallet = person(national, "11")
    stranger = new_id("110105", "19700101")  # valid, enrolled nowhere
    open_wallet(national, mother, "11", BJ)
    open_wallet(national, father, "11", BJ)
    open_wallet(national, aunt, "13", "130200")
    fund(national, son, "13", mother, 12_345)
    assert wallet_balance(national, mother) == 12_345
    got = balances(national, [aunt, stranger, mother, father, mother, no_wallet])
    assert got == [
        (aunt, True, "130200", 0),
        (stranger, False, "", 0),
        (mother, True, BJ, 12_345),
        (father, True, BJ, 0),
        (mother, True, BJ, 12_345),
        (no_wallet, False, "", 0),
    ]
    # The most one call may ask: 512 owners, answered in order (only the mother has a wallet).
    many = [make("110105", "19770707", f"{i:03d}") for i in range(MAX_BALANCES - 1)]
    assert len(set(many)) == MAX_BALANCES - 1
    got = balances(national, [*many[:200], mother, *many[200:]])
    assert len(got) == MAX_BALANCES
    assert [g[0] for g in got] == [*many[:200], mother, *many[200:]]
    assert [g for g in got if g[1]] == [(mother, True, BJ, 12_345)]


def test_balances_refuse_bad_input_and_write_nothing(national, rdb):
    mother = person(national, "11", itype=RESIDENT, birth="19550101")
    open_wallet(national, mother, "11", BJ)
    good = make("110105", "19800101", "123")
    bad_checksum = good[:-1] + ("0" if good[-1] != "0" else "1")
    w = national.wallet.stub
    cases = [
        ([], "INVALID_OWNERS"),
        ([mother] * (MAX_BALANCES + 1), "INVALID_OWNERS"),
        ([mother, bad_checksum], "INVALID_ID_NUMBER"),
        ([mother, ""], "INVALID_ID_NUMBER"),
        (["not-an-id", mother], "INVALID_ID_NUMBER"),
    ]
    before = snapshot(rdb)
    for owners, why in cases:
        with pytest.raises(grpc.RpcError) as ei:
            w.GetWalletBalances(wpb.GetWalletBalancesRequest(owner_id_numbers=owners))
        assert (ei.value.code(), reason(ei.value)) == (INVALID, why), (owners[:3], ei.value.details())
        info = error_info(ei.value)
        assert info is not None and info.metadata["field"] == "owner_id_numbers"
        assert ei.value.details()
    assert snapshot(rdb) == before


def test_only_the_registries_may_ask_for_balances():
    assert authz.POLICIES["wallet"][f"/{authz.WALLET}/GetWalletBalances"] == {"registry"}


# --- the settlement engine asking the wallet ---------------------------------------------------------


def test_settle_batch_asks_the_wallet_once_and_splits_like_the_rules(national, rdb, counting):
    bj = national.reg("11")
    son, niece = person(national, "13", bal=100_000), person(national, "13", bal=100_000)
    helper = person(national, "11", bal=50_000, birth="19600101")
    zero = person(national, "11", itype=RESIDENT, birth="19550101")     # wallet here, empty; a helper
    funded = person(national, "11", bal=1_000, birth="19650101")        # own 1,000 + wallet 20,000
    cash = person(national, "11", itype=RESIDENT, birth="19550101")     # no wallet, no helper
    own = person(national, "11", bal=10_000, birth="19700101")          # own account covers it
    zero_emp = person(national, "11", bal=500, birth="19660101")        # own 500 + empty wallet
    stale = person(national, "11", itype=RESIDENT, birth="19570101")    # registry thinks: wallet here
    elsewhere = person(national, "11", itype=RESIDENT, birth="19580101")  # wallet at 110105, funded
    far = person(national, "11", itype=RESIDENT, birth="19590101")      # wallet at 110105: not asked
    bind(bj, helper, zero, cpb.RELATION_SPOUSE)
    for pid in (zero, zero_emp):
        open_wallet(national, pid, "11", BJ)
    open_wallet(national, funded, "11", BJ)
    fund(national, son, "13", funded, 20_000)
    # 北京 has one 统筹区 (110000); a wallet used at another one stands here for a province with
    # several: this wallet takes 110105 as a second 北京 统筹区.
    wallet = national.wallet.wallet
    wallet.regions = {**wallet.regions, "11": wallet.regions["11"] | {"110105"}}
    open_wallet(national, elsewhere, "11", "110105")
    open_wallet(national, far, "11", "110105")
    fund(national, niece, "13", elsewhere, 5_000)
    # The registry's note about a wallet can be stale (here: set directly, as a newer version than the
    # wallet's own notes): the wallet's answer wins.
    bj.NoteWallet(rpb.NoteWalletRequest(id_number=stale, use_place_admdvs=BJ, place_version=99))
    bj.NoteWallet(rpb.NoteWalletRequest(id_number=elsewhere, use_place_admdvs=BJ, place_version=99))

    h = [rules.HelperCandidate(helper, 50_000, 1, True)]
    items = [
        (own, 500, plan(500, own=10_000, has_account=True, wallet=None)),
        (zero, 3_000, plan(3_000, own=0, has_account=False, wallet=0, helpers=h)),
        (funded, 25_000, plan(25_000, own=1_000, has_account=True, wallet=20_000)),
        (cash, 2_000, plan(2_000, own=0, has_account=False, wallet=None, missing="WALLET_NOT_OPENED")),
        (zero_emp, 800, plan(800, own=500, has_account=True, wallet=0)),
        (stale, 1_500, plan(1_500, own=0, has_account=False, wallet=None, missing="WALLET_NOT_OPENED")),
        (elsewhere, 700, plan(700, own=0, has_account=False, wallet=None, missing="WALLET_OTHER_USE_PLACE")),
        (far, 600, plan(600, own=0, has_account=False, wallet=None, missing="WALLET_OTHER_USE_PLACE")),
    ]
    # What the rules say, spelled out once (so a wrong model of the rules cannot hide a wrong answer).
    assert [x[2] for x in items] == [
        (500, 0, 0, "", 0, "", ""),
        (0, 0, 3_000, helper, 0, "", "WALLET_ZERO_BALANCE"),
        (1_000, 20_000, 0, "", 4_000, "", "WALLET_INSUFFICIENT"),
        (0, 0, 0, "", 2_000, "", "WALLET_NOT_OPENED"),
        (500, 0, 0, "", 300, "", "WALLET_ZERO_BALANCE"),
        (0, 0, 0, "", 1_500, "", "WALLET_NOT_OPENED"),
        (0, 0, 0, "", 700, "", "WALLET_OTHER_USE_PLACE"),
        (0, 0, 0, "", 600, "", "WALLET_OTHER_USE_PLACE"),
    ]
    reqs = [bj_req(pid, amount) for pid, amount, _ in items]
    before = total_balances(rdb) + wallet_total(rdb)
    fences = {pid: fence(rdb, national, pid) for pid, _, _ in items}

    out = bj.SettleBatch(rpb.SettleBatchRequest(requests=reqs)).outcomes
    assert all(o.HasField("response") for o in out), [o.error for o in out if o.HasField("error")]
    results = [o.response.result for o in out]
    assert [split(r) for r in results] == [x[2] for x in items]
    for r, req in zip(results, reqs, strict=True):
        assert (r.settlement_id, r.patient_id_number, r.amount_fen, r.state) == \
            (req.request_id, req.patient_id_number, req.amount_fen, "SETTLED")
    # ONE GetWalletBalances call, for exactly the patients whose wallet is (said to be) usable here,
    # in batch order (not `own`, `cash` or `far`, whose wallet the registry knows to be elsewhere); the
    # patient whose wallet pays goes on to the staged path, which plans again under the patient's lock
    # and so asks for that one balance again (GetWallet). Everyone else applied atomically, lock-free.
    assert counting.many == [[(zero, BJ), (funded, BJ), (zero_emp, BJ), (stale, BJ), (elsewhere, BJ)]]
    assert counting.one == [(funded, BJ)]
    assert [p for p, _, _ in items if took_the_lock(rdb, national, p, fences[p])] == [funded]
    # The wallet was really spent (SpendWallet), and only the funded wallet.
    assert results[2].wallet_balance_after_fen == 0
    assert wallet_balance(national, funded) == 0
    assert wallet_balance(national, elsewhere) == 5_000
    assert wallet_balance(national, zero) == 0 and wallet_balance(national, zero_emp) == 0
    clearing = national.wallet.stub.GetClearingReport(wpb.GetClearingReportRequest(month="202611"))
    assert [(x.sending_province, x.spending_province, x.amount_fen) for x in clearing.lines] == [("13", "11", 20_000)]
    # Balances moved exactly as answered; money is conserved across registries and wallets.
    assert balance(bj, own) == 9_500 and balance(bj, helper) == 47_000
    assert balance(bj, funded) == 0 and balance(bj, zero_emp) == 0
    assert total_balances(rdb) + wallet_total(rdb) + paid(results) == before
    assert paid(results) == 500 + 3_000 + 21_000 + 500
    # Every answer is the recorded settlement, and the request ids replay it without a second effect.
    for r in results:
        assert bj.GetSettlement(rpb.GetSettlementRequest(settlement_id=r.settlement_id)).result == r
    again = bj.SettleBatch(rpb.SettleBatchRequest(requests=reqs)).outcomes
    assert [o.response.result for o in again] == results
    assert total_balances(rdb) + wallet_total(rdb) + paid(results) == before
    assert len(counting.many) == 1  # replays ask nobody
    assert not list(rdb.scan_iter(match="reg:11:*:lock"))

    # A batch in which no wallet is usable here asks the wallet nothing.
    calm = bj.SettleBatch(rpb.SettleBatchRequest(requests=[bj_req(own, 100), bj_req(cash, 100)])).outcomes
    assert [split(o.response.result) for o in calm] == [(100, 0, 0, "", 0, "", ""),
                                                         (0, 0, 0, "", 100, "", "WALLET_NOT_OPENED")]
    assert len(counting.many) == 1


def test_one_settle_asks_balances_and_a_funded_wallet_pays(national, rdb, counting):
    bj = national.reg("11")
    son = person(national, "13", bal=100_000)
    mother = person(national, "11", itype=RESIDENT, birth="19550101")
    open_wallet(national, mother, "11", BJ)
    fund(national, son, "13", mother, 6_000)
    before = total_balances(rdb) + wallet_total(rdb)
    r1 = bj.Settle(bj_req(mother, 2_500)).result
    assert split(r1) == plan(2_500, own=0, has_account=False, wallet=6_000) == (0, 2_500, 0, "", 0, "", "")
    assert r1.wallet_balance_after_fen == 3_500 == wallet_balance(national, mother)
    r2 = bj.Settle(bj_req(mother, 5_000)).result
    assert split(r2) == plan(5_000, own=0, has_account=False, wallet=3_500) == \
        (0, 3_500, 0, "", 1_500, "", "WALLET_INSUFFICIENT")
    # Empty now: the next bill applies atomically (no lock, no SpendWallet) with WALLET_ZERO_BALANCE.
    fence_before = fence(rdb, national, mother)
    r3 = bj.Settle(bj_req(mother, 400)).result
    assert split(r3) == plan(400, own=0, has_account=False, wallet=0) == (0, 0, 0, "", 400, "", "WALLET_ZERO_BALANCE")
    assert not took_the_lock(rdb, national, mother, fence_before)
    assert counting.many == [[(mother, BJ)]] * 3
    assert counting.one == [(mother, BJ)] * 2  # the two staged settlements planned again under the lock
    assert total_balances(rdb) + wallet_total(rdb) + paid([r1, r2, r3]) == before


def test_presettle_names_the_wallet_balance_after_as_settle_does(national, rdb):
    """2206 gives the split of the 2207 that follows, balances after included: the own account, the
    wallet (which pays part of the bill or all of the rest) and each helper in turn (北京)."""
    bj = national.reg("11")
    son = person(national, "13", bal=100_000)
    mother = person(national, "11", bal=1_000, birth="19550101")
    open_wallet(national, mother, "11", BJ)
    fund(national, son, "13", mother, 2_000)
    helpers = [person(national, "11", bal=fen) for fen in (300, 700)]
    for helper in helpers:
        bind(bj, helper, mother)
    for amount, wallet_after in ((1_001, 1_999), (3_500, 0)):
        req = bj_req(mother, amount)
        pre = bj.PreSettle(rpb.PreSettleRequest(
            patient_id_number=mother, amount_fen=amount, use_account=True, category=req.category,
            institution_code=req.institution_code, institution_admdvs=req.institution_admdvs)).result
        res = bj.Settle(req).result
        assert res.wallet_balance_after_fen == wallet_after == wallet_balance(national, mother)
        pre.settlement_id, pre.state = res.settlement_id, res.state
        assert pre == res
        bj.ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=req.request_id))
        assert (balance(bj, mother), wallet_balance(national, mother)) == (1_000, 2_000)
        assert [balance(bj, h) for h in helpers] == [300, 700]


def test_same_funded_patient_twice_in_one_batch_spends_in_order(national, rdb, counting):
    """The first item's wallet pays, so it takes the staged path; the second item of the same patient
    follows it there (without asking the wallet again in its wave) and is planned after the first one
    has spent: each item is exactly the Settle it would be on its own, in batch order."""
    bj = national.reg("11")
    son = person(national, "13", bal=100_000)
    mother = person(national, "11", itype=RESIDENT, birth="19550101")
    open_wallet(national, mother, "11", BJ)
    fund(national, son, "13", mother, 8_000)
    before = total_balances(rdb) + wallet_total(rdb)
    reqs = [bj_req(mother, 5_000), bj_req(mother, 5_000)]
    out = bj.SettleBatch(rpb.SettleBatchRequest(requests=reqs)).outcomes
    results = [o.response.result for o in out]
    assert [split(r) for r in results] == [
        plan(5_000, own=0, has_account=False, wallet=8_000),
        plan(5_000, own=0, has_account=False, wallet=3_000),
    ] == [(0, 5_000, 0, "", 0, "", ""), (0, 3_000, 0, "", 2_000, "", "WALLET_INSUFFICIENT")]
    assert counting.many == [[(mother, BJ)]]
    assert counting.one == [(mother, BJ)] * 2
    assert wallet_balance(national, mother) == 0
    assert total_balances(rdb) + wallet_total(rdb) + paid(results) == before


def test_items_of_one_patient_settle_in_batch_order_when_one_waits_for_the_wallet(national, rdb, counting):
    """A batch applies one patient's items in order even when the first waits for the wallet's answer:
    item 1, whose own account would cover its bill, must not settle before item 0 (one patient's later
    items run in the next wave). The wallet is empty: both apply atomically."""
    bj = national.reg("11")
    p = person(national, "11", bal=500, birth="19650101")
    open_wallet(national, p, "11", BJ)
    before = total_balances(rdb) + wallet_total(rdb)
    fence_before = fence(rdb, national, p)
    out = bj.SettleBatch(rpb.SettleBatchRequest(requests=[bj_req(p, 800), bj_req(p, 300)])).outcomes
    results = [o.response.result for o in out]
    assert balance(bj, p) == 0 and paid(results) == 500
    assert total_balances(rdb) + wallet_total(rdb) + paid(results) == before
    assert counting.many == [[(p, BJ)], [(p, BJ)]]  # item 1 runs in the next wave and needs the wallet too
    assert [split(r) for r in results] == [
        plan(800, own=500, has_account=True, wallet=0),  # (500, 0, 0, "", 300, "", "WALLET_ZERO_BALANCE")
        plan(300, own=0, has_account=True, wallet=0),    # (0, 0, 0, "", 300, "", "WALLET_ZERO_BALANCE")
    ]
    assert not took_the_lock(rdb, national, p, fence_before)


def test_a_later_item_does_not_overtake_a_staged_one_of_the_same_patient(national, rdb, counting):
    """Item 0's wallet pays a share, so it takes the staged path, which runs after the batch's atomic
    waves. Item 1 of the same patient would be covered by the own account as the registry reads it
    before item 0 has run; applied atomically in the next wave it would spend the own account first.
    It must follow item 0 instead: the answers are those of two Settles sent one after the other."""
    bj = national.reg("11")
    son = person(national, "13", bal=100_000)
    p = person(national, "11", bal=500, birth="19650101")
    open_wallet(national, p, "11", BJ)
    fund(national, son, "13", p, 1_000)
    before = total_balances(rdb) + wallet_total(rdb)
    out = bj.SettleBatch(rpb.SettleBatchRequest(requests=[bj_req(p, 800), bj_req(p, 300)])).outcomes
    results = [o.response.result for o in out]
    assert [split(r) for r in results] == [
        plan(800, own=500, has_account=True, wallet=1_000),
        plan(300, own=0, has_account=True, wallet=700),
    ] == [(500, 300, 0, "", 0, "", ""), (0, 300, 0, "", 0, "", "")]
    assert [(r.balance_after_fen, r.wallet_balance_after_fen) for r in results] == [(0, 700), (0, 400)]
    assert balance(bj, p) == 0 and wallet_balance(national, p) == 400
    assert total_balances(rdb) + wallet_total(rdb) + paid(results) == before


# --- the wallet cannot answer --------------------------------------------------------------------


def test_wallet_down_fails_only_those_settlements_writes_nothing_and_a_retry_settles(
        national, rdb, loop_thread):
    running = national.registries["11"]
    reg, bj = running.registry, running.stub
    son = person(national, "13", bal=100_000)
    helper = person(national, "11", bal=50_000, birth="19600101")
    zero = person(national, "11", itype=RESIDENT, birth="19550101")
    funded = person(national, "11", itype=RESIDENT, birth="19560101")
    cash = person(national, "11", itype=RESIDENT, birth="19570101")
    own = person(national, "11", bal=10_000, birth="19700101")
    bind(bj, helper, zero, cpb.RELATION_SPOUSE)
    open_wallet(national, zero, "11", BJ)
    open_wallet(national, funded, "11", BJ)
    fund(national, son, "13", funded, 10_000)

    live = reg.wallet
    dead = loop_thread.run(_make_port(f"127.0.0.1:{closed_port()}"))
    reg.wallet = dead
    try:
        # One Settle: UNAVAILABLE with the wallet's reason, and not one key written.
        single = bj_req(zero, 1_000)
        snap = snapshot(rdb)
        with pytest.raises(grpc.RpcError) as ei:
            bj.Settle(single)
        assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.UNAVAILABLE, "WALLET_UNAVAILABLE")
        assert snapshot(rdb) == snap

        # A batch: the two settlements that need the wallet fail, their neighbours settle.
        reqs = [bj_req(zero, 3_000), bj_req(own, 700), bj_req(funded, 4_000), bj_req(cash, 900)]
        watched = (zero, funded, helper)
        before_keys = {k: v for k, v in snapshot(rdb).items() if _watched(k, watched)}
        before_total = total_balances(rdb) + wallet_total(rdb)
        out = bj.SettleBatch(rpb.SettleBatchRequest(requests=reqs)).outcomes
        assert item_error(out[0]) == ("UNAVAILABLE", "WALLET_UNAVAILABLE")
        assert item_error(out[2]) == ("UNAVAILABLE", "WALLET_UNAVAILABLE")
        assert split(out[1].response.result) == (700, 0, 0, "", 0, "", "")
        assert split(out[3].response.result) == (0, 0, 0, "", 900, "", "WALLET_NOT_OPENED")
        after_keys = {k: v for k, v in snapshot(rdb).items() if _watched(k, watched)}
        assert after_keys == before_keys  # no balance, record, ledger, lock, fence or wallet change
        for req in (reqs[0], reqs[2], single):
            assert not rdb.exists(reg.k.settlement(req.patient_id_number, req.request_id))
            assert not rdb.exists(reg.idem.key(req.request_id))  # the claim was abandoned
        assert total_balances(rdb) + wallet_total(rdb) == before_total - 700
        assert not list(rdb.scan_iter(match="reg:11:*:lock"))
    finally:
        reg.wallet = live
        loop_thread.run(dead.close())

    # The wallet is back: the same request ids settle normally; the settled neighbours replay.
    h = [rules.HelperCandidate(helper, 50_000, 1, True)]
    again = bj.SettleBatch(rpb.SettleBatchRequest(requests=reqs)).outcomes
    assert all(o.HasField("response") for o in again), [o.error for o in again if o.HasField("error")]
    got = [o.response.result for o in again]
    assert split(got[0]) == plan(3_000, own=0, has_account=False, wallet=0, helpers=h) == \
        (0, 0, 3_000, helper, 0, "", "WALLET_ZERO_BALANCE")
    assert split(got[2]) == plan(4_000, own=0, has_account=False, wallet=10_000) == (0, 4_000, 0, "", 0, "", "")
    assert got[1] == out[1].response.result and got[3] == out[3].response.result
    assert balance(bj, helper) == 47_000 and balance(bj, own) == 9_300
    assert wallet_balance(national, funded) == 6_000
    assert total_balances(rdb) + wallet_total(rdb) == before_total - 700 - 3_000 - 4_000
    s = bj.Settle(single).result
    assert split(s) == (0, 0, 1_000, helper, 0, "", "WALLET_ZERO_BALANCE")
    assert balance(bj, helper) == 46_000


async def _make_port(address: str) -> GrpcWallet:
    return GrpcWallet(address, deadline_s=1.0)


def _watched(key: bytes, pids: tuple[str, ...]) -> bool:
    text = key.decode()
    return text.startswith("wal:") or any(p in text for p in pids)
