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

# Yes/no flags as clients send them: "1"/"0", and zero-padded "01"/"00".
FLAGS = {"1": "1", "0": "0", "01": "1", "00": "0"}


def flag_value(v: Any) -> Any:
    return FLAGS.get(v, v) if isinstance(v, str) else v


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, str_strip_whitespace=True)
