"""亲情账户 (proxy bindings) as SPEC §5b has them: national (holder and relative insured in
different provinces), at most 5 relatives per holder, a relative may have several holders, the
relative's face verification from 16 and an attestation under 16, removal by either side. It moves
no money, and diagnosis still says PROXY_ONLY."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from medaid.common.errors import error_info
from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway.reasons import operator_message
from medaid.registry.v1 import registry_pb2 as rpb
from support import FACE, RESIDENT, rid
from test_wallet import FP, INVALID, NOT_FOUND, Env, refused

COUNTER = cpb.Verification(method=cpb.VERIFICATION_METHOD_COUNTER, attestation_id="guardian-0001")
PASSWORD = cpb.Verification(method=cpb.VERIFICATION_METHOD_MEDICARE_CODE_PASSWORD, attestation_id="pwd-0001")


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


def proxy_req(holder: str, relative: str, verification: cpb.Verification | None = FACE,
              **kw: Any) -> rpb.BindProxyRequest:
    req = rpb.BindProxyRequest(request_id=kw.pop("request_id", rid("proxy")), holder_id_number=holder,
                               relative_id_number=relative, relation=kw.pop("relation", cpb.RELATION_PARENT))
    if verification is not None:
        req.relative_verification.CopyFrom(verification)
    return req


def test_proxy_across_provinces_is_seen_by_both_registries(env):
    holder = env.person("13", bal=10_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    p = env.reg("13").BindProxy(proxy_req(holder, mother)).proxy
    assert (p.holder_id_number, p.relative_id_number) == (holder, mother)
    for prov in ("13", "11", "62"):
        listed = env.reg(prov).ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=mother))
        assert [x.holder_id_number for x in listed.as_relative] == [holder]
    # The mother's own province diagnoses PROXY_ONLY; no money moves.
    d = env.reg("11").Diagnose(rpb.DiagnoseRequest(member_id_number=mother, helper_id_number=holder))
    assert d.binding_kind == rpb.BINDING_KIND_PROXY_ONLY
    assert env.bal("13", holder) == 10_000


def test_at_most_five_relatives_per_holder_and_several_holders_per_relative(env):
    holder = env.person("13")
    relatives = [env.person(prov, itype=RESIDENT, birth="19550101") for prov in ("13", "11", "62", "13", "11", "62")]
    for relative in relatives[:5]:
        env.reg("13").BindProxy(proxy_req(holder, relative))
    before = env.snap()
    refused(FP, "PROXY_LIMIT_REACHED", env.reg("13").BindProxy, proxy_req(holder, relatives[5]))
    assert env.snap() == before
    # The sixth relative may still be added by another holder, and one relative may have several holders.
    other = env.person("62")
    env.reg("62").BindProxy(proxy_req(other, relatives[5]))
    env.reg("62").BindProxy(proxy_req(other, relatives[0]))
    listed = env.reg("13").ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=relatives[0]))
    assert sorted(x.holder_id_number for x in listed.as_relative) == sorted([holder, other])


def test_verification_face_from_16_attestation_under_16(env):
    holder = env.person("13")
    adult = env.person("11", itype=RESIDENT, birth="20101122")  # 16 today
    child = env.person("11", itype=RESIDENT, birth="20101123")  # 15
    before = env.snap()
    refused(FP, "VERIFICATION_REQUIRED", env.reg("13").BindProxy, proxy_req(holder, adult, None))
    err = refused(FP, "FACE_VERIFICATION_REQUIRED", env.reg("13").BindProxy, proxy_req(holder, adult, PASSWORD))
    info = error_info(err)
    assert info is not None and operator_message(info.reason, "", dict(info.metadata)) == \
        "FACE_VERIFICATION_REQUIRED: 该亲属须本人进行人脸识别(年满16周岁),本次未添加;请其完成人脸识别后重新提交"
    refused(FP, "VERIFICATION_REQUIRED", env.reg("13").BindProxy, proxy_req(holder, child, None))
    assert env.snap() == before
    env.reg("13").BindProxy(proxy_req(holder, child, COUNTER))
    env.reg("13").BindProxy(proxy_req(holder, adult, FACE))


def test_relative_not_insured_anywhere_refused(env):
    holder = env.person("13")
    gone = env.person("11", itype=RESIDENT)
    env.set_status("11", gone, cpb.PERSON_STATUS_TERMINATED)
    before = env.snap()
    refused(FP, "MEMBER_NOT_INSURED", env.reg("13").BindProxy, proxy_req(holder, gone))
    assert env.snap() == before


@pytest.mark.parametrize("side", ["holder", "relative"])
def test_either_side_removes_a_proxy(env, side):
    holder = env.person("13")
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    env.reg("13").BindProxy(proxy_req(holder, mother))
    by = holder if side == "holder" else mother
    req = rpb.RemoveProxyRequest(request_id=rid("rmproxy"), holder_id_number=holder, relative_id_number=mother,
                                 requested_by_id_number=by)
    resp = env.reg("11" if side == "relative" else "13").RemoveProxy(req)
    assert (resp.proxy.holder_id_number, resp.proxy.relative_id_number) == (holder, mother)
    assert env.reg("13").RemoveProxy(req) == resp  # a replay
    listed = env.reg("13").ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=holder))
    assert list(listed.as_holder) == []
    stranger = env.person("62")
    before = env.snap()
    refused(NOT_FOUND, "PROXY_NOT_FOUND", env.reg("13").RemoveProxy, rpb.RemoveProxyRequest(
        request_id=rid("rmproxy"), holder_id_number=holder, relative_id_number=mother, requested_by_id_number=by))
    refused(INVALID, "NOT_A_SIDE", env.reg("13").RemoveProxy, rpb.RemoveProxyRequest(
        request_id=rid("rmproxy"), holder_id_number=holder, relative_id_number=mother,
        requested_by_id_number=stranger))
    assert env.snap() == before
    # Once removed it can be added again.
    env.reg("13").BindProxy(proxy_req(holder, mother))


def test_a_death_ends_the_persons_proxies_on_either_side(env):
    """SPEC §5b: on death the person's bindings end, 亲情账户 included, as holder and as relative in
    any province; the holder's place among their five relatives is free again."""
    son = env.person("13", bal=1_000)
    mother, daughter = env.person("11", itype=RESIDENT, birth="19550101"), env.person("11", birth="19850101")
    env.reg("13").BindProxy(proxy_req(son, mother))
    env.reg("11").BindProxy(proxy_req(daughter, son, relation=cpb.RELATION_SIBLING))
    death = rpb.RecordDeathRequest(request_id=rid("death"), id_number=son, heir_id_number=daughter,
                                   date_of_death="20261121")
    first = env.reg("13").RecordDeath(death)
    assert env.reg("13").RecordDeath(death) == first
    for pid in (son, mother, daughter):
        listed = env.reg("11").ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=pid))
        assert (list(listed.as_holder), list(listed.as_relative)) == ([], []), pid


def test_a_removal_resent_at_another_registry_is_its_first_answer_and_an_id_reused_is_refused(env):
    """Proxies are national but each registry keeps its own request-id claims: the removal itself
    remembers its id, so a resend anywhere neither removes a proxy added since nor another one."""
    holder = env.person("13")
    mother, father = (env.person("11", itype=RESIDENT, birth="19550101") for _ in range(2))
    env.reg("13").BindProxy(proxy_req(holder, mother))
    env.reg("13").BindProxy(proxy_req(holder, father))
    req = rpb.RemoveProxyRequest(request_id=rid("rmproxy"), holder_id_number=holder, relative_id_number=mother,
                                 requested_by_id_number=holder)
    first = env.reg("13").RemoveProxy(req)
    env.reg("13").BindProxy(proxy_req(holder, mother))  # added again since
    assert env.reg("11").RemoveProxy(req) == first
    before = env.snap()
    other = rpb.RemoveProxyRequest(request_id=req.request_id, holder_id_number=holder, relative_id_number=father,
                                   requested_by_id_number=holder)
    refused(grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED", env.reg("62").RemoveProxy, other)
    assert env.snap() == before
    listed = env.reg("13").ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=holder))
    assert sorted(x.relative_id_number for x in listed.as_holder) == sorted([mother, father])


def test_an_addition_resent_at_another_registry_is_its_first_answer_and_an_id_reused_is_refused(env):
    """As for removals: a resend of an addition anywhere does not add the proxy back once removed,
    and the same id naming another relative is refused, writing nothing."""
    holder = env.person("13")
    mother, father = (env.person("11", itype=RESIDENT, birth="19550101") for _ in range(2))
    add = proxy_req(holder, mother)
    first = env.reg("13").BindProxy(add)
    env.reg("13").RemoveProxy(rpb.RemoveProxyRequest(request_id=rid("rmproxy"), holder_id_number=holder,
                                                     relative_id_number=mother, requested_by_id_number=mother))
    assert env.reg("11").BindProxy(add) == first
    before = env.snap()
    refused(grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED", env.reg("62").BindProxy,
            proxy_req(holder, father, request_id=add.request_id))
    refused(grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED", env.reg("62").BindProxy,
            proxy_req(holder, mother, request_id=add.request_id, relation=cpb.RELATION_GRANDPARENT))
    assert env.snap() == before
    listed = env.reg("13").ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=holder))
    assert list(listed.as_holder) == []


def test_a_proxy_takes_any_relative_whatever_the_province_allows_for_mutual_aid(env):
    """SPEC §5b: a 亲情账户 is national, not province-bound, and only presents the relative's own 医保码
    (the seeds: "帮助家人展示医保码", "添加我的亲属"); no near-kin set governs it — neither a
    province's 家庭共济 `relations` nor §2's near-kin — so an in-law (a relative by marriage, 姻亲) is
    added as any relative is, and one registry answers as another would."""
    holder = env.person("13", bal=10_000)
    mother_in_law = env.person("11", itype=RESIDENT, birth="19550101")
    p = env.reg("13").BindProxy(proxy_req(holder, mother_in_law, relation=cpb.RELATION_PARENT_IN_LAW)).proxy
    assert (p.holder_id_number, p.relative_id_number, p.relation) == (holder, mother_in_law,
                                                                      cpb.RELATION_PARENT_IN_LAW)
    for prov in ("11", "62"):
        listed = env.reg(prov).ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=mother_in_law))
        assert [x.holder_id_number for x in listed.as_relative] == [holder]
    assert env.bal("13", holder) == 10_000
    # Still a relation has to be named.
    refused(INVALID, "UNKNOWN_RELATION", env.reg("13").BindProxy,
            proxy_req(holder, env.person("11", itype=RESIDENT, birth="19550101"), relation=cpb.RELATION_UNSPECIFIED))


# ================================================================================================
# A 亲情账户 added while a side's death is being recorded (SPEC §5b: a death ends the person's 亲情账户)
# ================================================================================================


class _DiesAfterLookup:
    """Registry 13's view of the national person directory, in which `pid` dies (the real RecordDeath of
    their registry, run to the end: status, directory, their 亲情账户 ended) just after the addition
    read them ACTIVE, before it writes: the death's search finds nothing to end."""

    def __init__(self, real: Any, pid: str, die: Any) -> None:
        self.real, self.pid, self.die, self.died = real, pid, die, False

    async def lookup(self, id_number: str) -> Any:
        found = await self.real.lookup(id_number)
        if id_number == self.pid and not self.died:
            self.died = True
            await self.die()
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _proxy_race(env: Env, side: str) -> tuple[str, str, str, rpb.BindProxyRequest, Any]:
    """A 河北 holder and a 北京 mother; the one named by `side` dies between the addition's read and its
    write. Returns holder, mother, the one who dies, the addition and registry 13."""
    holder = env.person("13")
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    dies, prov = (mother, "11") if side == "relative" else (holder, "13")
    heir = env.person("62")
    registry = env.n.registries[prov].registry
    death = rpb.RecordDeathRequest(request_id=rid("death"), id_number=dies, heir_id_number=heir,
                                   date_of_death="20261121")
    adding = env.n.registries["13"].registry
    adding.ctx.directory = _DiesAfterLookup(adding.ctx.directory, dies, lambda: registry.record_death(death))
    return holder, mother, dies, proxy_req(holder, mother), adding


def _no_proxy_left(env: Env, holder: str, mother: str, add: rpb.BindProxyRequest) -> None:
    for prov in ("13", "11"):
        for pid in (holder, mother):
            listed = env.reg(prov).ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=pid))
            assert (list(listed.as_holder), list(listed.as_relative)) == ([], []), (prov, pid)
    assert env.rdb.hget("nat:{proxy}:added", add.request_id) is None
    assert env.rdb.zcard("reg:13:{open}:setl") == 0
    assert not env.rdb.exists(f"reg:13:{{rid:{add.request_id}}}")


def _added_then_crashed(env: Env, add: rpb.BindProxyRequest, adding: Any) -> None:
    """Registry 13 adds the proxy after the death (`_proxy_race`) and dies after its write, before reading
    the sides again; its view of the directory is put back."""
    real = adding.ctx.directory.real

    def crash(point: str) -> None:
        if point == "proxy.after_write":
            raise RuntimeError(point)

    adding.fault_hook = crash
    try:
        with pytest.raises(grpc.RpcError):
            env.reg("13").BindProxy(add)
    finally:
        adding.fault_hook = None
        adding.ctx.directory = real


@pytest.mark.parametrize("side", ["relative", "holder"])
def test_a_proxy_added_while_a_side_dies_is_refused_as_after_the_death_and_leaves_nothing(env, side):
    """The addition read both sides ACTIVE; the death was recorded to the end before its write. The
    addition reads the sides again after its write, undoes it and answers what an addition after the
    death answers; a resend is refused the same and writes nothing."""
    holder, mother, dies, add, adding = _proxy_race(env, side)
    why = "MEMBER_NOT_INSURED" if side == "relative" else "HELPER_NOT_ACTIVE"
    real = adding.ctx.directory.real
    try:
        refused(FP, why, env.reg("13").BindProxy, add)
    finally:
        adding.ctx.directory = real
    assert env.reg("11").GetPerson(rpb.GetPersonRequest(id_number=mother)).person.status == \
        (cpb.PERSON_STATUS_DECEASED if side == "relative" else cpb.PERSON_STATUS_ACTIVE)
    _no_proxy_left(env, holder, mother, add)
    before = env.snap()
    refused(FP, why, env.reg("13").BindProxy, add)
    refused(FP, why, env.reg("11").BindProxy, add)
    assert env.snap() == before


@pytest.mark.parametrize("finisher", ["recovery", "resend"])
def test_a_proxy_written_after_the_death_by_a_registry_that_died_is_undone(env, loop_thread, finisher):
    """As above, and the adding registry dies after its write, before reading the sides again: the
    recovery loop (or a resend of the addition) undoes it and frees the id; nothing is left."""
    holder, mother, _, add, adding = _proxy_race(env, "relative")
    _added_then_crashed(env, add, adding)
    listed = env.reg("13").ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=mother))
    assert [x.holder_id_number for x in listed.as_relative] == [holder]  # the crash left it
    if finisher == "recovery":
        env.clock.advance(60_000)
        assert loop_thread.run(adding.recover()).lifecycle == 1
    else:
        refused(FP, "MEMBER_NOT_INSURED", env.reg("13").BindProxy, add)
    _no_proxy_left(env, holder, mother, add)
    refused(FP, "MEMBER_NOT_INSURED", env.reg("13").BindProxy, add)
    _no_proxy_left(env, holder, mother, add)


class _AddsElsewhereAfterLookup:
    """Registry 11's view of the national person directory, in which, just after the resend at 11 read the
    relative ACTIVE, the first attempt at registry 13 reads the sides, the relative dies (to the end: their
    search finds nothing), and 13 writes the proxy and dies before reading the sides again."""

    def __init__(self, real: Any, pid: str, first: Any) -> None:
        self.real, self.pid, self.first, self.ran = real, pid, first, False

    async def lookup(self, id_number: str) -> Any:
        found = await self.real.lookup(id_number)
        if id_number == self.pid and not self.ran:
            self.ran = True
            try:
                await self.first()
            except Exception as exc:  # noqa: BLE001 - the crash of 13 the test injects
                assert "proxy.after_write" in str(exc), exc
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_resend_elsewhere_that_finds_an_unfinished_addition_of_a_dead_side_is_refused(env, loop_thread):
    """The first attempt at 13 wrote the proxy after the relative's death was recorded and died before its
    second read; a resend at 11, which read the sides before the death, finds that addition remembered. It
    reads the sides again itself and is refused as after the death: never a success the 13 recovery loop
    then undoes. Nothing is left, and every registry answers the id alike."""
    holder, mother, _, add, adding = _proxy_race(env, "relative")
    real13 = adding.ctx.directory.real

    def hook(point: str) -> None:
        if point == "proxy.after_write":
            raise RuntimeError(point)

    adding.fault_hook = hook
    resending = env.n.registries["11"].registry
    real11 = resending.ctx.directory
    resending.ctx.directory = _AddsElsewhereAfterLookup(real11, mother, lambda: adding.bind_proxy(add))
    try:
        refused(FP, "MEMBER_NOT_INSURED", env.reg("11").BindProxy, add)
    finally:
        adding.fault_hook = None
        adding.ctx.directory, resending.ctx.directory = real13, real11
    env.clock.advance(60_000)
    loop_thread.run(adding.recover())
    _no_proxy_left(env, holder, mother, add)
    for prov in ("11", "13", "62"):
        refused(FP, "MEMBER_NOT_INSURED", env.reg(prov).BindProxy, add)
    _no_proxy_left(env, holder, mother, add)



def test_an_addition_resent_after_a_side_died_is_still_its_first_answer(env):
    """SPEC §7, decision 11: an addition that stood (both sides read ACTIVE after its write) answers a
    resend at any registry as it first answered, even once the relative's death ended the proxy; it adds
    nothing back."""
    holder = env.person("13")
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    add = proxy_req(holder, mother)
    first = env.reg("13").BindProxy(add)
    env.reg("11").RecordDeath(rpb.RecordDeathRequest(request_id=rid("death"), id_number=mother,
                                                     heir_id_number=holder, date_of_death="20261121"))
    proxies = {k: env.rdb.dump(k) for k in env.rdb.scan_iter("nat:{proxy}*")}
    for prov in ("13", "11", "62"):
        assert env.reg(prov).BindProxy(add) == first, prov
    assert {k: env.rdb.dump(k) for k in env.rdb.scan_iter("nat:{proxy}*")} == proxies
    listed = env.reg("62").ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=holder))
    assert list(listed.as_holder) == []


@pytest.mark.parametrize("dies", ["relative", "holder", "neither"])
def test_an_addition_finished_before_additions_were_marked_kept_stands_on_a_resend(env, dies):
    """An addition answered before `nat:{proxy}:kept` existed has its record and no mark (written here in
    that shape): both sides were read ACTIVE when it was answered. A resend at any registry, after a side
    died (the death ending the proxy) or not, gets its first answer, leaves the remembered addition as it
    was (so every later resend answers alike) and adds nothing back."""
    holder = env.person("13")
    mother = env.person("11", itype=RESIDENT, birth="19550101")
    add = proxy_req(holder, mother)
    first = env.reg("13").BindProxy(add)
    env.rdb.hdel("nat:{proxy}:kept", add.request_id)  # the shape of an addition made before the mark
    if dies != "neither":
        dead = mother if dies == "relative" else holder
        env.reg("11" if dies == "relative" else "13").RecordDeath(rpb.RecordDeathRequest(
            request_id=rid("death"), id_number=dead, heir_id_number=holder if dies == "relative" else mother,
            date_of_death="20261121"))
    proxies = {k: env.rdb.dump(k) for k in env.rdb.scan_iter("nat:{proxy}*") if k != b"nat:{proxy}:kept"}
    for prov in ("11", "62", "13", "11"):
        assert env.reg(prov).BindProxy(add) == first, prov
    assert {k: env.rdb.dump(k) for k in env.rdb.scan_iter("nat:{proxy}*") if k != b"nat:{proxy}:kept"} == proxies
    listed = env.reg("62").ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=holder))
    assert [x.relative_id_number for x in listed.as_holder] == ([mother] if dies == "neither" else [])


def test_a_resend_whose_remembered_addition_is_undone_before_its_write_is_judged_afresh(env, loop_thread):
    """A resend at 11 finds the addition 13 wrote (after the relative's death, 13 dying before its second
    read) and, not judging it afresh, goes to its write; 13's undo lands in between (written here as
    proxy_undo.lua writes it). Its write finds no addition and adds nothing: it is judged as any addition,
    refused as after the death."""
    holder, mother, _, add, adding = _proxy_race(env, "relative")
    _added_then_crashed(env, add, adding)
    resending, undone = env.n.registries["11"].registry, []

    def undo(point: str) -> None:
        if point == "proxy.before_write" and not undone:
            undone.append(point)
            env.rdb.hdel("nat:{proxy}:added", add.request_id)
            env.rdb.hdel(f"nat:{{proxy}}:ph:{holder}", mother)
            env.rdb.hdel(f"nat:{{proxy}}:pr:{mother}", holder)

    resending.fault_hook = undo
    try:
        refused(FP, "MEMBER_NOT_INSURED", env.reg("11").BindProxy, add)
    finally:
        resending.fault_hook = None
    assert undone
    env.clock.advance(60_000)
    loop_thread.run(adding.recover())
    _no_proxy_left(env, holder, mother, add)
    assert not env.rdb.exists(f"reg:11:{{rid:{add.request_id}}}")


def test_a_removal_and_another_addition_beside_an_unfinished_addition_of_a_dead_side(env, loop_thread):
    """13 wrote the proxy after the relative's death and died before its second read. Meanwhile the holder
    removes it at 11 and adds the pair again under another id: the removal stands as made, the new addition
    is refused as after the death, and 13's recovery undoes the first addition without touching either; no
    proxy of the dead relative is left, and each id answers again as it first did."""
    holder, mother, _, add, adding = _proxy_race(env, "relative")
    _added_then_crashed(env, add, adding)
    rm = rpb.RemoveProxyRequest(request_id=rid("rmproxy"), holder_id_number=holder, relative_id_number=mother,
                                requested_by_id_number=holder)
    removed = env.reg("11").RemoveProxy(rm)
    assert removed.proxy.relative_id_number == mother
    again = proxy_req(holder, mother)
    refused(FP, "MEMBER_NOT_INSURED", env.reg("62").BindProxy, again)
    env.clock.advance(60_000)
    loop_thread.run(adding.recover())
    _no_proxy_left(env, holder, mother, add)
    assert env.reg("62").RemoveProxy(rm) == removed
    refused(FP, "MEMBER_NOT_INSURED", env.reg("13").BindProxy, add)
    refused(FP, "MEMBER_NOT_INSURED", env.reg("11").BindProxy, again)
    _no_proxy_left(env, holder, mother, add)
