"""The gateway's OpenAPI 3.1 document, generated from its pydantic schemas (schemas.py).

One operation, the national call path: the request is one of the transactions, told apart by
`infno` (a discriminator), each with its own `input`; the answer is always HTTP 200 with the
envelope, whose `output` is that transaction's output or, on a refusal, `medaid_ext` with the
reason. Amounts are typed as the wire carries them (a decimal-yuan string or a JSON number in,
a JSON number with two decimals out). Fields carry their Chinese names (FIELD_ZH); each
transaction has an example, a complete message as a hospital system sends it (examples/).
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model
from pydantic.json_schema import GenerateJsonSchema

from medaid.gateway import amounts
from medaid.gateway import schemas as s
from medaid.gateway import schemas_reconcile as rs
from medaid.gateway import schemas_settle as ss

CALL_PATH = "/fsi/api/rsfComIfsService/callService"


class _RefusalExt(BaseModel):
    reason: str
    detail: str
    metadata: dict[str, str]
    retryable: bool


class _RefusalOutput(BaseModel):
    """The output of a refusal (infcode -1)."""

    medaid_ext: _RefusalExt

TRANSACTIONS: dict[str, tuple[str, type[BaseModel], type[BaseModel]]] = {
    "9001": ("签到", s.Input9001, s.Output9001),
    "9002": ("签退", s.Input9002, s.Output9002),
    "1101": ("人员信息获取", s.Input1101, s.Output1101),
    "2206": ("预结算", s.Input2207, s.Output2207),
    "2207": ("结算", s.Input2207, s.Output2207),
    "2208": ("结算撤销", s.Input2208, s.Output2208),
    "2601": ("冲正", s.Input2601, s.Output2601),
    "5203": ("结算信息查询", s.Input5203, s.Output5203),
    "3201": ("对总账", rs.Input3201, rs.Output3201),
    "3202": ("对明细账", rs.Input3202, rs.Output3202),
    "9101": ("文件上传", rs.Input9101, rs.Output9101),
    "9102": ("文件下载(成功时应答为文件本身)", rs.Input9102, _RefusalOutput),
}

FIELD_ZH: dict[str, str] = {
    # the envelope
    "infno": "交易编号", "msgid": "发送方报文ID(30位字母或数字,本机构内唯一,幂等键)",
    "mdtrtarea_admvs": "就医地医保区划", "insuplc_admdvs": "参保地医保区划(由1101获得,未知时留空)",
    "recer_sys_code": "接收方系统代码", "dev_no": "设备编号", "dev_safe_info": "设备安全信息",
    "cainfo": "数字签名信息", "signtype": "签名类型", "infver": "接口版本号", "opter_type": "经办人类别",
    "opter": "经办人", "opter_name": "经办人姓名", "inf_time": "交易时间", "fixmedins_code": "定点医药机构编号",
    "fixmedins_name": "定点医药机构名称", "sign_no": "交易签到流水号", "input": "交易输入",
    "infcode": "交易状态码(0成功,-1失败)", "inf_refmsgid": "接收方报文ID", "refmsg_time": "接收报文时间",
    "respond_time": "响应报文时间", "err_msg": "错误信息(原因代码: 中文说明)", "warn_msg": "警告信息",
    "output": "交易输出", "data": "输入数据", "signIn": "签到信息", "signinoutb": "签到输出",
    "signOut": "签退信息", "signoutoutb": "签退输出",
    # people
    "opter_no": "操作员编号", "mac": "签到MAC地址", "ip": "签到IP地址", "sign_time": "签到时间",
    "mdtrt_cert_type": "就诊凭证类型(02居民身份证)", "mdtrt_cert_no": "就诊凭证编号", "card_sn": "卡识别码",
    "begntime": "开始时间", "psn_cert_type": "人员证件类型", "certno": "证件号码", "psn_name": "人员姓名",
    "psn_no": "人员编号(本系统为18位公民身份号码,末位x视同X)", "gend": "性别", "naty": "民族", "brdy": "出生日期",
    "age": "年龄", "baseinfo": "基本信息", "insuinfo": "参保信息", "idetinfo": "身份信息", "balc": "个人账户余额",
    "insutype": "险种类型", "psn_type": "人员类别", "psn_insu_stas": "人员参保状态", "psn_insu_date": "个人参保日期",
    "paus_insu_date": "暂停参保日期", "cvlserv_flag": "公务员标志", "emp_name": "单位名称",
    "wallet_opened": "是否开通医保钱包", "wallet_balc": "医保钱包余额", "wallet_use_place_admdvs": "医保钱包使用地",
    "mulaid_helpers": "家庭共济绑定的共济人", "relation": "亲属关系",
    # settlement
    "med_type": "医疗类别", "medfee_sumamt": "医疗费总额", "psn_setlway": "个人结算方式", "mdtrt_id": "就诊ID",
    "chrg_bchno": "收费批次号", "acct_used_flag": "个人账户使用标志(1或01使用,0或00不使用)", "invono": "发票号",
    "mid_setl_flag": "中途结算标志", "fulamt_ownpay_amt": "全自费金额", "overlmt_selfpay": "超限价自费费用",
    "preselfpay_amt": "先行自付金额", "inscp_scp_amt": "符合政策范围金额",
    "psn_part_amt": "个人负担总金额", "setl_id": "结算ID", "setl_time": "结算时间", "fund_pay_sumamt": "基金支付总额",
    "hifp_pay": "基本医疗保险统筹基金支出", "acct_pay": "个人账户支出(不含共济)",
    "acct_mulaid_pay": "个人账户共济支付金额", "act_pay_dedc": "实际支付起付线",
    "pool_prop_selfpay": "基本医疗保险统筹基金支付比例", "cvlserv_pay": "公务员医疗补助资金支出",
    "hifes_pay": "企业补充医疗保险基金支出", "hifmi_pay": "居民大病保险资金支出",
    "hifob_pay": "职工大额医疗费用补助基金支出", "maf_pay": "医疗救助基金支出", "oth_pay": "其他支出",
    "amount": "共济支付金额",
    "psn_cash_pay": "个人现金支出", "hosp_part_amt": "医院负担金额", "medins_setl_id": "医药机构结算ID",
    "clr_optins": "清算经办机构", "clr_way": "清算方式", "clr_type": "清算类别", "wallet_pay": "医保钱包支付金额",
    "setlinfo": "结算信息", "setldetail": "结算明细", "init_setl_id": "原结算ID", "medaid_ext": "本系统扩展信息",
    "mulaid_psn_no": "共济人人员编号", "mulaid_reason": "共济人未支付原因代码", "mulaid_msg": "共济人未支付原因",
    "wallet_reason": "医保钱包未支付原因代码", "wallet_msg": "医保钱包未支付原因",
    "acct_pay_includes_mulaid": "acct_pay是否含共济支付(本系统为否)",
    # 2601 / 5203 / 3201 / 3202
    "omsgid": "原发送方报文ID", "oinfno": "原交易编号(2207或2208)", "outcome": "冲正结果",
    "setl_stas": "结算状态(SETTLED有效,REVERSED已撤销,IN_PROGRESS处理中)",
    "reversal_id": "撤销该结算的报文", "reversed_time": "撤销时间",
    "setl_ids": "该就诊的全部结算ID", "setl_optins": "结算经办机构", "stmt_begndate": "对账开始日期(yyyy-MM-dd)",
    "stmt_enddate": "对账结束日期(yyyy-MM-dd)", "cash_payamt": "现金支付金额",
    "fixmedins_setl_cnt": "定点医药机构结算笔数",
    "refd_setl_flag": "退费结算标志(1或空含退费,0不含)", "file_qury_no": "文件查询号(9101上传或3202结果文件)",
    "fileinfo": "结果文件信息(用9102下载)", "filename": "文件名", "dld_endtime": "下载截止时间",
    "fsUploadIn": "文件上传输入", "fsDownloadIn": "文件下载输入", "in": "文件内容(Base64文本或字节数组)",
    "detail": "明细", "stmtinfo": "对账结果", "stmt_rslt": "对账结果(0平,1不平)", "stmt_rslt_dscr": "对账结果说明",
    "stmt_rslt_type": "不符类型", "fields": "不符的金额字段", "platform": "平台数据", "platform_cnt": "平台结算笔数",
    "in_progress_cnt": "处理中的结算笔数",
    # refusals
    "reason": "原因代码", "metadata": "原因附加信息", "retryable": "是否可使用相同msgid重试",
}




class _Schema(GenerateJsonSchema):
    """pydantic's JSON Schema, with a default written as the wire writes its value: an amount's
    (`act_pay_dedc`: 0.00) a JSON number, as the schema types it, not pydantic's decimal string. In an
    answer every field is required, those with a default too: answers are written whole (model_dump)."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, Decimal):
            return int(dft) if dft == dft.to_integral_value() else float(dft)
        return super().encode_default(dft)

    def field_is_required(self, field: Any, total: bool) -> bool:
        return self.mode == "serialization" or super().field_is_required(field, total)


def _request_model(infno: str, name: str, input_model: type[BaseModel]) -> type[BaseModel]:
    fields: dict[str, Any] = {
        n: (f.annotation, f) for n, f in s.Envelope.model_fields.items() if n not in ("infno", "input")}
    fields["infno"] = (Literal[infno], Field(description=f"交易编号 {infno} {name}"))
    fields["input"] = (input_model, Field(description="交易输入"))
    model: type[BaseModel] = create_model(f"Request{infno}", __config__=ConfigDict(extra="allow"), **fields)
    model.__doc__ = f"{infno} {name}"
    return model


# What an amount's (or a ratio's) type says of how it is written, the same for every field of the type:
# the field's Chinese name goes before it.
_TYPE_DESCRIPTIONS = {t["description"] for t in (
    amounts.AMOUNT_IN, amounts.OPTIONAL_AMOUNT_IN, amounts.SIGNED_AMOUNT_IN, amounts.OPTIONAL_SIGNED_AMOUNT_IN,
    amounts.AMOUNT_OUT)} | {get_args(ss.Ratio)[1].json_schema["description"]}


def _describe(node: Any) -> None:
    """Give every property its Chinese name (where the schema has none, or only its type's) and drop
    pydantic's titles."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for name, prop in props.items():
                if isinstance(prop, dict):
                    prop.pop("title", None)
                    if name in FIELD_ZH and "description" not in prop:
                        prop["description"] = FIELD_ZH[name]
                    elif name in FIELD_ZH and prop["description"] in _TYPE_DESCRIPTIONS:
                        prop["description"] = f"{FIELD_ZH[name]}:{prop['description']}"
        for value in node.values():
            _describe(value)
    elif isinstance(node, list):
        for value in node:
            _describe(value)


def example(infno: str) -> dict[str, Any]:
    """A complete message of `infno` as a hospital system sends it (examples/<infno>.json)."""
    text = resources.files("medaid.gateway").joinpath("examples", f"{infno}.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@cache
def document() -> dict[str, Any]:
    requests = [_request_model(infno, name, inp) for infno, (name, inp, _) in TRANSACTIONS.items()]
    request_union: Any = Annotated[Union[tuple(requests)], Field(discriminator="infno")]  # noqa: UP007
    outputs = list(dict.fromkeys([out for _, _, out in TRANSACTIONS.values()] + [_RefusalOutput]))
    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in s.ResponseEnvelope.model_fields.items() if n != "output"}
    fields["output"] = (Union[tuple(outputs)], Field(description="交易输出"))  # noqa: UP007
    response: type[BaseModel] = create_model("ResponseEnvelope", **fields)
    ref = "#/components/schemas/{model}"
    req_schema = TypeAdapter(request_union).json_schema(ref_template=ref, mode="validation",
                                                            schema_generator=_Schema)
    resp_schema = TypeAdapter(response).json_schema(ref_template=ref, mode="serialization",
                                                        schema_generator=_Schema)
    components: dict[str, Any] = {}
    components.update(req_schema.pop("$defs", {}))
    components.update(resp_schema.pop("$defs", {}))
    components["Request"] = req_schema
    components["ResponseEnvelope"] = resp_schema
    _describe(components)
    examples = {infno: {"summary": f"{infno} {name}", "value": example(infno)}
                for infno, (name, _, _) in TRANSACTIONS.items()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "medaid 国家医保平台接口网关",
            "version": "1.0",
            "description": "定点医药机构接口(9001 签到、9002 签退、1101 人员信息获取、2206 预结算、2207 结算、"
                           "2208 结算撤销、2601 冲正、5203 结算信息查询、3201 对总账、3202 对明细账、9101 文件上传、"
                           "9102 文件下载)。"
                           "金额单位为元,精确到分(两位以后的小数只能是0);"
                           "每个应答均为HTTP 200的信封,infcode 0 成功,-1 失败(err_msg 为原因代码与中文说明);"
                           "9102 找到文件时应答为文件本身(application/octet-stream)。",
        },
        "paths": {CALL_PATH: {"post": {
            "operationId": "callService",
            "summary": "国家医保平台交易(按 infno 区分)",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Request"}, "examples": examples}}},
            "responses": {"200": {"description": "交易应答信封(成功与失败均为HTTP 200);9102成功时为文件本身",
                                  "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ResponseEnvelope"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
        }}},
        "components": {"schemas": components},
    }
