"""What a front desk is told about who may 划拨 into an empty family account (SPEC §3b): in 福建
(`member_contributions = true`) members with a personal account may 划拨 too, in 甘肃 only the creator.
Diagnose's finding says what the province allows; the gateway's words (REASON_ZH), one text for every
province, claim neither rule alone. Real registries over gRPC, real Redis."""

from __future__ import annotations

import pytest
from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway.reasons import REASON_ZH
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, credit, enroll
from test_family import FJ, GS, create, invite

WHERE = {"35": FJ, "62": GS}


@pytest.mark.parametrize("province", ["35", "62"])
def test_an_empty_family_account_is_explained_with_who_may_fund_it_here(start_registry, province):
    stub = start_registry(province).stub
    creator = enroll(stub, **WHERE[province])
    kid = enroll(stub, itype=RESIDENT, birth="20150101", **WHERE[province])
    credit(stub, creator, 300_000)
    fid = create(stub, creator).family_id
    invite(stub, fid, creator, kid, cpb.RELATION_CHILD)
    d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=kid, helper_id_number=creator))
    [message] = [f.message for f in d.findings if f.code == "FAMILY_ZERO_BALANCE"]
    assert "创建人" in message and "划拨" in message
    assert ("有个人账户的成员" in message) == (province == "35"), message


def test_the_gateway_words_on_who_may_fund_hold_in_every_pooled_province():
    zero, refused = REASON_ZH["FAMILY_ZERO_BALANCE"], REASON_ZH["NOT_A_CONTRIBUTOR"]
    # 福建: members with a personal account may 划拨 as well, so "the creator" alone is not the whole truth.
    assert "请创建人先划拨" not in zero and "成员" in zero
    # 甘肃: only the creator may, so no text may say members with a personal account can, everywhere.
    assert "本省仅创建人或有个人账户的成员可以划拨" not in refused and "创建人" in refused
