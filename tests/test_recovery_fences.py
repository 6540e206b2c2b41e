"""A request stalled past the recovery grace before its lock, with real processes (SPEC §7).

Two 福建 registry replicas on one Redis; registry-35#2's recovery loop runs with a 1 s grace.
registry-35#1, armed with `stop:<a>,<b>`, writes a flow's recovery entry and is SIGSTOPped at `a`,
before it takes the lock the flow's effects are fenced by. The loop finds no effect under that
lock and drops the entry. registry-35#1, resumed, writes the effect and SIGKILLs itself at `b`,
before it finishes. The recovery loop alone (no resend) must finish the flow: every fen where it
belongs, nothing in flight, money conserved to the fen.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from fujian_replicas import OPEN, Env, T, process_state, started
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc
from support import FACE, RESIDENT, rid

pytestmark = pytest.mark.slow

# registry-35#2's recovery grace: long enough that on a loaded machine the test still sees the entry
# a stalled request announced before the loop drops it.
GRACE_MS = 3_000


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    yield from started(Env, {"registry-35#2": {"MEDAID_RECOVERY_GRACE_MS": str(GRACE_MS)}})


@dataclass
class Fam:
    fid: str
    creator: str
    son: str
    aunt: str


def family(env: Env) -> Fam:
    """A 福建 family account: the creator (¥3,200) put ¥1,000 in, the son (¥3,000) ¥500."""
    s = env.stub()
    creator, son = env.enroll(320_000), env.enroll(300_000, birth="19900101")
    aunt = env.enroll(itype=RESIDENT, birth="19600101")
    fid = s.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE, initial_transfer_fen=100_000),
        timeout=T).account.family_id
    s.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                           member_id_number=son, relation=cpb.RELATION_CHILD), timeout=T)
    s.RespondToInvitation(fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=fid, member_id_number=son,
                                                         accept=True, verification=FACE), timeout=T)
    s.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
        request_id=rid("hb"), family_id=fid, contributor_id_number=son, amount_fen=50_000), timeout=T)
    return Fam(fid, creator, son, aunt)


def _wait(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def stall_then_crash(env: Env, stall: str, crash: str, entry: str,
                     call: Callable[[pb_grpc.RegistryServiceStub], Any]) -> None:
    """registry-35#1 takes `call` (sent once), stops at `stall` with `entry` written; once the loop has
    dropped the entry it is resumed and kills itself at `crash`."""
    env.restart("registry-35#1", {"MEDAID_FAULT": f"stop:{stall},{crash}"})
    proc = env.topo.services["registry-35#1"].proc
    stub = env.stub("registry-35#1", retries=False)
    with env.redis() as r, concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(call, stub)
        try:
            assert _wait(lambda: process_state(proc.pid), lambda s: s == "T", 10) == "T", sent
            assert r.zscore(OPEN, entry) is not None, f"{entry} was not announced before {stall}"
            assert _wait(lambda: r.zscore(OPEN, entry), lambda v: v is None, GRACE_MS / 1000 + 15) is None
            proc.send_signal(signal.SIGCONT)
            with pytest.raises(grpc.RpcError) as err:
                sent.result(timeout=2 * T)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        finally:
            proc.send_signal(signal.SIGCONT)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL, f"registry-35#1 should have died at {crash}"
    env.restart("registry-35#1", {})


# Each flow: (stall point, crash point, its recovery entry, the call, what holds once finished).
def _leave(env: Env, f: Fam, op: str) -> tuple[str, Callable[..., Any], Callable[[], Any], Any]:
    return (f"L|{f.fid}|{op}",
            lambda s: s.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(
                request_id=op, family_id=f.fid, member_id_number=f.son), timeout=3 * T),
            lambda: (env.balance(f.son), env.account(f.fid).balance_fen), (300_000, 100_000))


def _dissolve(env: Env, f: Fam, op: str) -> tuple[str, Callable[..., Any], Callable[[], Any], Any]:
    return (f"L|{f.fid}|{op}",
            lambda s: s.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(
                request_id=op, family_id=f.fid, creator_id_number=f.creator), timeout=3 * T),
            lambda: (env.balance(f.creator), env.balance(f.son), env.account(f.fid).balance_fen),
            (320_000, 300_000, 0))


def _withdraw(env: Env, f: Fam, op: str) -> tuple[str, Callable[..., Any], Callable[[], Any], Any]:  # 回拨
    return (f"L|{f.fid}|{op}",
            lambda s: s.WithdrawContribution(fpb.WithdrawContributionRequest(
                request_id=op, family_id=f.fid, contributor_id_number=f.creator), timeout=3 * T),
            lambda: (env.balance(f.creator), env.account(f.fid).balance_fen), (320_000, 50_000))


def _transfer(env: Env, f: Fam, op: str) -> tuple[str, Callable[..., Any], Callable[[], Any], Any]:  # 划拨
    daughter = env.enroll(300_000, birth="19920101")
    s = env.stub()
    s.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=f.fid, creator_id_number=f.creator,
                                           member_id_number=daughter, relation=cpb.RELATION_CHILD), timeout=T)
    s.RespondToInvitation(fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=f.fid,
                                                         member_id_number=daughter, accept=True, verification=FACE),
                          timeout=T)
    return (f"X|{daughter}|{op}",
            lambda s: s.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
                request_id=op, family_id=f.fid, contributor_id_number=daughter, amount_fen=30_000), timeout=3 * T),
            lambda: (env.balance(daughter), env.account(f.fid).balance_fen), (270_000, 180_000))


def _create(env: Env, f: Fam, op: str) -> tuple[str, Callable[..., Any], Callable[[], Any], Any]:  # initial 划拨
    daughter = env.enroll(300_000, birth="19920101")

    def created() -> tuple[int, int | None]:  # the account is written with its money, or not at all
        try:
            account = env.stub().GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=daughter), timeout=T).account
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return env.balance(daughter), None
        return env.balance(daughter), account.balance_fen

    return (f"X|{daughter}|{op}|init",
            lambda s: s.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
                request_id=op, creator_id_number=daughter, commitment=FACE, initial_transfer_fen=20_000),
                timeout=3 * T),
            created, (280_000, 20_000))


def _premium(s: pb_grpc.RegistryServiceStub, f: Fam, op: str) -> Any:
    return s.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=op, payer_id_number=f.creator, payee_id_number=f.aunt, relation=cpb.RELATION_SIBLING,
        year="2027", source=ppb.PREMIUM_SOURCE_ACCOUNT), timeout=3 * T)


def _premium_state(env: Env, f: Fam) -> str:
    with env.redis() as r:
        return (r.hget(Keys("35").premium(f.aunt, "2027"), "state") or b"").decode()


def _pay(env: Env, f: Fam, op: str) -> tuple[str, Callable[..., Any], Callable[[], Any], Any]:  # 代缴
    return (f"P|{f.aunt}|2027|{op}", lambda s: _premium(s, f, op),
            lambda: (env.balance(f.creator), _premium_state(env, f)), (220_000 - 40_000, "PAID"))


def _cancel(env: Env, f: Fam, op: str) -> tuple[str, Callable[..., Any], Callable[[], Any], Any]:
    _premium(env.stub(), f, rid("prem"))
    return (f"P|{f.aunt}|2027|{op}",
            lambda s: s.CancelResidentPremium(ppb.CancelResidentPremiumRequest(
                request_id=op, payee_id_number=f.aunt, year="2027"), timeout=3 * T),
            lambda: (env.balance(f.creator), _premium_state(env, f)), (220_000, "CANCELLED"))


FLOWS = {
    "leave": (_leave, "family.after_entry", "family.after_end"),
    "dissolve": (_dissolve, "family.after_entry", "family.after_end"),
    "withdraw": (_withdraw, "family.after_entry", "family.after_end"),
    "transfer": (_transfer, "family.after_transfer_entry", "family.after_debit"),
    "create": (_create, "family.after_transfer_entry", "family.after_debit"),
    "pay": (_pay, "premium.after_entry", "premium.after_debit"),
    "cancel": (_cancel, "premium.after_entry", "premium.after_cancel_refund"),
}


@pytest.mark.parametrize("flow", list(FLOWS))
def test_flow_stalled_before_its_lock_past_the_grace_is_finished_by_recovery(env, flow):
    make, stall, crash = FLOWS[flow]
    f = family(env)
    entry, call, read, want = make(env, f, rid(flow))
    stall_then_crash(env, stall, crash, entry, call)
    # The recovery loop alone: the dead holder's lock expires (LOCKS), then the loop finishes the flow.
    assert _wait(read, lambda v: v == want, GRACE_MS / 1000 + 25) == want
    env.settled()


def test_status_change_stalled_past_the_grace_then_dead_after_writing_is_finished_by_recovery(env):
    """A TERMINATED status change: registry-35#1 announces it and stops before writing it; the loop finds no
    such event and drops the entry; resumed, registry-35#1 writes the status and dies at once. The loop
    alone ends what a termination ends: the son's family membership, his share back in his account."""
    f = family(env)
    op = rid("term")
    stall_then_crash(env, "status.after_entry", "status.after_write", f"E|{f.son}|status|{op}|TERMINATED>",
                     lambda s: s.UpdatePersonStatus(pb.UpdatePersonStatusRequest(
                         request_id=op, id_number=f.son, status=cpb.PERSON_STATUS_TERMINATED), timeout=3 * T))

    def shares() -> tuple[int, int]:
        return env.balance(f.son), env.account(f.fid).balance_fen

    assert _wait(shares, lambda v: v == (300_000, 100_000), GRACE_MS / 1000 + 25) == (300_000, 100_000)
    env.settled()
