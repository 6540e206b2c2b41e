"""Schemas of 3201 对总账 / 3202 对明细账 and 9101 文件上传 / 9102 文件下载 (docs/reconciliation.md);
the conventions are schemas.py's."""

from __future__ import annotations

import base64
import datetime as _dt
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from medaid.common.errors import DomainError
from medaid.gateway import files
from medaid.gateway.amounts import OptionalSignedFen, SignedFen, Yuan
from medaid.gateway.fields import (
    FLAG_SCHEMA,
    ClrType,
    Insutype,
    MdtrtId,
    Model,
    Text,
    flag_value,
    null_is_no_items,
)
from medaid.gateway.reasons import detail_zh
from medaid.registry import validate

# --- 3201 对总账 / 3202 对明细账 --------------------------------------------------------------------------

# A period's day as hospital systems write it: the interface's yyyy-MM-dd, the compact yyyyMMdd, or a
# date-time (a Java or C# date formatted yyyy-MM-dd HH:mm:ss, or an ISO one with `T`) whose time
# names the whole day: midnight, and for the end also the day's last second (23:59:59, the
# .AddDays(1).AddSeconds(-1) of C# clients; any fraction of that last second, the .AddTicks(-1) of
# others), with zeros past the second allowed (`00:00:00.000`, a java.sql.Timestamp). The time is
# Beijing's: with no offset or Beijing's (+08:00: a C# DateTime of kind Local through Newtonsoft.Json,
# `2026-11-22T00:00:00+08:00`; +0800 from Java's `Z`), as written; with another, the instant is read
# in Beijing (a java.util.Date through Jackson writes Beijing's midnight `2026-11-21T16:00:00.000+00:00`).
# Any other time is part of a day, which the platform does not reconcile (midnight in UTC is 08:00 in
# Beijing: the days are Asia/Shanghai's); an epoch number leaves the day to a zone not given.
_DAY = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
                  r"(?:[ T]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?(Z|[+-][0-9]{2}:?[0-9]{2})?)?|([0-9]{8})")
_BEIJING = (None, "+08:00", "+0800")
_BEIJING_TZ = _dt.timezone(_dt.timedelta(hours=8))
_WHOLE_DAY_FROM = ("00:00:00",)
_WHOLE_DAY_TO = ("00:00:00", "23:59:59")


def _stmt_day(times: tuple[str, ...]) -> Callable[[Any], str]:
    """The one reader of stmt_begndate / stmt_enddate (`times`: the times of day that name a whole day),
    giving yyyy-MM-dd; a refusal says in words what is wrong (err_msg has room for a short sentence)."""
    def day(value: Any) -> str:
        m = _DAY.fullmatch(value) if isinstance(value, str) else None
        if m is None:
            raise PydanticCustomError("INVALID_STMT_DATE", "须为日期yyyy-MM-dd")
        digits = m[7] or m[1] + m[2] + m[3]
        try:
            day = _dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
        except ValueError:
            raise PydanticCustomError("INVALID_STMT_DATE", "不是有效的公历日期") from None
        if m[4] is None:
            return day.isoformat()
        clock, fraction, offset = m[4], m[5] or "", m[6]
        if offset not in _BEIJING:  # the instant, read in Beijing
            try:
                zone = _dt.UTC if offset == "Z" else _dt.timezone(
                    (-1 if offset[0] == "-" else 1) * _dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[-2:])))
                at = _dt.datetime.combine(day, _dt.time.fromisoformat(clock), zone).astimezone(_BEIJING_TZ)
            except ValueError:
                raise PydanticCustomError("INVALID_STMT_DATE", "时刻或时区不是有效的值") from None
            day, clock = at.date(), at.strftime("%H:%M:%S")
            if clock not in times:
                raise PydanticCustomError("INVALID_STMT_DATE", f"按北京时间为{clock},对账按整日")
        if clock not in times or (fraction.strip("0") and clock != "23:59:59"):
            raise PydanticCustomError("INVALID_STMT_DATE", "时刻须为" + "或".join(times) + ",对账按整日")
        return day.isoformat()
    return day


StmtBegnDate = Annotated[str, PlainValidator(_stmt_day(_WHOLE_DAY_FROM)), WithJsonSchema(
    {"type": "string", "examples": ["2026-11-22", "20261122", "2026-11-22 00:00:00", "2026-11-22T00:00:00+08:00"]})]
StmtEndDate = Annotated[str, PlainValidator(_stmt_day(_WHOLE_DAY_TO)), WithJsonSchema(
    {"type": "string", "examples": ["2026-11-22", "20261122", "2026-11-22 00:00:00", "2026-11-22 23:59:59",
                                    "2026-11-22T00:00:00+08:00"]})]


class Statement(Model):
    insutype: Insutype = ""
    clr_type: ClrType = ""
    setl_optins: Annotated[Text, Field(max_length=6)] = ""
    stmt_begndate: StmtBegnDate
    stmt_enddate: StmtEndDate
    # The institution's totals of the period: negative when refunds of earlier days outweigh it.
    medfee_sumamt: SignedFen
    fund_pay_sumamt: OptionalSignedFen = None
    acct_pay: OptionalSignedFen = None
    cash_payamt: OptionalSignedFen = None
    fixmedins_setl_cnt: Annotated[int, Field(ge=0, le=10_000_000)]
    refd_setl_flag: Annotated[Text, Field(max_length=2), FLAG_SCHEMA, BeforeValidator(flag_value)] = ""

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
    mdtrt_id: MdtrtId = ""
    psn_no: Annotated[Text, Field(max_length=30)] = ""
    medfee_sumamt: SignedFen
    fund_pay_sumamt: OptionalSignedFen = None
    acct_pay: OptionalSignedFen = None
    acct_mulaid_pay: OptionalSignedFen = None
    psn_cash_pay: OptionalSignedFen = None
    wallet_pay: OptionalSignedFen = None  # the own 医保钱包 share (extension, as in 2207)
    refd_setl_flag: Annotated[Text, Field(max_length=2), FLAG_SCHEMA, BeforeValidator(flag_value)] = ""

    @model_validator(mode="after")
    def _negative_only_as_a_refund(self) -> DetailRowIn:
        """The router's rule for a row's figures (validate.detail_figures), told in the message's words."""
        try:
            validate.detail_figures({"medfee_sumamt": self.medfee_sumamt, "fund_pay_sumamt": self.fund_pay_sumamt,
                                     "acct_pay": self.acct_pay, "acct_mulaid_pay": self.acct_mulaid_pay,
                                     "psn_cash_pay": self.psn_cash_pay, "wallet_pay": self.wallet_pay},
                                    refund_record=self.refd_setl_flag == "1")
        except DomainError as exc:
            field = exc.metadata.get("field", "")
            if exc.reason == "INVALID_AMOUNT":
                raise PydanticCustomError("INVALID_AMOUNT", f"{field}不能为负数(仅退费记录 refd_setl_flag 1 的金额为负)"
                                          ) from None
            limit = detail_zh(exc.reason, exc.metadata)  # either way on a refund record
            raise PydanticCustomError(exc.reason, f"{field}超过上限:{limit}") from None
        return self


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


class Data3202(Statement):
    file_qury_no: Annotated[Text, Field(max_length=100)] = ""


class Input3202(Model):
    data: Data3202
    # The detail: uploaded as a file with 9101 (data.file_qury_no; files.py gives its layout), the
    # same file sent with the 3202 itself (fsUploadIn, as a 9101 carries it), or inline, one row per
    # settlement. One of the three.
    detail: Annotated[list[DetailRowIn], BeforeValidator(null_is_no_items), Field(max_length=5000)] = Field(
        default_factory=list)
    fsUploadIn: FsUploadIn | None = None  # noqa: N815 - the interface's node name

    @model_validator(mode="before")
    @classmethod
    def _rows_as_fsuploadin(cls, value: Any) -> Any:
        """A client that sends the rows themselves under its own `fsUploadIn[]` sends them inline."""
        if isinstance(value, dict) and isinstance(value.get("fsUploadIn"), list):
            if value.get("detail"):
                raise PydanticCustomError("INVALID_DETAIL", "明细只能提交一种:file_qury_no、fsUploadIn 或 detail")
            return {**value, "detail": value["fsUploadIn"], "fsUploadIn": None}
        return value

    @model_validator(mode="after")
    def _one_detail(self) -> Input3202:
        given = sum((bool(self.detail), bool(self.data.file_qury_no), self.fsUploadIn is not None))
        if not given:
            raise PydanticCustomError("MISSING_FIELD",
                                      "须提交明细:file_qury_no(9101上传的明细文件)、fsUploadIn(明细文件)或 detail")
        if given > 1:
            raise PydanticCustomError("INVALID_DETAIL", "明细只能提交一种:file_qury_no、fsUploadIn 或 detail")
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
    # The own 医保钱包 share (extension, as in 2207): with it the row's shares add up to the part settled.
    wallet_pay: Yuan
    # The platform's time of the settlement (of a refund record: the refund's), yyyy-MM-dd HH:mm:ss in
    # Beijing; "" where the platform holds none. An OUT_OF_PERIOD row belongs to this time's day.
    setl_time: str = ""


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
