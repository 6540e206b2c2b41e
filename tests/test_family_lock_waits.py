"""Pooled family accounts (SPEC §3b) ended by a flow that holds a person's lock (SPEC §4b, §5b), on a
real registry with a short lock lifetime (--lock-ttl-ms) and a family lock held by a stalled holder:
what waits for what, and what the caller is told."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest
from medaid.bench import money as verdict
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from support import balance, reason
from test_family import account, create, huabo, invite
from test_premiums import PREMIUM, paid_for_a_child, pay, status


def test_a_cancel_ending_family_places_answers_its_own_cancellation_whatever_pays_meanwhile(
        start_registry, rdb):
    """A cancellation that puts a termination back ends the family places the payment allowed (SPEC §3b,
    §5b), each under its family's lock, which a stalled holder keeps longer than the person locks live.
    The cancellation is written before those ends: a new payment of the payee (a new request id) sent
    meanwhile, once let in, leaves the cancellation answered with the payment it cancelled, CANCELLED,
    the same on a replay; the new payment stands PAID, the place ends, and every fen is where it should be."""
    reg = start_registry("62")
    stub, k = reg.stub, reg.registry.k
    mother, child, first = paid_for_a_child(reg, cpb.PERSON_STATUS_TERMINATED, 300_000, birth="20150101",
                                            request_id="prem-first")
    fid = create(stub, mother).family_id
    invite(stub, fid, mother, child)  # under 16: a member at once
    huabo(stub, fid, mother, 100_000)
    reg.registry.ctx.lock_ttl_ms = 1_000
    rdb.set(f"{k.family_lock_tag(fid)}:lock", "stalled-holder:1", px=2_500)
    cancel = ppb.CancelResidentPremiumRequest(request_id="cancel-waits", payee_id_number=child, year="2027")
    answers: list[Any] = []

    def cancelling() -> None:
        try:
            answers.append(stub.CancelResidentPremium(cancel).premium)
        except grpc.RpcError as exc:
            answers.append((exc.code(), reason(exc)))

    thread = threading.Thread(target=cancelling)
    thread.start()
    while rdb.hget(k.premium(child, "2027"), "state") != b"CANCELLED" and thread.is_alive():
        time.sleep(0.005)
    while True:  # sent once the cancellation is written, and again while it is told to wait for it
        try:
            again = pay(stub, mother, child, request_id="prem-again")
            break
        except grpc.RpcError as exc:
            assert reason(exc) == "PREMIUM_CANCEL_IN_PROGRESS", exc
            time.sleep(0.05)
    thread.join(30)
    assert again.state == "PAID"
    assert len(answers) == 1 and isinstance(answers[0], ppb.ResidentPremium), answers
    assert (answers[0].premium_id, answers[0].state) == (first.premium_id, "CANCELLED"), answers[0]
    assert stub.CancelResidentPremium(cancel).premium == answers[0]  # a replay answers the first answer
    assert status(stub, child) == cpb.PERSON_STATUS_ACTIVE  # insured again by the new payment
    (place,) = [m for m in account(stub, fid).members if m.id_number == child]
    assert (place.state, place.end_reason) == (fpb.MEMBERSHIP_STATE_ENDED, "TERMINATED")
    assert balance(stub, mother) == 300_000 - 100_000 - PREMIUM
    assert not rdb.zcard("reg:62:{open}:setl") and verdict.check(rdb).conserved


def test_a_payment_meeting_an_unfinished_cancellation_waits_and_its_resend_cancels_only_its_own(
        start_registry, rdb):
    """A cancellation whose family ends could not take a family lock in time is told FAMILY_BUSY,
    retry with the same request id, its payment already cancelled. A new payment of the same payee and
    year sent before that retry is told UNAVAILABLE PREMIUM_CANCEL_IN_PROGRESS, nothing written: it
    would replace the record by which the resend knows its own cancellation, and the resend would then
    cancel the new payment, which nobody asked, leaving the payee uninsured. Once the resend has
    finished the cancellation (answered with the payment it cancelled), the payment goes through."""
    from medaid.gateway.reasons import REASON_ZH
    from support import snapshot
    reg = start_registry("62")
    stub, k = reg.stub, reg.registry.k
    mother, child, first = paid_for_a_child(reg, cpb.PERSON_STATUS_TERMINATED, 300_000, birth="20150101",
                                            request_id="prem-first")
    fid = create(stub, mother).family_id
    invite(stub, fid, mother, child)
    rdb.set(f"{k.family_lock_tag(fid)}:lock", "stalled-holder:1", px=3_000)
    cancel = ppb.CancelResidentPremiumRequest(request_id="cancel-busy", payee_id_number=child, year="2027")
    try:
        stub.CancelResidentPremium(cancel, timeout=1.0)
        raise AssertionError("the cancellation waited out a family lock held longer than its deadline")
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
    assert rdb.hget(k.premium(child, "2027"), "state") == b"CANCELLED"
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        pay(stub, mother, child, request_id="prem-again")
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.UNAVAILABLE, "PREMIUM_CANCEL_IN_PROGRESS")
    assert "PREMIUM_CANCEL_IN_PROGRESS" in REASON_ZH
    assert snapshot(rdb) == before
    while rdb.exists(f"{k.family_lock_tag(fid)}:lock"):
        time.sleep(0.05)
    done = stub.CancelResidentPremium(cancel).premium
    assert (done.premium_id, done.state) == (first.premium_id, "CANCELLED")
    assert pay(stub, mother, child, request_id="prem-again").state == "PAID"
    assert stub.CancelResidentPremium(cancel).premium == done  # a replay answers the first answer
    assert status(stub, child) == cpb.PERSON_STATUS_ACTIVE
    assert balance(stub, mother) == 300_000 - PREMIUM
    assert not rdb.zcard("reg:62:{open}:setl") and verdict.check(rdb).conserved
