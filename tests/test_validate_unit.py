"""registry.validate's one rule for invisible characters, as the string checks apply it."""

from __future__ import annotations

import pytest
from medaid.registry import validate


@pytest.mark.parametrize("wide_spaces", [False, True])
def test_has_invisible_gives_the_per_character_rules_answer(wide_spaces):
    """The printable-ASCII shortcut answers exactly as `invisible` over each character: for every pair
    of ASCII characters (the only strings it can answer), and for non-ASCII text, which it leaves to
    the per-character rule."""
    ascii_chars = [chr(code) for code in range(128)]
    others = ["张三", "阿依古丽·买买提", "\u3000", "\u00a0", "\u200b", "\u202e", "\u2028", "\U0001f600", "\ufeff", "é"]
    values = [a + b for a in ascii_chars for b in ascii_chars] + ascii_chars + [""] + others \
        + [f"ab{o}cd" for o in others]
    for value in values:
        expected = any(validate.invisible(c, wide_spaces=wide_spaces) for c in value)
        assert validate.has_invisible(value, wide_spaces=wide_spaces) == expected, repr(value)


def test_string_checks_keep_their_answers():
    """mdtrt_id and the dictionary codes: printable text is taken (an ASCII space, Chinese), an
    invisible or blank one refused, as before the shortcut."""
    for value in ("000000012345", "A B-1_/.", "门诊0001", "x" * validate.MAX_MDTRT_ID):
        assert validate.mdtrt_id(value) == value
    for value in (" ", "12\x7f", "12\x00", "ab\u200b", "ab\u3000", "12\n", "x" * (validate.MAX_MDTRT_ID + 1)):
        with pytest.raises(Exception) as exc:
            validate.mdtrt_id(value)
        assert getattr(exc.value, "reason", "") == "INVALID_MDTRT_ID", repr(value)
    assert validate.dictionary_code("310", "insutype", reason="INVALID_INSUTYPE") == "310"
    with pytest.raises(Exception) as exc:
        validate.dictionary_code("3\t1", "insutype", reason="INVALID_INSUTYPE")
    assert getattr(exc.value, "reason", "") == "INVALID_INSUTYPE"
