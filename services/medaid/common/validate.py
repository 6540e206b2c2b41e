"""Rules on the national message's fields that more than one service applies (SPEC §6): each lives
here once, and the gateway, the router and the registries call it."""

from __future__ import annotations

from medaid.common import errors

# 医疗类别 (med_type) the product settles → its settlement category (common.v1.Category without prefix).
MED_TYPES: dict[str, str] = {
    "11": "OUTPATIENT",  # 普通门诊
    "12": "OUTPATIENT",  # 门诊挂号
    "13": "OUTPATIENT",  # 急诊
    "14": "OUTPATIENT",  # 门诊慢特病
    "21": "INPATIENT",  # 普通住院
    "41": "PHARMACY",  # 定点药店购药
}

# Yes/no flags as clients send them (SPEC §6): "1"/"0", and zero-padded "01"/"00"; each to its one form.
FLAGS = {"1": "1", "0": "0", "01": "1", "00": "0"}


def family_id_well_formed(fid: str) -> bool:
    """A family account's id as the registries make and take it: 3-32 ASCII letters or digits. The
    console checks a posted one by it before it logs it; the registries refuse any other
    (INVALID_FAMILY_ID)."""
    return 3 <= len(fid) <= 32 and fid.isalnum() and fid.isascii()


def flag(value: str) -> str | None:
    """A yes/no flag in its one form, "1" or "0" (surrounding ASCII spaces ignored); None when it is none.
    Only the ASCII space: `str.strip()` would also take a control character (U+001C-U+001F, U+0085)
    or a no-break or ideographic space around it, which no field takes (registry.validate.invisible)."""
    return FLAGS.get(value.strip(" "))


def acct_used_flag(value: str) -> str:
    """acct_used_flag ("1": the accounts pay, "0": cash only) in its one form; anything else, "" too, is
    INVALID_ACCT_USED_FLAG. The gateway reads the JSON's through `flag` too (schemas_settle.py)."""
    found = flag(value)
    if found is None:
        raise errors.invalid("INVALID_ACCT_USED_FLAG", "acct_used_flag is '1' or '01' (use the account) or "
                             "'0' or '00'", field="acct_used_flag")
    return found


def med_type(value: str) -> str:
    """A med_type the product settles (MED_TYPES), '' when none is given; any other code is
    UNSUPPORTED_MED_TYPE. The gateway, where med_type is required and names the category, refuses
    with the same reason (schemas_settle.py)."""
    if value and value not in MED_TYPES:
        raise errors.invalid("UNSUPPORTED_MED_TYPE", f"med_type {value} is not served: 11-14 (门诊), 21 (住院), "
                             "41 (定点药店购药)", field="med_type")
    return value


def insured_place(given: str, *places: str, who: str = "the person") -> None:
    """An insuplc_admdvs a caller sent (where the person is insured, as 1101 answers it) is empty or one
    of `places`, the 统筹区 the message may name ('' entries are none); anything else, another 统筹区 of
    the same province or the province's own code too, is INSURED_PLACE_MISMATCH. `who` names the person
    in the refusal (masked by the caller)."""
    if not given or given in places:
        return
    named = " or ".join(p for p in places if p) or "unknown"
    raise errors.refused("INSURED_PLACE_MISMATCH", f"insuplc_admdvs {given} is not where {who} is insured "
                         f"({named}); send theirs or leave it empty", field="insuplc_admdvs")
