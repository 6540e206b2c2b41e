"""Every reason code a service can answer with is named in the documentation (README.md or
docs/**/*.md), so an integrator who meets one in `google.rpc.ErrorInfo.reason` or a gateway
`err_msg` can look it up. The codes are read from the source as tests/test_gateway.py reads them for
the Chinese operator messages. No servers: reads files only."""

from __future__ import annotations

import re
from pathlib import Path

from test_gateway import reason_codes_in_source

ROOT = Path(__file__).resolve().parents[1]


def documentation() -> str:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return "\n".join(p.read_text(encoding="utf-8") for p in pages)


def undocumented(codes: dict[str, str], text: str) -> dict[str, str]:
    return {code: where for code, where in codes.items() if not re.search(rf"(?<![A-Z0-9_]){code}(?![A-Z0-9_])", text)}


def test_every_reason_code_is_documented():
    codes = reason_codes_in_source()
    assert len(codes) > 200, "the extraction found almost no reason codes"
    missing = undocumented(codes, documentation())
    assert not missing, "reason codes named in no page of docs/ nor README.md (code: where raised):\n" + \
        "\n".join(f"  {code}: {where}" for code, where in sorted(missing.items()))


def test_a_code_inside_a_longer_one_does_not_count():
    text = "`MEMBER_MOVED_REGION` and `UNKNOWN_REGION_X`"
    assert undocumented({"MOVED_REGION": "x", "UNKNOWN_REGION": "y"}, text) == {"MOVED_REGION": "x",
                                                                                  "UNKNOWN_REGION": "y"}
    assert undocumented({"MEMBER_MOVED_REGION": "x"}, text) == {}


# `CODE: 中文说明(where)` as the documentation quotes a gateway's err_msg / warn_msg, or a 3202 result
# file's memo; `CODE` alone is the pages' placeholder for any code.
QUOTED_MESSAGE = re.compile(r"`([A-Z][A-Z0-9_]*): ([^`]*[\u4e00-\u9fff][^`]*)`")


def misquoted(text: str, messages: dict[str, str]) -> list[str]:
    """Each quoted `CODE: message` whose message is not the one answered for CODE: the quote starts
    with it (a where-part may follow; a setting in brackets may follow its first clause), or, cut
    short with `…`, is the start of it."""
    wrong: list[str] = []
    for code, shown in QUOTED_MESSAGE.findall(text):
        if code == "CODE":
            continue
        answered = messages.get(code)
        cut = shown.split("…", 1)[0]
        settings_out = [shown] + [shown[:m.start()] + shown[m.end():] for m in re.finditer(r"\([^()]*\)", shown)]
        if answered is None or not (any(s.startswith(answered) for s in settings_out)
                                    or ("…" in shown and answered.startswith(cut))):
            wrong.append(f"{code}: {shown!r} — answered: {answered!r}")
    return wrong


def test_quoted_messages_are_the_ones_answered():
    from medaid.gateway.reasons import REASON_ZH
    from medaid.gateway.reconcile import _MISMATCH_ZH
    wrong = misquoted(documentation(), {**_MISMATCH_ZH, **REASON_ZH})
    assert not wrong, "messages the documentation quotes that the gateway does not answer:\n" + "\n".join(wrong)


def test_a_misquoted_message_is_found():
    messages = {"HELPER_INSUFFICIENT": "余额不足以支付", "CREDENTIAL_REQUIRED": "须提供凭证:令牌"}
    assert misquoted("`HELPER_INSUFFICIENT: 余额不足以支付(where)` `CREDENTIAL_REQUIRED: 须提供凭证…` "
                     "`CODE: 中文说明(where)` `HELPER_INSUFFICIENT: 余额不足(每笔最多1元)以支付(where)`",
                     messages) == []
    assert len(misquoted("`HELPER_INSUFFICIENT: 余额不足,未使用` `CREDENTIAL_REQUIRED: 须提供签名…` "
                         "`UNKNOWN_CODE: 说明`", messages)) == 3


def _tables(text: str) -> dict[str, dict[str, str]]:
    """Each `### title` of docs/gateway-reference.md's "Reason codes" with its `| `CODE` | words |` rows."""
    section = text.split("\n## Reason codes\n", 1)[1]
    out: dict[str, dict[str, str]] = {}
    title = ""
    for line in section.splitlines():
        if line.startswith("### "):
            title = line[4:].strip()
            out[title] = {}
        elif m := re.fullmatch(r"\| `([A-Z][A-Z0-9_]*)` \| (.*) \|", line):
            assert title and m.group(1) not in out[title], line
            out[title][m.group(1)] = m.group(2)
    return out


def test_the_gateway_reference_lists_every_reason_with_the_words_answered():
    """docs/gateway-reference.md names every code a gateway answer can carry (every code the services
    raise: REASON_ZH has words for each), with exactly the words the gateway answers, and the words
    for a bill 共济 paid nothing of, and a 2601's outcomes."""
    from medaid.gateway.reasons import OUTCOME_ZH, PAID_NOTHING_ZH, REASON_ZH
    tables = _tables((ROOT / "docs" / "gateway-reference.md").read_text(encoding="utf-8"))
    paid_nothing = tables.pop("Words when 共济 paid nothing of a bill")
    outcomes = tables.pop("What a 2601 冲正 did")
    listed: dict[str, str] = {}
    for rows in tables.values():
        assert not set(rows) & set(listed), set(rows) & set(listed)
        listed.update(rows)
    assert set(reason_codes_in_source()) <= set(REASON_ZH)
    assert listed == {code: words.replace("|", "｜") for code, words in REASON_ZH.items()}
    assert paid_nothing == PAID_NOTHING_ZH
    assert outcomes == OUTCOME_ZH
