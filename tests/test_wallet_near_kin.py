"""Which near-kin set a 医保钱包 transfer applies (SPEC §5, §2).

SPEC §5: "Relation must be near-kin (§2)". Where SPEC means a province's allowed set it says so —
§3 "the relation is not in the province's set", §3b "near-kin (§2 set of the province)" — and the
wallet is national and cross-province. So a transfer, direct or onward, takes the national set of
§2 (all eight relations since 国办发〔2024〕38号; in-laws never), whatever set the sending or the
receiving province names for its own 家庭共济. Real registries, wallet and Redis.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
import pytest
from medaid.common.errors import error_info
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.policy import BASE_RELATIONS
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, bind, credit, enroll, reason, rid
from test_wallet_balances import open_wallet, wallet_balance

BJ = {"region": "110000", "division": "110105"}


@pytest.fixture
def base_only(national: Any) -> Any:
    """河北 names only the base set (配偶, 父母, 子女) for its 家庭共济; 北京 all eight."""
    running = national.registries["13"].registry
    running.ctx.policy = dataclasses.replace(running.ctx.policy, relations=BASE_RELATIONS)
    return national


def transfer(national: Any, sender: str, sprov: str, recipient: str, relation: int, amount: int) -> wpb.Transfer:
    w = national.wallet.stub
    t = w.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=sender, sender_province=sprov, recipient_id_number=recipient,
        relation=relation, amount_fen=amount, verification=FACE)).transfer
    return w.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                                      recipient_id_number=recipient)).transfer


def test_a_sibling_outside_the_provinces_set_can_still_receive_a_wallet_transfer(base_only):
    n = base_only
    hb, bj = n.reg("13"), n.reg("11")
    brother = enroll(hb)  # 河北, whose 家庭共济 set has no SIBLING
    credit(hb, brother, 100_000)
    sister = enroll(bj, birth="19850101", **BJ)
    local_sister = enroll(hb, birth="19850101")
    # In-province 家庭共济 follows 河北's set: a sibling cannot be bound there.
    with pytest.raises(grpc.RpcError) as exc:
        bind(hb, brother, local_sister, relation=cpb.RELATION_SIBLING)
    assert reason(exc.value) == "RELATION_NOT_ALLOWED"
    for owner, prov, place in ((brother, "13", "130100"), (sister, "11", "110000"), (local_sister, "13", "130100")):
        open_wallet(n, owner, prov, place)
    # The wallet follows §2's national set: across provinces and inside 河北 alike.
    assert transfer(n, brother, "13", sister, cpb.RELATION_SIBLING, 30_000).state == wpb.TRANSFER_STATE_COMPLETED
    assert transfer(n, brother, "13", local_sister, cpb.RELATION_SIBLING, 20_000).state == \
        wpb.TRANSFER_STATE_COMPLETED
    assert (wallet_balance(n, sister), wallet_balance(n, local_sister)) == (30_000, 20_000)
    # Onward, from 北京 into 河北's wallet holder: the same national set.
    onward = n.wallet.stub.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("onward"), sender_id_number=sister, sender_province="11", recipient_id_number=local_sister,
        relation=cpb.RELATION_SIBLING, amount_fen=5_000, verification=FACE,
        source=wpb.TRANSFER_SOURCE_WALLET)).transfer
    assert onward.state == wpb.TRANSFER_STATE_PENDING_ACCEPT


def test_an_in_law_is_never_near_kin_for_the_wallet(base_only):
    n = base_only
    hb, bj = n.reg("13"), n.reg("11")
    son = enroll(hb)
    credit(hb, son, 100_000)
    mother_in_law = enroll(bj, birth="19550101", **BJ)
    open_wallet(n, son, "13", "130100")
    open_wallet(n, mother_in_law, "11", "110000")
    with pytest.raises(grpc.RpcError) as exc:
        transfer(n, son, "13", mother_in_law, cpb.RELATION_PARENT_IN_LAW, 1_000)
    info = error_info(exc.value)
    assert info is not None and info.reason == "NOT_NEAR_KIN"
