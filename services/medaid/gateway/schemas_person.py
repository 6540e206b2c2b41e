"""Declared schemas of 1101 人员信息获取: who a credential names, their insurance and their 共济 helpers.
The conventions (amounts, unknown fields, reason codes) are schemas.py's."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from medaid.common.idnumber import normalise_id_number
from medaid.gateway.amounts import Yuan
from medaid.gateway.fields import ID_CARD_CERT_TYPES, CertNo, ClientTime, Code2, Model, Text, id_card_is_of

# --- 1101 人员信息获取 -----------------------------------------------------------------------------------


class Data1101(Model):
    mdtrt_cert_type: Annotated[Code2, Field(max_length=3)] = ""
    mdtrt_cert_no: CertNo = ""
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
