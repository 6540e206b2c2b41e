"""The gateway's JSON on the wire: requests parsed with every number a Decimal (never a float),
bounded nesting and a member sent as null read as absent; answers written with Decimals as exact
numbers; a pydantic validation error turned into the product's reason code and where it is."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

# --- errors and the JSON writer ------------------------------------------------------------------------------


# Why a field is refused, in the words err_msg gives (the field's name stays as sent): pydantic's error
# types, `{name}` filled from the error's context; `<type>.List` where a list's limit reads otherwise.
_KIND_ZH: dict[str, str] = {
    "too_long": "长度超过{max_length}位", "string_too_long": "长度超过{max_length}位",
    "too_short": "长度至少{min_length}位", "string_too_short": "长度至少{min_length}位",
    "too_long.List": "超过{max_length}项", "too_short.List": "至少须有{min_length}项",
    "string_type": "应为字符串", "string_pattern_mismatch": "格式不符",
    "int_type": "应为整数", "int_parsing": "应为整数", "int_from_float": "应为整数",
    "float_type": "应为数字", "float_parsing": "应为数字", "decimal_type": "应为数字", "decimal_parsing": "应为数字",
    "bool_type": "应为布尔值", "bool_parsing": "应为布尔值",
    "greater_than_equal": "不能小于{ge}", "greater_than": "须大于{gt}",
    "less_than_equal": "不能大于{le}", "less_than": "须小于{lt}",
    "model_type": "应为JSON对象", "model_attributes_type": "应为JSON对象", "dict_type": "应为JSON对象",
    "list_type": "应为JSON数组", "literal_error": "取值不在允许范围内", "enum": "取值不在允许范围内",
}
_KIND_ZH_OTHER = "类型或格式不符合接口规范"


def reason_zh(err: ErrorDetails) -> str:
    """Why one validation error refuses its field, in Chinese: our own errors' sentence, or pydantic's
    error type in words (`_KIND_ZH`)."""
    kind = str(err["type"])
    if kind.isupper():  # one of ours (PydanticCustomError with a reason code): its sentence is Chinese
        return str(err["msg"])
    if kind == "missing":
        return "缺少必填字段"
    ctx = dict(err.get("ctx") or {})
    template = _KIND_ZH.get(f"{kind}.{ctx.get('field_type', '')}") or _KIND_ZH.get(kind, _KIND_ZH_OTHER)
    try:
        return template.format_map(ctx)
    except (KeyError, ValueError):  # a context without the value: the sentence without it
        return _KIND_ZH_OTHER


def first_error(exc: ValidationError, prefix: str = "") -> tuple[str, str]:
    """(reason code, where and why) of the first validation error, for err_msg: all in Chinese but the
    field's name."""
    err = exc.errors(include_url=False)[0]
    kind = str(err["type"])
    # The place as sent: `input.data.psn_no`; an error of the whole of `prefix`'s object names it (`input`).
    where = ".".join([*filter(None, [prefix.removesuffix(".")]), *(str(p) for p in err["loc"])])
    if kind == "missing":
        return "MISSING_FIELD", where
    if kind.isupper():
        return kind, f"{where}: {reason_zh(err)}" if where else reason_zh(err)
    why = f"{where}: {reason_zh(err)}"
    if where in ("input", "input.data", "input.signIn", "input.detail") or kind in ("model_type", "dict_type",
                                                                                     "list_type"):
        return "INVALID_INPUT", why
    return "INVALID_FIELD", why


# The json module's own string writer (C) in its ensure_ascii=False form: what json.dumps writes for a
# str, without building an encoder per value.
_quote: Callable[[str], str] = json.encoder.encode_basestring


def dumps(value: Any) -> str:
    """Compact JSON text with Decimals written exactly as numbers (no float on the way); every other
    value as json.dumps(value, ensure_ascii=False, separators=(",", ":")) writes it."""
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return "{" + ",".join(_quote(str(k)) + ":" + dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        raise TypeError("no float in an answer")
    return json.dumps(value, ensure_ascii=False)


MAX_DEPTH = 32  # the deepest message of the interface nests 4 levels

UTF8 = "utf-8"
GB18030 = "gb18030"
# The Chinese national charsets a HIS on a Chinese Windows code page declares; GB18030 reads them all.
_GB_CHARSETS = frozenset({"gbk", "gb2312", "gb18030", "cp936", "x-gbk", "euc-cn"})


def _charset_param(content_type: str | None) -> str | None:
    """The charset a Content-Type names (lower case), None when it names none."""
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower() or None
    return None


def declared_charset(content_type: str | None) -> str:
    """The charset a request's Content-Type declares, as the gateway reads and answers it: GB18030 for
    GBK / GB2312 / GB18030, else UTF-8 (JSON's own, also when none is declared)."""
    return GB18030 if _charset_param(content_type) in _GB_CHARSETS else UTF8


def body_charset(content_type: str | None, body: bytes) -> str:
    """The charset a request's body is read and answered in: the declared one (`declared_charset`);
    with no charset declared, GB18030 for a body that is not valid UTF-8. A Delphi, VB or PowerBuilder
    HIS on a Chinese Windows writes its code page (GBK) and declares nothing; UTF-8 text and GBK text
    with Chinese in it are told apart by the bytes, so a body that is valid UTF-8 stays UTF-8."""
    if _charset_param(content_type) is None:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return GB18030
    return declared_charset(content_type)


def _text(body: bytes, charset: str) -> str:
    """A body as text: UTF-8 (a leading byte-order mark dropped), or, read as GB18030 (`body_charset`)
    and not UTF-8, GB18030. A body declared GBK that is valid UTF-8 is read as UTF-8: clients mislabel
    their bodies, and GBK text with Chinese in it is not valid UTF-8."""
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        if charset != GB18030:
            raise
        return body.decode(GB18030)


# Where err_msg says what is wrong with a body that is not JSON (`loads`): one not UTF-8 though read so
# (it declared UTF-8, or a charset the gateway does not read) is most often a HIS writing its Windows
# code page (GBK) under its HTTP library's default header, and is told what to declare; one that is not
# JSON says nothing more than the reason's own words.
NOT_UTF8 = "报文不是UTF-8编码:GBK编码的报文请在Content-Type中声明charset=GBK"


def loads(body: bytes, charset: str = UTF8) -> Any:
    """Parse a request body; JSON numbers with a fraction or exponent become Decimal, never float, and a
    member whose value is null is left out (`_depth_without_nulls`).
    A leading UTF-8 byte-order mark is dropped: a .NET client writing the body through
    `new StreamWriter(stream, Encoding.UTF8)` sends one before the JSON. `charset`: what it is read
    in (`body_charset`).
    Nesting deeper than MAX_DEPTH is not a message of the interface (and would only cost stack)."""
    try:
        text = _text(body, charset)
    except UnicodeDecodeError:
        raise PydanticCustomError("INVALID_JSON", NOT_UTF8) from None
    return loads_text(text)


def loads_text(text: str) -> Any:
    """JSON text as `loads` reads a body (numbers Decimal, no NaN / Infinity, nesting at most MAX_DEPTH):
    also for an `input` that a client sent JSON-encoded as a string."""
    try:
        value = json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, InvalidOperation, RecursionError):
        raise PydanticCustomError("INVALID_JSON", "") from None
    if _depth_without_nulls(value) > MAX_DEPTH:
        raise PydanticCustomError("INVALID_JSON", "报文嵌套层数超过上限")
    return value


def _depth_without_nulls(value: Any) -> int:
    """How deeply objects and arrays nest (iteratively: no recursion on hostile input); on the way, every
    object's members whose value is null are dropped. A member sent as null is the member absent: a Java
    or C# client model writes an unset member as null, and the HIS must be told a required one is missing
    (MISSING_FIELD, its place named), not that it should be a string; an optional one takes its default.
    One rule for every field of every message (an item of an array stays as sent)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            if None in item.values():
                for name in [k for k, v in item.items() if v is None]:
                    del item[name]
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
