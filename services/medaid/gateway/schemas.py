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
"""

from __future__ import annotations

import base64
import json
import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from medaid.common.idnumber import normalise_id_number
from medaid.gateway import files
from medaid.gateway.amounts import Fen, OptionalFen, Yuan

# --- text fields -----------------------------------------------------------------------------------


def _null_is_empty(value: Any) -> Any:
    return "" if value is None else value


# An optional string: null and absent are ""; numbers are accepted as their digits. Its length
# limit goes with the field: `name: Annotated[Text, Field(max_length=30)] = ""`.
Text = Annotated[str, BeforeValidator(_null_is_empty)]


# psn_no: this product's person number is the 18-character id number; a check character sent as
# lower-case `x` is the same person (the router validates the rest).
PsnNo = Annotated[str, Field(min_length=1, max_length=30), AfterValidator(normalise_id_number)]

_ADMDVS = re.compile(r"^[0-9]{6}\Z")
_FIXMEDINS = re.compile(r"^[A-Z0-9]{12}\Z")
_MSGID = re.compile(r"^[0-9A-Za-z]{30}\Z")

# Yes/no flags as clients send them: "1"/"0", and zero-padded "01"/"00".
FLAGS = {"1": "1", "0": "0", "01": "1", "00": "0"}

# 医疗类别 (med_type) → the product's settlement category.
MED_TYPES: dict[str, str] = {
    "11": "OUTPATIENT",  # 普通门诊
    "12": "OUTPATIENT",  # 门诊挂号
    "13": "OUTPATIENT",  # 急诊
    "14": "OUTPATIENT",  # 门诊慢特病
    "21": "INPATIENT",  # 普通住院
    "41": "PHARMACY",  # 定点药店购药
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, str_strip_whitespace=True)


# --- the envelope ------------------------------------------------------------------------------------


def _input_object(value: Any) -> Any:
    """`input` is an object; some clients send it JSON-encoded as a string."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value, parse_float=Decimal)
        except ValueError:
            raise PydanticCustomError("INVALID_INPUT", "input 不是合法的JSON对象") from None
    if not isinstance(value, dict):
        raise PydanticCustomError("INVALID_INPUT", "input 须为JSON对象")
    return value


class Envelope(_Model):
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
    inf_time: Annotated[Text, Field(max_length=30)] = ""
    sign_no: Annotated[Text, Field(max_length=64)] = ""
    input: Annotated[dict[str, Any], BeforeValidator(_input_object)] = Field(default_factory=dict)

    @field_validator("msgid")
    @classmethod
    def _msgid(cls, v: str) -> str:
        # The documented shape is fixmedins_code + yyyyMMddHHmmss + sequence; clients also send other
        # 30-character ids (an upper-case uuid4 hex cut to 30): any is the institution's own key.
        if not _MSGID.match(v):
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
        if not _ADMDVS.match(v):
            raise PydanticCustomError("INVALID_ADMDVS", "mdtrtarea_admvs 须为6位数字")
        return v

    @field_validator("insuplc_admdvs")
    @classmethod
    def _insuplc(cls, v: str) -> str:
        if v and not _ADMDVS.match(v):
            raise PydanticCustomError("INVALID_ADMDVS", "insuplc_admdvs 须为6位数字(未知时留空)")
        return v


# --- 9001 签到 -----------------------------------------------------------------------------------------


class SignIn(_Model):
    opter_no: Annotated[Text, Field(max_length=30)] = ""
    mac: Annotated[Text, Field(max_length=30)] = ""
    ip: Annotated[Text, Field(max_length=50)] = ""


class Input9001(_Model):
    signIn: SignIn  # noqa: N815 - the interface's own field name


class SignInOut(_Model):
    sign_time: str
    sign_no: str


class Output9001(_Model):
    signinoutb: SignInOut


# --- 1101 人员信息获取 -----------------------------------------------------------------------------------


class Data1101(_Model):
    mdtrt_cert_type: Annotated[Text, Field(max_length=3)] = ""
    mdtrt_cert_no: Annotated[Text, Field(max_length=50)] = ""
    card_sn: Annotated[Text, Field(max_length=32)] = ""
    begntime: Annotated[Text, Field(max_length=30)] = ""
    psn_cert_type: Annotated[Text, Field(max_length=6)] = ""
    certno: Annotated[Text, Field(max_length=50)] = ""
    psn_name: Annotated[Text, Field(max_length=50)] = ""

    @model_validator(mode="after")
    def _someone(self) -> Data1101:
        if not self.mdtrt_cert_no and not self.certno:
            raise PydanticCustomError("MISSING_FIELD", "mdtrt_cert_no 或 certno 至少填写一个")
        # Only an id number is normalised; another credential (an e-credential's code) is kept as sent.
        if self.mdtrt_cert_type in ("", "02"):
            self.mdtrt_cert_no = normalise_id_number(self.mdtrt_cert_no)
        if self.psn_cert_type in ("", "01"):
            self.certno = normalise_id_number(self.certno)
        return self


class Input1101(_Model):
    data: Data1101


class BaseInfoOut(_Model):
    psn_no: str
    psn_cert_type: str
    certno: str
    psn_name: str
    gend: str
    naty: str
    brdy: str
    age: int


class InsuInfoExt(_Model):
    wallet_opened: bool
    wallet_balc: Yuan
    wallet_use_place_admdvs: str


class InsuInfoOut(_Model):
    balc: Yuan
    insutype: str
    psn_type: str
    psn_insu_stas: str
    psn_insu_date: str
    paus_insu_date: str
    cvlserv_flag: str
    insuplc_admdvs: str
    emp_name: str
    medaid_ext: InsuInfoExt


class MulaidHelperOut(_Model):
    psn_no: str
    relation: str


class PersonExt(_Model):
    mulaid_helpers: list[MulaidHelperOut]


class Output1101(_Model):
    baseinfo: BaseInfoOut
    insuinfo: list[InsuInfoOut]
    idetinfo: list[dict[str, Any]]
    medaid_ext: PersonExt


# --- 2206 预结算 / 2207 结算 ------------------------------------------------------------------------------


class Data2207(_Model):
    psn_no: PsnNo
    mdtrt_cert_type: Annotated[Text, Field(max_length=3)] = ""
    mdtrt_cert_no: Annotated[Text, Field(max_length=50)] = ""
    med_type: Annotated[str, Field(min_length=1, max_length=6)]
    medfee_sumamt: Fen
    psn_setlway: Annotated[Text, Field(max_length=6)] = ""
    mdtrt_id: Annotated[Text, Field(max_length=30)] = ""
    chrg_bchno: Annotated[Text, Field(max_length=30)] = ""
    insutype: Annotated[Text, Field(max_length=6)] = ""
    acct_used_flag: str
    invono: Annotated[Text, Field(max_length=20)] = ""
    mid_setl_flag: Annotated[Text, Field(max_length=3)] = ""
    fulamt_ownpay_amt: OptionalFen = None
    overlmt_selfpay: OptionalFen = None
    preselfpay_amt: OptionalFen = None
    inscp_scp_amt: OptionalFen = None
    # Extension: the personally-borne part computed by the institution (its other funds already
    # applied elsewhere). Absent: the whole medfee_sumamt is settled from the accounts and cash.
    psn_part_amt: OptionalFen = None

    @field_validator("med_type")
    @classmethod
    def _med_type(cls, v: str) -> str:
        if v not in MED_TYPES:
            raise PydanticCustomError("UNSUPPORTED_MED_TYPE", "med_type {med_type} 不受理", {"med_type": v})
        return v

    @field_validator("acct_used_flag")
    @classmethod
    def _flag(cls, v: str) -> str:
        flag = FLAGS.get(v)
        if flag is None:
            raise PydanticCustomError("INVALID_ACCT_USED_FLAG", "acct_used_flag 须为 \"1\"/\"01\" 或 \"0\"/\"00\"")
        return flag

    @model_validator(mode="after")
    def _id_card_number(self) -> Data2207:
        if self.mdtrt_cert_type in ("", "02"):  # 居民身份证: the same id number as psn_no
            self.mdtrt_cert_no = normalise_id_number(self.mdtrt_cert_no)
        return self

    @model_validator(mode="after")
    def _part_within_total(self) -> Data2207:
        if self.psn_part_amt is not None and self.psn_part_amt > self.medfee_sumamt:
            raise PydanticCustomError("INVALID_AMOUNT", "psn_part_amt 不能大于 medfee_sumamt")
        return self

    @property
    def settled_fen(self) -> int:
        """The amount the accounts, the wallet, a helper and cash settle here."""
        return self.medfee_sumamt if self.psn_part_amt is None else self.psn_part_amt


class Input2207(_Model):
    data: Data2207


class SetlInfoExt(_Model):
    """medaid extension of setlinfo: who paid the 共济 share, and why a helper or the wallet did not."""

    mulaid_psn_no: str
    mulaid_reason: str
    mulaid_msg: str
    wallet_reason: str
    wallet_msg: str
    insuplc_admdvs: str
    acct_pay_includes_mulaid: bool


class SetlInfoOut(_Model):
    setl_id: str
    mdtrt_id: str
    psn_no: str
    psn_cert_type: str
    certno: str
    insutype: str
    med_type: str
    setl_time: str
    medfee_sumamt: Yuan
    fulamt_ownpay_amt: Yuan
    overlmt_selfpay: Yuan
    preselfpay_amt: Yuan
    inscp_scp_amt: Yuan
    fund_pay_sumamt: Yuan
    hifp_pay: Yuan
    psn_part_amt: Yuan
    acct_pay: Yuan
    acct_mulaid_pay: Yuan
    psn_cash_pay: Yuan
    hosp_part_amt: Yuan
    balc: Yuan
    medins_setl_id: str
    clr_optins: str
    clr_way: str
    clr_type: str
    # Extension: the patient's own 医保钱包 share (waterfall step 2).
    wallet_pay: Yuan
    medaid_ext: SetlInfoExt


class Output2207(_Model):
    setlinfo: SetlInfoOut
    setldetail: list[dict[str, Any]]


# --- 2208 结算撤销 ------------------------------------------------------------------------------------------


class Data2208(_Model):
    setl_id: Annotated[str, Field(min_length=1, max_length=64)]
    mdtrt_id: Annotated[Text, Field(max_length=30)] = ""
    psn_no: PsnNo


class Input2208(_Model):
    data: Data2208


class ReversalExt(_Model):
    mulaid_psn_no: str


class ReversalOut(_Model):
    setl_id: str
    init_setl_id: str
    mdtrt_id: str
    psn_no: str
    acct_pay: Yuan
    acct_mulaid_pay: Yuan
    wallet_pay: Yuan
    balc: Yuan
    setl_time: str
    medaid_ext: ReversalExt


class Output2208(_Model):
    setlinfo: ReversalOut


# --- 2601 冲正 ------------------------------------------------------------------------------------------


def _flag_value(v: Any) -> Any:
    return FLAGS.get(v, v) if isinstance(v, str) else v


class Data2601(_Model):
    psn_no: PsnNo
    omsgid: Annotated[str, Field(min_length=30, max_length=30, pattern=r"^[0-9A-Za-z]{30}$")]
    oinfno: Annotated[str, Field(min_length=4, max_length=4)]

    @field_validator("omsgid")
    @classmethod
    def _omsgid(cls, v: str) -> str:
        if not _MSGID.match(v):
            raise PydanticCustomError("INVALID_MSGID", "omsgid 须为30位字母或数字")
        return v

    @field_validator("oinfno")
    @classmethod
    def _oinfno(cls, v: str) -> str:
        if v not in ("2207", "2208"):
            raise PydanticCustomError("UNSUPPORTED_OINFNO", "oinfno 须为 2207 或 2208")
        return v


class Input2601(_Model):
    data: Data2601


class UndoExt(_Model):
    outcome: str
    setl_id: str
    acct_pay: Yuan
    wallet_pay: Yuan
    acct_mulaid_pay: Yuan
    mulaid_psn_no: str


class Output2601(_Model):
    medaid_ext: UndoExt


# --- 5203 结算信息查询 ------------------------------------------------------------------------------------


class Data5203(_Model):
    psn_no: Annotated[Text, Field(max_length=30), AfterValidator(normalise_id_number)] = ""
    setl_id: Annotated[Text, Field(max_length=64)] = ""
    mdtrt_id: Annotated[Text, Field(max_length=30)] = ""

    @model_validator(mode="after")
    def _which(self) -> Data5203:
        if not self.setl_id and not self.mdtrt_id:
            raise PydanticCustomError("MISSING_FIELD", "setl_id 或 mdtrt_id 至少填写一个")
        return self


class Input5203(_Model):
    data: Data5203


class QueryExt(_Model):
    """medaid extension of 5203: the settlement's state now, and every settlement of the visit."""

    setl_stas: str
    reversal_id: str
    reversed_time: str
    setl_ids: list[str]


class Output5203(_Model):
    setlinfo: SetlInfoOut
    setldetail: list[dict[str, Any]]
    medaid_ext: QueryExt


# --- 3201 对总账 / 3202 对明细账 --------------------------------------------------------------------------

_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


class Statement(_Model):
    insutype: Annotated[Text, Field(max_length=6)] = ""
    clr_type: Annotated[Text, Field(max_length=6)] = ""
    setl_optins: Annotated[Text, Field(max_length=6)] = ""
    stmt_begndate: Annotated[str, Field(min_length=10, max_length=10, pattern=_DATE)]
    stmt_enddate: Annotated[str, Field(min_length=10, max_length=10, pattern=_DATE)]
    medfee_sumamt: Fen
    fund_pay_sumamt: OptionalFen = None
    acct_pay: OptionalFen = None
    cash_payamt: OptionalFen = None
    fixmedins_setl_cnt: Annotated[int, Field(ge=0, le=10_000_000)]
    refd_setl_flag: Annotated[Text, Field(max_length=2), BeforeValidator(_flag_value)] = ""

    @field_validator("refd_setl_flag")
    @classmethod
    def _refd(cls, v: str) -> str:
        if v not in ("", "0", "1"):
            raise PydanticCustomError("INVALID_REFD_SETL_FLAG", "refd_setl_flag 须为 1、0 或空")
        return v


class Input3201(_Model):
    data: Statement


class StmtInfo(_Model):
    setl_optins: str
    stmt_rslt: str
    stmt_rslt_dscr: str


class PlatformTotals(_Model):
    fixmedins_setl_cnt: int
    medfee_sumamt: Yuan
    fund_pay_sumamt: Yuan
    acct_pay: Yuan
    acct_mulaid_pay: Yuan
    wallet_pay: Yuan
    cash_payamt: Yuan
    in_progress_cnt: int


class ReconcileExt(_Model):
    platform: PlatformTotals


class Output3201(_Model):
    stmtinfo: StmtInfo
    medaid_ext: ReconcileExt


class DetailRowIn(_Model):
    setl_id: Annotated[str, Field(min_length=1, max_length=64)]
    mdtrt_id: Annotated[Text, Field(max_length=30)] = ""
    psn_no: Annotated[Text, Field(max_length=30)] = ""
    medfee_sumamt: Fen
    fund_pay_sumamt: OptionalFen = None
    acct_pay: OptionalFen = None
    acct_mulaid_pay: OptionalFen = None
    psn_cash_pay: OptionalFen = None
    refd_setl_flag: Annotated[Text, Field(max_length=2), BeforeValidator(_flag_value)] = ""


class Data3202(Statement):
    file_qury_no: Annotated[Text, Field(max_length=100)] = ""


class Input3202(_Model):
    data: Data3202
    # The detail: uploaded as a file with 9101 (data.file_qury_no; files.py gives its layout), or
    # inline, one row per settlement. One of the two.
    detail: Annotated[list[DetailRowIn], Field(max_length=5000)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_detail(self) -> Input3202:
        if not self.detail and not self.data.file_qury_no:
            raise PydanticCustomError("MISSING_FIELD", "须提交明细:file_qury_no(9101上传的明细文件)或 detail")
        if self.detail and self.data.file_qury_no:
            raise PydanticCustomError("INVALID_DETAIL", "明细只能提交一种:file_qury_no 或 detail")
        return self


class MismatchOut(_Model):
    setl_id: str
    stmt_rslt_type: str
    fields: str
    setl_stas: str
    medfee_sumamt: Yuan
    acct_pay: Yuan
    acct_mulaid_pay: Yuan
    psn_cash_pay: Yuan


class DetailExt(_Model):
    platform_cnt: int
    fixmedins_setl_cnt: int
    in_progress_cnt: int


class FileInfo(_Model):
    file_qury_no: str
    filename: str
    dld_endtime: str


class Output3202(_Model):
    stmtinfo: StmtInfo
    fileinfo: FileInfo  # the result file (files.py), fetched with 9102; `detail` lists the same mismatches
    detail: list[MismatchOut]
    medaid_ext: DetailExt


# --- 9101 文件上传 / 9102 文件下载 -------------------------------------------------------------------------

# `in`: the file's bytes as clients serialise a byte array (files.decode_in); kept as bytes, written
# as base64 wherever the message is serialised (the msgid fingerprint).
FileBytes = Annotated[
    bytes, BeforeValidator(files.decode_in), PlainSerializer(lambda b: base64.b64encode(b).decode(), when_used="json"),
    WithJsonSchema({"anyOf": [{"type": "string", "description": "文件内容的Base64文本"},
                              {"type": "array", "items": {"type": "integer", "minimum": -128, "maximum": 255},
                               "description": "文件内容的字节数组"}]})]
FileName = Annotated[str, AfterValidator(files.check_filename)]


class FsUploadIn(_Model):
    in_: Annotated[FileBytes, Field(alias="in")]
    filename: FileName
    fixmedins_code: Annotated[Text, Field(max_length=30)] = ""


class Input9101(_Model):
    fsUploadIn: FsUploadIn  # noqa: N815 - the interface's node name


class Output9101(FileInfo):
    """The uploaded file's number, name and download deadline, at the root of `output`."""


class FsDownloadIn(_Model):
    file_qury_no: Annotated[str, Field(min_length=1, max_length=100)]
    filename: Annotated[Text, Field(max_length=200)] = ""
    # Clients send "plc" (a platform file) or their own code; the envelope's fixmedins_code decides.
    fixmedins_code: Annotated[Text, Field(max_length=30)] = ""


class Input9102(_Model):
    fsDownloadIn: FsDownloadIn  # noqa: N815 - the interface's node name


# --- the response envelope --------------------------------------------------------------------------------


class ResponseEnvelope(_Model):
    infcode: int
    inf_refmsgid: str
    refmsg_time: str
    respond_time: str
    err_msg: str
    warn_msg: str
    cainfo: str
    signtype: str
    output: dict[str, Any]


INPUTS: dict[str, type[_Model]] = {
    "9001": Input9001,
    "1101": Input1101,
    "2206": Input2207,
    "2207": Input2207,
    "2208": Input2208,
    "2601": Input2601,
    "5203": Input5203,
    "3201": Input3201,
    "3202": Input3202,
    "9101": Input9101,
    "9102": Input9102,
}
