"""Amounts at the gateway: the national platform's 数值型(16,2) yuan, as exact integer fen.

A request's amount is a decimal-yuan string ("128.50", or in scientific notation as Java's
BigDecimal.toString() writes it: "1E+2") or a JSON number (128.50, 128, 1E+2) parsed as a Decimal
(wire.loads), exact to the fen: at most two decimals, or more written as zeros ("128.5000", as a
decimal(18,4) column serialises); anything else is refused (reason INVALID_AMOUNT) before anything is
written. One rule decides for text and numbers alike (_decimal_to_fen). An answer's amount serializes
as a Decimal with exactly two places.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from medaid.common.names_zh import yuan as yuan  # the one formatter, kept where the CLI and console import it
from medaid.registry.validate import WIRE_YUAN_DIGITS

# --- amounts -------------------------------------------------------------------------------------

MAX_YUAN_DIGITS = WIRE_YUAN_DIGITS  # 数值型(16,2): 14 integer digits
# What a person writes (the CLI, the console) and what a message carries: ASCII digits, a decimal
# point only between digits. The value decides the rest (_decimal_to_fen): decimals past the second
# are taken when they are zeros, as the value is still exact in fen.
_DIGITS = r"[0-9]+(\.[0-9]+)?"
# A message may also write its amount in scientific notation, as Java's BigDecimal.toString() writes
# a value whose trailing zeros were stripped (¥100 is "1E+2", ¥1,500 "1.5E+3").
_EXPONENT = r"[Ee][+-]?[0-9]+"
_YUAN_TEXT = re.compile(rf"^{_DIGITS}\Z")
_SCIENTIFIC_TEXT = re.compile(rf"^{_DIGITS}{_EXPONENT}\Z")


def _amount_error(detail: str) -> PydanticCustomError:
    return PydanticCustomError("INVALID_AMOUNT", "{detail}", {"detail": detail})


def yuan_to_fen(value: Any) -> int:
    """'128.50' / Decimal('128.50') / 128 → 12850 fen, exactly; anything else is INVALID_AMOUNT. Text
    as a person writes it: not in scientific notation (what a message carries: amount_to_fen)."""
    return _to_fen(value, scientific=False)


def amount_to_fen(value: Any) -> int:
    """An amount as a message carries it, to fen: as yuan_to_fen, and text in scientific notation
    ('1E+2', '1.2345E+3') is the value it writes, under the same rules ('1.2345E+1' is 12.345 yuan:
    refused)."""
    return _to_fen(value, scientific=True)


def _to_fen(value: Any, *, scientific: bool) -> int:
    if isinstance(value, bool):
        raise _amount_error("不是合法的金额数字")
    if isinstance(value, float):
        # A float can only come from Python callers (the wire parser makes Decimals): refuse it.
        raise _amount_error("金额不能是二进制浮点数")
    if isinstance(value, str):
        text = value.strip()
        # A sign is judged by the value (_decimal_to_fen): "-0.00" is zero, as a HIS rounding a float writes it.
        unsigned = text.removeprefix("-")
        if not (_YUAN_TEXT.match(unsigned) or scientific and _SCIENTIFIC_TEXT.match(unsigned)):
            raise _amount_error("不是合法的金额数字")
        try:
            value = Decimal(text)
        except InvalidOperation:  # an exponent past what Decimal holds ("1E+99999999999999999999")
            raise _amount_error("不是合法的金额数字") from None
    if isinstance(value, int):
        value = Decimal(value)
    if not isinstance(value, Decimal):
        raise _amount_error("不是合法的金额数字")
    return _decimal_to_fen(value)


def _decimal_to_fen(value: Decimal) -> int:
    """The one rule for an amount's value, however it was written: finite, not negative (a zero written
    with a minus sign, -0.00, is zero), at most 14 integer digits, exact to the fen."""
    if not value.is_finite():
        raise _amount_error("不是合法的金额数字")
    if value < 0:
        raise _amount_error("不能为负数")
    if value >= Decimal(10) ** MAX_YUAN_DIGITS:
        raise _amount_error("整数部分超过14位")
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if exponent < -2 and any(digits[exponent + 2:]):  # a digit past the fen that is not 0
        raise _amount_error("超过两位小数")
    return int(value.scaleb(2))  # exact: what scaleb could round away is zeros


def _optional_fen(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    return amount_to_fen(value)


def signed_yuan_to_fen(value: Any) -> int:
    """A reconciliation total, which may be negative: with refunds counted (refd_setl_flag 1 or empty)
    a period whose reversals of earlier days outweigh its settlements nets below zero. '-12.34' →
    -1234; otherwise as amount_to_fen."""
    if isinstance(value, str) and value.strip().startswith("-"):
        return -amount_to_fen(value.strip()[1:])
    if isinstance(value, Decimal) and value.is_finite() and value.is_signed():
        return -amount_to_fen(-value)
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return -amount_to_fen(-value)
    return amount_to_fen(value)


def _optional_signed_fen(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    return signed_yuan_to_fen(value)


def fen_to_yuan(fen: int) -> Decimal:
    """12850 → Decimal('128.50'); always exactly two places."""
    return Decimal(fen).scaleb(-2)




# How amounts look on the wire, for the OpenAPI document: a decimal-yuan string (also in scientific
# notation) or a JSON number, never negative; the pattern is the text's shape, the description the
# value's rule (exact to the fen). Answers write JSON numbers with exactly two decimals.
_AMOUNT_TEXT = rf"{_DIGITS}({_EXPONENT})?"
AMOUNT_IN: dict[str, Any] = {"anyOf": [{"type": "string", "pattern": f"^{_AMOUNT_TEXT}$"},
                                       {"type": "number", "minimum": 0, "exclusiveMaximum": 10**14}],
                             "description": "金额(元),字符串或数字,精确到分(两位以后的小数只能是0;"
                                            "也可写作科学计数法,如1E+2)"}
OPTIONAL_AMOUNT_IN: dict[str, Any] = {"anyOf": [{"type": "string", "pattern": f"^({_AMOUNT_TEXT})?$"},
                                                {"type": "number", "minimum": 0,
                                                 "exclusiveMaximum": 10**14},
                                                {"type": "null"}],
                                      "description": "金额(元),可为空"}
SIGNED_AMOUNT_IN: dict[str, Any] = {"anyOf": [{"type": "string", "pattern": f"^-?{_AMOUNT_TEXT}$"},
                                              {"type": "number", "exclusiveMinimum": -10**14,
                                               "exclusiveMaximum": 10**14}],
                                    "description": "合计金额(元),字符串或数字,精确到分,可为负(含退费冲减)"}
OPTIONAL_SIGNED_AMOUNT_IN: dict[str, Any] = {
    "anyOf": [{"type": "string", "pattern": f"^(-?{_AMOUNT_TEXT})?$"},
              {"type": "number", "exclusiveMinimum": -10**14, "exclusiveMaximum": 10**14}, {"type": "null"}],
    "description": "合计金额(元),可为空,可为负(含退费冲减)"}
AMOUNT_OUT: dict[str, Any] = {"type": "number", "description": "金额(元),两位小数的JSON数字"}

Fen = Annotated[int, PlainValidator(amount_to_fen), WithJsonSchema(AMOUNT_IN, mode="validation")]
OptionalFen = Annotated[int | None, PlainValidator(_optional_fen),
                        WithJsonSchema(OPTIONAL_AMOUNT_IN, mode="validation")]
SignedFen = Annotated[int, PlainValidator(signed_yuan_to_fen), WithJsonSchema(SIGNED_AMOUNT_IN, mode="validation")]
OptionalSignedFen = Annotated[int | None, PlainValidator(_optional_signed_fen),
                              WithJsonSchema(OPTIONAL_SIGNED_AMOUNT_IN, mode="validation")]
Yuan = Annotated[int, PlainSerializer(fen_to_yuan, return_type=Decimal),
                 WithJsonSchema(AMOUNT_OUT, mode="serialization")]
# A balance not known yet (a 5203 of a settlement or refund still being made): null, never a made-up 0.00.
OptionalYuan = Annotated[int | None, PlainSerializer(lambda fen: None if fen is None else fen_to_yuan(fen),
                                                     return_type=Decimal | None),
                         WithJsonSchema({"anyOf": [AMOUNT_OUT, {"type": "null"}],
                                         "description": "金额(元),两位小数的JSON数字;尚未确定时为null"},
                                        mode="serialization")]
