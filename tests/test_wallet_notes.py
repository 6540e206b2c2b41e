"""The registry's note of a wallet's use-place (SPEC §4 step 2, §5 使用地变更, §7): the registry's
waterfall asks the wallet only where its note says the wallet is used, so the note must end at the
wallet's use-place whatever happens to the NoteWallet calls: one that fails and is never re-sent
(the wallet's maintenance pass delivers it), or two that arrive out of order (a note carries the
use-place's version; an older one changes nothing).

Same fixtures and people as tests/test_wallet.py ("today" is 2026-11-22 10:00 Asia/Shanghai).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from medaid.common import errors
from medaid.common.lock import FencedLocks
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet.keys import WalletKeys
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import RESIDENT, reason, rid
from test_wallet import FP, Env, refused

Note = Callable[[rpb.NoteWalletRequest], Awaitable[rpb.NoteWalletResponse]]


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


def holder(env: Env) -> str:
    """A 河北 resident mother with a wallet at 130100 holding 30,000 from her son."""
    son = env.person("13", bal=100_000)
    mother = env.person("13", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    return mother


def wallet_pay_at(env: Env, patient: str, place: str, amount: int = 1_000) -> int:
    """What the 河北 registry's waterfall takes from the patient's wallet for a bill settled at `place`."""
    return int(env.reg("13").Settle(rpb.SettleRequest(
        request_id=rid("settle"), patient_id_number=patient, amount_fen=amount, use_account=True,
        category=cpb.CATEGORY_OUTPATIENT, institution_code=f"H{place}00001",
        institution_admdvs=place)).result.wallet_pay_fen)


def change_req(owner: str, place: str) -> wpb.ChangeUsePlaceRequest:
    return wpb.ChangeUsePlaceRequest(request_id=rid("up"), owner_id_number=owner, use_place_admdvs=place)


def intercept_notes(env: Env, monkeypatch: Any, prov: str,
                    make: Callable[[Note], Note]) -> None:
    """Route the `prov` registry's NoteWallet through `make(the real one)`."""
    registry = env.n.registries[prov].registry
    monkeypatch.setattr(registry, "note_wallet", make(registry.note_wallet))


def failing(real: Note) -> Note:
    """A NoteWallet that never gets through (the registry's store does not answer)."""
    async def note(req: rpb.NoteWalletRequest) -> rpb.NoteWalletResponse:
        raise errors.unavailable("STORE_UNAVAILABLE", "the registry's store did not answer")
    return note


def test_a_use_place_note_the_registry_missed_is_delivered_without_a_resend(env, monkeypatch):
    mother = holder(env)

    intercept_notes(env, monkeypatch, "13", failing)
    with pytest.raises(grpc.RpcError) as ei:
        env.w.ChangeUsePlace(change_req(mother, "130200"))
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    monkeypatch.undo()
    assert env.wallet(mother).wallet.use_place_admdvs == "130200"  # the change is made: it counts at once
    # The client never re-sends; the wallet's maintenance pass tells the registry.
    env.maintain()
    assert wallet_pay_at(env, mother, "130200") == 1_000
    assert wallet_pay_at(env, mother, "130100") == 0
    assert env.wbal(mother) == 29_000


def test_a_late_use_place_note_cannot_undo_a_newer_one(env, monkeypatch):
    """Two changes race: the first one's note reaches the registry after the second's."""
    mother = holder(env)
    wallet = env.n.wallet.wallet
    overtaken: list[str] = []

    def overtaking(real: Note) -> Note:
        async def note(req: rpb.NoteWalletRequest) -> rpb.NoteWalletResponse:
            if req.use_place_admdvs == "130200" and not overtaken:
                overtaken.append(req.use_place_admdvs)
                await wallet.change_use_place(change_req(mother, "130300"))  # runs whole meanwhile
            return await real(req)
        return note

    intercept_notes(env, monkeypatch, "13", overtaking)
    env.w.ChangeUsePlace(change_req(mother, "130200"))
    monkeypatch.undo()
    assert overtaken and env.wallet(mother).wallet.use_place_admdvs == "130300"
    assert wallet_pay_at(env, mother, "130300") == 1_000
    assert wallet_pay_at(env, mother, "130200") == 0
    env.maintain()
    assert wallet_pay_at(env, mother, "130300") == 1_000


def test_an_opening_whose_note_failed_is_noted_without_a_resend(env, monkeypatch):
    son = env.person("13", bal=100_000)
    mother = env.person("13", itype=RESIDENT, birth="19550101")

    intercept_notes(env, monkeypatch, "13", failing)
    with pytest.raises(grpc.RpcError) as ei:
        env.open(mother, "13", "130100")
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    monkeypatch.undo()
    env.fund(son, "13", mother, 5_000)
    env.maintain()
    assert wallet_pay_at(env, mother, "130100") == 1_000


def test_a_status_change_before_the_late_note_reaches_the_wallet(env, monkeypatch):
    """Until the registry has the note it does not know of the wallet, so it tells the wallet of no
    status change: once the maintenance pass delivers the note, the wallet reads the status back."""
    son = env.person("13", bal=100_000)
    mother = env.person("13", itype=RESIDENT, birth="19550101")

    intercept_notes(env, monkeypatch, "13", failing)
    with pytest.raises(grpc.RpcError):
        env.open(mother, "13", "130100")
    monkeypatch.undo()
    env.fund(son, "13", mother, 5_000)
    env.set_status("13", mother, cpb.PERSON_STATUS_SUSPENDED)
    # The first pass delivers the note but cannot read the status back: the note stays due.
    wallet = env.n.wallet.wallet
    real = wallet.registries.person
    read_failed: list[str] = []

    async def person_once_unavailable(province: str, id_number: str) -> rpb.Person | None:
        if not read_failed:
            read_failed.append(id_number)
            raise errors.unavailable("REGISTRY_UNAVAILABLE", "the registry did not answer")
        return await real(province, id_number)

    monkeypatch.setattr(wallet.registries, "person", person_once_unavailable)
    env.maintain()
    monkeypatch.undo()
    assert read_failed == [mother]
    env.maintain()
    refused(FP, "OWNER_NOT_INSURED", env.w.SpendWallet, env.spend_req(mother, 1_000, place="130100"))
    assert env.wbal(mother) == 5_000


def test_a_status_change_while_the_opening_note_travels_reaches_the_wallet(env, monkeypatch):
    """The owner is suspended after the wallet checked them and before its note reached the
    registry: the registry, not knowing of a wallet yet, tells it nothing; the wallet reads the
    status back once its note is in."""
    mother = env.person("13", itype=RESIDENT, birth="19550101")
    registry = env.n.registries["13"].registry

    def suspending_first(real: Note) -> Note:
        async def note(req: rpb.NoteWalletRequest) -> rpb.NoteWalletResponse:
            await registry.update_status(rpb.UpdatePersonStatusRequest(
                request_id=rid("status"), id_number=mother, status=cpb.PERSON_STATUS_SUSPENDED))
            return await real(req)
        return note

    intercept_notes(env, monkeypatch, "13", suspending_first)
    env.open(mother, "13", "130100")
    monkeypatch.undo()
    # Refused for who she is, before what the wallet holds (it holds nothing: INSUFFICIENT_QUOTA else).
    refused(FP, "OWNER_NOT_INSURED", env.w.SpendWallet, env.spend_req(mother, 1_000, place="130100"))


def test_a_note_due_for_a_change_not_yet_written_stays_due(env, monkeypatch):
    """A change stalls after its note is due and before it writes the use-place; a maintenance pass
    runs meanwhile (another replica). The pass must not settle that note with the wallet as it was:
    the change is then written, its own note fails, and only a later pass can tell the registry."""
    mother = holder(env)
    wallet = env.n.wallet.wallet
    real_zadd = wallet.r.zadd
    stalled: list[bool] = []

    async def zadd_then_stall(name: Any, mapping: Any, *args: Any, **kwargs: Any) -> Any:
        done = await real_zadd(name, mapping, *args, **kwargs)
        if name == wallet.k.notes_due() and not stalled:
            stalled.append(True)
            await wallet.maintain()
        return done

    def failing_the_change(real: Note) -> Note:
        async def note(req: rpb.NoteWalletRequest) -> rpb.NoteWalletResponse:
            if req.use_place_admdvs == "130200":
                raise errors.unavailable("STORE_UNAVAILABLE", "the registry's store did not answer")
            return await real(req)
        return note

    monkeypatch.setattr(wallet.r, "zadd", zadd_then_stall)
    intercept_notes(env, monkeypatch, "13", failing_the_change)
    with pytest.raises(grpc.RpcError):
        env.w.ChangeUsePlace(change_req(mother, "130200"))
    monkeypatch.undo()
    assert stalled
    env.maintain()
    assert wallet_pay_at(env, mother, "130200") == 1_000


def test_an_opening_that_lost_the_race_leaves_no_note_due(env, national, loop_thread, monkeypatch):
    """Two openings of one person's wallet with different request ids: the one that finds the wallet
    opened meanwhile (after it read none) is refused WALLET_EXISTS and writes nothing, not even a
    note the registry would be owed for a wallet it did not open."""
    owner = env.person("13", itype=RESIDENT, birth="19550101")
    wallet = national.wallet.wallet
    first, second = env.open_req(owner, "13"), env.open_req(owner, "13")
    read = wallet._wallet_row
    raced: list[str] = []

    async def read_then_the_other_opens(o: str) -> dict[str, str]:
        row = await read(o)
        if not raced:  # the second read no wallet; the first opens it before the second writes
            raced.append("")
            raced[0] = (await wallet.open_wallet(first)).wallet.owner_id_number
        return row

    monkeypatch.setattr(wallet, "_wallet_row", read_then_the_other_opens)
    with pytest.raises(errors.DomainError) as err:
        loop_thread.run(wallet.open_wallet(second))
    assert raced == [owner] and err.value.reason == "WALLET_EXISTS"
    due = [m.decode() for m in env.rdb.zrange(wallet.k.notes_due(), 0, -1)]
    assert f"{owner}|{second.request_id}" not in due, due
    assert env.wallet(owner).wallet.owner_id_number == owner


def test_an_opening_that_lost_the_race_never_writes_a_note_due(env, national, loop_thread, monkeypatch):
    """The opening that finds the wallet opened by another request after it read none writes no
    note-due entry even for a moment: one written and then taken back would stay behind for a while
    should the request stop in between."""
    owner = env.person("13", itype=RESIDENT, birth="19550101")
    wallet = national.wallet.wallet
    first, second = env.open_req(owner, "13"), env.open_req(owner, "13")
    read = wallet._wallet_row
    raced: list[str] = []
    written: list[str] = []

    async def read_then_the_other_opens(o: str) -> dict[str, str]:
        row = await read(o)
        if not raced:
            raced.append("")
            await wallet.open_wallet(first)
            written.clear()  # from here on, only the losing request writes
        return row

    real_pipeline = wallet.r.pipeline

    def recording_pipeline(*args: Any, **kwargs: Any) -> Any:
        p = real_pipeline(*args, **kwargs)
        real_zadd = p.zadd

        def zadd(name: Any, mapping: Any, *a: Any, **kw: Any) -> Any:
            if name == wallet.k.notes_due():
                written.extend(mapping)
            return real_zadd(name, mapping, *a, **kw)
        p.zadd = zadd
        return p

    monkeypatch.setattr(wallet, "_wallet_row", read_then_the_other_opens)
    monkeypatch.setattr(wallet.r, "pipeline", recording_pipeline)
    with pytest.raises(errors.DomainError) as err:
        loop_thread.run(wallet.open_wallet(second))
    assert raced and err.value.reason == "WALLET_EXISTS"
    assert f"{owner}|{second.request_id}" not in written, written


def test_a_status_change_that_meets_a_busy_wallet_hears_wallet_busy_in_time(env):
    """The wallet waits for the owner's status lock until shortly before the registry's deadline, then
    answers WALLET_BUSY: an answer given after that wait, which no retry inside the same deadline can
    change. The registry's caller hears WALLET_BUSY (UNAVAILABLE, resend later) before its deadline,
    not "the wallet did not answer"; the resend of the same request id once the lock is free is noted."""
    mother = holder(env)
    lock, _ = FencedLocks.keys(WalletKeys().wallet_tag(mother) + ":status")
    env.rdb.set(lock, "another-replica:1", px=60_000)
    req = rpb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=mother,
                                        status=cpb.PERSON_STATUS_SUSPENDED)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        env.reg("13").UpdatePersonStatus(req, timeout=3)
    elapsed = time.monotonic() - started
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.UNAVAILABLE, "WALLET_BUSY"), ei.value.details()
    assert elapsed < 3, elapsed
    env.rdb.delete(lock)
    env.reg("13").UpdatePersonStatus(req, timeout=5)
    refused(FP, "OWNER_NOT_INSURED", env.w.SpendWallet, env.spend_req(mother, 1_000, place="130100"))
