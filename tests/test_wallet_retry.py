"""Retry safety of the national 医保钱包 (SPEC §5, §7): every write may be re-sent with its request id
after a lost reply or a crash, and the request-id claims only answer replays — nothing is found
through them.

Same fixtures and people as tests/test_wallet.py: "today" is 2026-11-22 10:00 Asia/Shanghai.
"""

from __future__ import annotations

from typing import Any

import pytest
from medaid.common.redis_server import scan_keys
from medaid.wallet.keys import WalletKeys
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import RESIDENT, rid
from test_wallet import EXISTS, Env, at, family, refused

K = WalletKeys()


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


def drop_every_claim(env: Env) -> int:
    """Delete every request-id claim, the wallet's and the registries' (as a TTL on claims would)."""
    keys = list(scan_keys(env.rdb, "*{rid:*}"))
    assert keys
    return int(env.rdb.delete(*keys))


# ================================================================================================
# Claims are not the domain index
# ================================================================================================


def test_transfers_found_accepted_and_returned_without_any_claim(env):
    son, mother = family(env)
    daughter = env.person("62", bal=100_000)
    to_accept = env.send(son, "13", mother, 30_000)
    to_expire = env.send(daughter, "62", mother, 20_000)
    spent = env.fund(env.person("13", bal=50_000), "13", mother, 10_000)
    spend_req = env.spend_req(mother, 4_000)
    env.w.SpendWallet(spend_req)
    assert drop_every_claim(env) > 0

    # GetTransfer finds every transfer by its id alone.
    for t in (to_accept, to_expire, spent):
        assert env.transfer(t.transfer_id).amount_fen == t.amount_fen
    # AcceptTransfer finds it too.
    acc = env.accept(to_accept.transfer_id, mother)
    assert acc.transfer.state == wpb.TRANSFER_STATE_COMPLETED
    assert env.transfer(to_accept.transfer_id).state == wpb.TRANSFER_STATE_COMPLETED
    # A spend is refunded through its own record.
    r = env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(
        request_id=rid("ref"), spend_id=spend_req.request_id, owner_id_number=mother))
    assert (r.refunded_fen, r.balance_after_fen) == (4_000, 40_000)
    # The 06:00 return of the unaccepted one.
    drop_every_claim(env)
    env.clock.set(at(23, 6, 1))
    assert env.maintain().expired == 1
    assert env.transfer(to_expire.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("62", daughter) == 100_000
    assert env.bal("13", son) == 70_000
    assert env.wbal(mother) == 40_000


def test_transfer_id_of_another_recipients_transfer_refused_without_its_claim(env):
    """With the claim gone, a transfer id already naming a transfer to someone else cannot name a
    second one (the registry debits by transfer id): refused, nothing written."""
    son, mother = family(env)
    t = env.send(son, "13", mother, 30_000)
    daughter = env.person("62", bal=100_000)
    father = env.person("11", itype=RESIDENT, birth="19550101")
    env.open(father, "11")
    drop_every_claim(env)
    before = env.snap()
    refused(EXISTS, "IDEMPOTENCY_KEY_REUSED", env.w.CreateTransfer,
            env.xfer_req(daughter, "62", father, 10_000, request_id=t.transfer_id))
    assert env.snap() == before
    assert env.transfer(t.transfer_id).recipient_id_number == mother
    assert env.bal("62", daughter) == 100_000
