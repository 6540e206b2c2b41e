"""Declared schemas of the settlement transactions: 2206 预结算 / 2207 结算, 2208 结算撤销, 2601 冲正
and 5203 结算信息查询, which share the national setlinfo. The conventions (amounts, unknown fields,
reason codes) are schemas.py's."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, Field, WithJsonSchema, field_validator, model_validator
from pydantic_core import PydanticCustomError

from medaid.common.idnumber import normalise_id_number
from medaid.common.validate import MED_TYPES as MED_TYPES
from medaid.common.validate import flag as validate_flag
from medaid.gateway.amounts import Fen, OptionalFen, OptionalYuan, Yuan
from medaid.gateway.fields import (
    FLAG_SCHEMA,
    ID_CARD_CERT_TYPES,
    MSGID,
    CertNo,
    Code2,
    Insutype,
    MdtrtId,
    MedType,
    Model,
    PsnNo,
    Text,
    id_card_is_of,
)

# --- 2206 预结算 / 2207 结算 ------------------------------------------------------------------------------


class Data2207(Model):
    psn_no: PsnNo
    mdtrt_cert_type: Annotated[Code2, Field(max_length=3)] = ""
    mdtrt_cert_no: CertNo = ""
    med_type: Annotated[MedType, Field(min_length=1)]
    medfee_sumamt: Fen
    psn_setlway: Annotated[Text, Field(max_length=6)] = ""
    mdtrt_id: MdtrtId = ""
    chrg_bchno: Annotated[Text, Field(max_length=30)] = ""
    insutype: Insutype = ""
    acct_used_flag: Annotated[str, FLAG_SCHEMA]
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

    @field_validator("acct_used_flag", mode="before")
    @classmethod
    def _flag(cls, v: Any) -> str:
        """A required flag, "1"/"0" (or "01"/"00", or the number 1/0): anything else, "" too, is no flag:
        INVALID_ACCT_USED_FLAG, not a type error (null is the flag absent, MISSING_FIELD: wire.loads)."""
        text = v if isinstance(v, str) else \
            str(v) if isinstance(v, (int, Decimal)) and not isinstance(v, bool) else None
        flag = validate_flag(text) if text is not None else None
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
    balc: OptionalYuan  # null while not known yet (a 5203 of a settlement or refund still being made)


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
    balc: OptionalYuan  # null while not known yet (a 5203 of a settlement or refund still being made)
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
        if not MSGID.match(v):
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
