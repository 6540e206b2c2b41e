"""Test helpers: people with valid id numbers, shortcuts for common calls, Redis snapshots."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import socket
import time
from typing import Any

import grpc
import redis
import redis.cluster
from medaid.common.clock import SHANGHAI, FixedClock
from medaid.common.errors import error_info
from medaid.common.idnumber import make
from medaid.common.redis_client import scan_keys
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as pb
from medaid.router.v1 import router_pb2 as rtpb
from medaid.topology import DEMO_CLOCK
from medaid.wallet.v1 import wallet_pb2 as wpb

TODAY = dt.datetime(2026, 11, 22, 10, 0, tzinfo=SHANGHAI)
_seq = itertools.count(1)
_rid = itertools.count(1)

EMPLOYEE = cpb.INSURANCE_TYPE_EMPLOYEE
RESIDENT = cpb.INSURANCE_TYPE_RESIDENT
FLEXIBLE = cpb.INSURANCE_TYPE_FLEXIBLE
FACE = cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE, attestation_id="face-0001")
# Where the topology's demo clock (`DEMO_CLOCK`) starts, in epoch milliseconds.
DEMO_START_MS = int(dt.datetime.fromisoformat(DEMO_CLOCK.removeprefix("start:")).timestamp() * 1000)


def test_clock() -> FixedClock:
    return FixedClock(int(TODAY.timestamp() * 1000))


test_clock.__test__ = False  # type: ignore[attr-defined]


class Timeline:
    """Virtual Asia/Shanghai time on the demo timeline, shared by every process a test module starts: a
    restarted process continues it (`spec()` is its clock setting); it never goes back."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.offset_ms = 0

    def now_ms(self) -> int:
        return DEMO_START_MS + self.offset_ms + int((time.monotonic() - self.t0) * 1000)

    def jump_to(self, ms: int) -> None:
        """Move the shared time forward (never back); processes see it when (re)started."""
        self.offset_ms += max(0, ms - self.now_ms())

    def spec(self) -> str:
        instant = dt.datetime.fromtimestamp(self.now_ms() / 1000, SHANGHAI)
        return "start:" + instant.isoformat(timespec="milliseconds")


# Sockets `dead_port` holds for the rest of the process, by port.
_HELD: dict[int, socket.socket] = {}


def dead_port() -> int:
    """A loopback port nothing listens on, and nothing will while this test process lives: a call to it
    is refused at once. It stays bound (never listening), so no other process (another test worker's
    servers, which `free_port` places in the same range) can take it: a port `free_port` merely found
    free could be listening, in that other process, by the time it is called. `revive` hands it back
    for a server of the test's own to bind."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    _HELD[port] = s
    return port


def revive(port: int) -> int:
    """Let a `dead_port` be bound, by a server the test starts there next."""
    _HELD.pop(port).close()
    return port


def new_id(division: str = "130102", birth: str = "19800101") -> str:
    """A fresh valid id number; `birth` decides the age (2026-11-22 is 'today' in tests)."""
    return make(division, birth, f"{next(_seq) % 1000:03d}")


def rid(prefix: str = "r") -> str:
    return f"{prefix}-{next(_rid):06d}"


def reason(exc: grpc.RpcError) -> str:
    info = error_info(exc)
    return info.reason if info is not None else ""


def enroll(stub: Any, *, itype: int = EMPLOYEE, region: str = "130100", birth: str = "19800101",
           name: str = "张三", tier: int = 0, division: str = "130102") -> str:
    pid = new_id(division, birth)
    stub.EnrollPerson(pb.EnrollPersonRequest(
        request_id=rid("enroll"), id_number=pid, name=name, insurance_type=itype, flexible_tier=tier,
        pooling_region=region))
    return pid


def credit(stub: Any, pid: str, amount: int) -> int:
    resp = stub.CreditAccount(pb.CreditAccountRequest(
        request_id=rid("credit"), id_number=pid, amount_fen=amount,
        kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"))
    return int(resp.balance_fen)


def bind(stub: Any, helper: str, member: str, relation: int = cpb.RELATION_CHILD,
         verification: cpb.Verification | None = FACE, **kw: Any) -> pb.BindMutualAidResponse:
    req = pb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=helper, member_id_number=member,
                                  relation=relation, **kw)
    if verification is not None:
        req.member_verification.CopyFrom(verification)
    return stub.BindMutualAid(req)


def settle(stub: Any, patient: str, amount: int, *, use_account: bool = True,
           category: int = cpb.CATEGORY_OUTPATIENT, request_id: str | None = None) -> pb.SettlementResult:
    return stub.Settle(settle_request(patient, amount, use_account=use_account, category=category,
                                      request_id=request_id)).result


def settle_request(patient: str, amount: int, *, use_account: bool = True,
                   category: int = cpb.CATEGORY_OUTPATIENT, request_id: str | None = None) -> pb.SettleRequest:
    return pb.SettleRequest(request_id=request_id or rid("settle"), patient_id_number=patient, amount_fen=amount,
                            use_account=use_account, category=category, institution_code="H13010100001",
                            institution_admdvs="130100")


def settled_at_router(router: Any, registry: Any, institution: rtpb.Institution, msgid: str,
                      amount: int = 1_000) -> tuple[str, rtpb.SetlInfo]:
    """An employee of `registry` with ¥1,000 whose outpatient 2207 of `amount` the router settled from
    their own account: (psn_no, setlinfo)."""
    p = enroll(registry)
    credit(registry, p, 100_000)
    return p, router.Settle(rtpb.SettleRequest(msgid=msgid, institution=institution, input=rtpb.SettleInput(
        psn_no=p, psn_part_amt_fen=amount, medfee_sumamt_fen=amount, acct_used_flag="1",
        category=cpb.CATEGORY_OUTPATIENT)), timeout=10.0).setlinfo


def fund_wallet(wallet: Any, sender: str, recipient: str, amount: int, *, accept: bool = True,
                sender_at: tuple[str, str] = ("11", "110000"),
                recipient_at: tuple[str, str] = ("13", "130100")) -> wpb.Transfer:
    """Open the 医保钱包 of `recipient` and of `sender` (each `(province, 使用地)`: a 河北 recipient, a 北京
    sender by default) and have the sender transfer `amount` fen from their personal account to the
    recipient, their parent; the recipient accepts it unless `accept=False`. The transfer as created."""
    for owner, (province, place) in ((recipient, recipient_at), (sender, sender_at)):
        wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner, province=province,
                                                use_place_admdvs=place, real_name=FACE))
    t = wallet.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=sender, sender_province=sender_at[0], recipient_id_number=recipient,
        relation=cpb.RELATION_PARENT, amount_fen=amount, verification=FACE)).transfer
    if accept:
        wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("accept"), transfer_id=t.transfer_id,
                                                        recipient_id_number=recipient))
    return t


def balance(stub: Any, pid: str) -> int:
    return int(stub.GetPerson(pb.GetPersonRequest(id_number=pid)).person.balance_fen)


def logical_value(r: Any, key: bytes) -> tuple[bytes, Any]:
    """A key's type and contents, independent of Redis' internal encoding. (DUMP is not: reading a
    large hash can advance its incremental rehash and reorder DUMP's bytes without any write.)"""
    kind = r.type(key)
    if kind == b"string":
        return kind, r.get(key)
    if kind == b"hash":
        return kind, tuple(sorted(r.hgetall(key).items()))
    if kind == b"list":
        return kind, tuple(r.lrange(key, 0, -1))
    if kind == b"set":
        return kind, tuple(sorted(r.smembers(key)))
    if kind == b"zset":
        return kind, tuple(r.zrange(key, 0, -1, withscores=True))
    return kind, None


def snapshot(r: redis.Redis | redis.cluster.RedisCluster) -> dict[bytes, tuple[bytes, Any]]:
    """Every key with its contents (every master of a cluster): equal snapshots mean nothing was written."""
    return {k: logical_value(r, k) for k in sorted(scan_keys(r))}


def total_balances(r: redis.Redis | redis.cluster.RedisCluster) -> int:
    total = 0
    for key in scan_keys(r, "reg:*:acct"):
        total += int(r.hget(key, "bal") or 0)
    return total


def new_id_x(division: str = "130102", birth: str = "19800101") -> str:
    """A fresh valid id number whose check character is `X`."""
    while not (pid := new_id(division, birth)).endswith("X"):
        pass
    return pid


_RAW_ID = re.compile(r"(?<![0-9])[1-9][0-9]{16}[0-9X](?![0-9X])")
# Trace and span ids (W3C traceparent: 32 and 16 lower-case hex digits) are random: one may hold a run
# of 18 decimal digits. They are generated, never a person's number, so they are set aside first.
_TRACE_IDS = re.compile(r"(?<![0-9a-fA-F])(?:[0-9a-f]{32}|[0-9a-f]{16})(?![0-9a-fA-F])")


def unmasked_id_numbers(text: str) -> list[str]:
    """Every run of characters in `text` shaped like an unmasked 18-character id number."""
    return _RAW_ID.findall(_TRACE_IDS.sub("<trace>", text))
