"""A seeded money soak: every money-moving flow at once, resends, and crashes, then the SPEC §7 audit.

Separate OS processes (registries 13 河北 / 11 北京 / 62 甘肃 / 35 福建, the wallet, the router) on one Redis
(AOF appendfsync always). Worker threads drive, through their real gRPC APIs: 2207 settlements through
the router (own account, wallet, bound helpers, the 甘肃 family account), 2208 reversals and 2601 undo,
wallet transfers, accepts, onward transfers, spends and refunds, 划拨 and leaving a family account,
代缴 and its cancellation (also from a family account: one's own, a 福建 临时成员's), moves, suspensions,
terminations, re-activation and death, dated status changes and moves sent out of order and repeated,
亲情账户 additions racing a side's death, onward transfers racing the end of the relationship their quota
came by, and resends of request ids (the same request, and with a field changed). A fault thread
meanwhile kills -9 registries and the wallet (now and then armed to kill themselves at a saga step) and
the Redis itself (with --cluster: kills -9 masters, which fail over, and moves slots live).

After quiescing (every process up, recovery indexes drained) it checks: money conserved to the fen
(`medaid.bench.money`), no negative balance, no claim PENDING, no recovery entry left, each person's
newest event date the newest dated event answered, no 亲情账户 of a dead person; then, with every process
(and the Redis) restarted, every answered request id answering the same again, a reused id with another
field refused IDEMPOTENCY_KEY_REUSED, and not a fen moved by those resends.

    PYTHONPATH=services:tests .venv/bin/python tests/soak_money.py --seed 1 --duration 120 [--cluster]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from medaid.bench import money
from medaid.common.clock import SHANGHAI
from medaid.common.errors import error_info
from medaid.common.redis_client import scan_keys, sync_client
from medaid.common.redis_server import RedisCluster, RedisServer
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from medaid.wallet.keys import WalletKeys
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from support import EMPLOYEE, FACE, RESIDENT, Timeline, new_id

ROOT = Path(__file__).resolve().parents[1]
T = 8.0
RETRY_S = 60.0
PROVINCES = ("13", "11", "62", "35")
PLACE = {"13": "130100", "11": "110000", "62": "620100", "35": "350200"}
DIVISION = {"13": "130102", "11": "110105", "62": "620102", "35": "350203"}
INST = {"13": pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100"),
        "62": pb.Institution(fixmedins_code="H62010000001", mdtrtarea_admvs="620100"),
        "35": pb.Institution(fixmedins_code="H35020000001", mdtrtarea_admvs="350200")}
YEAR = "2027"  # the insurance year whose 代缴 window (2026-09-01 … 12-31) holds the demo clock
NOT_PAYABLE = (cpb.CATEGORY_FITNESS, cpb.CATEGORY_RESIDENT_PREMIUM, cpb.CATEGORY_CASH_WITHDRAWAL)
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED,
       grpc.StatusCode.DATA_LOSS}
REGISTRY_POINTS = ["settle.after_claim", "settle.after_own_debit", "settle.after_wallet_debit",
                   "settle.after_helper_debit", "settle.after_finish", "settle.before_apply",
                   "reverse.after_begin", "reverse.after_claim", "reverse.after_helper_refund",
                   "reverse.before_withdraw", "reverse.after_finish", "undo.after_begin", "undo.after_claim",
                   "undo.before_withdraw", "family.after_debit", "family.after_credit", "family.before_charge",
                   "family.after_end", "family.after_payout", "family.after_transfer_entry",
                   "premium.after_debit", "premium.after_entry", "premium.after_cancel_refund",
                   "premium.after_open", "death.after_entry", "death.after_payout", "death.after_wallet",
                   "death.after_status", "status.after_entry", "status.after_write", "move.after_entry",
                   "flow.before_answer", "proxy.before_write", "proxy.after_write",
                   "premium.before_open", "bind.after_write", "recovery.before_drop", "recovery.mid_drop",
                   "recovery.claim_checked"]
WALLET_POINTS = ["transfer.after_reserve", "transfer.after_debit", "transfer.after_pending",
                 "transfer.after_create", "transfer.after_refund", "accept.after_claim", "accept.after_credit",
                 "release.after_lots", "release.after_transfers", "refund.after_index", "expire.after_refund",
                 "expire.after_returning"]


@dataclass
class Answer:
    ok: bool
    resp: Any = None
    code: str = ""
    reason: str = ""


@dataclass
class Op:
    """An answered request: what was sent, where, and its first answer (a success)."""
    kind: str
    target: str  # service name: router, wallet, registry-13 …
    method: str
    req: Any
    first: Any
    changed: Any = None  # the same id with a field changed (None: not checked for this kind)


@dataclass
class World:
    hb_members: list[str] = field(default_factory=list)
    hb_helpers: dict[str, list[str]] = field(default_factory=dict)
    senders: list[str] = field(default_factory=list)  # 北京 employees with wallets
    recipients: list[str] = field(default_factory=list)  # 河北 members' wallets (use-place 130100)
    families: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (fid, creator, members)
    # 福建 (35): (fid, creator, temporary member, child member)
    fj_families: list[tuple[str, str, str, str]] = field(default_factory=list)
    proxies: list[tuple[str, str]] = field(default_factory=list)  # (holder, relative) answered added
    payees: list[tuple[str, str]] = field(default_factory=list)  # (payer employee 13, payee resident 13)
    transfers: list[tuple[str, str]] = field(default_factory=list)  # (transfer id, recipient)
    settlements: list[tuple[str, pb.SettleRequest, pb.SetlInfo]] = field(default_factory=list)
    reversals: list[tuple[str, pb.ReverseSettlementRequest]] = field(default_factory=list)
    spends: list[tuple[str, str]] = field(default_factory=list)  # (spend id, owner)
    premiums: list[tuple[str, str, str]] = field(default_factory=list)  # (payer, payee, year)
    dead: set[str] = field(default_factory=set)
    dead_where: dict[str, str] = field(default_factory=dict)  # who died → their province
    # Dated status changes and moves (occurred_at_unix_ms): every date sent and the newest answered ok,
    # per (province, person).
    dates_sent: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    dates_ok: dict[tuple[str, str], int] = field(default_factory=dict)
    undone: set[str] = field(default_factory=set)  # msgids a 2601 reached (their replays may be refused)


class Soak:
    def __init__(self, seed: int, duration: float, workers: int, faults: bool, verbose: bool,
                 cluster: bool = False) -> None:
        self.seed, self.duration, self.workers, self.faults, self.verbose = seed, duration, workers, faults, verbose
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.timeline = Timeline()
        self.topo = Topology.start(PROVINCES, gateway=False, clock=DEMO_CLOCK, recovery_grace_ms=1000,
                                   wallet_policy=str(ROOT / "deploy/policies/wallet-bench.toml"), metrics=False,
                                   log_level="WARNING", cluster=cluster, cluster_masters=3, cluster_replicas=1,
                                   cluster_node_timeout_ms=2000)
        assert isinstance(self.topo.redis, RedisCluster if cluster else RedisServer)
        self.r = sync_client(self.topo.redis.url)
        self.lock = threading.Lock()  # guards `world`, `ops`, `violations`, `_channels`
        self.world = World()
        self.ops: list[Op] = []
        self.violations: list[str] = []
        self.counts: dict[str, int] = {}
        self._channels: dict[tuple[str, int], grpc.Channel] = {}
        self._seq = 0
        self.stop = threading.Event()
        self.restart_lock = threading.Lock()
        self.credited = 0

    # ---- plumbing -------------------------------------------------------------------------------

    def rid(self, prefix: str) -> str:
        with self.lock:
            self._seq += 1
            return f"s{self.seed}-{prefix}-{self._seq:07d}"

    def msgid(self, prov: str) -> str:
        with self.lock:
            self._seq += 1
            n = self._seq
        return f"{INST[prov].fixmedins_code}{self.seed % 10**6:06d}{n:012d}"

    def channel(self, name: str) -> grpc.Channel:
        svc = self.topo.services[name]
        key = (name, svc.proc.pid)
        with self.lock:
            if key not in self._channels:
                self._channels[key] = grpc.insecure_channel(self.topo.address(name))
            return self._channels[key]

    def stub(self, name: str) -> Any:
        ch = self.channel(name)
        if name == "router":
            return pb_grpc.RouterServiceStub(ch)
        if name == "wallet":
            return wpb_grpc.WalletServiceStub(ch)
        return rpb_grpc.RegistryServiceStub(ch)

    def call(self, target: str, method: str, req: Any, *, retry_s: float = RETRY_S) -> Answer:
        """Send until an answer (a client resends the same request while nothing answered)."""
        deadline = time.monotonic() + retry_s
        while True:
            try:
                resp = getattr(self.stub(target), method)(req, timeout=T)
                return Answer(True, resp)
            except grpc.RpcError as exc:
                info = error_info(exc)
                why = info.reason if info is not None else ""
                if exc.code() in BAD:
                    self.violation(f"{target}.{method} answered {exc.code().name} {why}: {exc.details()}")
                    return Answer(False, code=exc.code().name, reason=why)
                if exc.code() in RETRYABLE and time.monotonic() < deadline:
                    time.sleep(0.05 + self.rng.random() * 0.2)
                    continue
                return Answer(False, code=exc.code().name, reason=why)

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)
        print("VIOLATION:", text, flush=True)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def answered(self, kind: str, target: str, method: str, req: Any, changed: Any = None) -> Answer:
        a = self.call(target, method, req)
        self.count(f"{kind}:{'ok' if a.ok else a.code + '/' + a.reason}")
        if a.ok:
            with self.lock:
                self.ops.append(Op(kind, target, method, req, a.resp, changed))
        return a

    # ---- population -----------------------------------------------------------------------------

    def person(self, prov: str, *, itype: int = EMPLOYEE, bal: int = 0, birth: str = "19800101") -> str:
        pid = new_id(DIVISION[prov], birth)
        a = self.call(f"registry-{prov}", "EnrollPerson", rpb.EnrollPersonRequest(
            request_id=self.rid("enroll"), id_number=pid, name="张三", insurance_type=itype,
            pooling_region=PLACE[prov]))
        assert a.ok, a
        if bal:
            self.credit(prov, pid, bal)
        return pid

    def credit(self, prov: str, pid: str, amount: int) -> None:
        req = rpb.CreditAccountRequest(request_id=self.rid("credit"), id_number=pid, amount_fen=amount,
                                       kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
        changed = rpb.CreditAccountRequest()
        changed.CopyFrom(req)
        changed.amount_fen += 1
        a = self.answered("credit", f"registry-{prov}", "CreditAccount", req, changed)
        if a.ok:
            with self.lock:
                self.credited += amount

    def open_wallet(self, owner: str, prov: str) -> None:
        a = self.call("wallet", "OpenWallet", wpb.OpenWalletRequest(
            request_id=self.rid("open"), owner_id_number=owner, province=prov, use_place_admdvs=PLACE[prov],
            real_name=FACE))
        assert a.ok, a

    def populate(self, groups: int) -> None:
        w = self.world
        for _ in range(groups):
            member = self.person("13", bal=self.rng.randint(0, 5_000))
            helpers = [self.person("13", bal=self.rng.randint(5_000, 80_000)) for _ in range(2)]
            for h, rel in zip(helpers, (cpb.RELATION_SPOUSE, cpb.RELATION_CHILD), strict=True):
                a = self.call("registry-13", "BindMutualAid", rpb.BindMutualAidRequest(
                    request_id=self.rid("bind"), helper_id_number=h, member_id_number=member, relation=rel,
                    member_verification=FACE))
                assert a.ok, a
            w.hb_members.append(member)
            w.hb_helpers[member] = helpers
            sender = self.person("11", bal=400_000)
            self.open_wallet(member, "13")
            self.open_wallet(sender, "11")
            w.senders.append(sender)
            w.recipients.append(member)
            payee = self.person("13", itype=RESIDENT, birth="19550101")
            w.payees.append((helpers[0], payee))
            # 甘肃: a family account, its creator and a child member
            creator = self.person("62", bal=self.rng.randint(30_000, 120_000))
            kid = self.person("62", itype=RESIDENT, birth="20150101")
            a = self.call("registry-62", "CreateFamilyAccount", fpb.CreateFamilyAccountRequest(
                request_id=self.rid("fam"), creator_id_number=creator, commitment=FACE,
                initial_transfer_fen=10_000))
            assert a.ok, a
            fid = a.resp.account.family_id
            a = self.call("registry-62", "InviteMember", fpb.InviteMemberRequest(
                request_id=self.rid("inv"), family_id=fid, creator_id_number=creator, member_id_number=kid,
                relation=cpb.RELATION_CHILD))
            assert a.ok, a
            w.families.append((fid, creator, [kid]))
            # 福建: a family account with a 临时成员 (its account pays only their resident premium) and a child
            fj_creator = self.person("35", bal=700_000)
            aunt = self.person("35", itype=RESIDENT, birth="19600101")
            fj_kid = self.person("35", itype=RESIDENT, birth="20160101")
            a = self.call("registry-35", "CreateFamilyAccount", fpb.CreateFamilyAccountRequest(
                request_id=self.rid("fam"), creator_id_number=fj_creator, commitment=FACE,
                initial_transfer_fen=300_000))
            assert a.ok, a
            fj_fid = a.resp.account.family_id
            for who, rel, temp in ((aunt, cpb.RELATION_SIBLING, True), (fj_kid, cpb.RELATION_CHILD, False)):
                a = self.call("registry-35", "InviteMember", fpb.InviteMemberRequest(
                    request_id=self.rid("inv"), family_id=fj_fid, creator_id_number=fj_creator,
                    member_id_number=who, relation=rel, temporary=temp))
                assert a.ok, a
            w.fj_families.append((fj_fid, fj_creator, aunt, fj_kid))

    # ---- operations -----------------------------------------------------------------------------

    def op_settle(self) -> None:
        w = self.world
        prov = self.rng.choice(["13", "13", "62"])
        if prov == "13":
            patient = self.rng.choice(w.hb_members)
        else:
            _, creator, members = self.rng.choice(w.families)
            patient = self.rng.choice([creator, *members])
        amount = self.rng.choice([self.rng.randint(1, 3_000), self.rng.randint(3_000, 40_000)])
        req = pb.SettleRequest(msgid=self.msgid(prov), institution=INST[prov], input=pb.SettleInput(
            psn_no=patient, psn_part_amt_fen=amount, medfee_sumamt_fen=amount,
            acct_used_flag=self.rng.choice(["1", "1", "1", "0"]), category=cpb.CATEGORY_OUTPATIENT,
            mdtrt_id=self.rid("visit")))
        changed = pb.SettleRequest()
        changed.CopyFrom(req)
        if self.rng.random() < 0.5:
            changed.input.psn_part_amt_fen += 1
            changed.input.medfee_sumamt_fen += 1
        else:  # the category is judged after the id's claim: a reused id is refused as reused
            changed.input.category = self.rng.choice(NOT_PAYABLE)
        if self.rng.random() < 0.05:  # a category no account pays: refused, nothing written
            req.input.category = self.rng.choice(NOT_PAYABLE)
            a = self.answered("2207_not_payable", "router", "Settle", req)
            if a.ok:
                self.violation(f"2207 of category {req.input.category} answered ok: {_short(a.resp)}")
            return
        a = self.answered("2207", "router", "Settle", req, changed)
        if a.ok:
            with self.lock:
                w.settlements.append((prov, req, a.resp.setlinfo))
            if self.rng.random() < 0.2:  # an at-once resend of the same message
                b = self.call("router", "Settle", req)
                if b.ok and b.resp != a.resp:
                    self.violation(f"2207 {req.msgid} resend answered differently: {a.resp} vs {b.resp}")

    def op_reverse(self) -> None:
        w = self.world
        with self.lock:
            if not w.settlements:
                return
            prov, sreq, info = self.rng.choice(w.settlements)
        req = pb.ReverseSettlementRequest(msgid=self.msgid(prov), institution=INST[prov], setl_id=info.setl_id,
                                          psn_no=sreq.input.psn_no)
        a = self.answered("2208", "router", "ReverseSettlement", req)
        if a.ok:
            with self.lock:
                w.reversals.append((prov, req))

    def op_undo(self) -> None:
        w = self.world
        with self.lock:
            pick = self.rng.random()
            if pick < 0.6 and w.settlements:
                prov, sreq, _ = self.rng.choice(w.settlements)
                omsgid, oinfno, psn = sreq.msgid, "2207", sreq.input.psn_no
            elif w.reversals:
                prov, rreq = self.rng.choice(w.reversals)
                omsgid, oinfno, psn = rreq.msgid, "2208", rreq.psn_no
            else:
                return
            w.undone.add(omsgid)
        req = pb.UndoRequest(msgid=self.msgid(prov), institution=INST[prov], psn_no=psn, omsgid=omsgid,
                             oinfno=oinfno)
        self.answered("2601", "router", "Undo", req)

    def op_transfer(self) -> None:
        w = self.world
        i = self.rng.randrange(len(w.senders))
        onward = self.rng.random() < 0.3
        if onward:
            sender = w.recipients[i]
            recipient = w.recipients[(i + 1) % len(w.recipients)]
            sreq = wpb.CreateTransferRequest(
                request_id=self.rid("xfer"), sender_id_number=sender, sender_province="13",
                recipient_id_number=recipient, relation=cpb.RELATION_SIBLING,
                amount_fen=self.rng.randint(1, 5_000), verification=FACE, source=wpb.TRANSFER_SOURCE_WALLET)
        else:
            sender, recipient = w.senders[i], w.recipients[i]
            sreq = wpb.CreateTransferRequest(
                request_id=self.rid("xfer"), sender_id_number=sender, sender_province="11",
                recipient_id_number=recipient, relation=cpb.RELATION_CHILD,
                amount_fen=self.rng.randint(100, 30_000), verification=FACE)
        changed = wpb.CreateTransferRequest()
        changed.CopyFrom(sreq)
        changed.amount_fen += 1
        a = self.answered("transfer", "wallet", "CreateTransfer", sreq, changed)
        if not a.ok:
            return
        tid = a.resp.transfer.transfer_id
        with self.lock:
            w.transfers.append((tid, recipient))
        if self.rng.random() < 0.85:
            self.accept(tid, recipient)

    def accept(self, tid: str, recipient: str) -> None:
        self.answered("accept", "wallet", "AcceptTransfer", wpb.AcceptTransferRequest(
            request_id=self.rid("acc"), transfer_id=tid, recipient_id_number=recipient))

    def op_accept_late(self) -> None:
        with self.lock:
            if not self.world.transfers:
                return
            tid, recipient = self.rng.choice(self.world.transfers)
        self.accept(tid, recipient)

    def op_spend(self) -> None:
        w = self.world
        owner = self.rng.choice(w.recipients)
        req = wpb.SpendWalletRequest(request_id=self.rid("spend"), owner_id_number=owner,
                                     amount_fen=self.rng.randint(1, 6_000), category=cpb.CATEGORY_PHARMACY,
                                     spending_admdvs="130100")
        changed = wpb.SpendWalletRequest()
        changed.CopyFrom(req)
        changed.amount_fen += 1
        a = self.answered("spend", "wallet", "SpendWallet", req, changed)
        if a.ok:
            with self.lock:
                w.spends.append((req.request_id, owner))

    def op_refund(self) -> None:
        with self.lock:
            if not self.world.spends:
                return
            sid, owner = self.rng.choice(self.world.spends)
        self.answered("spend_refund", "wallet", "RefundWalletSpend", wpb.RefundWalletSpendRequest(
            request_id=self.rid("sref"), spend_id=sid, owner_id_number=owner))

    def op_family(self) -> None:
        fid, creator, members = self.rng.choice(self.world.families)
        roll = self.rng.random()
        if roll < 0.7:
            req = fpb.TransferIntoFamilyAccountRequest(request_id=self.rid("hb"), family_id=fid,
                                                       contributor_id_number=creator,
                                                       amount_fen=self.rng.randint(1, 20_000))
            changed = fpb.TransferIntoFamilyAccountRequest()
            changed.CopyFrom(req)
            changed.amount_fen += 1
            self.answered("huabo", "registry-62", "TransferIntoFamilyAccount", req, changed)
        elif roll < 0.85 and members:
            kid = members[0]
            self.answered("leave", "registry-62", "LeaveFamilyAccount", fpb.LeaveFamilyAccountRequest(
                request_id=self.rid("leave"), family_id=fid, member_id_number=kid))
        elif members:
            kid = members[0]
            self.answered("reinvite", "registry-62", "InviteMember", fpb.InviteMemberRequest(
                request_id=self.rid("inv"), family_id=fid, creator_id_number=creator, member_id_number=kid,
                relation=cpb.RELATION_CHILD))

    def op_premium(self) -> None:
        w = self.world
        payer, payee = self.rng.choice(w.payees)
        year = self.rng.choice(["2027", "2026"])
        if self.rng.random() < 0.6:
            src = self.rng.choice([ppb.PREMIUM_SOURCE_ACCOUNT, ppb.PREMIUM_SOURCE_ACCOUNT,
                                   ppb.PREMIUM_SOURCE_WALLET])
            if src == ppb.PREMIUM_SOURCE_WALLET:
                payer = w.recipients[w.payees.index((payer, payee))]
            req = ppb.PayResidentPremiumRequest(request_id=self.rid("prem"), payer_id_number=payer,
                                                payee_id_number=payee, relation=cpb.RELATION_PARENT,
                                                year=year, source=src)
            a = self.answered("premium", "registry-13", "PayResidentPremium", req)
            if a.ok:
                with self.lock:
                    w.premiums.append((payer, payee, year))
        else:
            self.answered("premium_cancel", "registry-13", "CancelResidentPremium", ppb.CancelResidentPremiumRequest(
                request_id=self.rid("pcan"), payee_id_number=payee, year=year, payer_id_number=payer))

    def op_life(self) -> None:
        w = self.world
        roll = self.rng.random()
        if roll < 0.3:
            member = self.rng.choice(w.hb_members)
            who = self.rng.choice([member, *w.hb_helpers[member]])
            region = self.rng.choice(["130100", "130200"])
            self.life_event("13", who, region=region, at=self.event_at() if self.rng.random() < 0.5 else 0)
        elif roll < 0.7:
            prov = self.rng.choice(["13", "11"])
            pool = w.senders if prov == "11" else [p for m in w.hb_members for p in (m, *w.hb_helpers[m])]
            who = self.rng.choice(pool)
            if who in w.dead:
                return
            status = self.rng.choice([cpb.PERSON_STATUS_SUSPENDED, cpb.PERSON_STATUS_TERMINATED,
                                      cpb.PERSON_STATUS_ACTIVE, cpb.PERSON_STATUS_ACTIVE])
            at = self.event_at() if self.rng.random() < 0.5 else 0
            a = self.life_event(prov, who, status=status, at=at)
            if a.ok and status != cpb.PERSON_STATUS_TERMINATED and self.rng.random() < 0.4:
                # the same status again (another request id; the same date or none): answered, nothing written
                self.life_event(prov, who, status=status, at=at, kind="status_repeat")
        elif roll < 0.75:  # either side ends a wallet relationship: the sender's unspent lots go back
            i = self.rng.randrange(len(w.senders))
            sender, holder = w.senders[i], w.recipients[i]
            self.answered("end_wallet", "wallet", "EndWalletRelationship", wpb.EndWalletRelationshipRequest(
                request_id=self.rid("endw"), sender_id_number=sender, holder_id_number=holder,
                requested_by_id_number=self.rng.choice([sender, holder])))
        elif roll < 0.8:
            member = self.rng.choice(w.hb_members)
            who = w.hb_helpers[member][1]
            if who in w.dead:
                return
            a = self.answered("death", "registry-13", "RecordDeath", rpb.RecordDeathRequest(
                request_id=self.rid("death"), id_number=who, heir_id_number=member, heir_name="李四",
                date_of_death="20261120"))
            if a.ok:
                with self.lock:
                    w.dead.add(who)
        else:
            prov = self.rng.choice(["13", "11", "62"])
            pid = (self.rng.choice(w.hb_members) if prov == "13" else self.rng.choice(w.senders) if prov == "11"
                   else self.rng.choice(w.families)[1])
            self.credit(prov, pid, self.rng.randint(1, 50_000))

    # ---- dated life events, 亲情账户 racing deaths, onward transfers racing ends, family 代缴 ------------

    def event_at(self) -> int:
        """A date the province's source system gives an event: up to 10 minutes ago (so events of one
        person often arrive out of the order they happened)."""
        return self.timeline.now_ms() - self.rng.randint(0, 600_000)

    def life_event(self, prov: str, who: str, *, status: int = 0, region: str = "", at: int = 0,
                   kind: str = "") -> Answer:
        """A status change (`status`) or a move (`region`), dated `at` (0: undated)."""
        w = self.world
        if at:
            with self.lock:
                w.dates_sent.setdefault((prov, who), set()).add(at)
        if region:
            a = self.answered(kind or ("move_dated" if at else "move"), f"registry-{prov}", "MovePoolingRegion",
                              rpb.MovePoolingRegionRequest(request_id=self.rid("move"), id_number=who,
                                                           pooling_region=region, occurred_at_unix_ms=at))
        else:
            a = self.answered(kind or ("status_dated" if at else "status"), f"registry-{prov}",
                              "UpdatePersonStatus", rpb.UpdatePersonStatusRequest(
                                  request_id=self.rid("stat"), id_number=who, status=status,
                                  occurred_at_unix_ms=at))
            if a.ok and a.resp.person.status != status:
                # The answer is the person as they stand once the change is finished (people.status_answer):
                # a change made meanwhile by another request shows in it.
                self.count("status:answered-another-status")
        if a.ok and at:
            with self.lock:
                w.dates_ok[(prov, who)] = max(w.dates_ok.get((prov, who), 0), at)
        return a

    def op_dated(self) -> None:
        """Two to four dated events of one person, sent in a shuffled order (one after another): one dated
        before an event already answered for them must be refused EVENT_OUT_OF_ORDER."""
        w = self.world
        prov = self.rng.choice(["13", "13", "11"])
        if prov == "11":
            who = self.rng.choice(w.senders)
        else:
            member = self.rng.choice(w.hb_members)
            who = self.rng.choice([member, *w.hb_helpers[member]])
        if who in w.dead:
            return
        events = []
        for _ in range(self.rng.randint(2, 4)):
            if prov == "13" and self.rng.random() < 0.3:
                events.append(("", self.rng.choice(["130100", "130200"]), self.event_at()))
            else:
                events.append((self.rng.choice(["S", "A", "A"]), "", self.event_at()))
        newest = 0
        for st, region, at in events:
            status = {"S": cpb.PERSON_STATUS_SUSPENDED, "A": cpb.PERSON_STATUS_ACTIVE}.get(st, 0)
            a = self.life_event(prov, who, status=status, region=region, at=at)
            if a.ok and at < newest:
                self.violation(f"an event of {who} dated {at} answered ok after one dated {newest}")
            if a.ok:
                newest = max(newest, at)
            elif a.reason == "EVENT_OUT_OF_ORDER":
                with self.lock:
                    later = [d for d in w.dates_sent.get((prov, who), ()) if d > at]
                if not later:
                    self.violation(f"an event of {who} dated {at} refused out of order with nothing later sent")

    def fresh(self, prov: str, **kw: Any) -> str | None:
        try:
            return self.person(prov, **kw)
        except AssertionError:
            self.count("fresh:refused")
            return None

    def both(self, first: Callable[[], Any], second: Callable[[], Any]) -> None:
        """Run two calls at once (the second after a small random lag)."""
        lag = self.rng.random() * 0.05
        t = threading.Thread(target=lambda: (time.sleep(lag), second()), daemon=True)
        t.start()
        first()
        t.join(RETRY_S + 30)

    def op_proxy_race(self) -> None:
        """A 亲情账户 addition racing the death of one of its sides (SPEC §5b: a death ends it), sometimes a
        removal racing it too. Checked at the end: no 亲情账户 of a dead person is left."""
        w = self.world
        hprov, rprov = self.rng.choice(["13", "11"]), self.rng.choice(["13", "11", "62"])
        holder = self.fresh(hprov, bal=self.rng.randint(0, 20_000))
        relative = self.fresh(rprov, bal=self.rng.randint(0, 20_000))
        if holder is None or relative is None:
            return
        victim, vprov, heir = ((relative, rprov, holder) if self.rng.random() < 0.7 else (holder, hprov, relative))
        add = rpb.BindProxyRequest(request_id=self.rid("proxy"), holder_id_number=holder, relative_id_number=relative,
                                   relation=self.rng.choice([cpb.RELATION_SIBLING, cpb.RELATION_PARENT]),
                                   relative_verification=FACE)

        def adding() -> None:
            a = self.answered("proxy_add", f"registry-{self.rng.choice([hprov, rprov])}", "BindProxy", add)
            if a.ok:
                with self.lock:
                    w.proxies.append((holder, relative))
                if self.rng.random() < 0.3:
                    self.answered("proxy_remove", f"registry-{hprov}", "RemoveProxy", rpb.RemoveProxyRequest(
                        request_id=self.rid("unproxy"), holder_id_number=holder, relative_id_number=relative,
                        requested_by_id_number=self.rng.choice([holder, relative])))

        def dying() -> None:
            a = self.answered("proxy_death", f"registry-{vprov}", "RecordDeath", rpb.RecordDeathRequest(
                request_id=self.rid("death"), id_number=victim, heir_id_number=heir, heir_name="李四",
                date_of_death="20261120"))
            if a.ok:
                with self.lock:
                    w.dead.add(victim)
                    w.dead_where[victim] = vprov

        if self.rng.random() < 0.5:
            self.both(adding, dying)
        else:
            self.both(dying, adding)

    def op_onward_race(self) -> None:
        """An onward transfer (wallet → wallet) racing the end of the relationship its quota came by: ended
        by a side, or by the sending employee's suspension or termination (the lot's origin ends)."""
        w = self.world
        i = self.rng.randrange(len(w.senders))
        sender, holder = w.senders[i], w.recipients[i]
        recipient = w.recipients[(i + 1) % len(w.recipients)]
        if self.rng.random() < 0.6:  # quota from this very sender first, so that the end has lots to send home
            fund = wpb.CreateTransferRequest(
                request_id=self.rid("xfer"), sender_id_number=sender, sender_province="11", recipient_id_number=holder,
                relation=cpb.RELATION_CHILD, amount_fen=self.rng.randint(1_000, 10_000), verification=FACE)
            a = self.answered("transfer", "wallet", "CreateTransfer", fund)
            if a.ok:
                with self.lock:
                    w.transfers.append((a.resp.transfer.transfer_id, holder))
                self.accept(a.resp.transfer.transfer_id, holder)
        req = wpb.CreateTransferRequest(
            request_id=self.rid("xfer"), sender_id_number=holder, sender_province="13",
            recipient_id_number=recipient, relation=cpb.RELATION_SIBLING, amount_fen=self.rng.randint(1, 3_000),
            verification=FACE, source=wpb.TRANSFER_SOURCE_WALLET)
        changed = wpb.CreateTransferRequest()
        changed.CopyFrom(req)
        changed.amount_fen += 1

        def onward() -> None:
            a = self.answered("onward_race", "wallet", "CreateTransfer", req, changed)
            if a.ok:
                tid = a.resp.transfer.transfer_id
                with self.lock:
                    w.transfers.append((tid, recipient))
                if self.rng.random() < 0.7:
                    self.accept(tid, recipient)

        roll = self.rng.random()
        if roll < 0.5:
            def ending() -> None:
                self.answered("end_wallet_race", "wallet", "EndWalletRelationship", wpb.EndWalletRelationshipRequest(
                    request_id=self.rid("endw"), sender_id_number=sender, holder_id_number=holder,
                    requested_by_id_number=self.rng.choice([sender, holder])))
        else:
            status = cpb.PERSON_STATUS_TERMINATED if roll < 0.7 else cpb.PERSON_STATUS_SUSPENDED

            def ending() -> None:
                self.life_event("11", sender, status=status, kind="origin_end_race")
        if self.rng.random() < 0.5:
            self.both(onward, ending)
        else:
            self.both(ending, onward)
        if roll >= 0.5 and self.rng.random() < 0.7:  # the sender comes back (their next transfer starts anew)
            self.life_event("11", sender, status=cpb.PERSON_STATUS_ACTIVE, kind="status")

    def op_family_premium(self) -> None:
        """代缴 from a family account: a member's own premium (甘肃 child, 福建 临时成员 and child), the creator
        paying a member's, a 临时成员 paying another's (refused), cancellations; a 临时成员's bill, which
        the family account must not pay."""
        w = self.world
        roll = self.rng.random()
        if self.rng.random() < 0.5:
            fid, creator, members = self.rng.choice(w.families)
            prov, kid, temp = "62", members[0], ""
        else:
            fid, creator, temp, kid = self.rng.choice(w.fj_families)
            prov = "35"
        target = f"registry-{prov}"
        if roll < 0.35:  # one's own premium from the family account
            payee = self.rng.choice([kid, temp] if temp else [kid])
            self.premium_from_family(target, payee, payee, fid, 0)
        elif roll < 0.55:  # the creator pays a member's
            payee, rel = (temp, cpb.RELATION_SIBLING) if temp and self.rng.random() < 0.5 else (kid, cpb.RELATION_CHILD)
            self.premium_from_family(target, creator, payee, fid, rel)
        elif roll < 0.65 and temp:  # a 临时成员 pays another member's: refused
            a = self.premium_from_family(target, temp, kid, fid, cpb.RELATION_SIBLING)
            if a.ok:
                self.violation(f"a 临时成员's 代缴 of another's premium answered ok: {_short(a.resp)}")
        elif roll < 0.8 and temp:  # a 临时成员's bill: their own account pays nothing, nor the family account
            amount = self.rng.randint(1, 5_000)
            req = pb.SettleRequest(msgid=self.msgid("35"), institution=INST["35"], input=pb.SettleInput(
                psn_no=temp, psn_part_amt_fen=amount, medfee_sumamt_fen=amount, acct_used_flag="1",
                category=cpb.CATEGORY_OUTPATIENT, mdtrt_id=self.rid("visit")))
            a = self.answered("2207_temporary", "router", "Settle", req)
            if a.ok:
                with self.lock:
                    w.settlements.append(("35", req, a.resp.setlinfo))
                if a.resp.setlinfo.acct_mulaid_pay_fen:
                    self.violation(f"a 临时成员's bill paid by the family account: {_short(a.resp)}")
        else:
            payee = self.rng.choice([kid, temp] if temp else [kid])
            self.answered("premium_cancel_fam", target, "CancelResidentPremium", ppb.CancelResidentPremiumRequest(
                request_id=self.rid("pcan"), payee_id_number=payee, year=YEAR,
                payer_id_number=self.rng.choice([payee, creator, ""])))

    def premium_from_family(self, target: str, payer: str, payee: str, fid: str, relation: int) -> Answer:
        kind = "premium_own_fam" if payer == payee else "premium_fam"
        return self.answered(kind, target, "PayResidentPremium", ppb.PayResidentPremiumRequest(
            request_id=self.rid("prem"), payer_id_number=payer, payee_id_number=payee, relation=relation,
            year=YEAR, source=ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, family_id=fid))

    def op_resend(self) -> None:
        """Resend an answered request: the same answer; with a field changed: IDEMPOTENCY_KEY_REUSED."""
        with self.lock:
            if not self.ops:
                return
            op = self.rng.choice(self.ops)
        self.check_replay(op, quiet=False)

    def check_replay(self, op: Op, quiet: bool) -> None:
        if op.kind.startswith(("2207", "2208")) and op.req.msgid in self.world.undone:
            return  # a 2601 may have cancelled it: its resend is refused ORIGINAL_CANCELLED (SPEC §6)
        b = self.call(op.target, op.method, op.req)
        if b.ok and b.resp != op.first:
            self.violation(f"{op.kind} {op.method} replay answered differently:\n first {op.first}\n again {b.resp}")
        elif not b.ok and not (b.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and not quiet):
            self.violation(f"{op.kind} {op.method} replay refused {b.code} {b.reason} (first answered ok) "
                           f"req={_short(op.req)}")
        if op.changed is not None and self.rng.random() < 0.5:
            c = self.call(op.target, op.method, op.changed)
            if c.ok or c.reason != "IDEMPOTENCY_KEY_REUSED":
                self.violation(f"{op.kind} {op.method} reused id with a changed field answered "
                               f"{'ok' if c.ok else c.code + ' ' + c.reason}: {_short(op.changed)}")
        self.count(f"replay:{op.kind}")

    # ---- faults ---------------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        svc = self.topo.services[name]
        svc.kill()

    def start(self, name: str, fault: str = "") -> None:
        self.topo.clock = self.timeline.spec()
        self.topo.start_one(name, env={"MEDAID_FAULT": fault})

    def fault_loop(self) -> None:
        frng = random.Random(self.seed * 7919)
        while not self.stop.wait(frng.uniform(2.0, 5.0)):
            roll = frng.random()
            with self.restart_lock:
                if self.cluster and roll < 0.3:
                    self.cluster_fault(frng, roll < 0.12)
                    continue
                if roll < 0.15 and not self.cluster:
                    print("  [fault] redis kill -9 / restart", flush=True)
                    assert isinstance(self.topo.redis, RedisServer)
                    self.topo.redis.kill()
                    time.sleep(frng.uniform(0.2, 1.5))
                    self.topo.redis.start()
                    continue
                name = frng.choice(["registry-13", "registry-13", "registry-11", "registry-62", "registry-35",
                                    "wallet", "wallet"])
                armed = ""
                if roll < 0.55:
                    armed = frng.choice(WALLET_POINTS if name == "wallet" else REGISTRY_POINTS)
                print(f"  [fault] {name} kill -9{' armed ' + armed if armed else ''}", flush=True)
                self.kill(name)
                time.sleep(frng.uniform(0.0, 1.0))
                self.start(name, armed)
                self.count(f"fault:{name}")
            if armed:  # let it run (and maybe die at the point), then restart it clean
                self.stop.wait(frng.uniform(1.0, 4.0))
                with self.restart_lock:
                    svc = self.topo.services[name]
                    if svc.proc.poll() is not None:
                        self.count(f"fault-fired:{armed}")
                        print(f"  [fault] {name} died at {armed}", flush=True)
                    else:
                        svc.kill()
                    self.start(name)

    def cluster_fault(self, frng: random.Random, failover: bool) -> None:
        """A master killed -9 (its replica takes over; it comes back as a replica), or a live move of the
        slot of a key in use to another master."""
        cluster = self.topo.redis
        assert isinstance(cluster, RedisCluster)
        if failover:
            victim = frng.choice(cluster.masters_now())
            print(f"  [fault] cluster master :{victim.port} kill -9 (failover)", flush=True)
            victim.kill()
            deadline = time.monotonic() + 30
            while len(cluster.masters_now()) < cluster.masters and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(frng.uniform(0.0, 2.0))
            victim.start()
            cluster.wait_ok(60)
            self.count("fault:cluster-failover")
            return
        w = self.world
        key = frng.choice([Keys("13").person(frng.choice(w.hb_members)), Keys("11").person(frng.choice(w.senders)),
                           WalletKeys().wallet(frng.choice(w.recipients)), f"{Keys('62').ns}:{{fam}}",
                           "nat:{proxy}:added"])
        from test_cluster_migration import Migration  # noqa: PLC0415 - cluster runs only
        try:
            m = Migration(cluster, key)
            print(f"  [fault] cluster slot {m.slot} :{m.src.port} → :{m.dst.port}", flush=True)
            time.sleep(frng.uniform(0.0, 0.5))
            m.move_keys()
            time.sleep(frng.uniform(0.0, 0.5))
            m.finish()
            self.count("fault:cluster-slot-move")
        except Exception as exc:  # noqa: BLE001 - a move that could not run (a failover under way) is no finding
            print(f"  [fault] slot move of {key} not done: {exc!r}", flush=True)
            self.count("fault:cluster-slot-move-skipped")

    # ---- run ------------------------------------------------------------------------------------

    def worker(self, n: int) -> None:
        wrng = random.Random(self.seed * 1000 + n)
        ops: list[tuple[Callable[[], None], int]] = [
            (self.op_settle, 30), (self.op_reverse, 8), (self.op_undo, 4), (self.op_transfer, 12),
            (self.op_accept_late, 3), (self.op_spend, 6), (self.op_refund, 3), (self.op_family, 6),
            (self.op_premium, 4), (self.op_life, 4), (self.op_resend, 10), (self.op_dated, 3),
            (self.op_proxy_race, 2), (self.op_onward_race, 3), (self.op_family_premium, 4)]
        fns, weights = zip(*ops, strict=True)
        while not self.stop.is_set():
            fn = wrng.choices(fns, weights)[0]
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - a soak reports, it does not stop
                self.violation(f"harness {fn.__name__}: {exc!r}")

    def ensure_up(self) -> None:
        with self.restart_lock:
            for name, svc in list(self.topo.services.items()):
                if svc.proc.poll() is not None:
                    self.start(name)

    def recovery_left(self) -> list[str]:
        left: list[str] = []
        for prov in PROVINCES:
            left += [f"registry-{prov}: {e.decode()}" for e in self.r.zrange(Keys(prov).open_settlements(), 0, -1)]
        wk = WalletKeys()
        for key in (wk.inflight(), wk.returns_inflight(), wk.notes_due()):
            left += [f"wallet {key}: {e.decode()}" for e in self.r.zrange(key, 0, -1)]
        return left

    def pending_claims(self) -> list[str]:
        out = []
        for key in scan_keys(self.r, "*"):
            if self.r.type(key) == b"hash" and self.r.hget(key, "state") == b"PENDING":
                out.append(key.decode())
        return out

    def pending_transfers(self) -> list[tuple[str, str]]:
        left = []
        for tid, recipient in self.world.transfers:
            a = self.call("wallet", "GetTransfer", wpb.GetTransferRequest(transfer_id=tid))
            if a.ok and a.resp.transfer.state not in (wpb.TRANSFER_STATE_COMPLETED, wpb.TRANSFER_STATE_RETURNED,
                                                      wpb.TRANSFER_STATE_FAILED):
                left.append((tid, recipient))
        return left

    def done_kinds(self) -> set[str]:
        """The flows that succeeded at least once so far ("2207", "spend", ...)."""
        with self.lock:
            return {k.split(":")[0] for k, n in self.counts.items() if k.endswith(":ok") and n}

    def run(self, groups: int, until_done: frozenset[str] = frozenset()) -> bool:
        """Drive for the duration, then on (up to twice as long again) until every flow in until_done has
        succeeded once: a loaded host does fewer operations in the same time, and a run that never spent
        from a wallet says nothing about spending."""
        t0 = time.monotonic()
        self.populate(groups)
        print(f"seed {self.seed}: populated {groups} groups in {time.monotonic() - t0:.1f}s", flush=True)
        threads = [threading.Thread(target=self.worker, args=(n,), daemon=True) for n in range(self.workers)]
        if self.faults:
            threads.append(threading.Thread(target=self.fault_loop, daemon=True))
        for t in threads:
            t.start()
        self.stop.wait(self.duration)
        deadline = time.monotonic() + 2 * self.duration
        while not until_done <= self.done_kinds() and time.monotonic() < deadline:
            time.sleep(0.5)
        self.stop.set()
        for t in threads:
            t.join(RETRY_S + 30)
        print(f"seed {self.seed}: drove {time.monotonic() - t0:.1f}s; quiescing", flush=True)
        return self.audit()

    def audit(self) -> bool:
        self.ensure_up()
        # Accept what is left unaccepted (a wallet app would, or 06:00 would return it): in-flight money is
        # legitimate, but recovery entries must drain.
        for tid, recipient in self.pending_transfers():
            self.accept(tid, recipient)
        if self.pending_transfers():
            # Not acceptable now (the recipient suspended or no longer insured): such a transfer waits for
            # 06:00 the next day, when the wallet returns it (SPEC §5). Go there, and let it.
            with self.restart_lock:
                now = dt.datetime.fromtimestamp(self.timeline.now_ms() / 1000, SHANGHAI)
                six = (now + dt.timedelta(days=1)).replace(hour=6, minute=5, second=0, microsecond=0)
                self.timeline.jump_to(int(six.timestamp() * 1000))
                self.topo.services["wallet"].stop()
                self.start("wallet")
            self.count("audit:jumped-to-06:05")
        deadline = time.monotonic() + 90
        while (left := self.recovery_left() or self.pending_claims()) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = self.recovery_left()
        if left:
            self.violation(f"recovery entries left after 90 s: {left[:10]}")
        claims = self.pending_claims()
        if claims:
            self.violation(f"claims PENDING after quiescing: {claims[:10]}")
        unsettled = self.pending_transfers()
        if unsettled:
            self.violation(f"transfers not ended: {unsettled[:10]}")
        rep = money.check(self.r, expected_credits_fen=self.credited)
        if not rep.conserved:
            self.violation(f"money not conserved: {json.dumps(rep.as_dict(), ensure_ascii=False)}")
        print(f"money: {json.dumps(rep.as_dict(), ensure_ascii=False)}", flush=True)
        self.check_dates()
        self.check_proxies()
        # Replays after restarts: every process (and the Redis, from its AOF) kill -9'd and started again.
        with self.restart_lock:
            if not self.cluster:
                assert isinstance(self.topo.redis, RedisServer)
                self.topo.redis.kill()
                self.topo.redis.start()
            for name in list(self.topo.services):
                self.kill(name)
                self.start(name)
        self.count("audit:restarted-all")
        with self.lock:
            ops = list(self.ops)
        for op in ops:
            self.check_replay(op, quiet=True)
        print(f"seed {self.seed}: {len(ops)} answered requests replayed", flush=True)
        again = money.check(self.r, expected_credits_fen=self.credited)
        if again.as_dict() != rep.as_dict():
            self.violation(f"the replays moved money: {json.dumps(again.as_dict(), ensure_ascii=False)}")
        print("counts:", json.dumps(dict(sorted(self.counts.items())), ensure_ascii=False), flush=True)
        for v in self.violations:
            print("VIOLATION:", v[:2000], flush=True)
        return not self.violations

    def check_dates(self) -> None:
        """A person's newest event date is the newest dated event answered ok, and one that was sent."""
        w = self.world
        for (prov, who), newest in sorted(w.dates_ok.items()):
            raw = self.r.hget(Keys(prov).person(who), "occurred_at")
            stored = int(raw or 0)
            if stored < newest or stored not in w.dates_sent[(prov, who)]:
                self.violation(f"registry-{prov} {who}: newest event date {stored}, answered ok up to {newest}, "
                               f"sent {sorted(w.dates_sent[(prov, who)])}")
        with self.lock:
            self.counts["audit:dated-persons"] = len(w.dates_ok)

    def check_proxies(self) -> None:
        """No 亲情账户 of a dead person is left (SPEC §5b)."""
        for who in sorted(self.world.dead):
            a = self.call("registry-13", "ListProxyBindings", rpb.ListProxyBindingsRequest(id_number=who))
            if not a.ok:
                self.violation(f"ListProxyBindings of {who} refused {a.code} {a.reason}")
            elif list(a.resp.as_holder) or list(a.resp.as_relative):
                self.violation(f"a 亲情账户 of the dead {who} is left: {_short(a.resp)}")

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self.r.close()
        self.topo.stop()


def _short(msg: Any) -> str:
    return " ".join(str(msg).split())[:400]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--groups", type=int, default=6)
    ap.add_argument("--no-faults", action="store_true")
    ap.add_argument("--cluster", action="store_true",
                    help="on a Redis Cluster (3 masters, a replica each): faults add master kill -9 with failover "
                         "and live slot moves instead of Redis restarts")
    ap.add_argument("-v", action="store_true")
    args = ap.parse_args(argv)
    soak = Soak(args.seed, args.duration, args.workers, not args.no_faults, args.v, cluster=args.cluster)
    try:
        ok = soak.run(args.groups)
    finally:
        soak.close()
    print(f"seed {args.seed}: {'OK' if ok else 'VIOLATIONS'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
