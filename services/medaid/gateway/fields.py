"""The field types every transaction's schema shares (schemas*.py): optional
text, the person number, yes/no flags, and the base model (unknown fields ignored, numbers accepted
as their digits, surrounding white space dropped)."""

from __future__ import annotations

import re
from functools import cache
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from medaid.common.errors import DomainError
from medaid.common.idnumber import InvalidIdNumber, normalise_id_number, parse
from medaid.common.validate import FLAGS
from medaid.registry import validate


def _null_is_empty(value: Any) -> Any:
    return "" if value is None else value


def null_is_no_items(value: Any) -> Any:
    """An optional list sent as null (a C# or Java client model writes an unset member so) is absent: []."""
    return [] if value is None else value


# An optional string: null and absent are ""; numbers are accepted as their digits. Its length
# limit goes with the field: `name: Annotated[Text, Field(max_length=30)] = ""`.
Text = Annotated[str, BeforeValidator(_null_is_empty)]


# A date-time the product does not use (the envelope's inf_time, 1101's begntime), as clients write it:
# the interface's `yyyy-MM-dd HH:mm:ss`, or a date-time type serialised in ISO 8601 with fractions and an
# offset (a C# DateTime.Now through Newtonsoft.Json: `2026-11-22T10:00:00.1234567+08:00`, 33 characters;
# a Java OffsetDateTime with nanoseconds, 35).
ClientTime = Annotated[Text, Field(max_length=40)]


def _is_id_number(value: str) -> bool:
    try:
        parse(value)
    except InvalidIdNumber:
        return False
    return True


# A msgid (the envelope's, a 2601's omsgid): 30 letters or digits, the institution's own key.
MSGID = re.compile(r"^[0-9A-Za-z]{30}\Z")

# 就诊凭证类型 (mdtrt_cert_type) codes whose mdtrt_cert_no is a 居民身份证号 (empty: as 02, as it always was).
ID_CARD_CERT_TYPES = ("", "02")


def id_card_is_of(cert_type: str, cert_no: str, id_number: str, of: str) -> None:
    """A 居民身份证 credential (02) names its holder: its number, when given, must be `id_number` (both
    normalised), the person the message is for (`of` names that field). An 01 e-credential's or an 03
    social-security card's number is an opaque credential and is not compared. A person's number that
    is no id number at all is left to its own refusal (INVALID_ID_NUMBER), which says more."""
    if cert_type in ID_CARD_CERT_TYPES and cert_no and id_number and cert_no != id_number \
            and _is_id_number(id_number):
        raise PydanticCustomError("CERT_NO_MISMATCH", "mdtrt_cert_type 02 的 mdtrt_cert_no 不是 {of} 的居民身份证号",
                                  {"of": of})


# Another credential's number (01 医保电子凭证's token, 03 社会保障卡号, a terminal's code): the platform
# issues them in printable ASCII (letters, digits, a token's few symbols), never with a space.
_CREDENTIAL_NO = re.compile(r"^[!-~]*\Z")


def _cert_no(value: str, info: ValidationInfo) -> str:
    """An mdtrt_cert_no whose mdtrt_cert_type (declared before it) is not 02 is a credential's number:
    one with anything but printable ASCII in it (an id number with the holder's name typed after it, a
    control or zero-width character, a full-width letter, a space) is no credential, INVALID_CERT_NO.
    The router never takes one (QueryPerson serves 02 only; a settlement carries no credential), so
    the rule is the gateway's alone. A 居民身份证号 is checked as one (id_card_is_of, INVALID_ID_NUMBER)."""
    cert_type = info.data.get("mdtrt_cert_type", "")
    if cert_type not in ID_CARD_CERT_TYPES and not _CREDENTIAL_NO.match(value):
        raise PydanticCustomError("INVALID_CERT_NO", "mdtrt_cert_type {cert_type} 的凭证编号须为不含空格的"
                                  "半角字母、数字或符号", {"cert_type": cert_type})
    return value


# mdtrt_cert_no (就诊凭证编号): optional text of at most the interface's 50 characters; declared after
# mdtrt_cert_type, whose credential it is the number of (_cert_no).
CertNo = Annotated[Text, Field(max_length=50), AfterValidator(_cert_no)]


def _mdtrt_id(value: str) -> str:
    """The registries' rule for a visit's id (registry.validate.mdtrt_id), refused as they refuse it."""
    try:
        return validate.mdtrt_id(value)
    except DomainError:
        raise PydanticCustomError("INVALID_MDTRT_ID", "mdtrt_id 须为至多{n}个可打印字符",
                                  {"n": validate.MAX_MDTRT_ID}) from None


def admdvs(value: str, field: str, malformed: str, *, required: bool = False) -> str:
    """The registries' rule for an admdvs code (registry.validate.admdvs: six digits, INVALID_ADMDVS with
    `malformed`; the first two a province's, UNKNOWN_REGION), refused with the reason the router gives."""
    try:
        return validate.admdvs(value, field, required=required)
    except DomainError as exc:
        if exc.reason == "INVALID_ADMDVS":
            raise PydanticCustomError("INVALID_ADMDVS", malformed) from None
        raise PydanticCustomError(exc.reason, "{field} {value} 不是行政区划代码:前两位不是省级代码",
                                  {"field": field, "value": value}) from None


# mdtrt_id (就诊ID): optional text, at most registry.validate.MAX_MDTRT_ID printable characters.
MdtrtId = Annotated[Text, AfterValidator(_mdtrt_id)]

def _dictionary_code(field: str, reason: str) -> AfterValidator:
    """The registries' rule for a national dictionary code (registry.validate.dictionary_code: at most
    MAX_CODE ASCII digits), refused with the reason the router gives."""
    def check(value: str) -> str:
        try:
            return validate.dictionary_code(value, field, reason=reason)
        except DomainError:
            raise PydanticCustomError(reason, "{field} 须为至多{n}位数字(0-9)的字典代码",
                                      {"field": field, "n": validate.MAX_CODE}) from None
    return AfterValidator(check)


# A dictionary code or flag that a client model types as a number (the C# MZJS2207A's `int med_type`,
# acct_used_flag 1, mdtrt_cert_type 2) is read as its digits (Model's coerce_numbers_to_str,
# _two_digit_code); the OpenAPI document says so, or a vendor validating its messages against it would
# refuse what the gateway settles. maxLength and pattern constrain the text form only.
STRING_OR_NUMBER: dict[str, Any] = {"type": ["string", "integer"], "minimum": 0}

# insutype (险种类型), med_type (医疗类别) and clr_type (清算类别): optional text, a dictionary code
# (INVALID_INSUTYPE / INVALID_MED_TYPE / INVALID_CLR_TYPE otherwise, as over gRPC).
# The OpenAPI document's limits.
_CODE_SCHEMA = Field(json_schema_extra={**STRING_OR_NUMBER, "maxLength": validate.MAX_CODE,
                                        "pattern": f"^[0-9]{{0,{validate.MAX_CODE}}}$"})
Insutype = Annotated[Text, _CODE_SCHEMA, _dictionary_code("insutype", "INVALID_INSUTYPE")]
MedType = Annotated[Text, _CODE_SCHEMA, _dictionary_code("med_type", "INVALID_MED_TYPE")]
ClrType = Annotated[Text, _CODE_SCHEMA, _dictionary_code("clr_type", "INVALID_CLR_TYPE")]

# psn_no: this product's person number is the 18-character id number; a check character sent as
# lower-case `x` is the same person (the router validates the rest).
PsnNo = Annotated[str, Field(min_length=1, max_length=30), AfterValidator(normalise_id_number)]

def _two_digit_code(value: Any) -> Any:
    """A two-digit dictionary code sent as an integer (2) or without its leading zero ("2") is that code
    ("02"), as a client whose model types it as a number writes it."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
        return f"0{value}"
    if isinstance(value, str) and len(value.strip()) == 1 and value.strip().isdigit():
        return "0" + value.strip()
    return _null_is_empty(value)


# A two-digit dictionary code (mdtrt_cert_type, psn_cert_type): "02", 2 and "2" are the same code. Its
# length limit goes with the field, as Text's does.
Code2 = Annotated[str, BeforeValidator(_two_digit_code), Field(json_schema_extra=STRING_OR_NUMBER)]


# A yes/no flag's field as the OpenAPI document describes it: "1" / "0" (and their forms), or the number.
FLAG_SCHEMA = Field(json_schema_extra=STRING_OR_NUMBER)


def flag_value(v: Any) -> Any:
    """A yes/no flag as clients send it in its one form (medaid.common.validate.flag); anything else
    as it came, for the field's own check."""
    return FLAGS.get(v, v) if isinstance(v, str) else v


@cache
def _names_by_case(model: type[BaseModel]) -> tuple[frozenset[str], dict[str, str]]:
    """A model's names on the wire (a field's alias, else its name), and each by its lower case."""
    names = [f.alias or name for name, f in model.model_fields.items()]
    return frozenset(names), {n.lower(): n for n in names}


def names_in_any_case(model: type[BaseModel], value: Any) -> Any:
    """`value` (an object as sent) with each of `model`'s names as the model spells it, however it was
    sent: the platform's Java JSON binding matches names without regard to case, and hospital systems
    write them in capitals (`REFD_SETL_FLAG`; every name of a `data` built from an Oracle row, whose
    columns come back as `PSN_NO`, `MEDFEE_SUMAMT` …). Sent in two cases, the interface's own spelling
    decides. The one rule for reading a name: Model's, and whatever reads a message before its model."""
    if not isinstance(value, dict):
        return value
    exact, by_lower = _names_by_case(model)
    strays = [k for k in value.keys() - exact if isinstance(k, str)]
    spelled = {by_lower[k.lower()]: value[k] for k in strays
               if k.lower() in by_lower and by_lower[k.lower()] not in value}
    return {**value, **spelled} if spelled else value


def place(message: type[BaseModel], name: str) -> str:
    """Where a field a service named sits in a message whose `input` is `message` (Input2208 …), as
    err_msg names it: `input.data.setl_id` for one of `input.data`, `input.detail` for one of `input`
    itself, and any other (an envelope field: `insuplc_admdvs`) by its own name, which is its place.
    The one rule for naming a refused field, as the gateway's own checks name theirs (wire.first_error)."""
    data = message.model_fields.get("data")
    inner = data.annotation if data is not None else None
    if isinstance(inner, type) and issubclass(inner, BaseModel) and name in inner.model_fields:
        return f"input.data.{name}"
    return f"input.{name}" if name and name in message.model_fields else name

class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _names_in_any_case(cls, value: Any) -> Any:
        """A field's name is read in any case (`names_in_any_case`)."""
        return names_in_any_case(cls, value)
