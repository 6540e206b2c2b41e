"""The wallet's edges with the registries (SPEC §5, §5b): a 2208 whose wallet share was refunded
already, a resent ending, the acceptance deadline, clearing across a month boundary. Same fixtures
and people as tests/test_wallet.py ("today" is 2026-11-22 10:00 Asia/Shanghai).
"""

from __future__ import annotations

from typing import Any

import pytest
from medaid.bench import money
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import RESIDENT, rid
from test_wallet import Env, settle_bj


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


def conserved(env: Env) -> None:
    report = money.check(env.rdb)
    assert report.conserved, report.as_dict()


def test_a_2208_whose_wallet_share_was_refunded_already_completes(env, national):
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    res = settle_bj(env, mother, 10_000)
    assert res.wallet_pay_fen == 10_000 and env.wbal(mother) == 20_000
    spends = [s.decode() for s in env.rdb.hkeys(national.wallet.wallet.k.spends(mother))]
    assert len(spends) == 1
    env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id=spends[0],
                                                         owner_id_number=mother))
    assert env.wbal(mother) == 30_000
    rev = env.reg("11").ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rid("2208"),
                                                                       settlement_id=res.settlement_id))
    assert rev.wallet_refund_fen == 10_000
    assert env.wbal(mother) == 30_000
    conserved(env)
