"""Pure unit tests, no Redis and no gRPC: GB 11643 id numbers, the order of the SPEC §3 bind
checks in `rules.check_bind_people`, and province policy loading."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import grpc
import pytest
from medaid.common.errors import DomainError
from medaid.common.idnumber import InvalidIdNumber, check_character, make, mask, parse
from medaid.registry import family_rules, premium_rules, rules
from medaid.registry.policy import NEAR_KIN, Policy, PolicyError, find_policy_file, load, load_for, regions_by_province
from medaid.registry.rules import PersonView

TODAY = dt.date(2026, 11, 22)
FP = grpc.StatusCode.FAILED_PRECONDITION

# --- GB 11643 id numbers -------------------------------------------------------------------


def test_id_valid_sample_parses():
    facts = parse("11010519491231002X")
    assert facts.division == "110105"
    assert facts.birth_date == dt.date(1949, 12, 31)
    assert facts.sex == "F"  # 17th digit 2 is even
    assert check_character("11010519491231002") == "X"


def test_id_sex_from_seventeenth_digit():
    assert parse(make("130102", "19800101", "121")).sex == "M"
    assert parse(make("130102", "19800101", "122")).sex == "F"


@pytest.mark.parametrize("wrong", ["110105194912310020", "110105194912310021", "11010519491231002x"])
def test_id_wrong_check_character(wrong):
    with pytest.raises(InvalidIdNumber):
        parse(wrong)


def test_id_wrong_check_character_message():
    with pytest.raises(InvalidIdNumber, match="check character"):
        parse("110105194912310021")


@pytest.mark.parametrize("birth", ["19490231", "19491301", "20230229", "19490000"])
def test_id_bad_birth_date(birth):
    first17 = f"110105{birth}002"
    candidate = first17 + check_character(first17)  # a correct check character: only the date is wrong
    with pytest.raises(InvalidIdNumber, match="calendar date"):
        parse(candidate)


def test_id_leap_day_is_a_date():
    assert parse(make("110105", "20240229", "002")).birth_date == dt.date(2024, 2, 29)


@pytest.mark.parametrize("prefix", ["99", "00", "10", "66"])
def test_id_bad_province(prefix):
    first17 = f"{prefix}010519491231002"
    candidate = first17 + check_character(first17)
    with pytest.raises(InvalidIdNumber, match="province"):
        parse(candidate)


@pytest.mark.parametrize("shape", ["", "11010519491231002", "11010519491231002XX", "1101051949123100AX",
                                   "11010519491231002Y", " 11010519491231002X"])
def test_id_bad_shape(shape):
    with pytest.raises(InvalidIdNumber, match="18 characters"):
        parse(shape)


def test_id_age_on_birthday_boundary():
    facts = parse(make("130102", "20101122", "001"))
    assert facts.age_on(dt.date(2026, 11, 22)) == 16
    assert facts.age_on(dt.date(2026, 11, 21)) == 15
    assert rules.age_of(make("130102", "20101123", "001"), TODAY) == 15


def test_id_masking_format():
    pid = make("130102", "19800106", "123")
    assert pid == "13010219800106123X"
    assert mask(pid) == "130102********123X"
    assert len(mask(pid)) == 18
    assert "19800106" not in mask(pid)


# --- check_bind_people: which reason wins ----------------------------------------------------


def hebei() -> Policy:
    return load(find_policy_file("13"))


def person(pid: str, itype: str = "EMPLOYEE", *, tier: int = 0, status: str = "ACTIVE",
           region: str = "130100", moved_to: str = "") -> PersonView:
    return PersonView(pid, itype, tier, status, region, "13", moved_to=moved_to)


HELPER_ID = make("130102", "19800101", "001")
MEMBER_ID = make("130102", "19550101", "002")  # adult: needs verification


def check(policy: Policy, helper: PersonView | None, member: PersonView | None, *, helper_id: str = HELPER_ID,
          member_id: str = MEMBER_ID, relation: str = "PARENT", verified: bool = True,
          admdvs: str = "") -> None:
    rules.check_bind_people(policy, helper, member, helper_id=helper_id, member_id=member_id, relation=relation,
                            verified=verified, member_insured_admdvs=admdvs, today=TODAY)


def reason_of(fn, *args, **kw) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(DomainError) as ei:
        fn(*args, **kw)
    return ei.value.code, ei.value.reason


def test_check_bind_people_passes_a_good_pair():
    check(hebei(), person(HELPER_ID), person(MEMBER_ID, "RESIDENT"))  # no exception


def test_order_self_binding_before_everything():
    # Same id, in-law relation, nobody enrolled: SELF_BINDING still wins.
    assert reason_of(check, hebei(), None, None, member_id=HELPER_ID, relation="PARENT_IN_LAW",
                     verified=False) == (grpc.StatusCode.INVALID_ARGUMENT, "SELF_BINDING")


def test_order_relation_before_people():
    assert reason_of(check, hebei(), None, None, relation="PARENT_IN_LAW") == (FP, "RELATION_NOT_ALLOWED")


def test_order_helper_not_insured_before_member():
    assert reason_of(check, hebei(), None, None) == (FP, "HELPER_NOT_INSURED")


def test_order_helper_not_active_before_not_employee():
    suspended_resident = person(HELPER_ID, "RESIDENT", status="SUSPENDED")
    assert reason_of(check, hebei(), suspended_resident, None) == (FP, "HELPER_NOT_ACTIVE")


def test_order_helper_not_employee_before_member_checks():
    tier1 = person(HELPER_ID, "FLEXIBLE", tier=1)
    assert reason_of(check, hebei(), tier1, None) == (FP, "HELPER_NOT_EMPLOYEE")
    tier2 = person(HELPER_ID, "FLEXIBLE", tier=2)
    check(hebei(), tier2, person(MEMBER_ID, "RESIDENT"))


def test_order_cross_province_before_member_not_insured():
    # Not enrolled here but insured in 北京: the answer is the wallet, not "not insured".
    code, why = reason_of(check, hebei(), person(HELPER_ID), None, admdvs="110000")
    assert (code, why) == (FP, "CROSS_PROVINCE")
    moved = person(MEMBER_ID, status="TERMINATED", moved_to="11")
    assert reason_of(check, hebei(), person(HELPER_ID), moved) == (FP, "CROSS_PROVINCE")


def test_cross_province_metadata_points_to_wallet():
    with pytest.raises(DomainError) as ei:
        check(hebei(), person(HELPER_ID), person(MEMBER_ID), admdvs="110000")
    assert ei.value.metadata == {"member_province": "11", "use": "WALLET_TRANSFER"}


def test_order_member_not_insured_before_region_and_verification():
    no_cross = dataclasses.replace(hebei(), cross_region_allowed=False)
    member = person(MEMBER_ID, status="SUSPENDED", region="130200")
    assert reason_of(check, no_cross, person(HELPER_ID), member, verified=False) == (FP, "MEMBER_NOT_INSURED")
    assert reason_of(check, no_cross, person(HELPER_ID), None, verified=False) == (FP, "MEMBER_NOT_INSURED")


def test_order_region_before_verification():
    no_cross = dataclasses.replace(hebei(), cross_region_allowed=False)
    member = person(MEMBER_ID, region="130200")
    assert reason_of(check, no_cross, person(HELPER_ID), member, verified=False) == (
        FP, "DIFFERENT_POOLING_REGION")
    # Default 河北 allows the cross-region pair; then verification is what is missing.
    assert reason_of(check, hebei(), person(HELPER_ID), member, verified=False) == (FP, "VERIFICATION_REQUIRED")


def test_verification_age_boundary_in_rules():
    sixteen = make("130102", "20101122", "003")
    fifteen = make("130102", "20101123", "004")
    assert reason_of(check, hebei(), person(HELPER_ID), person(sixteen, "RESIDENT"), member_id=sixteen,
                     relation="CHILD", verified=False) == (FP, "VERIFICATION_REQUIRED")
    check(hebei(), person(HELPER_ID), person(fifteen, "RESIDENT"), member_id=fifteen, relation="CHILD",
          verified=False)


def test_relation_outside_policy_set():
    base = dataclasses.replace(hebei(), relations=frozenset({"SPOUSE", "PARENT", "CHILD"}))
    assert reason_of(check, base, person(HELPER_ID), person(MEMBER_ID), relation="SIBLING") == (
        FP, "RELATION_NOT_ALLOWED")
    for relation in sorted(NEAR_KIN):
        check(hebei(), person(HELPER_ID), person(MEMBER_ID), relation=relation)


def test_bind_structure_errors_map_to_status_codes():
    gansu = load(find_policy_file("62"))
    assert rules.bind_structure_error("ALREADY_BOUND", gansu).code == grpc.StatusCode.ALREADY_EXISTS
    for code in ("REVERSE_BINDING", "ALREADY_IN_ANOTHER_RELATION", "MEMBER_LIMIT_REACHED"):
        err = rules.bind_structure_error(code, gansu)
        assert (err.code, err.reason) == (FP, code)
    assert "7" in rules.bind_structure_error("MEMBER_LIMIT_REACHED", gansu).message


# --- policy loading ------------------------------------------------------------------------


def test_shipped_policies_load_with_spec_knobs():
    hb, gs, bj = (load(find_policy_file(p)) for p in ("13", "62", "11"))
    assert (hb.max_members, hb.cross_region_allowed, hb.exclusive) == (8, True, False)
    assert (gs.max_members, gs.exclusive) == (7, True)
    assert hb.relations == NEAR_KIN and gs.relations == NEAR_KIN
    assert hb.category_payable("CHECKUP") and not gs.category_payable("CHECKUP")
    assert bj.regions == {"110000": "北京市"}


GOOD = '''province = "13"
name = "河北省"
[regions]
"130100" = "石家庄市"
'''


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "13-test.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_policy_minimal_file_takes_spec_defaults(tmp_path):
    p = load(write(tmp_path, GOOD))
    assert p.province == "13" and p.regions == {"130100": "石家庄市"}
    assert p.relations == NEAR_KIN
    assert (p.max_members, p.cross_region_allowed, p.exclusive, p.face_verification_age) == (8, True, False, 16)
    assert (p.helper_selection, p.helper_partial) == ("LARGEST_BALANCE", False)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('name = "x"\n[regions]\n"130100" = "a"\n', "lacks"),  # no province
        ('province = "13"\n', "lacks"),  # no regions
        ('province = "13"\n[regions]\n', "no pooling regions"),
        ('province = "13"\n[regions]\n"110000" = "北京"\n', "not a 6-digit code of province"),
        ('province = "1"\n[regions]\n"130100" = "a"\n', "2-digit"),
        (GOOD.replace("[regions]", 'relations = ["SPOUSE", "PARENT_IN_LAW"]\n[regions]'), "near-kin"),
        (GOOD.replace("[regions]", "max_members = 0\n[regions]"), "max_members"),
        (GOOD.replace("[regions]", 'helper_selection = "RANDOM"\n[regions]'), "helper_selection"),
        (GOOD.replace("[regions]", 'payable_categories = ["OUTPATIENT", "FITNESS"]\n[regions]'),
         "payable_categories"),
        # A misspelt knob must not leave the province on the default (北京 paying all or nothing).
        (GOOD.replace("[regions]", "helper_in_turn = true\n[regions]"), "unknown knob helper_in_turn"),
    ],
    ids=["no_province", "no_regions", "empty_regions", "foreign_region", "short_province", "in_law_relation",
         "zero_max_members", "bad_helper_selection", "never_payable_category", "misspelt_knob"],
)
def test_policy_load_rejects_bad_file(tmp_path, text, match):
    with pytest.raises(PolicyError, match=match):
        load(write(tmp_path, text))


@pytest.mark.parametrize("categories", ['["CHECKUP"]', "[]", '["OUTPATIENT", "INPATIENT", "PHARMACY", "VACCINE"]'],
                         ids=["extras_only", "empty", "premiums_dropped"])
def test_policy_cannot_take_away_a_category_every_province_pays(tmp_path, categories):
    """SPEC §4: personal-account money pays 门诊, 住院, 药店 and the two premiums everywhere; a province
    only adds CHECKUP or VACCINE. A file listing just its extras would refuse every 门诊 bill
    CATEGORY_NOT_PAYABLE (and Settle would refuse RESIDENT_PREMIUM while 代缴 paid it)."""
    with pytest.raises(PolicyError, match="payable_categories lacks "):
        load(write(tmp_path, GOOD.replace("[regions]", f"payable_categories = {categories}\n[regions]")))


def test_policy_load_rejects_malformed_toml(tmp_path):
    with pytest.raises(PolicyError):
        load(write(tmp_path, 'province = "13\n[regions\n'))


@pytest.mark.parametrize(
    "knob",
    ['cross_region_allowed = "false"', 'exclusive = "true"', 'max_members = "8"', "max_members = true",
     'helper_partial = 1', 'relations = "SPOUSE"'],
    ids=["string_bool_cross_region", "string_bool_exclusive", "string_int", "bool_int", "int_bool",
         "string_relations"],
)
def test_policy_load_rejects_wrongly_typed_knob(tmp_path, knob):
    # A quoted "false" must not silently turn into True (bool("false") is True).
    with pytest.raises(PolicyError):
        load(write(tmp_path, GOOD.replace("[regions]", f"{knob}\n[regions]")))


def test_policy_of_a_province_is_refused_when_its_file_names_another(tmp_path):
    """A file found as 11-*.toml (or given for province 11) that says province = "13" is not 北京's."""
    path = tmp_path / "11-beijing.toml"
    path.write_text(GOOD, encoding="utf-8")
    with pytest.raises(PolicyError, match="policy of province 13, not of province 11"):
        load_for("11", directory=tmp_path)
    with pytest.raises(PolicyError, match="policy of province 13, not of province 11"):
        regions_by_province(["11"], tmp_path)
    assert load_for("13", write(tmp_path, GOOD)).province == "13"


def test_policy_find_refuses_two_files_of_one_province(tmp_path):
    """A draft copied next to the live file (13-hebei-2027.toml sorts before 13-hebei.toml) must not
    become the province's policy at the next restart without a word."""
    (tmp_path / "13-hebei.toml").write_text(GOOD, encoding="utf-8")
    (tmp_path / "13-hebei-2027.toml").write_text(GOOD.replace("石家庄市", "草稿"), encoding="utf-8")
    with pytest.raises(PolicyError, match="2 policy files for province 13 .*13-hebei-2027.toml, 13-hebei.toml"):
        find_policy_file("13", tmp_path)


def test_policy_find_missing_province(tmp_path):
    with pytest.raises(PolicyError, match="no policy file"):
        find_policy_file("99", tmp_path)


def test_the_year_payable_today_follows_the_premium_window():
    """premium_rules.payable_year: next year's in the collection window, this year's in an extended
    period, none between, nor a year whose premium the policy does not set."""
    policy = dataclasses.replace(load_for("62"), premium_extension_end="02-29")
    assert {y: policy.resident_premium_fen.get(y) is not None for y in ("2027", "2028")} == {"2027": True,
                                                                                           "2028": False}
    for day, year in ((dt.date(2026, 8, 31), ""), (dt.date(2026, 9, 1), "2027"), (dt.date(2026, 12, 31), "2027"),
                      (dt.date(2027, 2, 28), "2027"), (dt.date(2027, 3, 1), ""), (dt.date(2027, 9, 1), "")):
        assert premium_rules.payable_year(policy, day) == year, day
    assert premium_rules.payable_year(dataclasses.replace(policy, premium_extension_end=""), dt.date(2027, 1, 5)) == ""


END_SEEN = family_rules.EndView(state="ACTIVE", creator="C", created_at="1000", target_state="MEMBER",
                                joined_at="2000", invited_at="1500", share=100)


def _end_view(**kw: Any) -> family_rules.EndView:
    return dataclasses.replace(END_SEEN, **kw)


@pytest.mark.parametrize("mode, actor, target, view, code", [
    ("LEAVE", "M", "M", _end_view(state=""), "FAMILY_NOT_FOUND"),
    ("REMOVE", "M", "X", _end_view(state="DISSOLVED"), "NOT_FAMILY_CREATOR"),  # asked first
    ("DISSOLVE", "C", "", _end_view(state="DISSOLVED"), "FAMILY_NOT_ACTIVE"),
    ("LEAVE", "C", "C", _end_view(), "CREATOR_CANNOT_LEAVE"),
    ("REMOVE", "C", "C", _end_view(), "CREATOR_CANNOT_LEAVE"),
    ("LEAVE", "M", "M", _end_view(target_state="INVITED"), "NOT_A_MEMBER"),
    ("REMOVE", "C", "X", _end_view(target_state="DECLINED"), "NOT_A_MEMBER"),
    ("WITHDRAW", "M", "M", _end_view(target_state="ENDED", share=0), "NOT_A_MEMBER"),  # asked first
    ("WITHDRAW", "M", "M", _end_view(share=0), "NO_UNSPENT_SHARE"),
    ("REMOVE", "", "X", _end_view(target_state="INVITED"), ""),  # a life event's: no actor
    ("LEAVE", "M", "M", _end_view(share=0), ""),
    ("WITHDRAW", "C", "C", _end_view(), ""),  # the creator takes back their share
    ("DISSOLVE", "C", "", _end_view(target_state=""), ""),
])
def test_who_may_end_which_family_place(mode: str, actor: str, target: str, view: family_rules.EndView,
                                        code: str) -> None:
    """SPEC §3b: family_rules.check_end, the one implementation (judged before and under the lock)."""
    policy = load_for("35")
    if not code:
        family_rules.check_end(policy, mode, view, actor, target)
        return
    with pytest.raises(DomainError) as ei:
        family_rules.check_end(policy, mode, view, actor, target)
    assert ei.value.reason == code


def test_a_late_life_event_ends_only_the_places_taken_by_its_time() -> None:
    """SPEC §5b: an account created, a membership joined or an invitation made after the event stays."""
    assert not family_rules.began_after("DISSOLVE", _end_view(), 0)
    assert family_rules.began_after("DISSOLVE", _end_view(created_at="1001"), 1000)
    assert not family_rules.began_after("DISSOLVE", _end_view(created_at=""), 1000)  # no time kept: before
    assert family_rules.began_after("REMOVE", _end_view(joined_at="2000", invited_at="500"), 1000)
    assert not family_rules.began_after("REMOVE", _end_view(joined_at="0", invited_at="500"), 1000)
    assert family_rules.began_after("REMOVE", _end_view(target_state="INVITED", invited_at="1500"), 1000)
    assert not family_rules.began_after("LEAVE", _end_view(), 1000)


@pytest.mark.parametrize("province, family_state, is_creator, is_member, taken", [
    ("62", "ACTIVE", True, True, True),  # 甘肃: the creator alone
    ("62", "ACTIVE", False, True, False),
    ("62", "DISSOLVED", True, True, False),
    ("35", "ACTIVE", False, True, True),  # 福建: members contribute
    ("35", "ACTIVE", False, False, False),  # left, removed, or only invited
    ("35", "DISSOLVED", False, True, False),
])
def test_a_debited_transfer_is_taken_only_from_who_may_still_contribute(
        province: str, family_state: str, is_creator: bool, is_member: bool, taken: bool) -> None:
    """SPEC §3b 划拨: family_rules.credit_taken, the judgement lua/family_credit.lua applies; the same
    `may_contribute` as the 划拨's own check (NOT_A_CONTRIBUTOR)."""
    policy = load_for(province)
    assert family_rules.credit_taken(policy, family_state, is_creator=is_creator, is_member=is_member) is taken
