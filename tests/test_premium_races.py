"""代缴 (SPEC §4b) where something lands between a payment's steps: the payee's move of 统筹区
before the payment opens, the payer's death before a wallet debit, two payments of each other's
premiums at once, a cancellation that meets a payment still pending."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import grpc
import pytest
from conftest import policy_for
from medaid.bench import money as verdict
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, balance, credit, enroll, reason, rid, snapshot
from test_family import _gansu_family, accept, account, create, huabo, invite
from test_premiums import GS, PREMIUM, _wallet_family, pay

FP = grpc.StatusCode.FAILED_PRECONDITION
OTHER_REGION = "620500"  # 金昌, another 统筹区 of 甘肃


@pytest.mark.parametrize("source", ["ACCOUNT", "FAMILY_ACCOUNT"])
def test_a_payee_who_moved_region_before_the_payment_opened_is_refused_with_nothing_written(
        start_registry, rdb, source):
    """Where a province has no cross-region 共济, a personal or family account pays only for a payee of
    its own 统筹区. A payee's move between the payment's decision and its opening (the move takes no
    lock the payment holds yet) leaves the payment unopened (UNAVAILABLE CONTENDED), and the resend
    with the same request id is refused DIFFERENT_POOLING_REGION; nothing is written, not even a mark
    that would keep the request id from paying once the payee is back."""
    reg = start_registry("62", policy=dataclasses.replace(policy_for("62"), cross_region_allowed=False))
    stub, k = reg.stub, reg.registry.k
    if source == "ACCOUNT":
        payer, payee = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20100101", **GS)
        credit(stub, payer, 100_000)
        kw: dict[str, Any] = {}
    else:
        payer, payee, fid = _gansu_family(stub, 100_000, 100_000)
        kw = {"family_id": fid}
    src = ppb.PremiumSource.Value("PREMIUM_SOURCE_" + source)
    seen: list[str] = []

    def moved_meanwhile(p: str) -> None:  # the move's write of the region, as MovePoolingRegion makes it
        if p == "premium.before_open" and not seen:
            seen.append(p)
            rdb.hset(k.person(payee), "region", OTHER_REGION)

    reg.registry.fault_hook = moved_meanwhile
    try:
        with pytest.raises(grpc.RpcError) as ei:
            pay(stub, payer, payee, src, request_id="prem-moved-payee", **kw)
    finally:
        reg.registry.fault_hook = None
    assert seen and (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.UNAVAILABLE, "CONTENDED"), \
        ei.value.details()
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        pay(stub, payer, payee, src, request_id="prem-moved-payee", **kw)
    assert (ei.value.code(), reason(ei.value)) == (FP, "DIFFERENT_POOLING_REGION"), ei.value.details()
    assert snapshot(rdb) == before
    rdb.hset(k.person(payee), "region", GS["region"])  # back home: the same request id pays
    assert pay(stub, payer, payee, src, request_id="prem-moved-payee", **kw).state == "PAID"
    if source == "ACCOUNT":
        assert balance(stub, payer) == 100_000 - PREMIUM
    else:
        assert stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=kw["family_id"])).account.balance_fen \
            == 100_000 - PREMIUM
    assert not rdb.zcard("reg:62:{open}:setl") and verdict.check(rdb).conserved


def _two_resident_siblings(stub: Any) -> tuple[str, str, str, str]:
    """甘肃: a creator whose family account holds ¥2,000 of theirs, and two resident children of theirs,
    members who may each have it pay the other's premium: (creator, elder, younger, family id)."""
    creator = enroll(stub, **GS)
    elder = enroll(stub, itype=RESIDENT, birth="20000101", **GS)
    younger = enroll(stub, itype=RESIDENT, birth="20020101", **GS)
    credit(stub, creator, 300_000)
    fid = create(stub, creator).family_id
    for child in (elder, younger):
        invite(stub, fid, creator, child)
        accept(stub, fid, child)
    huabo(stub, fid, creator, 200_000)
    return creator, elder, younger, fid


def test_two_members_paying_each_others_premium_at_once_both_pay(start_registry, rdb):
    """Two siblings each pay the other's premium from their family account at the same moment: each
    payment holds its payee's lock and takes the money under its payer's (whose status a death or a
    termination writes), so the two locks are taken in one order (by id number), never each holding
    the one the other waits for. Both are paid at once (no wait for a lock to expire, no PATIENT_BUSY
    or LOCK_LOST), and the account gives exactly two premiums."""
    stub = start_registry("62").stub
    for _ in range(3):  # the two requests meet in a different interleaving each time, perhaps
        _, elder, younger, fid = _two_resident_siblings(stub)
        start = threading.Barrier(2)
        answers: dict[str, Any] = {}

        def paying(payer: str, payee: str, fid: str = fid, start: threading.Barrier = start,
                   answers: dict[str, Any] = answers) -> None:
            start.wait()
            try:
                answers[payer] = pay(stub, payer, payee, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, family_id=fid,
                                     relation=cpb.RELATION_SIBLING).state
            except grpc.RpcError as exc:
                answers[payer] = (exc.code(), reason(exc))

        threads = [threading.Thread(target=paying, args=pair) for pair in ((elder, younger), (younger, elder))]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert answers == {elder: "PAID", younger: "PAID"}, answers
        assert time.monotonic() - began < 5, "a payment waited for the other's lock to expire"
        assert account(stub, fid).balance_fen == 200_000 - 2 * PREMIUM
    report = verdict.check(rdb)
    assert report.conserved and report.premiums_net_fen == 6 * PREMIUM, report.as_dict()


def test_a_wallet_payer_whose_death_lands_before_the_debit_pays_nothing_after_death(national, rdb):
    """A death writes the payer's status under the payer's lock. A wallet 代缴 judges its payer
    where the money is taken and holds that lock until the wallet's debit is answered, so the death
    lands before the judgement (the payment is dropped HELPER_NOT_ACTIVE, the wallet whole) or after
    the debit (the payment was made by a living payer), never between: a dead payer's wallet pays
    nothing. The death's write here is made as RecordDeath makes it, once the payer's lock is free."""
    _, gs, mother, child, wallet_balance = _wallet_family(national)
    reg = national.registries["62"].registry
    k, heir = reg.k, enroll(gs, **GS)
    landed: list[bool] = []

    def death_meanwhile(p: str) -> None:
        if p == "premium.before_wallet_debit" and not landed:
            free = not rdb.exists(f"{k.person_tag(mother)}:lock")
            landed.append(free)
            if free:  # else the death waits for the payment: it writes once the lock is released
                rdb.hset(k.person(mother), "status", "DECEASED")

    reg.fault_hook = death_meanwhile
    try:
        try:
            answer: Any = pay(gs, mother, child, ppb.PREMIUM_SOURCE_WALLET).state
        except grpc.RpcError as exc:
            answer = (exc.code(), reason(exc))
    finally:
        reg.fault_hook = None
    assert landed == [False] and answer == "PAID", (landed, answer)
    assert wallet_balance() == 50_000 - PREMIUM
    death = gs.RecordDeath(pb.RecordDeathRequest(request_id=rid("death"), id_number=mother, heir_id_number=heir,
                                                 date_of_death="20261121"))
    assert death.wallet_returned_fen == 50_000 - PREMIUM and wallet_balance() == 0
    assert verdict.check(rdb).conserved


def test_a_cancel_that_meets_the_payment_still_pending_is_told_to_resend_and_then_cancels(
        start_registry, rdb, loop_thread):
    """A cancellation sent while the payment is still PENDING (its process stopped after opening it;
    the recovery loop is to finish it) is not told PREMIUM_NOT_PAID, which would say there is nothing
    to cancel: it is answered UNAVAILABLE PREMIUM_PAYMENT_IN_PROGRESS (retryable, with Chinese text),
    nothing written. Once the loop has finished the payment, the same cancellation, resent with its
    request id, cancels it and the money goes back."""
    from medaid.gateway.reasons import REASON_ZH
    from test_premiums import stopped_at
    reg = start_registry("62")
    stub = reg.stub
    payer, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, payer, 100_000)
    stopped_at(reg.registry, "premium.after_open", lambda: pay(stub, payer, child, request_id="prem-pending"))
    cancel = ppb.CancelResidentPremiumRequest(request_id="cancel-early", payee_id_number=child, year="2027",
                                              payer_id_number=payer)
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        stub.CancelResidentPremium(cancel)
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.UNAVAILABLE, "PREMIUM_PAYMENT_IN_PROGRESS")
    assert "PREMIUM_PAYMENT_IN_PROGRESS" in REASON_ZH
    assert snapshot(rdb) == before
    reg.clock.advance(60_000)
    assert loop_thread.run(reg.registry.recover()).family == 1
    assert balance(stub, payer) == 100_000 - PREMIUM
    done = stub.CancelResidentPremium(cancel).premium
    assert done.state == "CANCELLED" and balance(stub, payer) == 100_000
    assert stub.CancelResidentPremium(cancel).premium == done  # a replay answers the first answer
    assert not rdb.zcard("reg:62:{open}:setl") and verdict.check(rdb).conserved


def test_a_payment_waiting_for_its_payers_lock_keeps_the_payees_and_pays(start_registry, rdb):
    """A family-account 代缴 holds the first of its two person locks (by id number) while it waits for
    the second, held by a holder that stalled and stopped renewing it. The wait is longer than the lock's
    time to live: the first lock is kept alive meanwhile, so another request that comes for that person
    (here: one that takes the lock if it is free, as a settlement of the payee would) does not get it
    in between. Once the stalled lock expires the payment is paid, never told LOCK_LOST after waiting."""
    reg = start_registry("62")
    stub, k = reg.stub, reg.registry.k
    _, elder, younger, fid = _two_resident_siblings(stub)
    payee, payer = sorted((elder, younger))  # the payee's lock is the one taken first
    reg.registry.ctx.lock_ttl_ms = 1_000
    rdb.set(f"{k.person_tag(payer)}:lock", "stalled-holder:1", px=2_500)
    answers: list[Any] = []

    def paying() -> None:
        try:
            answers.append(pay(stub, payer, payee, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, family_id=fid,
                               relation=cpb.RELATION_SIBLING, request_id="prem-waits").state)
        except grpc.RpcError as exc:
            answers.append((exc.code(), reason(exc)))

    thread = threading.Thread(target=paying)
    lock, fence = f"{k.person_tag(payee)}:lock", f"{k.person_tag(payee)}:fence"
    thread.start()
    while not rdb.exists(lock) and thread.is_alive():  # the payment holds the payee's lock, waits for the payer's
        time.sleep(0.005)
    taken_meanwhile = []
    deadline = time.monotonic() + 2.2
    while time.monotonic() < deadline and thread.is_alive():  # another request tries the payee's lock
        if rdb.set(lock, f"other:{int(rdb.get(fence) or 0) + 1}", nx=True, px=50):
            rdb.incr(fence)
            taken_meanwhile.append(time.monotonic())
            rdb.delete(lock)
        time.sleep(0.05)
    thread.join(30)
    assert answers == ["PAID"] and not taken_meanwhile, (answers, len(taken_meanwhile))
    assert account(stub, fid).balance_fen == 200_000 - PREMIUM
    assert not rdb.zcard("reg:62:{open}:setl") and verdict.check(rdb).conserved
