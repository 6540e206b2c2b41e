"""Diagnose agrees with Settle (SPEC §3, §4): for random small states of a member and a helper — the
helper's type, status and balance, the member's status, 统筹区 and province, the binding (共济, 亲情账户
only, none), a richer second helper, the category, the province's cross-region knob — Diagnose's
verdict (`would_pay`) is exactly whether a real Settle of a small bill for the member charges that
helper, and a refusal's reason or the settlement's `helper_reason` is among Diagnose's findings.
Real registries over gRPC (the `national` fixture); the member holds no money of their own, so the
bill reaches the helper step.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import grpc
import pytest
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from support import EMPLOYEE, FACE, FLEXIBLE, RESIDENT, bind, credit, enroll, reason, rid, settle_request

ACTIVE, SUSPENDED, TERMINATED = (cpb.PERSON_STATUS_ACTIVE, cpb.PERSON_STATUS_SUSPENDED,
                                 cpb.PERSON_STATUS_TERMINATED)
HELPER_KINDS = [(EMPLOYEE, 0), (EMPLOYEE, 0), (RESIDENT, 0), (FLEXIBLE, 1), (FLEXIBLE, 2)]
CATEGORIES = [cpb.CATEGORY_OUTPATIENT, cpb.CATEGORY_OUTPATIENT, cpb.CATEGORY_PHARMACY, cpb.CATEGORY_FITNESS,
              cpb.CATEGORY_CHECKUP]
# A helper-step reason of a settlement, as Diagnose names the same cause.
SAME_CAUSE = {"NO_ACTIVE_HELPER": {"HELPER_NOT_ACTIVE", "HELPER_NOT_EMPLOYEE"},
              "HELPER_ZERO_BALANCE": {"HELPER_ZERO_BALANCE"}, "PROXY_ONLY": {"PROXY_ONLY"},
              "DIFFERENT_POOLING_REGION": {"DIFFERENT_POOLING_REGION"}}


def status(stub: Any, pid: str, to: int) -> None:
    stub.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=pid, status=to))


@pytest.mark.parametrize("seed", range(40))
def test_diagnose_says_would_pay_exactly_when_settle_charges_the_helper(national, seed):
    rnd = random.Random(seed)
    hb = national.reg("13")
    ctx = national.registries["13"].registry.ctx
    original = ctx.policy
    ctx.policy = dataclasses.replace(original, cross_region_allowed=rnd.random() < 0.6)
    try:
        itype, tier = rnd.choice(HELPER_KINDS)
        helper = enroll(hb, itype=itype, tier=tier)
        has_account = itype == EMPLOYEE or tier == 2
        if has_account and rnd.random() < 0.7:
            credit(hb, helper, 5_000)
        elsewhere = rnd.random() < 0.15
        member_region = rnd.choice(["130100", "130100", "130200"])
        if elsewhere:
            member = enroll(national.reg("11"), itype=RESIDENT, region="110000", division="110105",
                            birth="20100101")
        else:
            member = enroll(hb, itype=rnd.choice([RESIDENT, EMPLOYEE]), region=member_region,
                            division="130202" if member_region == "130200" else "130102", birth="20100101")
        link = rnd.choice(["bind", "bind", "bind", "proxy", "none"])
        if link == "bind" and not elsewhere:
            try:
                bind(hb, helper, member)
            except grpc.RpcError:
                pass  # refused (not an employee, regions apart): no binding, Diagnose must say so
        elif link == "proxy":
            hb.BindProxy(rpb.BindProxyRequest(request_id=rid("px"), holder_id_number=helper,
                                              relative_id_number=member, relation=cpb.RELATION_CHILD,
                                              relative_verification=FACE))
        if rnd.random() < 0.25 and not elsewhere:  # a richer helper filed afterwards
            other = enroll(hb)
            credit(hb, other, 9_000)
            try:
                bind(hb, other, member)
            except grpc.RpcError:
                pass
        if rnd.random() < 0.3:
            status(hb, helper, rnd.choice([SUSPENDED, TERMINATED]))
        if not elsewhere and rnd.random() < 0.2:
            status(hb, member, SUSPENDED)
        category = rnd.choice(CATEGORIES)
        diag = hb.Diagnose(rpb.DiagnoseRequest(member_id_number=member, helper_id_number=helper, category=category))
        codes = {f.code for f in diag.findings}
        assert diag.would_pay == (not codes)
        try:
            res = hb.Settle(settle_request(member, 1_000, category=category)).result
        except grpc.RpcError as exc:
            assert not diag.would_pay, (seed, reason(exc), codes)
            return
        charged = any(c.helper_id_number == helper for c in res.helper_charges)
        assert charged == diag.would_pay, (seed, codes, res)
        if not charged and res.helper_reason and not res.helper_charges:
            assert SAME_CAUSE.get(res.helper_reason, {res.helper_reason}) & codes, (seed, res.helper_reason, codes)
    finally:
        ctx.policy = original
