"""Amounts at the gateway: the national platform's 数值型(16,2) yuan, as exact integer fen.

A request's amount is a decimal-yuan string ("128.50") or a JSON number (128.50, 128) parsed as a
Decimal (wire.loads), exact to the fen: at most two decimals, or more written as zeros ("128.5000", as a
decimal(18,4) column serialises); anything else is refused (reason INVALID_AMOUNT) before anything is
written. An answer's amount serializes as a Decimal with exactly two places.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

# --- amounts -------------------------------------------------------------------------------------

MAX_YUAN_DIGITS = 14  # 数值型(16,2): 14 integer digits
# Decimals past the second are taken when they are zeros: the value is still exact in fen.
_YUAN_TEXT = re.compile(r"^[0-9]{1,14}(\.[0-9]{1,2}0*)?\Z")


def _amount_error(detail: str) -> PydanticCustomError:
    return PydanticCustomError("INVALID_AMOUNT", "{detail}", {"detail": detail})


def yuan_to_fen(value: Any) -> int:
    """'128.50' / Decimal('128.50') / 128 → 12850 fen, exactly; anything else is INVALID_AMOUNT."""
    if isinstance(value, bool):
        raise _amount_error("不是合法的金额数字")
    if isinstance(value, float):
        # A float can only come from Python callers (the wire parser makes Decimals): refuse it.
        raise _amount_error("金额不能是二进制浮点数")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise _amount_error("不能为负数")
        if not _YUAN_TEXT.match(text):
            if re.match(r"^[0-9]+\.[0-9]{3,}\Z", text):
                raise _amount_error("超过两位小数")
            raise _amount_error("不是合法的金额数字")
        value = Decimal(text)
    if isinstance(value, int):
        value = Decimal(value)
    if not isinstance(value, Decimal):
        raise _amount_error("不是合法的金额数字")
    if not value.is_finite():
        raise _amount_error("不是合法的金额数字")
    if value.is_signed():
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
    return yuan_to_fen(value)


def signed_yuan_to_fen(value: Any) -> int:
    """A reconciliation total, which may be negative: with refunds counted (refd_setl_flag 1 or empty)
    a period whose reversals of earlier days outweigh its settlements nets below zero. '-12.34' →
    -1234; otherwise as yuan_to_fen."""
    if isinstance(value, str) and value.strip().startswith("-"):
        return -yuan_to_fen(value.strip()[1:])
    if isinstance(value, Decimal) and value.is_finite() and value.is_signed():
        return -yuan_to_fen(-value)
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return -yuan_to_fen(-value)
    return yuan_to_fen(value)


def _optional_signed_fen(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    return signed_yuan_to_fen(value)


def fen_to_yuan(fen: int) -> Decimal:
    """12850 → Decimal('128.50'); always exactly two places."""
    return Decimal(fen).scaleb(-2)


def yuan(fen: int) -> str:
    """12850 → '¥128.50', 123456 → '¥1,234.56', -150 → '-¥1.50' (the sign before the currency sign, as
    zh-CN writes it): how the CLI, the console and the demo show an amount to a person."""
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


# How amounts look on the wire, for the OpenAPI document: a decimal-yuan string or a JSON number,
# at most two decimals, never negative; answers write JSON numbers with exactly two decimals.
_AMOUNT_TEXT = r"^[0-9]{1,14}(\.[0-9]{1,2}0*)?$"
AMOUNT_IN: dict[str, Any] = {"anyOf": [{"type": "string", "pattern": _AMOUNT_TEXT},
                                       {"type": "number", "minimum": 0, "exclusiveMaximum": 10**14}],
                             "description": "金额(元),字符串或数字,精确到分(两位以后的小数只能是0)"}
OPTIONAL_AMOUNT_IN: dict[str, Any] = {"anyOf": [{"type": "string", "pattern": r"^([0-9]{1,14}(\.[0-9]{1,2}0*)?)?$"},
                                                {"type": "number", "minimum": 0,
                                                 "exclusiveMaximum": 10**14},
                                                {"type": "null"}],
                                      "description": "金额(元),可为空"}
SIGNED_AMOUNT_IN: dict[str, Any] = {"anyOf": [{"type": "string", "pattern": r"^-?[0-9]{1,14}(\.[0-9]{1,2}0*)?$"},
                                              {"type": "number", "exclusiveMinimum": -10**14,
                                               "exclusiveMaximum": 10**14}],
                                    "description": "合计金额(元),字符串或数字,精确到分,可为负(含退费冲减)"}
OPTIONAL_SIGNED_AMOUNT_IN: dict[str, Any] = {
    "anyOf": [{"type": "string", "pattern": r"^(-?[0-9]{1,14}(\.[0-9]{1,2}0*)?)?$"},
              {"type": "number", "exclusiveMinimum": -10**14, "exclusiveMaximum": 10**14}, {"type": "null"}],
    "description": "合计金额(元),可为空,可为负(含退费冲减)"}
AMOUNT_OUT: dict[str, Any] = {"type": "number", "description": "金额(元),两位小数的JSON数字"}

Fen = Annotated[int, PlainValidator(yuan_to_fen), WithJsonSchema(AMOUNT_IN, mode="validation")]
OptionalFen = Annotated[int | None, PlainValidator(_optional_fen),
                        WithJsonSchema(OPTIONAL_AMOUNT_IN, mode="validation")]
SignedFen = Annotated[int, PlainValidator(signed_yuan_to_fen), WithJsonSchema(SIGNED_AMOUNT_IN, mode="validation")]
OptionalSignedFen = Annotated[int | None, PlainValidator(_optional_signed_fen),
                              WithJsonSchema(OPTIONAL_SIGNED_AMOUNT_IN, mode="validation")]
Yuan = Annotated[int, PlainSerializer(fen_to_yuan, return_type=Decimal),
                 WithJsonSchema(AMOUNT_OUT, mode="serialization")]
