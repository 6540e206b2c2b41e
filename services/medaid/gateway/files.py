"""9101 / 9102 files and the 3202 detail file (对明细账文件) as the national interface carries them.

A hospital system reconciles its detail in three calls: 9101 uploads the detail file (`fsUploadIn
{in, filename, fixmedins_code}`; `in` is the file's bytes) and gets a `file_qury_no`; 3202 names that
`file_qury_no` and answers `fileinfo{file_qury_no, filename, dld_endtime}` of a result file; 9102
(`fsDownloadIn{file_qury_no, filename, fixmedins_code}`) fetches a file, answered as the file itself.

- `in` arrives as clients serialise a byte array: base64 text (fastjson, Jackson, Newtonsoft), a JSON
  array of byte values (signed Java bytes or 0..255), or that array as text (`Arrays.toString`).
- The detail file is a zip of one or more `.txt` files (a plain text file is read too), UTF-8 or
  GBK, one settlement per line, TAB-separated, `null` or nothing for an absent value:
  `setl_id, mdtrt_id, psn_no, medfee_sumamt, fund_pay_sumamt, acct_pay, refd_setl_flag` (decimal yuan,
  negative in a refund record);
  further columns are ignored, and a first line naming the columns is skipped. Each row is then the
  same row the inline `detail[]` of a 3202 carries (schemas_reconcile.DetailRowIn), checked by the same rules.
- The result file is a zip holding one UTF-8 `.txt`, one line per mismatch, TAB-separated:
  `psn_no, mdtrt_id, setl_id, msgid, stmt_rslt (1 不平), refd_setl_flag, memo, medfee_sumamt,
  fund_pay_sumamt, acct_pay` — the platform's figures where it holds the settlement, else the
  institution's.
- A file is its institution's: another institution's `file_qury_no` is FILE_NOT_FOUND. A file's
  number is derived from the msgid that made it (so a resent 9101 or 3202 rewrites the same file, and
  a crash leaves nothing that needs cleaning), and it is kept `Settings.file_ttl_s` (dld_endtime).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from medaid.gateway import wire
from medaid.registry import validate

MAX_FILE_BYTES = 640 * 1024  # a file as uploaded (as base64 it still fits the 1 MiB message limit)
MAX_TEXT_BYTES = 16 * 1024 * 1024  # a detail file's text once unzipped (a zip bomb stops here)
DETAIL_COLUMNS = ("setl_id", "mdtrt_id", "psn_no", "medfee_sumamt", "fund_pay_sumamt", "acct_pay", "refd_setl_flag")
RESULT_COLUMNS = ("psn_no", "mdtrt_id", "setl_id", "msgid", "stmt_rslt", "refd_setl_flag", "memo", "medfee_sumamt",
                  "fund_pay_sumamt", "acct_pay")
_FILENAME = re.compile(r"^[^/\\]{1,200}\Z")


class FileProblem(Exception):
    """A file the gateway cannot use: `code` is the reason, `context` says where."""

    def __init__(self, code: str, context: str = "") -> None:
        super().__init__(f"{code}: {context}")
        self.code = code
        self.context = context


def decode_in(value: Any) -> bytes:
    """`fsUploadIn.in` as bytes, however the client serialised its byte array (pydantic validator)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise PydanticCustomError("INVALID_FILE", "in 不是字节数组") from None
        else:
            try:
                data = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
            except (binascii.Error, ValueError):
                raise PydanticCustomError("INVALID_FILE", "in 须为Base64文本或字节数组") from None
            return _sized(data)
    if isinstance(value, list):
        if not all(isinstance(b, int) and not isinstance(b, bool) and -128 <= b <= 255 for b in value):
            raise PydanticCustomError("INVALID_FILE", "in 的每个元素须为 -128..255 的整数")
        if len(value) > MAX_FILE_BYTES:
            raise PydanticCustomError("FILE_TOO_LARGE", f"文件超过 {MAX_FILE_BYTES // 1024} KiB")
        return _sized(bytes(b & 0xFF for b in value))
    if isinstance(value, bytes | bytearray):
        return _sized(bytes(value))
    raise PydanticCustomError("INVALID_FILE", "in 须为Base64文本或字节数组")


def _sized(data: bytes) -> bytes:
    if not data:
        raise PydanticCustomError("INVALID_FILE", "文件为空")
    if len(data) > MAX_FILE_BYTES:
        raise PydanticCustomError("FILE_TOO_LARGE", f"文件超过 {MAX_FILE_BYTES // 1024} KiB")
    return data


def check_filename(name: str) -> str:
    """A file name as stored and answered (9102's Content-Disposition, which a client may save under):
    1..200 characters, not `.` or `..`, no path separator, and no control or invisible character
    (`registry.validate.invisible`; a full-width space, as Chinese desktops name files, is taken)."""
    if not _FILENAME.match(name) or name in (".", "..") or validate.has_invisible(
            name, wide_spaces=True):
        raise PydanticCustomError("INVALID_FILENAME",
                                  "filename 须为1-200个字符,不是.或..,不含路径分隔符、控制字符与不可见字符")
    return name


def query_no(scoped_msgid: str) -> str:
    """The file_qury_no of the file the message `scoped_msgid` made (30 characters, like the platform's)."""
    return hashlib.sha256(b"medaid-file:" + scoped_msgid.encode()).hexdigest()[:30]


# --- the detail file (3202) ----------------------------------------------------------------------------


def _text_of(data: bytes) -> str:
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip (one with no entries starts at its end record)
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                entries = [i for i in z.infolist() if not i.is_dir()]
                if not entries:
                    raise FileProblem("INVALID_DETAIL_FILE", "压缩包中没有文件")
                if sum(i.file_size for i in entries) > MAX_TEXT_BYTES:
                    raise FileProblem("FILE_TOO_LARGE", f"解压后超过 {MAX_TEXT_BYTES // 1024 // 1024} MiB")
                parts = []
                for info in sorted(entries, key=lambda i: i.filename):
                    with z.open(info) as f:
                        part = f.read(MAX_TEXT_BYTES + 1)
                    if len(part) > MAX_TEXT_BYTES:
                        raise FileProblem("FILE_TOO_LARGE", f"解压后超过 {MAX_TEXT_BYTES // 1024 // 1024} MiB")
                    parts.append(_decoded(part))
                return "\n".join(parts)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as exc:
            raise FileProblem("INVALID_DETAIL_FILE", f"不是可读的zip文件: {type(exc).__name__}") from None
    return _decoded(data)


def _decoded(raw: bytes) -> str:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise FileProblem("INVALID_DETAIL_FILE", "文本须为UTF-8或GBK编码")  # pragma: no cover - gb18030 reads any bytes


def detail_rows(data: bytes, row_model: Any) -> list[Any]:
    """The detail file's rows, each validated as `row_model` (schemas_reconcile.DetailRowIn, as the inline detail).
    Raises FileProblem naming the line of the first row that breaks a rule."""
    rows: list[Any] = []
    for number, line in enumerate(_text_of(data).splitlines(), start=1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split("\t")]
        if not rows and cells[0].lower() == "setl_id":  # a header line
            continue
        values: dict[str, Any] = {name: (None if i >= len(cells) or cells[i] in ("", "null", "NULL") else cells[i])
                                  for i, name in enumerate(DETAIL_COLUMNS)}
        try:
            rows.append(row_model.model_validate(values))
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"]) or "row"
            raise FileProblem("INVALID_DETAIL_FILE", f"第{number}行 {where}: {wire.reason_zh(err)}") from None
    return rows


# --- the result file (3202 → 9102) ----------------------------------------------------------------------


def result_file(inner_name: str, lines: Sequence[Sequence[str]]) -> bytes:
    """A zip holding `inner_name`: one TAB-separated UTF-8 line per row (RESULT_COLUMNS)."""
    text = "".join("\t".join(c.replace("\t", " ").replace("\n", " ") or "null" for c in row) + "\n" for row in lines)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(inner_name, text.encode("utf-8"))
    return out.getvalue()


def read_result(data: bytes) -> list[list[str]]:
    """A result file's rows (for tests and tools reading what 9102 answered)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        (info,) = z.infolist()
        text = z.read(info).decode("utf-8")
    return [line.split("\t") for line in text.splitlines()]


# --- where files are kept: the gateway's Redis ------------------------------------------------------------


def file_key(no: str) -> str:
    return f"gw:{{file:{no}}}"


async def put(redis: Any, no: str, institution: str, filename: str, data: bytes, ttl_s: int) -> None:
    """Keep a file for `ttl_s` (written whole, in one transaction on the key's slot)."""
    async with redis.pipeline(transaction=True) as p:
        p.hset(file_key(no), mapping={"inst": institution, "filename": filename, "data": data})
        p.expire(file_key(no), ttl_s)
        await p.execute()


async def get(redis: Any, no: str, institution: str) -> tuple[str, bytes]:
    """(filename, bytes) of an institution's file; FILE_NOT_FOUND when it is gone or another's."""
    if not re.fullmatch(r"[0-9A-Za-z_./-]{1,100}", no or ""):
        raise FileProblem("FILE_NOT_FOUND", no[:40])
    inst, filename, data = await redis.hmget(file_key(no), ["inst", "filename", "data"])
    if data is None or inst is None or inst.decode() != institution:
        raise FileProblem("FILE_NOT_FOUND", no)
    return (filename or b"").decode("utf-8"), bytes(data)
