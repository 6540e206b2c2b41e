"""What a hospital's cashier is told about a bill (SPEC §4, §6): the gateway's `warn_msg` and
`medaid_ext.mulaid_msg` of a 2206 and a 2207 are true in every province's helper mode — one helper
pays all or nothing (河北), helpers pay in turn (北京 `helpers_in_turn`), one helper pays part
(`helper_partial`) — and a 2206 tells the same story as the 2207 of the same bill.

Over real HTTP against a real topology (redis-server, registries, wallet, router, gateway, each its
own OS process); setup goes to the registries over gRPC, as an operator would.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from medaid.gateway import reasons
from medaid.registry import policy as policy_mod
from support import RESIDENT, bind, credit, enroll
from test_gateway import BEIJING_HOSPITAL, Env, data_2207, envelope, gateway_env

BJ = {"region": "110000", "division": "110105"}


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with gateway_env(provinces=("13", "11")) as e:
        yield e


def _hebei_policy_file(tmp: Path, **knobs: Any) -> Path:
    """河北's policy file with `knobs` changed (TOML written by hand: the values are booleans)."""
    text = policy_mod.find_policy_file("13").read_text(encoding="utf-8")
    for knob, value in knobs.items():
        line = f"{knob} = {'true' if value else 'false'}"
        text, n = re.subn(rf"(?m)^{knob} = .*$", line, text)
        if not n:
            text = text.replace("[regions]", f"{line}\n\n[regions]", 1)
    tomllib.loads(text)
    path = tmp / "13-hebei-partial.toml"
    path.write_text(text, encoding="utf-8")
    return path


def presettle_then_settle(e: Env, psn: str, amount: str, fixmedins: str) -> list[tuple[dict[str, Any], str]]:
    """The 2206 and then the 2207 of one bill: each answer's setlinfo and warn_msg."""
    out = []
    for infno in ("2206", "2207"):
        a = e.post(envelope(infno, data_2207(psn, amount), fixmedins=fixmedins))
        out.append((a.ok()["setlinfo"], a.json["warn_msg"]))
    return out


def told(answers: list[tuple[dict[str, Any], str]]) -> tuple[str, str]:
    """The HELPER_INSUFFICIENT words of a 2206 and its 2207, which must be the same."""
    (pre, pre_warn), (done, done_warn) = answers
    assert pre["medaid_ext"]["mulaid_reason"] == done["medaid_ext"]["mulaid_reason"] == "HELPER_INSUFFICIENT"
    assert pre["medaid_ext"]["mulaid_msg"] == done["medaid_ext"]["mulaid_msg"]
    assert pre_warn == done_warn, (pre_warn, done_warn)
    for field in ("acct_pay", "wallet_pay", "acct_mulaid_pay", "psn_cash_pay"):
        assert pre[field] == done[field], field
    msg = done["medaid_ext"]["mulaid_msg"]
    assert f"HELPER_INSUFFICIENT: {msg}" in done_warn, done_warn
    return msg, done_warn


def test_a_helper_short_of_the_bill_who_paid_nothing_is_not_said_to_have_paid_part(env: Env):
    """河北 (all or nothing, 不凑钱): a helper holding ¥30 pays nothing of a ¥100 bill. The cashier
    reads that the helper's account was not charged and the whole ¥100 is cash, not that only
    the part the helper could not pay (不足部分) is cash."""
    helper = enroll(env.hebei, name="赵强")
    child = enroll(env.hebei, itype=RESIDENT, birth="20160101", name="赵小雨")
    credit(env.hebei, helper, 3_000)
    bind(env.hebei, helper, child)
    answers = presettle_then_settle(env, child, "100.00", "H13010100001")
    s = answers[1][0]
    assert (s["acct_mulaid_pay"], s["psn_cash_pay"]) == (Decimal("0.00"), Decimal("100.00"))
    msg, _ = told(answers)
    assert "未扣款" in msg and "全部由个人现金支付" in msg, msg
    assert "不足部分" not in msg, msg


def test_helpers_in_turn_short_of_the_bill_are_said_to_have_paid_part(env: Env):
    """北京 (helpers in turn): helpers holding ¥0 and ¥10 pay ¥10 of a ¥50 bill, the rest is cash;
    the words say so and do not say the helpers' accounts were not charged."""
    child = enroll(env.beijing, itype=RESIDENT, birth="20160101", name="钱小雨", **BJ)
    first = enroll(env.beijing, name="钱一", birth="19700101", **BJ)
    second = enroll(env.beijing, name="钱二", birth="19700101", **BJ)
    credit(env.beijing, second, 1_000)
    bind(env.beijing, first, child)
    bind(env.beijing, second, child)
    answers = presettle_then_settle(env, child, "50.00", BEIJING_HOSPITAL)
    s = answers[1][0]
    assert (s["acct_mulaid_pay"], s["psn_cash_pay"]) == (Decimal("10.00"), Decimal("40.00"))
    msg, _ = told(answers)
    assert "未扣款" not in msg and "未使用共济支付" not in msg and "全部由个人现金支付" not in msg, msg


def test_one_helper_paying_part_where_the_policy_says_so_is_said_to_have_paid_part(tmp_path: Path):
    """A province with `helper_partial = true`: the one helper pays the ¥30 it holds of a ¥100 bill."""
    with gateway_env(provinces=("13", "11")) as e:
        e.topo.services.pop("registry-13").stop()
        e.topo.start_one("registry-13", env={"MEDAID_POLICY_FILE": str(_hebei_policy_file(tmp_path,
                                                                                          helper_partial=True))})
        helper = enroll(e.hebei, name="孙强")
        child = enroll(e.hebei, itype=RESIDENT, birth="20160101", name="孙小雨")
        credit(e.hebei, helper, 3_000)
        bind(e.hebei, helper, child)
        answers = presettle_then_settle(e, child, "100.00", "H13010100001")
        s = answers[1][0]
        assert (s["acct_mulaid_pay"], s["psn_cash_pay"]) == (Decimal("30.00"), Decimal("70.00"))
        msg, _ = told(answers)
        assert "未扣款" not in msg and "全部由个人现金支付" not in msg, msg


def test_the_words_without_the_outcome_hold_in_every_helper_mode():
    """Where the gateway cannot tell what was paid (the bare reason), the words claim neither."""
    text = reasons.REASON_ZH["HELPER_INSUFFICIENT"]
    assert "未扣款" not in text and "不足部分" not in text, text
