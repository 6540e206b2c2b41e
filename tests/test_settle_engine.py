"""The settlement engine's two ways to apply a plan, against each other and against a model of SPEC §4.

For random families (patient insurance type, own balance against the amount, use_account, 0–4 helpers
with random balances, ties and zeros, some SUSPENDED or TERMINATED after binding, 亲情账户 proxies) and
policy variants (河北 LARGEST_BALANCE all or nothing, 北京 FILING_ORDER in turn, 甘肃 exclusive, and
河北 with FILING_ORDER, helper_partial, helpers_in_turn), two identical families are built on one
registry; one settles with `registry.atomic = True` (settle_apply.lua, one script), its twin with
`registry.atomic = False` (the staged path under the patient's fenced lock: settle_open, one
settle_charge per helper, settle_finish). The results, balances, ledgers, consumption records (of the
patient and of every helper), GetSettlement and every key of the family's slots must be the same on
both paths (ids aside), and both must equal `model()`: a second, independent reading of SPEC §4 written
here, not a call to `rules.plan_settlement` (the product's one implementation). A reversal of each
returns every fen to the account it came from, and marks the consumption records REVERSED.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import re
from typing import Any

import pytest
from conftest import policy_for
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from medaid.common.idnumber import make
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.policy import Policy
from medaid.registry.v1 import registry_pb2 as pb
from support import FACE, logical_value, rid

REGION = {"13": "130100", "11": "110000", "62": "620100"}
DIVISION = {"13": "130102", "11": "110101", "62": "620102"}
INSTITUTION = "H13010100001"
PROXY_BALANCE = 7_777  # the 亲情账户 partner's own money: never touched by the patient's bill


def _variants() -> dict[str, Policy]:
    hebei, beijing = policy_for("13"), policy_for("11")
    return {
        "13": hebei,  # LARGEST_BALANCE, all or nothing
        "11": beijing,  # FILING_ORDER, in turn
        # 甘肃 runs family accounts; its exclusivity is exercised on a bind-and-deduct copy.
        "62": dataclasses.replace(policy_for("62"), model="BIND_AND_DEDUCT"),
        "13-filing": dataclasses.replace(hebei, helper_selection="FILING_ORDER"),
        "13-partial": dataclasses.replace(hebei, helper_partial=True),
        "13-filing-partial": dataclasses.replace(hebei, helper_selection="FILING_ORDER", helper_partial=True),
        "13-in-turn": dataclasses.replace(hebei, helpers_in_turn=True),  # the richest first, each in turn
        "11-no-turn": dataclasses.replace(beijing, helpers_in_turn=False),
    }


VARIANTS = _variants()
ITYPE = {"EMPLOYEE": cpb.INSURANCE_TYPE_EMPLOYEE, "RESIDENT": cpb.INSURANCE_TYPE_RESIDENT,
         "FLEXIBLE": cpb.INSURANCE_TYPE_FLEXIBLE}
STATUS = {"SUSPENDED": cpb.PERSON_STATUS_SUSPENDED, "TERMINATED": cpb.PERSON_STATUS_TERMINATED}
CATEGORIES = [cpb.CATEGORY_OUTPATIENT, cpb.CATEGORY_INPATIENT, cpb.CATEGORY_PHARMACY]
OUT = cpb.CATEGORY_OUTPATIENT


@dataclasses.dataclass(frozen=True)
class HelperSpec:
    itype: str  # EMPLOYEE or FLEXIBLE (tier 2): the two kinds that may be helpers
    balance: int
    status: str = "ACTIVE"  # ACTIVE | SUSPENDED | TERMINATED, set after every binding


@dataclasses.dataclass(frozen=True)
class Scenario:
    variant: str
    itype: str
    tier: int
    own: int
    amount: int
    use_account: bool
    helpers: tuple[HelperSpec, ...]  # in filing (备案) order
    proxy: str  # '' none, 'holder' (the patient holds a 亲情账户 for the partner) or 'relative'
    category: int = OUT

    @property
    def policy(self) -> Policy:
        return VARIANTS[self.variant]

    @property
    def has_account(self) -> bool:
        return self.itype == "EMPLOYEE" or (self.itype == "FLEXIBLE" and self.tier == 2)


# --- the model: SPEC §4 read a second time --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Split:
    acct_pay: int
    charges: tuple[tuple[str, int], ...]  # (helper placeholder H<i>, fen), in the order they paid
    cash_pay: int
    helper_reason: str
    wallet_reason: str

    @property
    def mulaid_pay(self) -> int:
        return sum(fen for _, fen in self.charges)


def model(sc: Scenario) -> Split:
    """Own account first, then the own wallet, then the helper step of the province, then cash.

    A TERMINATED helper's binding has ended (§3): not bound any more. A SUSPENDED one stays bound but
    cannot pay. Nobody in these families has opened a 医保钱包, so step 2 never pays. The helper step:
    the ACTIVE bound helpers, richest first (ties: the earlier filing) or in filing order; in turn,
    each pays what it has until the bill is covered; otherwise the first alone pays all of it, or
    nothing (never pooled), or — helper_partial — what it has.
    """
    policy = sc.policy
    bound = [(f"H{i}", h) for i, h in enumerate(sc.helpers) if h.status != "TERMINATED"]
    if not sc.use_account:  # acct_used_flag 0: cash only
        return Split(0, (), sc.amount, "ACCOUNT_NOT_USED" if bound else "", "")
    acct = min(sc.own, sc.amount) if sc.has_account else 0
    rest = sc.amount - acct
    if rest == 0:
        return Split(acct, (), 0, "", "")
    wallet_reason = "WALLET_NOT_OPENED"
    if not bound:
        return Split(acct, (), rest, "PROXY_ONLY" if sc.proxy else "", wallet_reason)
    able = [(name, h.balance) for name, h in bound if h.status == "ACTIVE"]
    if not able:
        return Split(acct, (), rest, "NO_ACTIVE_HELPER", wallet_reason)
    if policy.helper_selection == "LARGEST_BALANCE":
        able.sort(key=lambda x: -x[1])  # a stable sort: equal balances stay in filing order
    if policy.helpers_in_turn:
        charges, left = [], rest
        for name, bal in able:
            if left and bal:
                charges.append((name, min(bal, left)))
                left -= min(bal, left)
        reason = "HELPER_ZERO_BALANCE" if not charges else "HELPER_INSUFFICIENT" if left else ""
        return Split(acct, tuple(charges), left, reason, wallet_reason)
    name, bal = able[0]
    if bal == 0:
        return Split(acct, (), rest, "HELPER_ZERO_BALANCE", wallet_reason)
    if bal >= rest:
        return Split(acct, ((name, rest),), 0, "", wallet_reason)
    if policy.helper_partial:
        return Split(acct, ((name, bal),), rest - bal, "HELPER_INSUFFICIENT", wallet_reason)
    return Split(acct, (), rest, "HELPER_INSUFFICIENT", wallet_reason)


def test_the_model_reads_the_spec_examples():
    """The model itself, on the SPEC's own examples (so a wrong model cannot pass for a right one)."""
    h = HelperSpec

    def run(variant: str, own: int, amount: int, *helpers: HelperSpec, use: bool = True,
            proxy: str = "") -> tuple[Any, ...]:
        s = model(Scenario(variant, "EMPLOYEE", 0, own, amount, use, helpers, proxy))
        return s.acct_pay, s.charges, s.cash_pay, s.helper_reason

    rich_last = (h("EMPLOYEE", 3_000), h("EMPLOYEE", 5_000), h("EMPLOYEE", 4_000))
    assert run("13", 1_000, 5_000, *rich_last) == (1_000, (("H1", 4_000),), 0, "")
    assert run("13", 0, 6_000, *rich_last) == (0, (), 6_000, "HELPER_INSUFFICIENT")  # never pooled
    assert run("13-partial", 0, 6_000, *rich_last) == (0, (("H1", 5_000),), 1_000, "HELPER_INSUFFICIENT")
    assert run("13-filing", 0, 3_000, *rich_last) == (0, (("H0", 3_000),), 0, "")
    assert run("13-filing", 0, 4_000, *rich_last) == (0, (), 4_000, "HELPER_INSUFFICIENT")
    assert run("11", 0, 10_000, *rich_last) == (0, (("H0", 3_000), ("H1", 5_000), ("H2", 2_000)), 0, "")
    assert run("11", 0, 13_000, *rich_last) == \
        (0, (("H0", 3_000), ("H1", 5_000), ("H2", 4_000)), 1_000, "HELPER_INSUFFICIENT")
    assert run("13-in-turn", 0, 10_000, *rich_last) == (0, (("H1", 5_000), ("H2", 4_000), ("H0", 1_000)), 0, "")
    assert run("11", 0, 100, h("EMPLOYEE", 0), h("EMPLOYEE", 0)) == (0, (), 100, "HELPER_ZERO_BALANCE")
    assert run("13", 0, 100, h("EMPLOYEE", 500, "SUSPENDED")) == (0, (), 100, "NO_ACTIVE_HELPER")
    assert run("13", 0, 100, h("EMPLOYEE", 500, "TERMINATED"), proxy="holder") == (0, (), 100, "PROXY_ONLY")
    assert run("13", 500, 100, h("EMPLOYEE", 500), use=False) == (0, (), 100, "ACCOUNT_NOT_USED")
    assert run("11", 100, 100, h("EMPLOYEE", 500)) == (100, (), 0, "")


# --- random scenarios ------------------------------------------------------------------------------


@st.composite
def scenarios(draw: Any, variant: str) -> Scenario:
    itype, tier = draw(st.sampled_from([("EMPLOYEE", 0), ("RESIDENT", 0), ("FLEXIBLE", 1), ("FLEXIBLE", 2)]))
    amount = draw(st.one_of(st.sampled_from([1, 100, 5_000, 10_000]), st.integers(1, 40_000)))
    own_kind = draw(st.sampled_from(["zero", "less", "equal", "more"]))
    own = {
        "zero": 0,
        "less": draw(st.integers(1, amount - 1)) if amount > 1 else 0,
        "equal": amount,
        "more": amount + draw(st.integers(1, 10_000)),
    }[own_kind]
    if not (itype == "EMPLOYEE" or (itype == "FLEXIBLE" and tier == 2)):
        own = 0  # residents and 灵活就业 tier 1 have no personal account to credit
    rest = amount - min(own, amount)  # what the helpers would have to pay
    helpers: list[HelperSpec] = []
    for _ in range(draw(st.integers(0, 1 if VARIANTS[variant].exclusive else 4))):
        kind = draw(st.sampled_from(["zero", "under", "exact", "over", "tie", "half", "random"]))
        bal = {
            "zero": 0,
            "under": max(rest - 1, 0),
            "exact": rest,
            "over": rest + draw(st.integers(1, 5_000)),
            "tie": helpers[-1].balance if helpers else rest,
            "half": rest // 2,  # two halves (and a fen) cover the bill in turn
            "random": draw(st.integers(0, 50_000)),
        }[kind]
        status = draw(st.sampled_from(["ACTIVE", "ACTIVE", "ACTIVE", "SUSPENDED", "TERMINATED"]))
        helpers.append(HelperSpec(draw(st.sampled_from(["EMPLOYEE", "FLEXIBLE"])), bal, status))
    proxy = draw(st.sampled_from(["", "", "holder", "relative"]))
    use_account = draw(st.sampled_from([True, True, True, False]))
    return Scenario(variant, itype, tier, own, amount, use_account, tuple(helpers), proxy,
                    draw(st.sampled_from(CATEGORIES)))


# --- building one family ---------------------------------------------------------------------------

# Own id sequence: support.new_id repeats after 1000 people of one birth date, and this file enrolls
# many; the birth date moves on every 1000 ids (everyone stays an adult).
_ids = itertools.count()


def _new_id(province: str) -> str:
    n = next(_ids)
    birth = (dt.date(1960, 1, 1) + dt.timedelta(days=n // 1000)).strftime("%Y%m%d")
    return make(DIVISION[province], birth, f"{n % 1000:03d}")


@dataclasses.dataclass
class Family:
    patient: str
    helpers: list[str]
    proxy: str

    def people(self) -> list[tuple[str, str]]:
        """(placeholder, id) of everyone in the family."""
        out = [("PAT", self.patient)] + [(f"H{i}", h) for i, h in enumerate(self.helpers)]
        if self.proxy:
            out.append(("PROXY", self.proxy))
        return out

    def name_of(self, pid: str) -> str:
        return {p: name for name, p in self.people()}.get(pid, pid)


def _enroll(stub: Any, province: str, itype: str, tier: int = 0) -> str:
    pid = _new_id(province)
    stub.EnrollPerson(pb.EnrollPersonRequest(
        request_id=rid("enroll"), id_number=pid, name="张三", insurance_type=ITYPE[itype], flexible_tier=tier,
        pooling_region=REGION[province]))
    return pid


def _credit(stub: Any, pid: str, amount: int) -> None:
    if amount > 0:
        resp = stub.CreditAccount(pb.CreditAccountRequest(
            request_id=rid("credit"), id_number=pid, amount_fen=amount,
            kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"))
        assert resp.balance_fen == amount


def build(stub: Any, sc: Scenario) -> Family:
    province = sc.policy.province
    patient = _enroll(stub, province, sc.itype, sc.tier)
    _credit(stub, patient, sc.own)
    helpers = []
    for h in sc.helpers:  # bound in list order: that is the filing order
        hid = _enroll(stub, province, h.itype, 2 if h.itype == "FLEXIBLE" else 0)
        _credit(stub, hid, h.balance)
        req = pb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=hid, member_id_number=patient,
                                      relation=cpb.RELATION_CHILD)
        req.member_verification.CopyFrom(FACE)
        stub.BindMutualAid(req)
        helpers.append(hid)
    for hid, h in zip(helpers, sc.helpers, strict=True):  # status changes after every binding
        if h.status != "ACTIVE":
            stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(
                request_id=rid("status"), id_number=hid, status=STATUS[h.status]))
    proxy = ""
    if sc.proxy:
        proxy = _enroll(stub, province, "EMPLOYEE")
        _credit(stub, proxy, PROXY_BALANCE)
        holder, relative = (patient, proxy) if sc.proxy == "holder" else (proxy, patient)
        stub.BindProxy(pb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=holder,
                                           relative_id_number=relative, relation=cpb.RELATION_PARENT,
                                           relative_verification=FACE))
    return Family(patient, helpers, proxy)


def settle_req(sc: Scenario, fam: Family) -> pb.SettleRequest:
    return pb.SettleRequest(request_id=rid("settle"), patient_id_number=fam.patient, amount_fen=sc.amount,
                            use_account=sc.use_account, category=sc.category, institution_code=INSTITUTION,
                            institution_admdvs=REGION[sc.policy.province])


def presettle_req(req: pb.SettleRequest) -> pb.PreSettleRequest:
    return pb.PreSettleRequest(patient_id_number=req.patient_id_number, amount_fen=req.amount_fen,
                               use_account=req.use_account, category=req.category,
                               institution_code=req.institution_code, institution_admdvs=req.institution_admdvs)


# --- reading state back, ids aside -----------------------------------------------------------------

_RID = re.compile(r"\b(enroll|credit|bind|status|proxy|settle|rev)-\d{6}\b")
PERSON_KEYS = ("person", "account", "ledger", "applied", "consumption", "consumption_index")


def _normalizer(fam: Family, sid: str) -> Any:
    subst = {pid: name for name, pid in fam.people()}
    subst[sid] = "SID"
    ids = re.compile("|".join(re.escape(k) for k in sorted(subst, key=len, reverse=True)))

    def text(s: str) -> str:
        s = ids.sub(lambda m: subst[m.group(0)], s)
        return _RID.sub(lambda m: m.group(1).upper(), s)  # one request of a kind per person: no collisions

    def norm(x: Any) -> Any:
        if isinstance(x, bytes):
            return text(x.decode())
        if isinstance(x, str):
            return text(x)
        if isinstance(x, (tuple, list)):
            return tuple(norm(v) for v in x)
        return x

    return norm


def person_slots(rdb: Any, keys: Keys, fam: Family, sid: str) -> dict[str, Any]:
    """Every key of every family member's slot with its contents — the settlement record included: both
    paths write one record format — but the patient's lock and fence (only the staged path takes the
    lock), with ids, the settlement id and request ids replaced by placeholders."""
    norm = _normalizer(fam, sid)
    out: dict[str, Any] = {}
    for name, pid in fam.people():
        tag = keys.person_tag(pid)
        found = [k for k in rdb.scan_iter(match=f"{tag}:*") if not re.search(rb":(lock|fence)$", k)]
        out[f"{name}:keys"] = tuple(sorted(norm(k) for k in found))
        for key in found:
            kind, value = logical_value(rdb, key)
            if kind == b"hash":
                value = tuple(sorted((norm(k), norm(v)) for k, v in value))
            out[norm(key)] = (kind, norm(value))
    return out


def balances(stub: Any, fam: Family) -> dict[str, int]:
    return {name: int(stub.GetPerson(pb.GetPersonRequest(id_number=pid)).person.balance_fen)
            for name, pid in fam.people()}


def consumption(stub: Any, fam: Family, sid: str) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for name, pid in fam.people():
        recs = stub.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=pid)).records
        out[name] = [("SID" if r.settlement_id == sid else r.settlement_id, r.role, fam.name_of(r.helper_id_number),
                      fam.name_of(r.member_id_number), r.mulaid_pay_fen, r.category, r.institution_code,
                      r.at_unix_ms, r.state) for r in recs]
    return out


def ledger_refs(rdb: Any, keys: Keys, fam: Family, sid: str) -> dict[str, list[tuple[str, int, int]]]:
    return {name: [(e["kind"], e["amount"], e["bal"]) for e in map(json.loads, rdb.lrange(keys.ledger(pid), 0, -1))
                   if e["ref"] == sid]
            for name, pid in fam.people()}


def money(res: pb.SettlementResult, fam: Family) -> tuple[Any, ...]:
    """What a SettlementResult says was paid, by whom, with balances after and reasons (ids as names)."""
    return (res.amount_fen, res.acct_pay_fen, res.wallet_pay_fen, res.mulaid_pay_fen,
            fam.name_of(res.helper_id_number) if res.helper_id_number else "", res.cash_pay_fen,
            res.balance_after_fen, res.helper_balance_after_fen, res.helper_reason, res.wallet_reason,
            tuple((fam.name_of(c.helper_id_number), c.amount_fen, c.balance_after_fen) for c in res.helper_charges))


def canonical(msg: Any, fam: Family, sid: str) -> Any:
    """A copy of a SettlementResult / ReverseSettlementResponse with ids replaced by placeholders."""
    c = type(msg)()
    c.CopyFrom(msg)
    c.settlement_id = "SID" if c.settlement_id == sid else c.settlement_id
    c.helper_id_number = fam.name_of(c.helper_id_number)
    charges = c.helper_charges if isinstance(c, pb.SettlementResult) else c.helper_refunds
    for ch in charges:
        ch.helper_id_number = fam.name_of(ch.helper_id_number)
    if isinstance(c, pb.SettlementResult):
        c.patient_id_number = fam.name_of(c.patient_id_number)
    else:
        c.reversal_id = "REV"
    return c


# --- the differential property ---------------------------------------------------------------------

PATHS = ("atomic", "staged")


@pytest.fixture
def running(start_registry: Any, variant: str) -> Any:
    """A registry of the variant's province running the variant's policy (fresh Redis: `rdb`)."""
    policy = VARIANTS[variant]
    return start_registry(policy.province, policy=policy)


def differential(running: Any, rdb: Any, sc: Scenario) -> None:
    stub, reg = running.stub, running.registry
    keys = Keys(sc.policy.province)
    split = model(sc)
    rdb.flushall()  # each example on an empty Redis: the SCANs stay cheap (scripts reload on NOSCRIPT)
    fams = {path: build(stub, sc) for path in PATHS}
    reqs = {path: settle_req(sc, fam) for path, fam in fams.items()}
    sids = {path: req.request_id for path, req in reqs.items()}

    start = {path: balances(stub, fam) for path, fam in fams.items()}
    want_start = {"PAT": sc.own, **{f"H{i}": h.balance for i, h in enumerate(sc.helpers)}}
    if sc.proxy:
        want_start["PROXY"] = PROXY_BALANCE
    assert start["atomic"] == start["staged"] == want_start
    before = {path: person_slots(rdb, keys, fam, sids[path]) for path, fam in fams.items()}
    assert before["atomic"] == before["staged"]  # two identical starting states

    # What the model says the result is, then PreSettle (nothing moves) and Settle on each path.
    after_of = {name: want_start[name] - fen for name, fen in split.charges}
    own_after = sc.own - split.acct_pay
    first = split.charges[0][0] if split.charges else ""
    want = (sc.amount, split.acct_pay, 0, split.mulaid_pay, first, split.cash_pay, own_after,
            after_of.get(first, 0), split.helper_reason, split.wallet_reason,
            tuple((name, fen, after_of[name]) for name, fen in split.charges))
    results: dict[str, pb.SettlementResult] = {}
    try:
        for path in PATHS:
            reg.atomic = path == "atomic"
            pre = stub.PreSettle(presettle_req(reqs[path])).result
            assert money(pre, fams[path]) == want, (sc, path, "presettle")
            assert (pre.state, pre.settlement_id) == ("PRE_SETTLEMENT", "")
            results[path] = stub.Settle(reqs[path]).result
    finally:
        reg.atomic = True

    got = {path: money(res, fams[path]) for path, res in results.items()}
    assert got["atomic"] == got["staged"], (sc, got)
    assert got["atomic"] == want, (sc, got["atomic"], want)
    for path, res in results.items():
        assert (res.settlement_id, res.patient_id_number, res.state) == (sids[path], fams[path].patient, "SETTLED")
        assert (res.category, res.institution_code) == (sc.category, INSTITUTION)
        region = REGION[sc.policy.province]
        assert (res.insured_region, res.settled_place) == (region, region)
        assert res.settled_at_unix_ms == reg.clock.now_ms()
    assert canonical(results["atomic"], fams["atomic"], sids["atomic"]) == \
        canonical(results["staged"], fams["staged"], sids["staged"])

    # Balances, ledgers, consumption records, every key of the family's slots.
    want_after = dict(want_start, PAT=own_after, **after_of)
    after = {path: balances(stub, fam) for path, fam in fams.items()}
    assert after["atomic"] == after["staged"] == want_after, (sc, after)
    refs = {path: ledger_refs(rdb, keys, fam, sids[path]) for path, fam in fams.items()}
    want_refs: dict[str, list[tuple[str, int, int]]] = {name: [] for name in want_start}
    if split.acct_pay:
        want_refs["PAT"] = [("SETTLE_OWN", -split.acct_pay, own_after)]
    for name, fen in split.charges:
        want_refs[name] = [("SETTLE_HELPER", -fen, after_of[name])]
    assert refs["atomic"] == refs["staged"] == want_refs
    cons = {path: consumption(stub, fam, sids[path]) for path, fam in fams.items()}
    want_cons: dict[str, list[tuple[Any, ...]]] = {name: [] for name in want_start}
    now = reg.clock.now_ms()
    for name, fen in split.charges:  # one record per helper charged, for the helper and for the member
        rec = (name, "PAT", fen, sc.category, INSTITUTION, now, "SETTLED")
        want_cons["PAT"].insert(0, ("SID", "MEMBER", *rec))  # newest first
        want_cons[name] = [("SID", "HELPER", *rec)]
    assert cons["atomic"] == cons["staged"] == want_cons, sc
    settled = {path: person_slots(rdb, keys, fam, sids[path]) for path, fam in fams.items()}
    assert settled["atomic"] == settled["staged"]
    assert not rdb.exists(keys.open_settlements())  # the staged path closed its entry

    # GetSettlement answers what Settle answered; a resent Settle replays it and moves nothing.
    for path, res in results.items():
        assert stub.GetSettlement(pb.GetSettlementRequest(settlement_id=sids[path])).result == res, path
        assert stub.Settle(reqs[path]).result == res, path
    assert {path: balances(stub, fam) for path, fam in fams.items()} == after

    # A reversal of each restores every starting balance, to the fen.
    revs = {path: stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=sids[path]))
            for path in PATHS}
    for path, rev in revs.items():
        fam = fams[path]
        assert (rev.acct_refund_fen, rev.wallet_refund_fen, rev.mulaid_refund_fen) == \
            (split.acct_pay, 0, split.mulaid_pay)
        assert rev.balance_after_fen == sc.own
        assert [(fam.name_of(r.helper_id_number), r.amount_fen, r.balance_after_fen) for r in rev.helper_refunds] == \
            [(name, fen, want_start[name]) for name, fen in split.charges]
        assert fam.name_of(rev.helper_id_number) == first
        assert rev.helper_balance_after_fen == (want_start[first] if first else 0)
    assert canonical(revs["atomic"], fams["atomic"], sids["atomic"]) == \
        canonical(revs["staged"], fams["staged"], sids["staged"])
    restored = {path: balances(stub, fam) for path, fam in fams.items()}
    assert restored["atomic"] == restored["staged"] == want_start
    refs = {path: ledger_refs(rdb, keys, fam, sids[path]) for path, fam in fams.items()}
    if split.acct_pay:
        want_refs["PAT"].append(("REVERSE_OWN", split.acct_pay, sc.own))
    for name, fen in split.charges:
        want_refs[name].append(("REVERSE_HELPER", fen, want_start[name]))
    assert refs["atomic"] == refs["staged"] == want_refs
    cons = {path: consumption(stub, fam, sids[path]) for path, fam in fams.items()}
    want_cons = {name: [(*r[:-1], "REVERSED") for r in recs] for name, recs in want_cons.items()}
    assert cons["atomic"] == cons["staged"] == want_cons
    reversed_ = {path: person_slots(rdb, keys, fam, sids[path]) for path, fam in fams.items()}
    assert reversed_["atomic"] == reversed_["staged"]
    got_back = {path: stub.GetSettlement(pb.GetSettlementRequest(settlement_id=sids[path])).result
                for path in fams}
    for path, res in got_back.items():
        assert res.state == "REVERSED"
        assert money(res, fams[path]) == want
    assert canonical(got_back["atomic"], fams["atomic"], sids["atomic"]) == \
        canonical(got_back["staged"], fams["staged"], sids["staged"])


EXAMPLES_PER_VARIANT = 8  # 8 variants: 64 random families in all


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@settings(max_examples=EXAMPLES_PER_VARIANT, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_atomic_and_staged_settle_alike_and_as_the_model_says(running, rdb, variant, data):
    sc = data.draw(scenarios(variant), label="scenario")
    split = model(sc)  # what was covered: pytest --hypothesis-show-statistics
    event(f"use={sc.use_account} helper_reason={split.helper_reason or '-'} helpers_paying={len(split.charges)}")
    differential(running, rdb, sc)


def _h(itype: str, bal: int, status: str = "ACTIVE") -> HelperSpec:
    return HelperSpec(itype, bal, status)


# Hand-picked corners, always run. (variant, patient itype, tier, own balance, amount, use_account, helpers, proxy)
CORNERS = [
    # LARGEST_BALANCE tie (7000 = 7000): the earlier filing pays exactly the rest.
    ("13", "EMPLOYEE", 0, 3_000, 10_000, True,
     (_h("EMPLOYEE", 7_000), _h("FLEXIBLE", 7_000), _h("EMPLOYEE", 6_999)), ""),
    # FILING_ORDER: the first-filed helper is too poor, the rich second one is not asked.
    ("13-filing", "RESIDENT", 0, 0, 10_000, True, (_h("EMPLOYEE", 500), _h("EMPLOYEE", 50_000)), ""),
    # FILING_ORDER + partial: the suspended first helper is skipped, the next pays what it has.
    ("13-filing-partial", "FLEXIBLE", 2, 1_000, 10_000, True,
     (_h("EMPLOYEE", 0, "SUSPENDED"), _h("EMPLOYEE", 4_000), _h("EMPLOYEE", 50_000)), ""),
    ("13-partial", "EMPLOYEE", 0, 0, 10_000, True, (_h("EMPLOYEE", 4_000), _h("FLEXIBLE", 3_000)), "holder"),
    # 亲情账户 only: PROXY_ONLY, all cash.
    ("11", "FLEXIBLE", 1, 0, 10_000, True, (), "relative"),
    ("62", "EMPLOYEE", 0, 2_000, 10_000, True, (_h("EMPLOYEE", 8_000, "SUSPENDED"),), ""),  # NO_ACTIVE_HELPER
    # The rich helper was TERMINATED (binding ended): the zero-balance one is chosen.
    ("13", "EMPLOYEE", 0, 2_000, 10_000, True, (_h("EMPLOYEE", 0), _h("EMPLOYEE", 90_000, "TERMINATED")),
     "holder"),
    # Every helper TERMINATED, a proxy too: no binding left, so PROXY_ONLY.
    ("13", "RESIDENT", 0, 0, 10_000, True, (_h("EMPLOYEE", 90_000, "TERMINATED"),), "relative"),
    ("13", "EMPLOYEE", 0, 20_000, 10_000, False, (_h("EMPLOYEE", 9_000),), ""),  # ACCOUNT_NOT_USED
    ("11", "EMPLOYEE", 0, 10_000, 10_000, True, (_h("EMPLOYEE", 9_000),), ""),  # own covers exactly
    ("62", "FLEXIBLE", 2, 9_999, 10_000, True, (_h("FLEXIBLE", 1),), "holder"),  # helper covers the last fen
    # In turn (北京): the zero-balance first filing and the suspended second are passed over; the third
    # pays all it has, the fourth the rest, the fifth is not asked.
    ("11", "EMPLOYEE", 0, 1_000, 10_000, True,
     (_h("EMPLOYEE", 0), _h("EMPLOYEE", 50_000, "SUSPENDED"), _h("FLEXIBLE", 4_000), _h("EMPLOYEE", 6_000)), ""),
    # In turn, all four together one fen short: every one pays all it has, the fen is cash.
    ("11", "RESIDENT", 0, 0, 10_000, True,
     (_h("EMPLOYEE", 2_500), _h("EMPLOYEE", 2_500), _h("FLEXIBLE", 2_500), _h("EMPLOYEE", 2_499)), "holder"),
    # In turn, every helper empty: HELPER_ZERO_BALANCE, nobody charged.
    ("11", "RESIDENT", 0, 0, 10_000, True, (_h("EMPLOYEE", 0), _h("EMPLOYEE", 0)), ""),
    # In turn, the first filing covers exactly: the others are not charged.
    ("11", "RESIDENT", 0, 0, 10_000, True, (_h("EMPLOYEE", 10_000), _h("EMPLOYEE", 10_000)), ""),
    # In turn by the largest balance: the richest pays first, then the tie in filing order.
    ("13-in-turn", "RESIDENT", 0, 0, 10_000, True,
     (_h("EMPLOYEE", 3_000), _h("EMPLOYEE", 6_000), _h("FLEXIBLE", 3_000)), ""),
    # 北京 without turns: filing order, the first one all or nothing.
    ("11-no-turn", "RESIDENT", 0, 0, 10_000, True, (_h("EMPLOYEE", 9_999), _h("EMPLOYEE", 50_000)), ""),
]


@pytest.mark.parametrize(("variant", "corner"), [(c[0], c) for c in CORNERS])
def test_corner_cases(running, rdb, variant, corner):
    differential(running, rdb, Scenario(*corner, category=OUT))
