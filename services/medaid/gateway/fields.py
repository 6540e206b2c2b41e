"""The field types every transaction's schema shares (schemas.py, schemas_reconcile.py): optional
text, the person number, yes/no flags, and the base model (unknown fields ignored, numbers accepted
as their digits, surrounding white space dropped)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from medaid.common.idnumber import normalise_id_number


def _null_is_empty(value: Any) -> Any:
    return "" if value is None else value


# An optional string: null and absent are ""; numbers are accepted as their digits. Its length
# limit goes with the field: `name: Annotated[Text, Field(max_length=30)] = ""`.
Text = Annotated[str, BeforeValidator(_null_is_empty)]


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
Code2 = Annotated[str, BeforeValidator(_two_digit_code)]

# Yes/no flags as clients send them: "1"/"0", and zero-padded "01"/"00".
FLAGS = {"1": "1", "0": "0", "01": "1", "00": "0"}


def flag_value(v: Any) -> Any:
    return FLAGS.get(v, v) if isinstance(v, str) else v


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, str_strip_whitespace=True)
