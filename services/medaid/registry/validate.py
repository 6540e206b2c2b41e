"""Input validation at the edge: every check raises INVALID_ARGUMENT with a reason and writes nothing."""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from typing import TYPE_CHECKING, TypeVar

from medaid.common import errors
from medaid.common.idnumber import PROVINCE_CODES, InvalidIdNumber, normalise_id_number, parse
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.rules import MAX_AMOUNT_FEN

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

EnumValue = TypeVar("EnumValue", bound=int)

_ADMDVS = re.compile(r"^[0-9]{6}\Z")
_INSTITUTION = re.compile(r"^[A-Z0-9]{12}\Z")
_PROVINCE = re.compile(r"^[0-9]{2}\Z")
# A national dictionary's code (insutype 310, med_type 11, clr_type 99): ASCII digits, at most MAX_CODE.
_CODE = re.compile(r"^[0-9]{1,6}\Z")
# ASCII digits only: str.isdigit() and \d also take full-width and other Unicode digits.
_YYYYMMDD = re.compile(r"^[0-9]{8}\Z")
_YYYYMM = re.compile(r"^[0-9]{6}\Z")
_YYYY = re.compile(r"^[0-9]{4}\Z")
MAX_NAME = 50
MAX_ATTESTATION = 64
# How far a province's source system's clock may run ahead of the registry's (NTP keeps them within
# seconds): an event dated later than that has not happened yet.
EVENT_CLOCK_SKEW_MS = 5 * 60_000


def invisible(ch: str, *, wide_spaces: bool) -> bool:
    """The one rule for a character that does not show as itself, for every text the product stores
    and shows (names, codes, ids, file names): a control or format character (Unicode C*: NUL, an
    ANSI escape, a zero-width space, a bidi override that makes `明细\u202etxt.exe` show as
    `明细exe.txt`), a line or paragraph separator (Zl, Zp), and, unless `wide_spaces`, any space but
    the ASCII one (Zs: U+3000 ideographic, U+00A0 no-break …; with it, exactly `not ch.isprintable()`).

    `wide_spaces` is the choice per kind of text. A person's name refuses them: a name as the 居民身份证
    writes it has no space at all (a 少数民族 name joins its parts with the middle dot `·`, a foreign
    name on a 永久居留身份证 with the ASCII space), so a full-width space from an input method makes
    `张　三` a different person to every lookup and receipt than `张三`, and looks the same. A file name
    takes them: a document saved on a Chinese desktop often has one, and it shows as the space it is."""
    category = unicodedata.category(ch)
    return category[0] == "C" or category in ("Zl", "Zp") or (category == "Zs" and ch != " " and not wide_spaces)


def has_invisible(value: str, *, wide_spaces: bool) -> bool:
    """Whether `value` holds a character that is `invisible`. Printable ASCII (what ids, codes and most
    messages are) holds none, whatever `wide_spaces` says, and is answered without looking at each
    character: `invisible` takes nothing of it (the ASCII space included)."""
    if value.isascii() and value.isprintable():
        return False
    return any(invisible(ch, wide_spaces=wide_spaces) for ch in value)


def _unprintable(value: str) -> bool:
    """Blank, or holding an invisible character (`invisible`, no space but the ASCII one)."""
    return not value.strip() or has_invisible(value, wide_spaces=False)


def id_number(value: str, field: str) -> str:
    """The id number as it is stored and answered: a check character written as lower-case `x`
    (as card readers and hospital systems send it) becomes `X`; anything invalid is refused."""
    value = normalise_id_number(value)
    try:
        parse(value)
    except InvalidIdNumber as exc:
        raise errors.invalid("INVALID_ID_NUMBER", f"{field}: {exc}", field=field) from None
    return value


def born_by(id_number: str, field: str, *, today: _dt.date) -> str:
    """A (valid) id number whose birth date is not after `today` (the registry's clock, Asia/Shanghai):
    nobody is enrolled before they are born, so GB 11643 birth dates after today are refused."""
    born = parse(id_number).birth_date
    if born > today:
        raise errors.invalid("INVALID_ID_NUMBER", f"{field}: birth date in id number ({born:%Y%m%d}) is after "
                             f"today ({today:%Y%m%d})", field=field)
    return id_number


def amount(value: int, field: str = "amount_fen") -> int:
    if value <= 0:
        raise errors.invalid("INVALID_AMOUNT", f"{field} must be a positive number of fen", field=field)
    return amount_or_zero(value, field)


def version(value: int, field: str) -> int:
    """A version a service counts up from 0 (the wallet's `place_version`): never negative."""
    if value < 0:
        raise errors.invalid("INVALID_VERSION", f"{field} must not be negative", field=field)
    return value


# 数值型(16,2), as the national interface writes an amount: at most 14 integer digits of yuan.
WIRE_YUAN_DIGITS = 14
MAX_TOTAL_FEN = 10 ** (WIRE_YUAN_DIGITS + 2) - 1


def total(value: int, field: str) -> int:
    """A figure an institution reports for a period (a 3201's totals, a 3202's header): net of refunds it
    may be negative (docs/reconciliation.md), but never wider than the interface can write one."""
    if not -MAX_TOTAL_FEN <= value <= MAX_TOTAL_FEN:
        raise errors.invalid("INVALID_AMOUNT", f"{field} must have at most {WIRE_YUAN_DIGITS} integer digits "
                             "of yuan, either sign", field=field)
    return value


def too_large(field: str, message: str) -> errors.DomainError:
    """AMOUNT_TOO_LARGE, carrying the limit it applied (metadata `limit_fen`) for the caller to say."""
    return errors.invalid("AMOUNT_TOO_LARGE", message, field=field, limit_fen=str(MAX_AMOUNT_FEN))


def amount_or_zero(value: int, field: str) -> int:
    """An amount a message may leave at 0 (a figure it reports, not one to move): never negative,
    never above one operation's limit."""
    if value < 0:
        raise errors.invalid("INVALID_AMOUNT", f"{field} must not be negative", field=field)
    if value > MAX_AMOUNT_FEN:
        raise too_large(field, f"{field} must be at most {MAX_AMOUNT_FEN} fen")
    return value


def detail_figures(figures: dict[str, int | None], *, refund_record: bool) -> None:
    """A 3202 detail row's figures (None: not given): a settlement's, each within one operation's
    limit, or a refund record's (退费记录, refd_setl_flag 1), which may be negative down to minus
    that limit. Bounded so, the sums of a whole detail stay far inside int64."""
    for field, value in figures.items():
        if value is None:
            continue
        if value < 0 and not refund_record:
            raise errors.invalid("INVALID_AMOUNT", f"{field} may be negative only on a refund record "
                                 "(refd_setl_flag 1)", field=field)
        if abs(value) > MAX_AMOUNT_FEN:
            raise too_large(field, f"{field} must be at most {MAX_AMOUNT_FEN} fen either way")


def name(value: str, field: str = "name") -> str:
    if not value or not value.strip():
        raise errors.invalid("INVALID_NAME", f"{field} is required", field=field)
    if len(value) > MAX_NAME:
        raise errors.invalid("INVALID_NAME", f"{field} longer than {MAX_NAME} characters", field=field)
    if _unprintable(value):
        raise errors.invalid("INVALID_NAME", f"{field} holds a control or invisible character",
                             field=field)
    return value


def admdvs(value: str, field: str, *, required: bool = False) -> str:
    """A GB/T 2260 division code ('' when not required and none): six ASCII digits (else INVALID_ADMDVS)
    whose first two name a province (`province`'s list). One naming none (999999, 000000) is an unknown
    code, UNKNOWN_REGION whichever field carries it, as a well-formed code that is no 统筹区 of the
    province is where a 统筹区 is asked for."""
    if not value and not required:
        return ""
    if not _ADMDVS.match(value):
        raise errors.invalid("INVALID_ADMDVS", f"{field} must be a 6-digit admdvs code", field=field)
    if value[:2] not in PROVINCE_CODES:
        raise errors.invalid("UNKNOWN_REGION", f"{field} {value} is no GB/T 2260 division: {value[:2]} names "
                             "no province", field=field)
    return value


def province(value: str, field: str) -> str:
    """A province-level code of GB/T 2260 (the first two digits of a division code): two digits that
    name no province ("00", "99") are an unknown code, refused like a malformed one."""
    if not _PROVINCE.match(value) or value not in PROVINCE_CODES:
        raise errors.invalid("INVALID_PROVINCE", f"{field} must be a 2-digit province code of GB/T 2260",
                             field=field)
    return value


def calendar_date(value: str, field: str) -> _dt.date:
    """A YYYYMMDD day that exists in the calendar (no month 13, no 30 February); else INVALID_DATE."""
    day = None
    if _YYYYMMDD.match(value):
        try:
            day = _dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
        except ValueError:
            pass
    if day is None:
        raise errors.invalid("INVALID_DATE", f"{field} must be a calendar date YYYYMMDD", field=field)
    return day


def life_date(value: str, field: str, *, id_number: str, today: _dt.date) -> _dt.date:
    """A day in a person's life (a date of death): a calendar date, not after `today` (the
    registry's clock, Asia/Shanghai) and not before the birth date the id number carries."""
    day = calendar_date(value, field)
    if day > today:
        raise errors.invalid("DATE_IN_FUTURE", f"{field} {value} is after today ({today:%Y%m%d})", field=field)
    born = parse(id_number).birth_date
    if day < born:
        raise errors.invalid("DATE_BEFORE_BIRTH", f"{field} {value} is before the person's birth ({born:%Y%m%d})",
                             field=field)
    return day


def event_time(ms: int, field: str, *, now_ms: int) -> int:
    """When a life-cycle event happened in the province's source system (unix ms; 0: not given): not
    negative, not later than the registry's clock by more than `EVENT_CLOCK_SKEW_MS`; else
    INVALID_EVENT_AT."""
    if not 0 <= ms <= now_ms + EVENT_CLOCK_SKEW_MS:
        raise errors.invalid("INVALID_EVENT_AT", f"{field} must be when the event happened (unix ms), not "
                             "negative and not after the registry's clock", field=field)
    return ms


def calendar_month(value: str, field: str, reason: str) -> str:
    """A YYYYMM month (01–12) of a year from 0001; anything else is refused with `reason`."""
    if not (_YYYYMM.match(value) and int(value[:4]) >= 1 and 1 <= int(value[4:]) <= 12):
        raise errors.invalid(reason, f"{field} must be a calendar month YYYYMM", field=field)
    return value


def calendar_year(value: str, field: str, reason: str) -> str:
    """A YYYY year from 0001; anything else is refused with `reason`."""
    if not (_YYYY.match(value) and int(value) >= 1):
        raise errors.invalid(reason, f"{field} must be a year YYYY", field=field)
    return value


MAX_MDTRT_ID = 64
MAX_CODE = 6  # the national dictionaries' codes (insutype 310, med_type 11 …), as the gateway takes them


def mdtrt_id(value: str) -> str:
    """A visit's id (就诊ID) as sent ('' when none): kept in the router's index and looked up by it."""
    if value and (len(value) > MAX_MDTRT_ID or _unprintable(value)):
        raise errors.invalid("INVALID_MDTRT_ID", f"mdtrt_id must be at most {MAX_MDTRT_ID} printable characters",
                             field="mdtrt_id")
    return value


def dictionary_code(value: str, field: str, *, reason: str) -> str:
    """A national dictionary code a message carries (insutype, med_type, clr_type; '' when none): the
    dictionaries' codes are ASCII digits, so one longer than MAX_CODE, blank, holding a control
    character, a letter or a full-width digit ("31１", which matches no statement selecting 310) is
    no code of them."""
    if value and not _CODE.match(value):
        raise errors.invalid(reason, f"{field} must be a code of at most {MAX_CODE} digits (0-9)", field=field)
    return value


def institution(value: str) -> str:
    if not _INSTITUTION.match(value or ""):
        raise errors.invalid(
            "INVALID_INSTITUTION_CODE",
            "institution_code must be the 12-character fixmedins_code (A-Z, 0-9)",
            field="institution_code",
        )
    return value


def enum_name(enum_type: _EnumTypeWrapper[EnumValue], value: EnumValue, prefix: str, field: str) -> str:
    """Proto enum value → domain name without prefix; unknown or UNSPECIFIED → INVALID_ARGUMENT."""
    try:
        full = enum_type.Name(value)
    except ValueError:
        raise errors.invalid(f"UNKNOWN_{field.upper()}", f"{field} {value} is not a known code",
                             field=field) from None
    short = full.removeprefix(prefix)
    if short == "UNSPECIFIED":
        raise errors.invalid(f"UNKNOWN_{field.upper()}", f"{field} is required", field=field)
    return short


def attestation(method: cpb.VerificationMethod.ValueType, attestation_id: str,
                field: str = "member_verification") -> bool:
    """True when a usable verification is attested; an unknown method or a malformed attestation (longer
    than 64 characters, or holding an invisible character, as no id the product takes may: `invisible`)
    is refused (INVALID_ARGUMENT), so no caller can take a method it does not know, nor an id such as
    "\x00" that shows as nothing, for a verification. `field`: the request's Verification field."""
    if method:
        enum_name(cpb.VerificationMethod, method, "VERIFICATION_METHOD_", "verification_method")
    if not method and not attestation_id:
        return False
    if len(attestation_id) > MAX_ATTESTATION or has_invisible(attestation_id, wide_spaces=False):
        raise errors.invalid("INVALID_VERIFICATION", f"{field}.attestation_id must be at most {MAX_ATTESTATION} "
                             "printable characters", field=field)
    return bool(method) and bool(attestation_id.strip())
