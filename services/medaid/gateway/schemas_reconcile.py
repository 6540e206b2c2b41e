"""Schemas of 3201 对总账 / 3202 对明细账 and 9101 文件上传 / 9102 文件下载 (docs/reconciliation.md);
the conventions are schemas.py's."""

from __future__ import annotations

import base64
from typing import Annotated

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from medaid.gateway import files
from medaid.gateway.amounts import OptionalSignedFen, SignedFen, Yuan
from medaid.gateway.fields import Model, Text, flag_value

# --- 3201 对总账 / 3202 对明细账 --------------------------------------------------------------------------

_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


class Statement(Model):
    insutype: Annotated[Text, Field(max_length=6)] = ""
    clr_type: Annotated[Text, Field(max_length=6)] = ""
    setl_optins: Annotated[Text, Field(max_length=6)] = ""
    stmt_begndate: Annotated[str, Field(min_length=10, max_length=10, pattern=_DATE)]
    stmt_enddate: Annotated[str, Field(min_length=10, max_length=10, pattern=_DATE)]
    # The institution's totals of the period: negative when refunds of earlier days outweigh it.
    medfee_sumamt: SignedFen
    fund_pay_sumamt: OptionalSignedFen = None
    acct_pay: OptionalSignedFen = None
    cash_payamt: OptionalSignedFen = None
    fixmedins_setl_cnt: Annotated[int, Field(ge=0, le=10_000_000)]
    refd_setl_flag: Annotated[Text, Field(max_length=2), BeforeValidator(flag_value)] = ""

    @field_validator("refd_setl_flag")
    @classmethod
    def _refd(cls, v: str) -> str:
        if v not in ("", "0", "1"):
            raise PydanticCustomError("INVALID_REFD_SETL_FLAG", "refd_setl_flag 须为 1、0 或空")
        return v


class Input3201(Model):
    data: Statement


class StmtInfo(Model):
    setl_optins: str
    stmt_rslt: str
    stmt_rslt_dscr: str


class PlatformTotals(Model):
    fixmedins_setl_cnt: int
    medfee_sumamt: Yuan
    fund_pay_sumamt: Yuan
    acct_pay: Yuan
    acct_mulaid_pay: Yuan
    wallet_pay: Yuan
    cash_payamt: Yuan
    in_progress_cnt: int


class ReconcileExt(Model):
    platform: PlatformTotals


class Output3201(Model):
    stmtinfo: StmtInfo
    medaid_ext: ReconcileExt


class DetailRowIn(Model):
    """One settlement of the detail; or a refund record (退费记录: the reversal's setl_id, refd_setl_flag
    1), whose figures are negative as the 2208 answered them."""

    setl_id: Annotated[str, Field(min_length=1, max_length=64)]
    mdtrt_id: Annotated[Text, Field(max_length=30)] = ""
    psn_no: Annotated[Text, Field(max_length=30)] = ""
    medfee_sumamt: SignedFen
    fund_pay_sumamt: OptionalSignedFen = None
    acct_pay: OptionalSignedFen = None
    acct_mulaid_pay: OptionalSignedFen = None
    psn_cash_pay: OptionalSignedFen = None
    refd_setl_flag: Annotated[Text, Field(max_length=2), BeforeValidator(flag_value)] = ""

    @model_validator(mode="after")
    def _negative_only_as_a_refund(self) -> DetailRowIn:
        amounts = (self.medfee_sumamt, self.fund_pay_sumamt, self.acct_pay, self.acct_mulaid_pay, self.psn_cash_pay)
        if self.refd_setl_flag != "1" and any(a is not None and a < 0 for a in amounts):
            raise PydanticCustomError("INVALID_AMOUNT", "不能为负数(仅退费记录 refd_setl_flag 1 的金额为负)")
        return self


class Data3202(Statement):
    file_qury_no: Annotated[Text, Field(max_length=100)] = ""


class Input3202(Model):
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


class MismatchOut(Model):
    setl_id: str
    stmt_rslt_type: str
    fields: str
    setl_stas: str
    medfee_sumamt: Yuan
    acct_pay: Yuan
    acct_mulaid_pay: Yuan
    psn_cash_pay: Yuan


class DetailExt(Model):
    platform_cnt: int
    fixmedins_setl_cnt: int
    in_progress_cnt: int


class FileInfo(Model):
    file_qury_no: str
    filename: str
    dld_endtime: str


class Output3202(Model):
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


class FsUploadIn(Model):
    in_: Annotated[FileBytes, Field(alias="in")]
    filename: FileName
    fixmedins_code: Annotated[Text, Field(max_length=30)] = ""


class Input9101(Model):
    fsUploadIn: FsUploadIn  # noqa: N815 - the interface's node name


class Output9101(FileInfo):
    """The uploaded file's number, name and download deadline, at the root of `output`."""


class FsDownloadIn(Model):
    file_qury_no: Annotated[str, Field(min_length=1, max_length=100)]
    filename: Annotated[Text, Field(max_length=200)] = ""
    # Clients send "plc" (a platform file) or their own code; the envelope's fixmedins_code decides.
    fixmedins_code: Annotated[Text, Field(max_length=30)] = ""


class Input9102(Model):
    fsDownloadIn: FsDownloadIn  # noqa: N815 - the interface's node name
