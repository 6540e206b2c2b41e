"""A wallet owner who moves province (SPEC §5b): TERMINATED in the old registry with the new province
noted, then enrolled in the new one. Their wallet relationships end with the move; the wallet follows
them to the new province once they are insured there: transfers check the new registry, the use-place
is a 统筹区 of the new province, clearing names it, and the new registry's waterfall pays from it.
Same fixtures and people as tests/test_wallet.py ("today" is 2026-11-22 10:00 Asia/Shanghai).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from medaid.bench import money
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.wallet_port import GrpcWallet
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import RESIDENT, rid
from test_wallet import EXISTS, FP, INVALID, Env, lines_of, lots_of, refused
from test_wallet_balances import closed_port
from test_wallet_onward import onward


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


def moved_mother(env: Env) -> tuple[str, str, wpb.Transfer]:
    """A 河北 employee son funds his 北京 resident mother's wallet (30,000), she spends 5,000 in 北京,
    then moves her insurance to 甘肃: the unspent 25,000 goes home to the son."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    t = env.fund(son, "13", mother, 30_000)
    env.spend(mother, 5_000, place="110000")
    env.set_status("11", mother, cpb.PERSON_STATUS_TERMINATED, moved_to="62")
    assert env.bal("13", son) == 95_000 and env.wbal(mother) == 0
    return son, mother, t


def enroll_again(env: Env, prov: str, pid: str, region: str, itype: int = RESIDENT) -> None:
    env.reg(prov).EnrollPerson(rpb.EnrollPersonRequest(request_id=rid("enroll"), id_number=pid, name="李四",
                                                       insurance_type=itype, pooling_region=region))


def conserved(env: Env) -> None:
    report = money.check(env.rdb)
    assert report.conserved, report.as_dict()


def test_a_wallet_follows_its_owner_to_the_province_they_moved_to(env):
    son, mother, _ = moved_mother(env)
    # Not insured in 甘肃 yet: nothing follows, nothing is written.
    before = env.snap()
    refused(FP, "RECIPIENT_NOT_INSURED", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 1_000))
    refused(INVALID, "USE_PLACE_OUTSIDE_PROVINCE", env.w.ChangeUsePlace, wpb.ChangeUsePlaceRequest(
        request_id=rid("up"), owner_id_number=mother, use_place_admdvs="620100"))
    assert env.snap() == before
    enroll_again(env, "62", mother, "620100")
    # A transfer to her now checks the registry that insures her, and her wallet goes with her.
    t = env.send(son, "13", mother, 20_000)
    assert (t.state, t.recipient_province) == (wpb.TRANSFER_STATE_PENDING_ACCEPT, "62")
    got = env.accept(t.transfer_id, mother).wallet
    assert (got.province, got.use_place_admdvs, got.balance_fen) == ("62", "620100", 20_000)
    assert got.opened_at_unix_ms == env.wallet(mother).wallet.opened_at_unix_ms
    assert lots_of(env.wallet(mother)) == [(t.transfer_id, son, "13", 20_000, 20_000)]
    # Spent in 甘肃 only; clearing names the province where it was spent each time.
    refused(FP, "OUTSIDE_USE_PLACE", env.w.SpendWallet, env.spend_req(mother, 1_000, place="110000"))
    env.spend(mother, 3_000, place="620100")
    # The 甘肃 registry's waterfall pays from it (it was told of the wallet).
    paid = env.reg("62").Settle(rpb.SettleRequest(
        request_id=rid("settle"), patient_id_number=mother, amount_fen=4_000, use_account=True,
        category=cpb.CATEGORY_OUTPATIENT, institution_code="H62010000001", institution_admdvs="620100")).result
    assert (paid.wallet_pay_fen, paid.cash_pay_fen) == (4_000, 0)
    assert env.wbal(mother) == 13_000
    assert lines_of(env.clearing("202611")) == [("13", "11", 5_000, 1), ("13", "62", 7_000, 2)]
    assert env.bal("13", son) == 75_000
    conserved(env)


def test_opening_a_wallet_in_the_new_province_brings_the_wallet_along(env):
    son, mother, _ = moved_mother(env)
    enroll_again(env, "62", mother, "620100")
    req = env.open_req(mother, "62", "620100")
    got = env.w.OpenWallet(req).wallet
    assert (got.province, got.use_place_admdvs, got.balance_fen) == ("62", "620100", 0)
    assert env.w.OpenWallet(req).wallet == got  # a replay answers the same
    refused(EXISTS, "WALLET_EXISTS", env.w.OpenWallet, env.open_req(mother, "62", "620100"))
    # Use-place changes stay inside the new province.
    refused(INVALID, "USE_PLACE_OUTSIDE_PROVINCE", env.w.ChangeUsePlace, wpb.ChangeUsePlaceRequest(
        request_id=rid("up"), owner_id_number=mother, use_place_admdvs="110000"))
    env.fund(son, "13", mother, 2_000)
    assert env.spend(mother, 2_000, place="620100").parts[0].sender_province == "13"
    conserved(env)


def test_changing_the_use_place_to_the_new_province_brings_the_wallet_along(env):
    son, mother, _ = moved_mother(env)
    enroll_again(env, "62", mother, "620100")
    got = env.w.ChangeUsePlace(wpb.ChangeUsePlaceRequest(request_id=rid("up"), owner_id_number=mother,
                                                         use_place_admdvs="620100")).wallet
    assert (got.province, got.use_place_admdvs) == ("62", "620100")
    # Moving on again (甘肃 → 河北): the wallet follows the chain of moves to where she is insured.
    env.set_status("62", mother, cpb.PERSON_STATUS_TERMINATED, moved_to="13")
    enroll_again(env, "13", mother, "130100")
    got = env.open(mother, "13", "130100")
    assert (got.province, got.use_place_admdvs) == ("13", "130100")
    env.fund(son, "13", mother, 1_000)  # 省内 now
    assert lines_of(env.clearing("202611"))[-1:] == [("13", "11", 5_000, 1)]
    env.spend(mother, 1_000, place="130100")
    assert ("13", "13", 1_000, 1) in lines_of(env.clearing("202611"))
    conserved(env)


def test_a_wallet_does_not_follow_a_person_still_insured_in_its_province(env):
    """Enrolled in a second province without moving out of the first: the wallet stays, and opening
    another one is refused."""
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    enroll_again(env, "62", mother, "620100")
    before = env.snap()
    refused(EXISTS, "WALLET_EXISTS", env.w.OpenWallet, env.open_req(mother, "62", "620100"))
    refused(INVALID, "USE_PLACE_OUTSIDE_PROVINCE", env.w.ChangeUsePlace, wpb.ChangeUsePlaceRequest(
        request_id=rid("up"), owner_id_number=mother, use_place_admdvs="620100"))
    assert env.snap() == before
    assert env.wallet(mother).wallet.province == "11"


def test_a_late_end_of_the_old_provinces_relationships_leaves_the_new_ones(env, loop_thread):
    """The old registry's end of the mover's relationships gets through only by its recovery loop,
    after the wallet followed her to 甘肃 and took new transfers there: it ends what she held as a
    北京 insured person, nothing she received in 甘肃 (held or still waiting)."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    old = env.n.registries["11"]
    live, old.registry.wallet = old.registry.wallet, loop_thread.run(_dead_wallet())
    try:
        with pytest.raises(grpc.RpcError) as ei:
            env.set_status("11", mother, cpb.PERSON_STATUS_TERMINATED, moved_to="62")
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        old.registry.wallet = live
    enroll_again(env, "62", mother, "620100")
    kept = env.fund(son, "13", mother, 20_000)
    waiting = env.send(son, "13", mother, 10_000)
    # From 甘肃 she passes 5,000 on to her sister there (the oldest lot's: quota her son sent to 北京).
    sister = env.person("62", itype=RESIDENT, birth="19600101", wallet=True)
    passed = env.w.CreateTransfer(onward(env, mother, "62", sister, 5_000)).transfer
    env.accept(passed.transfer_id, sister)
    assert env.wbal(mother) == 45_000
    old.clock.advance(60_000)
    assert loop_thread.run(old.registry.recover()).lifecycle == 1
    assert lots_of(env.wallet(mother)) == [(kept.transfer_id, son, "13", 20_000, 20_000)]
    assert env.transfer(waiting.transfer_id).state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert env.wbal(sister) == 5_000  # passed on from 甘肃: her relationship with her sister began there
    assert env.bal("13", son) == 100_000 - 30_000 - 20_000 - 10_000 + 25_000  # the 北京 lot's rest came home
    conserved(env)


async def _dead_wallet() -> GrpcWallet:
    """A wallet port to an address nobody listens on: every call is UNAVAILABLE."""
    return GrpcWallet(f"127.0.0.1:{closed_port()}", deadline_s=1.0)


def test_a_status_note_of_the_old_province_read_back_as_the_wallet_follows_changes_nothing(env, loop_thread,
                                                                                          monkeypatch):
    """The old registry re-sends its note of her TERMINATED status (its recovery loop); while the
    wallet reads her status back from it, a transfer to her brings the wallet to 甘肃, where she is
    ACTIVE. The old province's status must not land on the wallet after that."""
    son, mother, _ = moved_mother(env)
    enroll_again(env, "62", mother, "620100")
    wallet = env.n.wallet.wallet
    real = wallet.registries.person
    following: list[asyncio.Future[Any]] = []

    async def read_while_the_wallet_follows(province: str, id_number: str) -> rpb.Person | None:
        if not following:  # the note's read: the transfer runs meanwhile, as far as it may
            following.append(asyncio.ensure_future(wallet.create_transfer(env.xfer_req(son, "13", mother, 20_000))))
            await asyncio.wait(following, timeout=0.5)
        return await real(province, id_number)

    monkeypatch.setattr(wallet.registries, "person", read_while_the_wallet_follows)
    env.w.NoteOwnerStatus(wpb.NoteOwnerStatusRequest(id_number=mother, province="11"))
    monkeypatch.undo()

    async def transfer() -> wpb.Transfer:
        return (await following[0]).transfer

    t = loop_thread.run(transfer())
    assert (t.state, t.recipient_province) == (wpb.TRANSFER_STATE_PENDING_ACCEPT, "62")
    env.accept(t.transfer_id, mother)
    assert env.spend(mother, 1_000, place="620100").balance_after_fen == 19_000
    conserved(env)


def test_a_use_place_change_racing_the_wallet_following_its_owner_keeps_them_in_one_province(env, loop_thread,
                                                                                            monkeypatch):
    """She changes the use-place to another 统筹区 of 河北, the province she moved out of, while a
    transfer to her brings the wallet to 甘肃: whichever is written last, the wallet's use-place is a
    统筹区 of its province."""
    son = env.person("13", bal=100_000)
    mother = env.person("13", itype=RESIDENT, birth="19550101", wallet=True)
    env.set_status("13", mother, cpb.PERSON_STATUS_TERMINATED, moved_to="62")
    enroll_again(env, "62", mother, "620100")
    wallet = env.n.wallet.wallet
    real_zadd = wallet.r.zadd
    following: list[asyncio.Future[Any]] = []

    async def zadd_while_the_wallet_follows(name: Any, mapping: Any, *args: Any, **kwargs: Any) -> Any:
        if name == wallet.k.notes_due() and not following:  # the change, about to write
            following.append(asyncio.ensure_future(wallet.create_transfer(env.xfer_req(son, "13", mother, 1_000))))
            await asyncio.wait(following, timeout=0.5)
        return await real_zadd(name, mapping, *args, **kwargs)

    monkeypatch.setattr(wallet.r, "zadd", zadd_while_the_wallet_follows)
    env.w.ChangeUsePlace(wpb.ChangeUsePlaceRequest(request_id=rid("up"), owner_id_number=mother,
                                                   use_place_admdvs="130200"))
    monkeypatch.undo()

    async def transfer() -> wpb.Transfer:
        return (await following[0]).transfer

    assert loop_thread.run(transfer()).recipient_province == "62"
    got = env.wallet(mother).wallet
    assert (got.province, got.use_place_admdvs) == ("62", "620100")


def test_an_onward_transfer_refused_by_the_transfer_rules_does_not_move_the_sending_wallet(env):
    """The rules that need no stored state come before the sending wallet follows its owner: an
    onward transfer they refuse writes nothing."""
    _, mother, _ = moved_mother(env)
    enroll_again(env, "62", mother, "620100")
    sister = env.person("62", itype=RESIDENT, birth="19600101", wallet=True)
    before = env.snap()
    refused(FP, "AMOUNT_OVER_LIMIT", env.w.CreateTransfer, onward(env, mother, "62", sister, 10**12))
    assert env.snap() == before
    assert env.wallet(mother).wallet.province == "11"


def test_a_transfer_refused_after_the_rules_moves_no_wallet(env):
    """A wallet follows its owner only once the transfer is admitted: a transfer refused by a later
    check (the sender's balance, the sender's one unaccepted transfer, the sending wallet's quota)
    writes nothing, so the recipient's and the sending wallet stay where they were."""
    son, mother, _ = moved_mother(env)
    enroll_again(env, "62", mother, "620100")
    sister = env.person("62", itype=RESIDENT, birth="19600101", wallet=True)
    daughter = env.person("13", itype=RESIDENT, birth="20100101", wallet=True)
    waiting = env.send(son, "13", daughter, 1_000, relation=cpb.RELATION_CHILD)  # holds his one slot
    before = env.snap()
    refused(FP, "PENDING_TRANSFER_EXISTS", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 1_000))
    refused(FP, "INSUFFICIENT_QUOTA", env.w.CreateTransfer, onward(env, mother, "62", sister, 1_000))
    assert env.snap() == before
    assert env.wallet(mother).wallet.province == "11"
    env.accept(waiting.transfer_id, daughter)
    before = env.snap()
    refused(FP, "INSUFFICIENT_BALANCE", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 200_000))
    assert env.snap() == before
    # Admitted, the transfer takes her wallet along, as before.
    t = env.send(son, "13", mother, 2_000)
    assert (t.recipient_province, env.wallet(mother).wallet.province) == ("62", "62")
    conserved(env)


def test_a_transfer_whose_followed_wallet_would_get_an_unknown_use_place_reserves_nothing(env):
    """Where the wallet's regions lack the 统筹区 the owner is insured in now (the two services'
    policies disagree), the transfer is refused before the sender's limits are reserved."""
    son, mother, _ = moved_mother(env)
    enroll_again(env, "62", mother, "620100")
    wallet = env.n.wallet.wallet
    regions = wallet.regions
    wallet.regions = {**regions, "62": frozenset(regions["62"] - {"620100"})}
    try:
        before = env.snap()
        refused(INVALID, "UNKNOWN_REGION", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 1_000))
        assert env.snap() == before
    finally:
        wallet.regions = regions
    assert env.send(son, "13", mother, 1_000).recipient_province == "62"
