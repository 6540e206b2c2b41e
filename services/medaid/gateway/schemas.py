"""Declared schemas (pydantic v2) for the national platform's JSON envelope and each transaction.

Requests are parsed by `wire.loads`, so a JSON number never becomes a float; amount fields
(`amounts.Fen`) accept a decimal-yuan string ("128.50") or a JSON number (128.50, 128) with at most
two decimals and become exact integer fen. More than two decimals, a negative number or anything
non-numeric is refused (reason INVALID_AMOUNT) before anything is written.

Fields the clients send that the product does not use are accepted and ignored (`extra="ignore"`),
so a hospital system's message needs no change. Validation errors carry the product's reason code
as their pydantic error type (see `wire.first_error`).

Responses are models too; their amounts serialize as `Decimal` with exactly two places, which
`wire.dumps` writes as JSON numbers (`128.50`, `0.00`) — the national platform's 数值型(16,2).

This module declares the envelope (in and out), 9001 / 9002 (the envelope's sign_no) and `INPUTS`,
every transaction's input schema by infno. The transactions' own schemas are by group: 1101 in
schemas_person.py; 2206 / 2207, 2208, 2601 and 5203 in schemas_settle.py; 3201 / 3202 and 9101 / 9102
in schemas_reconcile.py. The shared field types are in fields.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from medaid.gateway import schemas_person as ps
from medaid.gateway import schemas_reconcile as rs
from medaid.gateway import schemas_settle as ss
from medaid.gateway import wire
from medaid.gateway.fields import MSGID, ClientTime, Model, Text, admdvs, names_in_any_case

# Every transaction's input and output can be named from here too (openapi.py, tests: `schemas.Input2207`).
from medaid.gateway.schemas_person import Input1101 as Input1101
from medaid.gateway.schemas_person import Output1101 as Output1101
from medaid.gateway.schemas_settle import MED_TYPES as MED_TYPES
from medaid.gateway.schemas_settle import Input2207 as Input2207
from medaid.gateway.schemas_settle import Input2208 as Input2208
from medaid.gateway.schemas_settle import Input2601 as Input2601
from medaid.gateway.schemas_settle import Input5203 as Input5203
from medaid.gateway.schemas_settle import Output2207 as Output2207
from medaid.gateway.schemas_settle import Output2208 as Output2208
from medaid.gateway.schemas_settle import Output2601 as Output2601
from medaid.gateway.schemas_settle import Output5203 as Output5203

_FIXMEDINS = re.compile(r"^[A-Z0-9]{12}\Z")


# --- the envelope ------------------------------------------------------------------------------------


def _input_object(value: Any) -> Any:
    """`input` is an object; some clients send it JSON-encoded as a string."""
    if value is None:
        return {}
    if isinstance(value, str):  # read as the body is read (wire.loads_text)
        try:
            value = wire.loads_text(value)
        except PydanticCustomError:
            raise PydanticCustomError("INVALID_INPUT", "input 不是合法的JSON对象") from None
    if not isinstance(value, dict):
        raise PydanticCustomError("INVALID_INPUT", "input 须为JSON对象")
    return value


class _MedinsSpelling(Model):
    """hsa-his's names of the institution (Envelope._medins_spelling), read in any case as the envelope's are."""

    medins_code: Text = ""
    medins_name: Text = ""


class Envelope(Model):
    """Request envelope (公共输入). Only the fields the product needs are required."""

    infno: Annotated[str, Field(min_length=1, max_length=8)]
    # The patterns are for the OpenAPI document; the validators below refuse with the reason codes.
    msgid: Annotated[str, Field(json_schema_extra={"pattern": "^[0-9A-Za-z]{30}$"})]
    fixmedins_code: Annotated[str, Field(json_schema_extra={"pattern": "^[A-Z0-9]{12}$"})]
    mdtrtarea_admvs: Annotated[str, Field(json_schema_extra={"pattern": "^[0-9]{6}$"})]
    insuplc_admdvs: Annotated[Text, Field(max_length=6)] = ""
    fixmedins_name: Annotated[Text, Field(max_length=200)] = ""
    recer_sys_code: Annotated[Text, Field(max_length=10)] = ""
    dev_no: Annotated[Text, Field(max_length=100)] = ""
    dev_safe_info: Annotated[Text, Field(max_length=2000)] = ""
    cainfo: Annotated[Text, Field(max_length=1024)] = ""
    signtype: Annotated[Text, Field(max_length=10)] = ""
    infver: Annotated[Text, Field(max_length=6)] = ""
    opter_type: Annotated[Text, Field(max_length=3)] = ""
    opter: Annotated[Text, Field(max_length=30)] = ""
    opter_name: Annotated[Text, Field(max_length=50)] = ""
    inf_time: ClientTime = ""
    sign_no: Annotated[Text, Field(max_length=64)] = ""
    input: Annotated[dict[str, Any], BeforeValidator(_input_object)] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _medins_spelling(cls, value: Any) -> Any:
        """Some hospital systems (hsa-his's InsureInterfaceParamDTO) name the institution `medins_code`
        (and `medins_name`) instead of fixmedins_code: without the interface's own spelling, that is
        the institution. With it, it decides (medins_code may then be another of the hospital's codes).
        Both are read in any case (`names_in_any_case`), as every name is: this runs before Model's own."""
        if not isinstance(value, dict):
            return value
        value = names_in_any_case(cls, value)
        theirs_in_any_case = names_in_any_case(_MedinsSpelling, value)
        spelled = {ours: theirs_in_any_case[theirs] for ours, theirs in (("fixmedins_code", "medins_code"),
                                                                         ("fixmedins_name", "medins_name"))
                   if value.get(ours) in (None, "") and theirs_in_any_case.get(theirs) not in (None, "")}
        return {**value, **spelled} if spelled else value

    @field_validator("msgid")
    @classmethod
    def _msgid(cls, v: str) -> str:
        # The documented shape is fixmedins_code + yyyyMMddHHmmss + sequence; clients also send other
        # 30-character ids (an upper-case uuid4 hex cut to 30): any is the institution's own key.
        if not MSGID.match(v):
            raise PydanticCustomError("INVALID_MSGID", "msgid 须为30位字母或数字")
        return v

    @field_validator("fixmedins_code")
    @classmethod
    def _fixmedins(cls, v: str) -> str:
        if not _FIXMEDINS.match(v):
            raise PydanticCustomError("INVALID_INSTITUTION_CODE", "fixmedins_code 须为12位大写字母或数字")
        return v

    @field_validator("mdtrtarea_admvs")
    @classmethod
    def _mdtrtarea(cls, v: str) -> str:
        return admdvs(v, "mdtrtarea_admvs", "mdtrtarea_admvs 须为6位数字", required=True)

    @field_validator("insuplc_admdvs")
    @classmethod
    def _insuplc(cls, v: str) -> str:
        return admdvs(v, "insuplc_admdvs", "insuplc_admdvs 须为6位数字(未知时留空)")


# --- 9001 签到 -----------------------------------------------------------------------------------------


class SignIn(Model):
    opter_no: Annotated[Text, Field(max_length=30)] = ""
    mac: Annotated[Text, Field(max_length=30)] = ""
    ip: Annotated[Text, Field(max_length=50)] = ""


class Input9001(Model):
    signIn: SignIn  # noqa: N815 - the interface's own field name


class SignInOut(Model):
    sign_time: str
    sign_no: str


class Output9001(Model):
    signinoutb: SignInOut


# --- 9002 签退 ------------------------------------------------------------------------------------------


class SignOut(Model):
    sign_no: Annotated[str, Field(min_length=1, max_length=64)]
    opter_no: Annotated[Text, Field(max_length=30)] = ""


class Input9002(Model):
    signOut: SignOut  # noqa: N815 - the interface's own field name


class SignOutOut(Model):
    sign_time: str


class Output9002(Model):
    signoutoutb: SignOutOut


# --- the response envelope --------------------------------------------------------------------------------


class ResponseEnvelope(Model):
    infcode: int
    inf_refmsgid: str
    refmsg_time: str
    respond_time: str
    err_msg: str
    warn_msg: str
    cainfo: str
    signtype: str
    output: dict[str, Any]


INPUTS: dict[str, type[Model]] = {
    "9001": Input9001,
    "9002": Input9002,
    "1101": ps.Input1101,
    "2206": ss.Input2207,
    "2207": ss.Input2207,
    "2208": ss.Input2208,
    "2601": ss.Input2601,
    "5203": ss.Input5203,
    "3201": rs.Input3201,
    "3202": rs.Input3202,
    "9101": rs.Input9101,
    "9102": rs.Input9102,
}
