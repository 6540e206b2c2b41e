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

The shared field types are in fields.py; 3201 / 3202 and 9101 / 9102 in schemas_reconcile.py.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from medaid.common.idnumber import normalise_id_number
from medaid.gateway import schemas_reconcile as rs
from medaid.gateway import wire
from medaid.gateway.amounts import Fen, OptionalFen, Yuan
from medaid.gateway.fields import (
    FLAGS,
    ID_CARD_CERT_TYPES,
    ClientTime,
    Code2,
    Insutype,
    MdtrtId,
    MedType,
    Model,
    PsnNo,
    Text,
    id_card_is_of,
)

_ADMDVS = re.compile(r"^[0-9]{6}\Z")
_FIXMEDINS = re.compile(r"^[A-Z0-9]{12}\Z")
_MSGID = re.compile(r"^[0-9A-Za-z]{30}\Z")

# 医疗类别 (med_type) → the product's settlement category.
MED_TYPES: dict[str, str] = {
    "11": "OUTPATIENT",  # 普通门诊
    "12": "OUTPATIENT",  # 门诊挂号
    "13": "OUTPATIENT",  # 急诊
    "14": "OUTPATIENT",  # 门诊慢特病
    "21": "INPATIENT",  # 普通住院
    "41": "PHARMACY",  # 定点药店购药
}


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
        the institution. With it, it decides (medins_code may then be another of the hospital's codes)."""
        if not isinstance(value, dict):
            return value
        spelled = {ours: value[theirs] for ours, theirs in (("fixmedins_code", "medins_code"),
                                                             ("fixmedins_name", "medins_name"))
                   if value.get(ours) in (None, "") and value.get(theirs) not in (None, "")}
        return {**value, **spelled} if spelled else value

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


# --- 1101 人员信息获取 -----------------------------------------------------------------------------------


class Data1101(Model):
    mdtrt_cert_type: Annotated[Code2, Field(max_length=3)] = ""
    mdtrt_cert_no: Annotated[Text, Field(max_length=50)] = ""
    card_sn: Annotated[Text, Field(max_length=32)] = ""
    begntime: ClientTime = ""
    psn_cert_type: Annotated[Code2, Field(max_length=6)] = ""
    certno: Annotated[Text, Field(max_length=50)] = ""
    psn_name: Annotated[Text, Field(max_length=50)] = ""

    @model_validator(mode="after")
    def _someone(self) -> Data1101:
        if not self.mdtrt_cert_no and not self.certno:
            raise PydanticCustomError("MISSING_FIELD", "mdtrt_cert_no 或 certno 至少填写一个")
        # Only an id number is normalised; another credential (an e-credential's code) is kept as sent.
        if self.mdtrt_cert_type in ID_CARD_CERT_TYPES:
            self.mdtrt_cert_no = normalise_id_number(self.mdtrt_cert_no)
        if self.psn_cert_type in ("", "01"):
            self.certno = normalise_id_number(self.certno)
            id_card_is_of(self.mdtrt_cert_type, self.mdtrt_cert_no, self.certno, "certno")
        return self


class Input1101(Model):
    data: Data1101


class BaseInfoOut(Model):
    psn_no: str
    psn_cert_type: str
    certno: str
    psn_name: str
    gend: str
    naty: str
    brdy: str
    age: int


class InsuInfoExt(Model):
    """medaid extension of a 1101's insuinfo: the 医保钱包. `wallet_reason` is empty when the wallet
    fields are known; WALLET_UNAVAILABLE when the wallet service did not answer (the person is
    answered from their registry all the same, the wallet fields then say nothing)."""

    wallet_opened: bool
    wallet_balc: Yuan
    wallet_use_place_admdvs: str
    wallet_reason: Annotated[str, Field(description="医保钱包信息未知的原因代码(空:钱包信息可信)")]
    wallet_msg: Annotated[str, Field(description="医保钱包信息未知的原因")]


class InsuInfoOut(Model):
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


class MulaidHelperOut(Model):
    psn_no: str
    relation: str


class PersonExt(Model):
    mulaid_helpers: list[MulaidHelperOut]


class Output1101(Model):
    baseinfo: BaseInfoOut
    insuinfo: list[InsuInfoOut]
    idetinfo: list[dict[str, Any]]
    medaid_ext: PersonExt


# --- 2206 预结算 / 2207 结算 ------------------------------------------------------------------------------


class Data2207(Model):
    psn_no: PsnNo
    mdtrt_cert_type: Annotated[Code2, Field(max_length=3)] = ""
    mdtrt_cert_no: Annotated[Text, Field(max_length=50)] = ""
    med_type: Annotated[MedType, Field(min_length=1)]
    medfee_sumamt: Fen
    psn_setlway: Annotated[Text, Field(max_length=6)] = ""
    mdtrt_id: MdtrtId = ""
    chrg_bchno: Annotated[Text, Field(max_length=30)] = ""
    insutype: Insutype = ""
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
        if self.mdtrt_cert_type in ID_CARD_CERT_TYPES:  # 居民身份证: the same id number as psn_no
            self.mdtrt_cert_no = normalise_id_number(self.mdtrt_cert_no)
        id_card_is_of(self.mdtrt_cert_type, self.mdtrt_cert_no, self.psn_no, "psn_no")
        return self

    @model_validator(mode="after")
    def _part_within_total(self) -> Data2207:
        if self.psn_part_amt is not None and self.psn_part_amt > self.medfee_sumamt:
            raise PydanticCustomError("INVALID_AMOUNT", "psn_part_amt 不能大于 medfee_sumamt")
        if self.settled_fen <= 0:  # named as the message has it: psn_part_amt is an extension
            field = "medfee_sumamt" if self.psn_part_amt is None else "psn_part_amt"
            raise PydanticCustomError("INVALID_AMOUNT", "{field} 须大于0:没有要结算的金额", {"field": field})
        return self

    @property
    def settled_fen(self) -> int:
        """The amount the accounts, the wallet, a helper and cash settle here."""
        return self.medfee_sumamt if self.psn_part_amt is None else self.psn_part_amt


class Input2207(Model):
    data: Data2207


class HelperPayOut(Model):
    """One helper's (or family-account contributor's) part of acct_mulaid_pay, and their balance after."""

    psn_no: str
    amount: Yuan
    balc: Yuan


class SetlInfoExt(Model):
    """medaid extension of setlinfo: who paid the 共济 share (every helper, in the order they paid: in
    北京 several pay in turn; `mulaid_psn_no` is the first), and why a helper or the wallet did not."""

    mulaid_psn_no: str
    mulaid_helpers: list[HelperPayOut]
    mulaid_reason: str
    mulaid_msg: str
    wallet_reason: str
    wallet_msg: str
    insuplc_admdvs: str
    acct_pay_includes_mulaid: bool


# 基本医疗保险统筹基金支付比例: a ratio, 数值型(5,4), written as a JSON number with four places.
Ratio = Annotated[Decimal, WithJsonSchema({"type": "number", "description": "比例,四位小数的JSON数字"},
                                          mode="serialization")]


class FundPaysOut(Model):
    """The funds' fields of a national setlinfo (2206 / 2207 / 2208 / 5203). This product has no pooled
    fund, so each is 0.00 (and the fund's ratio 0.0000); they are sent all the same because clients
    read every one of them and parse it as a number (a missing one is a null to them)."""

    act_pay_dedc: Yuan = 0  # 实际支付起付线
    pool_prop_selfpay: Ratio = Decimal("0.0000")  # 基本医疗保险统筹基金支付比例
    cvlserv_pay: Yuan = 0  # 公务员医疗补助资金支出
    hifes_pay: Yuan = 0  # 企业补充医疗保险基金支出
    hifmi_pay: Yuan = 0  # 居民大病保险资金支出
    hifob_pay: Yuan = 0  # 职工大额医疗费用补助基金支出
    maf_pay: Yuan = 0  # 医疗救助基金支出
    oth_pay: Yuan = 0  # 其他支出


class SetlInfoOut(FundPaysOut):
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
    # 退费结算标志: "0" a settlement; "1" a refund record (a 5203 by a 2208's setl_id, as the 2208 said).
    refd_setl_flag: str = "0"
    # Extension: the patient's own 医保钱包 share (waterfall step 2).
    wallet_pay: Yuan
    medaid_ext: SetlInfoExt


class Output2207(Model):
    setlinfo: SetlInfoOut
    setldetail: list[dict[str, Any]]


# --- 2208 结算撤销 ------------------------------------------------------------------------------------------


class Data2208(Model):
    setl_id: Annotated[str, Field(min_length=1, max_length=64)]
    mdtrt_id: MdtrtId = ""
    psn_no: PsnNo


class Input2208(Model):
    data: Data2208


class ReversalExt(Model):
    mulaid_psn_no: str
    # Every helper given back their share: amounts negative like acct_mulaid_pay, balances after.
    mulaid_helpers: list[HelperPayOut]


class ReversalOut(FundPaysOut):
    """The reversal as a settlement record of its own (冲销): the 2207's figures negated."""

    setl_id: str
    init_setl_id: str
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
    refd_setl_flag: str = "1"  # 退费结算标志: a refund record
    wallet_pay: Yuan
    medaid_ext: ReversalExt


class Output2208(Model):
    setlinfo: ReversalOut
    setldetail: list[dict[str, Any]]  # [] as in 2207: no fund items


# --- 2601 冲正 ------------------------------------------------------------------------------------------


class Data2601(Model):
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


class Input2601(Model):
    data: Data2601


class UndoExt(Model):
    """What a 2601 moved: every amount is what moved (never negative); `outcome` says which way
    (REVERSED: given back, RESTORED: charged again)."""

    outcome: str
    setl_id: str
    acct_pay: Yuan
    wallet_pay: Yuan
    acct_mulaid_pay: Yuan
    mulaid_psn_no: str
    # Every helper whose share moved (their amounts add up to acct_mulaid_pay), with their balance after.
    mulaid_helpers: list[HelperPayOut]


class Output2601(Model):
    medaid_ext: UndoExt


# --- 5203 结算信息查询 ------------------------------------------------------------------------------------


class Data5203(Model):
    psn_no: Annotated[Text, Field(max_length=30), AfterValidator(normalise_id_number)] = ""
    setl_id: Annotated[Text, Field(max_length=64)] = ""
    mdtrt_id: MdtrtId = ""

    @model_validator(mode="after")
    def _which(self) -> Data5203:
        if not self.setl_id and not self.mdtrt_id:
            raise PydanticCustomError("MISSING_FIELD", "setl_id 或 mdtrt_id 至少填写一个")
        return self


class Input5203(Model):
    data: Data5203


class QueryExt(Model):
    """medaid extension of 5203: the settlement's state now, and every settlement of the visit. Asked by
    a refund's setl_id (a 2208's), the refund record itself and the settlement it reversed (init_setl_id)."""

    setl_stas: str
    reversal_id: str
    reversed_time: str
    setl_ids: list[str]
    init_setl_id: str = ""


class Output5203(Model):
    setlinfo: SetlInfoOut
    setldetail: list[dict[str, Any]]
    medaid_ext: QueryExt


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
    "1101": Input1101,
    "2206": Input2207,
    "2207": Input2207,
    "2208": Input2208,
    "2601": Input2601,
    "5203": Input5203,
    "3201": rs.Input3201,
    "3202": rs.Input3202,
    "9101": rs.Input9101,
    "9102": rs.Input9102,
}
