"""The gateway's answer writer and timestamps against the standard library's: same text, faster path.
Pure: no servers."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from medaid.common.clock import SHANGHAI
from medaid.gateway import wire
from medaid.gateway.answers import fmt_ms

# What an answer holds: text (any Unicode, quotes and control characters included), integers, booleans,
# None, nested objects and arrays.
_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text()
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@given(_values)
def test_dumps_writes_what_json_dumps_writes_for_everything_but_decimals(value: Any) -> None:
    assert wire.dumps(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@given(st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-(10**14), max_value=10**14))
def test_dumps_writes_a_decimal_as_its_exact_number(amount: Decimal) -> None:
    text = wire.dumps({"balc": amount, "list": [amount]})
    assert text == f'{{"balc":{amount:f},"list":[{amount:f}]}}'
    assert wire.loads(text.encode())["balc"] == amount


def test_dumps_refuses_a_float_and_writes_tuples_as_arrays() -> None:
    with pytest.raises(TypeError):
        wire.dumps({"amount": 1.5})
    assert wire.dumps(("a", 1, True)) == '["a",1,true]'


@pytest.mark.parametrize("pattern", ["%Y-%m-%d %H:%M:%S", "%Y%m%d%H%M%S"])
def test_fmt_ms_agrees_with_datetime_at_every_millisecond_around_second_boundaries(pattern: str) -> None:
    for base in (1_796_077_012_000, 0, 684_000_000_000, -86_400_000):  # now-ish, the epoch, 1991 (DST), 1969
        for ms in (base - 1001, base - 1, base, base + 1, base + 999, base + 1000, base - 1, base + 500):
            assert fmt_ms(ms, pattern) == dt.datetime.fromtimestamp(ms / 1000, SHANGHAI).strftime(pattern), ms
