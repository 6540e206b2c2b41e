"""What people are told (SPEC §3, §3b, §4b, §5): each refusal's Chinese words (REASON_ZH, the one
table the gateway, the console and the App share) say what happened, what was not done and what to
do next, and hold in every province model (binding helpers 河北 / 北京, the pooled family account
甘肃 / 福建) and for the 医保钱包. No servers: reads the table the services answer with."""

from __future__ import annotations

import re

import pytest
from medaid.gateway.reasons import REASON_ZH, operator_message

# What was not done, said outright.
NOT_DONE = re.compile(r"本次(未|没有|不)|未划转|未划出|未扣款|未受理|未办理|未支付|未使用|未从")
# A next step: what to do, where to go, or that nothing needs doing.
NEXT_STEP = re.compile(r"请|可在|可改|可由|可以|可使用|可重新|方可|须先|如需|无需")


def says_not_done_and_next(code: str) -> None:
    text = REASON_ZH[code]
    assert NOT_DONE.search(text), f"{code} does not say what was not done: {text}"
    assert NEXT_STEP.search(text[NOT_DONE.search(text).start():]), f"{code} gives no next step: {text}"


@pytest.mark.parametrize("code", ["SENDER_NOT_ACTIVE", "RECIPIENT_NOT_INSURED", "WALLET_NOT_LIVE", "NOT_NEAR_KIN"])
def test_a_refused_wallet_transfer_says_what_was_not_done_and_what_next(code: str) -> None:
    says_not_done_and_next(code)


def test_a_refused_accept_is_not_said_to_be_a_transfer_not_made() -> None:
    """RECIPIENT_NOT_INSURED refuses a new transfer and also the acceptance of one made (it stays
    waiting, and goes back to the sender when not accepted in time): the words fit both."""
    text = REASON_ZH["RECIPIENT_NOT_INSURED"]
    assert "本次未划转" not in text and "本次未办理" in text and "退回划转人" in text, text


def test_wallet_not_live_names_the_region_the_refusal_names() -> None:
    said = operator_message("WALLET_NOT_LIVE", metadata={"region": "130200"})
    assert said.startswith("WALLET_NOT_LIVE: 划转人或接收人所在统筹区尚未开通医保钱包业务(统筹区130200),"
                           "本次未划转;"), said
    assert "统筹区(" not in operator_message("WALLET_NOT_LIVE")


def test_not_near_kin_fits_opening_on_behalf_and_a_transfer() -> None:
    text = REASON_ZH["NOT_NEAR_KIN"]
    assert "代为开通" in text and "向近亲属划转" in text, text
    for relation in ("配偶", "父母", "子女", "兄弟姐妹", "祖父母", "外祖父母", "孙子女", "外孙子女"):
        assert relation in text, relation


def test_not_a_side_fits_a_wallet_relationship_and_a_proxy() -> None:
    """NOT_A_SIDE refuses ending a 医保钱包 relationship and removing a 亲情账户 (which moves no money
    and has no 划转人): the words fit both, and say what was not done and who may do it."""
    says_not_done_and_next("NOT_A_SIDE")
    text = REASON_ZH["NOT_A_SIDE"]
    assert "亲情账户" in text and "持有人" in text and "划转人" in text, text


# Told where the outcome is not known yet or another request holds it: what to do is to send the
# same request again (its id), and nothing may be claimed undone (it may be done, or about to be).
RETRY_SAME_ID = {
    "FAMILY_BUSY", "PREMIUM_PAYMENT_IN_PROGRESS", "ROUTER_UNAVAILABLE", "INTERNAL_ERROR", "STORE_UNAVAILABLE",
    "REGISTRY_UNAVAILABLE", "DOWNSTREAM_ERROR", "LOCK_LOST", "WALLET_UNAVAILABLE", "WALLET_BUSY",
    "WALLET_REFUSED_REGISTRY", "TRANSFER_IN_PROGRESS", "TRANSFER_BUSY",
}
# Told on a settlement that was made (warn_msg): what did not pay, and the rest is cash.
TOLD_ON_A_SETTLEMENT = {"ACCOUNT_NOT_USED"}


def test_every_refusal_says_what_was_not_done_and_what_next() -> None:
    """Systematically, the whole table: each text says what was not done and then a next step; a text
    told where the outcome is not known says to send the same request again."""
    for code, text in REASON_ZH.items():
        if code in RETRY_SAME_ID:
            assert re.search(r"相同(msgid|请求号)", text), (code, text)
        elif code not in TOLD_ON_A_SETTLEMENT:
            says_not_done_and_next(code)


@pytest.mark.parametrize("code", ["MEMBER_LIMIT_REACHED", "DIFFERENT_POOLING_REGION"])
def test_words_shared_by_both_province_models_name_both(code: str) -> None:
    """Raised by a binding province (河北, 北京: helpers bound, their accounts charged) and a pooled one
    (甘肃, 福建: a family account): the words hold in both."""
    text = REASON_ZH[code]
    assert "家庭共济账户" in text and "共济人" in text, text


def test_codes_raised_beyond_their_first_flow_fit_every_flow() -> None:
    """INVITATION_EXPIRED refuses an acceptance and a decline; SELF_BINDING and ALREADY_BOUND a
    binding and a 亲情账户; NO_PERSONAL_ACCOUNT an account look-up: none claims one flow's outcome."""
    assert "未加入" not in REASON_ZH["INVITATION_EXPIRED"]
    assert "亲情账户" in REASON_ZH["SELF_BINDING"]
    assert "共济" not in REASON_ZH["ALREADY_BOUND"]
