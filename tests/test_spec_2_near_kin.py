"""SPEC §2 and §3 on real registries: a province's near-kin set (`relations`) and the rule that
in-laws are never near-kin hold in every flow that names a relation — a binding (河北), an invitation
to a family account (甘肃), a 代缴 of a resident premium — each refusal writing nothing; and a
binding is one-directional only while it stands (REVERSE_BINDING), so once unbound the other way is
open."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from conftest import policy_for
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.policy import BASE_RELATIONS, EXTENDED_RELATIONS
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, bind, credit, enroll, rid
from test_family import GS, create, invite, refused
from test_premiums import YEAR, pay

FP = grpc.StatusCode.FAILED_PRECONDITION
IN_LAWS = ["PARENT_IN_LAW", "CHILD_IN_LAW", "SIBLING_IN_LAW"]
NEAR_KIN = sorted(BASE_RELATIONS | EXTENDED_RELATIONS)


def rel(name: str) -> int:
    return int(getattr(cpb, f"RELATION_{name}"))


def test_every_shipped_province_allows_all_eight_near_kin_and_no_in_law():
    for province in ("11", "13", "35", "62"):
        assert policy_for(province).relations == frozenset(NEAR_KIN)


@pytest.mark.parametrize("relation", NEAR_KIN + IN_LAWS)
def test_a_base_set_province_invites_base_relations_only(start_registry, rdb, relation):
    """甘肃 with `relations` cut to the base set: an invitation in an extended relation or an in-law one
    is RELATION_NOT_ALLOWED and writes nothing."""
    policy = dataclasses.replace(policy_for("62"), relations=BASE_RELATIONS)
    stub = start_registry("62", policy=policy).stub
    creator, kin = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20150101", **GS)
    credit(stub, creator, 1_000)
    fid = create(stub, creator).family_id
    if relation in BASE_RELATIONS:
        invite(stub, fid, creator, kin, rel(relation))
    else:
        refused(rdb, lambda: invite(stub, fid, creator, kin, rel(relation)), FP, "RELATION_NOT_ALLOWED")


@pytest.mark.parametrize("relation", NEAR_KIN + IN_LAWS)
def test_a_base_set_province_takes_premiums_for_base_relations_only(start_registry, rdb, relation):
    policy = dataclasses.replace(policy_for("13"), relations=BASE_RELATIONS)
    stub = start_registry("13", policy=policy).stub
    payer, payee = enroll(stub), enroll(stub, itype=RESIDENT, birth="20150101")
    credit(stub, payer, 100_000)
    if relation in BASE_RELATIONS:
        assert pay(stub, payer, payee, relation=rel(relation)).year == YEAR
    else:
        refused(rdb, lambda: pay(stub, payer, payee, relation=rel(relation)), FP, "RELATION_NOT_ALLOWED")


@pytest.mark.parametrize("relation", IN_LAWS)
def test_an_in_law_is_never_near_kin_even_where_every_relation_is_allowed(start_registry, rdb, relation):
    gs = start_registry("62").stub
    creator, kin = enroll(gs, **GS), enroll(gs, itype=RESIDENT, birth="20150101", **GS)
    credit(gs, creator, 1_000)
    fid = create(gs, creator).family_id
    refused(rdb, lambda: invite(gs, fid, creator, kin, rel(relation)), FP, "RELATION_NOT_ALLOWED")
    hb = start_registry("13").stub
    payer, payee = enroll(hb), enroll(hb, itype=RESIDENT, birth="20150101")
    credit(hb, payer, 100_000)
    refused(rdb, lambda: pay(hb, payer, payee, relation=rel(relation)), FP, "RELATION_NOT_ALLOWED")
    refused(rdb, lambda: bind(hb, payer, payee, rel(relation)), FP, "RELATION_NOT_ALLOWED")


def test_the_reverse_way_opens_once_the_binding_is_undone(hebei, rdb):
    stub = hebei.stub
    a, b = enroll(stub), enroll(stub, birth="19820101")
    bind(stub, a, b, cpb.RELATION_SPOUSE)
    refused(rdb, lambda: bind(stub, b, a, cpb.RELATION_SPOUSE), FP, "REVERSE_BINDING")
    stub.UnbindMutualAid(pb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=a, member_id_number=b))
    assert bind(stub, b, a, cpb.RELATION_SPOUSE).binding.active
    refused(rdb, lambda: bind(stub, a, b, cpb.RELATION_SPOUSE), FP, "REVERSE_BINDING")
