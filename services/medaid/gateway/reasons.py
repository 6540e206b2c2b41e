"""Operator messages: every reason code a caller of the gateway can meet, in Chinese.

`err_msg` (and `warn_msg`) carry `CODE: 中文说明` — the code is stable and machine-readable, the
text is what a hospital front desk or an operator reads. Codes come from the gateway itself (the
envelope and amount checks), the router, the province registries and the national wallet;
tests/test_gateway.py checks that every code raised anywhere under services/medaid is here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from medaid.gateway.amounts import fen_to_yuan

REASON_ZH: dict[str, str] = {
    # --- the pooled family account (家庭共济账户, SPEC §3b) ----------------------------------------
    "MODEL_NOT_POOLED": "本省家庭共济为绑定共济人模式,没有家庭共济账户,本次未办理;请改为办理家庭共济绑定",
    "MODEL_POOLED": "本省家庭共济使用家庭共济账户(划拨模式),不办理共济绑定,本次未办理;请创建家庭共济账户并邀请成员",
    "COMMITMENT_REQUIRED": "创建家庭共济账户须先阅读并签署家庭共济承诺书,本次未创建;请签署后重新提交",
    "FAMILY_ACCOUNT_EXISTS": "该参保人已创建家庭共济账户,每人只能创建一个,本次未创建;可在已有账户中邀请成员",
    "FAMILY_NOT_FOUND": "家庭共济账户不存在,本次未办理;请核对家庭共济账户编号",
    "FAMILY_NOT_ACTIVE": "家庭共济账户已解散,本次未办理;如需继续共济,请重新创建家庭共济账户",
    "FAMILY_BUSY": "该家庭共济账户正在办理其他业务,请稍后使用相同请求号重试",
    "NOT_FAMILY_CREATOR": "只有家庭共济账户创建人可以办理该业务,本次未办理;请由创建人本人办理",
    "ALREADY_MEMBER": "该人员已是本家庭共济账户成员,本次未办理;无需再次邀请或确认加入",
    "ALREADY_INVITED": "该人员已有未处理的邀请,本次未邀请;请其确认加入,或待邀请过期后重新邀请",
    "NO_INVITATION": "该人员没有待确认的家庭共济邀请,本次未办理;请创建人先邀请",
    "INVITATION_EXPIRED": "邀请已过期,本次未办理;如需加入,请创建人重新邀请",
    "NOT_A_MEMBER": "该人员不是本家庭共济账户成员,本次未办理;请核对人员和家庭共济账户编号,或请创建人先邀请其加入",
    "CREATOR_CANNOT_LEAVE": "创建人不能退出家庭共济账户,本次未办理;如需终止,请由创建人解散账户",
    "NOT_A_CONTRIBUTOR": ("该人员不能向家庭共济账户划拨,本次未划拨(创建人可以划拨;本省允许成员划拨的,"
                          "有个人账户的成员也可以划拨)"),
    "BELOW_MINIMUM_BALANCE": "划拨后个人账户余额将低于本省规定的保留额度,本次未划拨;请减少金额后重新提交",
    "MONTHLY_LIMIT_REACHED": "本月划拨次数已达本省上限,本次未划拨;请下月再划拨",
    "WITHDRAWAL_NOT_ALLOWED": ("本省不支持将划入家庭共济账户的资金回拨,本次未回拨;划拨人退出或账户解散时,"
                               "未使用的划拨余额退回其个人账户,如需取回请办理退出或解散"),
    "NO_UNSPENT_SHARE": "该人员在家庭共济账户中没有未使用的划拨余额,没有可退回的资金,本次未办理;无需再次办理",
    "TEMPORARY_MEMBERS_NOT_ALLOWED": "本省没有临时成员,本次未邀请;请按正式成员邀请",
    "INVALID_FAMILY_ID": "家庭共济账户编号格式错误,或资金来源不是家庭共济账户时填写了编号;本次未受理,请更正后重新提交",
    "NOT_FAMILY_MEMBER": "不是家庭共济账户成员(或邀请尚未接受),家庭共济账户未支付;请创建人邀请并由本人确认加入",
    "FAMILY_ZERO_BALANCE": ("家庭共济账户余额为零,家庭共济账户未支付 (原因三);请创建人(本省允许成员划拨的,"
                            "也可由有个人账户的成员)先向账户划拨"),
    "FAMILY_INSUFFICIENT": ("家庭共济账户余额不足:结算时只支付其余额,其余由个人现金支付,请向参保人收取;代缴须足额,"
                            "本次未从账户扣款,请先向账户划拨或改用其他资金来源缴费"),
    "FAMILY_CHANGED": ("家庭共济账户的划拨份额已变化,不能按原来的划拨人和金额重新扣回,本次未扣款,结算保持已撤销;"
                       "如需结算请使用新的msgid重新结算"),
    "TEMPORARY_MEMBER": ("临时成员只能用家庭共济账户缴纳本人城乡居民医保,其他费用家庭共济账户本次未支付;"
                         "请以本人个人账户、医保钱包或现金支付"),
    "INVITATION_NOT_ACCEPTED": ("已被邀请加入家庭共济账户但尚未确认,家庭共济账户本次未支付;"
                                "请本人确认加入(达到本省规定年龄的须本人人脸识别)"),
    # --- 代缴 a near-kin's 城乡居民医保 premium (SPEC §4b) ------------------------------------------
    "OUTSIDE_PREMIUM_WINDOW": "不在本省城乡居民医保集中征缴期内,不能代缴或撤销,本次未办理;请在征缴期内办理",
    "PREMIUM_NOT_SET": "本省尚未公布该年度城乡居民医保个人缴费标准,本次未缴费;请待公布后再办理",
    "PREMIUM_ALREADY_PAID": "该参保人本年度城乡居民医保已缴费,每人每年只能缴一次,本次未扣款;无需重复缴费",
    "PREMIUM_NOT_PAID": "该参保人本年度没有可撤销的代缴记录,本次未办理;请核对被代缴人和缴费年度",
    "PREMIUM_PAYMENT_IN_PROGRESS": "该参保人本年度的代缴正在处理中,请待其完成后使用相同请求号重新撤销",
    "PREMIUM_CANCEL_IN_PROGRESS": "该参保人本年度代缴的撤销正在处理中,本次未缴费;请待撤销完成后使用相同请求号重新缴费",
    "NOT_THE_PAYER": "该笔代缴不是本人缴纳的,本次未撤销;请由缴费人本人办理撤销",
    "PAYEE_NOT_RESIDENT": ("被代缴人不是城乡居民医保参保人,不能代缴,本次未扣款;请核对被代缴人(须为本省城乡居民医保参"
                           "保人)"),
    "SELF_PAYMENT": ("代缴须为近亲属缴费,不能从个人账户为本人缴费(本人缴费请使用本人医保钱包或所在的家庭共济账户);"
                     "本次未受理,请更正后重新提交"),
    "INVALID_RELATION": "为本人缴费时不填写亲属关系;本次未受理,请更正后重新提交",
    "INVALID_YEAR": "缴费年度格式错误,须为4位年份;本次未受理,请更正后重新提交",
    "MISSING_FILTER": "请至少指定缴费人、被代缴人或年度之一;本次未受理,请更正后重新提交",
    "UNKNOWN_SOURCE": "代缴资金来源未知或未填写(个人账户、家庭共济账户或医保钱包);本次未受理,请更正后重新提交",
    # --- the gateway: envelope, schemas, sign-in, signature ---------------------------------------
    "INVALID_JSON": "报文不是合法的JSON(须为UTF-8或GBK/GB18030编码的JSON对象);本次未受理,请更正后重新提交",
    "INVALID_ENVELOPE": "报文结构错误,须为包含infno、msgid、input等字段的JSON对象;本次未受理,请更正后重新提交",
    "MISSING_FIELD": "缺少必填字段;本次未受理,请更正后重新提交",
    "INVALID_FIELD": "字段类型或长度不符合接口规范;本次未受理,请更正后重新提交",
    "INVALID_INPUT": "交易输入(input)结构不符合接口规范;本次未受理,请更正后重新提交",
    "UNSUPPORTED_INFNO": ("不支持的交易编号(本系统受理 9001、9002、1101、2206、2207、2208、2601、5203、3201、3202、"
                          "9101、9102);本次未受理,请更正后重新提交"),
    "REQUEST_TOO_LARGE": "报文超过1MiB上限,本次未受理;请精简报文后重新提交(3202的明细可先用9101上传文件)",
    "INVALID_CONTENT_ENCODING": ("报文压缩格式错误:按Content-Encoding无法解压(支持gzip、deflate,或不压缩);本次未受理,"
                                 "请更正后重新提交"),
    "UNSUPPORTED_MED_TYPE": ("不支持的医疗类别(受理 11、12、13、14 门诊,21 住院,41 定点药店购药);本次未受理,"
                             "请更正后重新提交"),
    "SIGN_NO_INVALID": "签到编号(sign_no)无效、已过期、已签退或不属于本机构,本次未受理;请先调用9001签到",
    "SIGNATURE_INVALID": "请求签名校验失败,本次未受理;请检查签名密钥、时间戳和签名算法后重新提交",
    "CREDENTIAL_REQUIRED": ("须提供定点医药机构凭证,本次未受理;请携带本机构的访问令牌(Authorization: Bearer)、"
                            "请求签名,或凭令牌/签名调用9001签到所得的sign_no"),
    "ROUTER_UNAVAILABLE": "结算路由服务暂时不可用,请稍后使用相同msgid重试",
    "INTERNAL_ERROR": "系统内部错误,请稍后使用相同msgid重试并联系运维",
    "INVALID_TRANSFER_ID": "转账编号(transfer_id)格式错误:须为1-64位字母、数字或 . _ : -;本次未受理,请更正后重新提交",
    "STORE_UNAVAILABLE": "医保系统数据存储暂时不可用,请稍后使用相同msgid重试",
    # --- authentication, authorization and abuse limits (README "Security") ------------------------
    "PEER_UNAUTHENTICATED": "调用方未提供本平台签发的客户端证书,本次未受理;请联系运维人员配置证书",
    "CALLER_NOT_ALLOWED": "调用方无权调用该接口,本次未受理;如需开通请联系系统管理员",
    "REGISTRY_OUTSIDE_PROVINCE": ("省级医保系统只能为本省参保人办理医保钱包的支付、退款和参保状态变更,本次未办理;"
                                  "请由参保省份的医保系统办理"),
    "OPERATOR_OUTSIDE_PROVINCE": ("该人员不在本工号可办理的参保省份,本窗口不能为其办理业务或查询其信息,本次未办理;"
                                  "请到参保地医保经办机构或通过国家医保服务平台App办理"),
    "RESEND_OTHER_OPERATOR": "这张“再次提交”页面上的业务是其他工号提交的,本工号不能代为再次提交;本次没有发出,"
                             "没有写入任何内容。请由提交该业务的工号登录后点“再次提交”",
    "OPERATOR_NO_PROVINCES": ("本工号未设置可办理的参保省份,暂不能办理业务或查询人员信息,本次未办理;"
                              "请系统管理员在操作员名单中为本工号设置provinces"),
    "INSTITUTION_UNAUTHENTICATED": "定点医药机构未认证,本次未受理;请携带本机构的访问令牌或使用本机构的客户端证书",
    "INSTITUTION_TOKEN_INVALID": ("定点医药机构访问令牌无效,本次未受理;请核对本机构的访问令牌(Authorization: Bearer)"
                                  "后重新提交"),
    "INSTITUTION_MISMATCH": ("定点医药机构编号与认证的机构不一致,本次未受理;报文中的fixmedins_code、"
                             "访问令牌和客户端证书须属于同一机构,请核对后重新提交"),
    "RATE_LIMITED": "本机构请求过于频繁,已超过限流阈值,本次未受理;请稍后使用相同msgid重试",
    # --- identifiers and formats (router / registry edge validation) ------------------------------
    "INVALID_MSGID": ("报文ID(msgid)格式错误:须为30位字母或数字(建议定点机构编号12位+时间yyyyMMddHHmmss+顺序号4位);"
                      "本次未受理,请更正后重新提交"),
    "INVALID_ADMDVS": "行政区划代码错误,须为6位数字(如 130100);本次未受理,请更正后重新提交",
    "INVALID_INSTITUTION_CODE": ("定点医药机构编号(fixmedins_code)错误,须为12位大写字母或数字;本次未受理,"
                                 "请更正后重新提交"),
    "INVALID_ID_NUMBER": "人员编号/证件号码不是有效的18位居民身份证号码;本次未受理,请更正后重新提交",
    "INVALID_NAME": "姓名为空、超长或含不可见字符;本次未受理,请更正后重新提交",
    "INVALID_AMOUNT": ("金额错误:须为以元为单位、精确到分的数字(两位以后的小数只能是0),结算金额须大于0"
                       "(对账合计和退费记录的金额可为负);本次未受理,请更正后重新提交"),
    "AMOUNT_TOO_LARGE": "金额超过单笔上限;本次未受理,请更正后重新提交",
    "INVALID_ACCT_USED_FLAG": ("个人账户使用标志(acct_used_flag)须为 1或01(使用)或 0或00(不使用);本次未受理,"
                               "请更正后重新提交"),
    "INVALID_VERSION": "版本号错误,不能为负数;本次未受理,请更正后重新提交",
    "INVALID_MDTRT_ID": "就诊ID(mdtrt_id)超长、为空白或含控制字符;本次未受理,请更正后重新提交",
    "INVALID_INSUTYPE": "险种类型(insutype)须为至多6位半角数字的字典代码;本次未受理,请更正后重新提交",
    "INVALID_MED_TYPE": "医疗类别(med_type)须为至多6位半角数字的字典代码;本次未受理,请更正后重新提交",
    "INVALID_CLR_TYPE": "清算类别(clr_type)须为至多6位半角数字的字典代码;本次未受理,请更正后重新提交",
    "BATCH_TOO_LARGE": "批量请求的笔数超过上限;本次未受理,请更正后重新提交",
    "EMPTY_BATCH": "批量请求至少须含一笔;本次未受理,请更正后重新提交",
    "INVALID_REQUEST_ID": "结算ID或请求ID格式错误(1-64位字母、数字或 . _ : -);本次未受理,请更正后重新提交",
    "INVALID_PROVINCE": "省份代码错误,须为2位省级行政区划代码(GB/T 2260);本次未受理,请更正后重新提交",
    "INVALID_STATUS": "参保状态取值错误;本次未受理,请更正后重新提交",
    "INVALID_FLEXIBLE_TIER": "灵活就业人员档次错误;本次未受理,请更正后重新提交",
    "INVALID_VERIFICATION": "身份核验信息格式错误;本次未受理,请更正后重新提交",
    "INVALID_LIMIT": "查询条数超出允许范围;本次未受理,请更正后重新提交",
    "INVALID_TIME_RANGE": "查询时间段无效:起始时间须早于截止时间,且不为负;本次未受理,请更正后重新提交",
    "INVALID_PAGE_TOKEN": "翻页标记无效,本次未查询;请原样使用上一页返回的标记,或从第一页重新查询",
    "INVALID_OWNERS": "一次查询的钱包人数须为 1-512;本次未受理,请更正后重新提交",
    "INVALID_MONTH": "月份格式错误,须为 yyyyMM;本次未受理,请更正后重新提交",
    "INVALID_PERIOD": "划入期间格式错误,须为 yyyyMM;本次未受理,请更正后重新提交",
    "INVALID_PREMIUM_CATEGORY": "代缴保费类别错误;本次未受理,请更正后重新提交",
    "INVALID_REASON": "原因代码错误;本次未受理,请更正后重新提交",
    "UNSUPPORTED_CERT_TYPE": ("人员须凭居民身份证号查询,本次未受理;就诊凭证类型02(居民身份证)请填写其号码,"
                              "01(医保电子凭证)、03(社会保障卡)等其他凭证请同时填写人员证件号码certno(证件类型01居民身份证)"),
    "INVALID_CERT_NO": ("就诊凭证编号(mdtrt_cert_no)错误:电子凭证、社会保障卡等凭证的编号须为不含空格的半角字母、"
                        "数字或符号;本次未受理,请更正后重新提交"),
    "CERT_NO_MISMATCH": ("就诊凭证为居民身份证(02)时,凭证编号须为本人(人员编号/证件号码)的身份证号;本次未受理,"
                         "请更正后重新提交"),
    "UNKNOWN_CATEGORY": "费用类别未知或未填写;本次未受理,请更正后重新提交",
    "UNKNOWN_INSURANCE_TYPE": "险种类型未知或未填写;本次未受理,请更正后重新提交",
    "UNKNOWN_KIND": "划入类型未知或未填写;本次未受理,请更正后重新提交",
    "UNKNOWN_RELATION": "亲属关系未知或未填写;本次未受理,请更正后重新提交",
    "UNKNOWN_STATUS": "参保状态未知或未填写;本次未受理,请更正后重新提交",
    "UNKNOWN_VERIFICATION_METHOD": "身份核验方式未知或未填写;本次未受理,请更正后重新提交",
    "UNKNOWN_REGION": "统筹区不属于本省,或行政区划代码不存在(前两位须为省级代码);本次未受理,请更正后重新提交",
    "UNKNOWN_PROVINCE": "没有该省份的医保经办系统,本次未办理;请核对省份代码(参保省份)后重新提交",
    "UNKNOWN_INSURED_PLACE": ("参保地所在省份的医保经办系统未接入本平台,本次未办理;请核对参保地(insuplc_admdvs,"
                              "可留空由系统按参保登记确定)后重新提交,核对无误的请联系运维人员"),
    "INSURED_PLACE_MISMATCH": ("参保地(insuplc_admdvs)与该人员登记的参保统筹区不一致,本次未办理;"
                               "请按1101返回的参保地填写或留空后重新提交"),
    "USE_PLACE_OUTSIDE_PROVINCE": "医保钱包使用地须为参保省份内的统筹区,本次未办理;请选择参保省份内的统筹区后重新提交",
    # --- people and routing ------------------------------------------------------------------------
    "PERSON_NOT_FOUND": "未查询到该人员的参保信息,本次未办理;请核对证件号码,或请其到参保地医保经办机构核实参保登记",
    "NAME_MISMATCH": "姓名与参保登记信息不一致,本次未办理;请按身份证核对姓名后重新提交",
    "ALREADY_ENROLLED": "该人员已参保登记,本次未重复登记;如需变更,请办理参保状态或统筹区变更",
    "PERSON_NOT_ACTIVE": "人员非正常参保状态,本次未办理;请其到参保地医保经办机构核实参保状态",
    "MEMBER_NOT_INSURED": ("参保人(被共济人)非正常参保状态,个人账户不能支付,也不能被共济(原因一),本次未办理;"
                           "请其到参保地医保经办机构核实参保状态"),
    "NO_PERSONAL_ACCOUNT": "该人员没有职工医保个人账户,本次未办理;可使用医保钱包(由有职工医保个人账户的近亲属划转)",
    "REGISTRY_UNAVAILABLE": "参保地医保经办系统暂时无应答,请稍后使用相同msgid重试",
    "DOWNSTREAM_ERROR": "下游服务返回异常,请稍后使用相同msgid重试",
    # --- settlement --------------------------------------------------------------------------------
    "CATEGORY_NOT_PAYABLE": "个人账户(含共济、医保钱包)不能支付该类费用,本次未结算;请参保人以现金等其他方式支付",
    "PATIENT_BUSY": "该参保人有其他业务正在处理,本次未办理;请稍后使用相同msgid重试",
    "CONTENDED": "账户余额正在变动,本次未办理;请稍后使用相同msgid重试",
    "LOCK_LOST": "结算处理超时被中断,请使用相同msgid重试",
    "SETTLEMENT_NOT_FOUND": "未找到该结算记录,本次未办理;请核对结算ID(setl_id)、就诊ID(mdtrt_id)和人员编号后重新提交",
    "SETTLEMENT_IN_PROGRESS": "该结算尚未完成,本次未办理;请先使用原msgid重发结算",
    "ALREADY_REVERSED": "该结算此前已被撤销,本次未办理,没有资金变动;无需再次撤销",
    "IDEMPOTENCY_KEY_REUSED": "报文ID(msgid)已用于另一笔不同内容的交易,本次未受理;请使用新的msgid",
    "BALANCE_LIMIT": "入账后账户余额将超过系统支持的上限,本次未入账;请核对入账金额后重新提交",
    # --- 2601 冲正, 5203 查询, 3201 / 3202 对账 -----------------------------------------------------------
    "UNSUPPORTED_OINFNO": "原交易编号(oinfno)只能是 2207(结算)或 2208(结算撤销);本次未受理,请更正后重新提交",
    "ORIGINAL_CANCELLED": "原交易已被冲正(2601),不再受理,本次未办理;如需结算请使用新的msgid重新结算",
    "ORIGINAL_MISMATCH": "原报文(omsgid)与冲正信息不符,原交易编号或人员编号不一致,本次未冲正;请核对后重新提交",
    "ORIGINAL_OF_ANOTHER_INSTITUTION": "原报文(omsgid)属于其他定点医药机构,不能冲正,本次未冲正;请核对omsgid",
    "OMSGID_IS_THIS_MSGID": ("原报文ID(omsgid)与本冲正报文的msgid相同,本次未冲正;请在omsgid填写原交易的msgid,"
                             "冲正(2601)须使用新的msgid"),
    "ORIGINAL_IN_PROGRESS": "原交易正在处理中,本次未冲正;请稍后使用相同msgid重发冲正",
    "ORIGINAL_NOT_CANCELLABLE": "原报文不是结算或结算撤销,不能冲正,本次未冲正;请核对omsgid和原交易编号(oinfno)",
    "REVERSAL_NOT_FOUND": "未找到该结算撤销记录(omsgid),本次未冲正;请核对omsgid是否为本机构结算撤销(2208)的报文ID",
    "UNDO_SOURCE_SHORT": ("原撤销退回的资金已有变动(个人账户、共济人或医保钱包余额不足或状态变化),不能冲正该撤销,"
                          "本次未扣款,结算保持已撤销;如需结算请使用新的msgid重新结算"),
    "UNDO_IN_PROGRESS": "该结算撤销正在被冲正处理,本次未办理;请稍后使用相同msgid重试",
    "SETL_ID_REQUIRED": "请填写结算ID(setl_id)或就诊ID(mdtrt_id);本次未受理,请更正后重新提交",
    "INVALID_STMT_DATE": ("对账日期错误:须为整日(yyyy-MM-dd、yyyyMMdd,或北京时间00:00:00的日期时间,结束日期也可为23:"
                          "59:59),开始日期不晚于结束日期,区间不超过31天;本次未受理,请更正后重新提交"),
    "INVALID_REFD_SETL_FLAG": "退费结算标志(refd_setl_flag)须为 1、0 或空;本次未受理,请更正后重新提交",
    "INVALID_DETAIL": "对明细账的明细(detail)须为1-50000笔且结算ID不重复;本次未受理,请更正后重新提交",
    "INVALID_DETAIL_FILE": ("明细对账文件无法读取:须为zip压缩的txt(或txt),每行一笔结算,以TAB分隔:setl_id、mdtrt_id、"
                            "psn_no、medfee_sumamt、fund_pay_sumamt、acct_pay、refd_setl_flag;本次未受理,"
                            "请更正后重新提交"),
    "FILE_NOT_FOUND": ("文件不存在、已过下载截止时间或不属于本机构(file_qury_no),本次未办理;请核对文件查询号,"
                       "已过期的请重新上传(9101)或重新对账(3202)后使用新的查询号"),
    "INVALID_FILE": "文件内容(in)须为Base64文本或字节数组,且不能为空;本次未受理,请更正后重新提交",
    "FILE_TOO_LARGE": "文件过大(上传不超过640KiB,解压后不超过16MiB);本次未受理,请更正后重新提交",
    "INVALID_FILENAME": ("文件名(filename)须为1-200个字符,不是.或..,不含路径分隔符、控制字符与不可见字符;本次未受理,"
                         "请更正后重新提交"),
    "INSUFFICIENT_BALANCE": "个人账户余额不足,本次未扣款;请核对余额后按可用金额重新办理",
    # why a helper did not pay (warn_msg of a 2206/2207 that succeeded); true whatever the province's
    # helper mode (one helper all or nothing, helpers in turn, one helper in part): see PAID_NOTHING_ZH
    "HELPER_INSUFFICIENT": "共济人个人账户余额不足以支付剩余金额,共济未支付的部分由个人现金支付,请向参保人收取",
    "HELPER_ZERO_BALANCE": "共济人个人账户余额为零,未使用共济支付(原因三),剩余金额由个人现金支付,请向参保人收取",
    "NO_ACTIVE_HELPER": "没有处于正常参保状态、可以支付的共济人,共济未支付的部分由个人现金支付,请向参保人收取",
    "PROXY_ONLY": ("只绑定了亲情账户,未建立家庭共济关系,未使用共济支付(原因二),剩余金额由个人现金支付;如需共济,"
                   "请共济人办理家庭共济"),
    "ACCOUNT_NOT_USED": "本次结算未使用个人账户(acct_used_flag=0),个人账户、医保钱包和共济均未支付,全部由个人现金支付",
    # why the wallet did not pay
    "WALLET_NOT_OPENED": "未开通医保钱包,钱包未支付;本人(或近亲属代为)可在国家医保服务平台App开通",
    "WALLET_OTHER_USE_PLACE": "医保钱包的使用地不是本次就医(缴费)地,钱包未支付;本人可在国家医保服务平台App变更使用地",
    "WALLET_INSUFFICIENT": ("医保钱包余额不足:结算时只支付其余额,不足部分由共济或个人现金支付;缴费须足额,"
                            "本次未从钱包扣款,可请近亲属向钱包划转或改用其他资金来源缴费"),
    "WALLET_ZERO_BALANCE": "医保钱包余额为零,钱包未支付;可请近亲属向医保钱包划转",
    "WALLET_UNAVAILABLE": "医保钱包服务暂时无应答,请稍后使用相同msgid重试",
    "WALLET_BUSY": "该医保钱包正在办理其他业务,请稍后使用相同msgid重试",
    "WALLET_REFUSED_REGISTRY": ("医保钱包拒绝了本省医保系统的接入证书(配置错误,并非钱包故障),请联系运维人员更换证书,"
                                "之后请使用相同msgid重试"),
    "WALLET_CALL_REFUSED": ("医保钱包服务拒绝了本省医保系统的调用(钱包有应答,并非钱包故障,可能是版本不一致),"
                            "本次未做任何处理,请联系运维人员,之后请使用相同msgid重试"),
    # --- 家庭共济 bindings (SPEC §3) -----------------------------------------------------------------
    "HELPER_NOT_EMPLOYEE": "共济人没有职工医保个人账户,不能共济,本次未办理;请改由有职工医保的近亲属办理",
    "HELPER_NOT_ACTIVE": "共济人非正常参保状态,不能共济,本次未办理;恢复正常参保后方可办理",
    "HELPER_NOT_INSURED": "共济人未在本省参保登记,本次未办理;外省参保的近亲属可使用医保钱包划转",
    "RELATION_NOT_ALLOWED": "该亲属关系不在本省家庭共济范围内,本次未办理;请核对亲属关系,或改用医保钱包向近亲属划转",
    "MEMBER_LIMIT_REACHED": ("共济人绑定的被共济人数(或家庭共济账户成员数)已达本省上限,本次未办理;如需添加,"
                             "请先解除一个已有的共济绑定,或移除一名家庭共济账户成员"),
    "DIFFERENT_POOLING_REGION": ("共济人与被共济人不在同一统筹区,本省不支持跨统筹区共济,本次未办理共济,"
                                 "共济人账户和家庭共济账户均未扣款;可改用医保钱包"),
    "CROSS_PROVINCE": "被共济人在外省参保,不能省内共济,本次未办理;请改用医保钱包跨省划转(原因四)",
    "REVERSE_BINDING": "被共济人已绑定该共济人,共济关系是单向的,本次未绑定;如需改由对方共济,请先解除原绑定",
    "ALREADY_IN_ANOTHER_RELATION": "本省规定每人同一时间只能处于一个家庭共济关系中,本次未办理;须先解除或退出原有关系",
    "VERIFICATION_REQUIRED": "须本人完成人脸识别或医保码密码核验,本次未办理;请本人核验后重新提交",
    "SELF_BINDING": "不能与本人绑定(共济或亲情账户),本次未办理;请核对证件号码后重新提交",
    "ALREADY_BOUND": "已存在该绑定关系,本次未重复办理;无需再次办理",
    "BINDING_NOT_FOUND": "未找到该家庭共济绑定关系,本次未办理;请核对共济人和被共济人后重新提交",
    "NOT_BOUND": "双方之间没有家庭共济绑定关系,共济人账户本次未扣款;请共济人先办理家庭共济绑定",
    "OTHER_HELPER_FIRST": "被共济人另有按本省规则优先支付的共济人,由其先支付,本共济人的账户本次未扣款;无需另行办理",
    "OTHER_FAMILY_FIRST": "被共济人同时是另一个家庭共济账户的成员,结算时由该账户支付,本账户本次未扣款;无需另行办理",
    "NOT_NEAR_KIN": ("不是近亲属(配偶、父母、子女、兄弟姐妹、祖父母、外祖父母、孙子女、外孙子女),本次未办理;"
                     "医保钱包只能由本人或近亲属代为开通、只能向近亲属划转,请核对亲属关系后重新提交"),
    # --- 医保钱包 and cross-province transfers (SPEC §5) ----------------------------------------------
    "WALLET_EXISTS": "医保钱包已开通,本次未重复开通;无需再次开通",
    "WALLET_NOT_FOUND": "未开通医保钱包,本次未办理;本人(或近亲属代为)可在国家医保服务平台App开通",
    "OWNER_NOT_INSURED": ("钱包开通人非正常参保状态,医保钱包不能开通或使用,本次未办理;"
                          "请其到参保地医保经办机构核实参保状态"),
    "OUTSIDE_USE_PLACE": "不在医保钱包使用地,钱包未支付;本人可在国家医保服务平台App变更使用地",
    "INSUFFICIENT_QUOTA": "医保钱包额度不足,本次未扣减;请按可用额度重新办理",
    "SPEND_NOT_FOUND": "未找到该笔钱包支付记录,本次未退回;请核对原结算是否使用了医保钱包",
    "SPEND_ALREADY_REFUNDED": "该笔钱包支付已退回,不能重复退回,本次未退款;无需再次退回",
    "SPEND_CANCELLED": "该笔钱包支付已被撤销,不能再支付,本次未扣款;请以新的请求号重新发起",
    "SPEND_NOT_RESTORABLE": "医保钱包已不能按原额度来源再次支付该笔费用,本次未扣款,原撤销保持有效;如需结算请重新结算",
    "SENDER_NOT_EMPLOYEE": "划转人没有职工医保个人账户,不能从个人账户划转,本次未划转;可改从本人医保钱包额度转赠",
    "SENDER_NOT_ACTIVE": ("划转人非正常参保状态,不能划转,本次未划转;请划转人到参保地医保经办机构核实参保状态,"
                          "恢复正常参保后重新发起"),
    "RECIPIENT_NOT_INSURED": ("接收人非正常参保状态,不能接收医保钱包划转,本次未办理;"
                              "请接收人到参保地医保经办机构核实参保状态,恢复正常参保后重新办理(待接收的划转到期未接收"
                              "的,退回划转人)"),
    "RECIPIENT_NO_WALLET": "接收人未开通医保钱包,本次未划转;请接收人先在国家医保服务平台App开通",
    "SELF_TRANSFER": "不能向本人的医保钱包划转,本次未划转;请核对接收人(须为本人的近亲属)后重新发起",
    # --- life-cycle and 亲情账户 (SPEC §5b) ----------------------------------------------------------
    "FACE_VERIFICATION_REQUIRED": "该亲属须本人进行人脸识别,本次未添加;请其完成人脸识别后重新提交",
    "PROXY_LIMIT_REACHED": "亲情账户数量已达上限,本次未添加;如需添加,请先解除不再需要的亲情账户",
    "PROXY_NOT_FOUND": "未找到该亲情账户,本次未办理;请核对持有人与亲属",
    "PERSON_DECEASED": "参保人已登记死亡,本次未办理;如死亡登记有误,请到参保地医保经办机构核实",
    "PERSON_NOT_INSURED": ("参保人已终止参保或已登记死亡,不能变更统筹区或暂停参保,本次未办理;如已重新参保,"
                           "请先登记恢复正常参保"),
    "MOVE_ALREADY_RECORDED": ("该参保人已终止参保并登记转往其他省份,不能改登记为转往另一省份,本次未办理;如登记有误,"
                              "请先登记恢复正常参保,再按正确省份终止参保"),
    "SAME_REGION": "该人员已在该统筹区参保,本次未办理;无需变更",
    "USE_RECORD_DEATH": "参保状态变更不能登记死亡,本次未办理;请改用死亡登记办理(个人账户余额由继承人继承)",
    "INVALID_HEIR": "继承人不能是本人;本次未受理,请更正后重新提交",
    "INVALID_DATE": "日期应为有效的公历日期,格式YYYYMMDD;本次未受理,请更正后重新提交",
    "DATE_IN_FUTURE": "日期不能晚于今天;本次未受理,请更正后重新提交",
    "DATE_BEFORE_BIRTH": "日期不能早于本人出生日期(以身份证号为准);本次未受理,请更正后重新提交",
    "SENDER_NO_WALLET": "划转人未开通医保钱包,本次未划转;双方均须先在国家医保服务平台App开通",
    "SENDER_PROVINCE_MISMATCH": "划转人参保省份与其医保钱包所在省份不一致,本次未划转;请按医保钱包所在省份填写",
    "INVALID_SOURCE": "划转资金来源须为个人账户或医保钱包;本次未受理,请更正后重新提交",
    "INVALID_CLEARING_AT": "清算时间格式错误,须为非负的毫秒时间戳(0 表示当前时间);本次未受理,请更正后重新提交",
    "INVALID_EVENT_AT": ("事件时间错误,须为登记机构记录的事件发生时间(非负毫秒时间戳,不晚于当前时间);本次未受理,"
                         "请更正后重新提交"),
    "EVENT_OUT_OF_ORDER": ("事件发生时间早于该参保人已处理的最新事件,本次未处理;"
                           "请按发生顺序报送参保状态变更和统筹区变更"),
    "INVALID_UP_TO": "按余额支付仅用于结算中医保钱包支付的部分,不能与再次支付或仅校验同用;本次未受理,请更正后重新提交",
    "WALLET_NOT_LIVE": "划转人或接收人所在统筹区尚未开通医保钱包业务,本次未划转;请待该统筹区开通医保钱包后再划转",
    "TRANSFER_ABANDONED": "划转未完成,未扣款,请重新发起",
    "RELATIONSHIP_ENDED": "共济关系已终止,划转已取消,资金未划出(已扣款的已退回划转人);如需划转请重新发起",
    "RELATIONSHIP_NOT_FOUND": "双方之间没有可终止的医保钱包共济关系(已终止或没有划转),本次未办理;无需再次终止",
    "SELF_RELATIONSHIP": ("划转人与持有人是同一人,本人与本人之间没有可终止的医保钱包共济关系,本次未办理;"
                          "请核对划转人(向持有人划转过的近亲属)后重新提交"),
    "NOT_A_SIDE": ("办理人不是该关系的一方,本次未办理;医保钱包共济关系只能由划转人或接收人终止,"
                   "亲情账户只能由持有人或被添加的亲属解除,请由其中一方本人办理"),
    "AMOUNT_OVER_LIMIT": "单笔划转金额超过上限,本次未划转;请按上限更正金额后重新发起",
    "DAILY_LIMIT_REACHED": "当日划转次数已达上限,本次未划转;请次日再办理",
    "OUTSIDE_TRANSFER_HOURS": "当前时段不能划转,本次未划转;请在可划转时段重新发起",
    "PENDING_TRANSFER_EXISTS": "尚有未确认接收的划转,本次未划转;请待接收人接收或退回后再划转",
    "TRANSFER_NOT_FOUND": "未找到该划转记录,本次未办理;请核对接收人和划转号后重新办理",
    "TRANSFER_IN_PROGRESS": "该划转正在处理中,请稍后使用相同msgid重试",
    "TRANSFER_BUSY": "该划转正在被处理,请稍后使用相同msgid重试",
    "TRANSFER_FAILED": "划转失败,资金未划出(已扣款的已退回划转人原个人账户或医保钱包);可重新发起",
    "TRANSFER_EXPIRED": "划转未在接收期限内接收,本次未接收,资金已退回划转人;如需划转请划转人重新发起",
    "TRANSFER_CANCELLED": "划转已取消,资金未划出(已扣款的已退回划转人);如需划转请重新发起",
}

# Why a 1101's 医保钱包 part is unknown (insuinfo[].medaid_ext.wallet_msg, and warn_msg): the rest of the
# answer is the registry's and stands. The answer is kept under its msgid like any other, so a new
# look-up of the wallet takes a new msgid.
PERSON_WALLET_ZH: dict[str, str] = {
    "WALLET_UNAVAILABLE": ("医保钱包服务暂时无应答,钱包信息未知(参保信息和个人账户余额不受影响),"
                           "请稍后以新的msgid重新查询"),
}

# Why 共济 paid nothing of a bill (a 2206/2207 whose acct_mulaid_pay is 0), where the reason alone
# (REASON_ZH) could also mean that it paid part: where one helper pays all or nothing (不凑钱), a helper
# short of the rest pays nothing, and the whole rest is cash.
PAID_NOTHING_ZH: dict[str, str] = {
    "HELPER_INSUFFICIENT": "共济人个人账户余额不足以支付剩余金额,本次共济人账户未扣款,剩余金额全部由个人现金支付,"
                           "请向参保人收取",
}


def mulaid_zh(code: str, mulaid_fen: int) -> str:
    """The words for why 共济 paid no more of a bill (`code`), given what it paid (`mulaid_fen`)."""
    return PAID_NOTHING_ZH.get(code, zh(code)) if mulaid_fen == 0 else zh(code)


# What a 2601 冲正 did (its answer's medaid_ext.outcome; warn_msg when nothing had to move).
OUTCOME_ZH: dict[str, str] = {
    "REVERSED": ("原结算已撤销,个人账户、共济和医保钱包支付的金额已退回(钱包额度的共济关系已终止的,"
                 "退回原划转人);该结算不再有效,已按其收取的现金请退还,需要结算请以新的msgid重新结算"),
    "RESTORED": "原撤销已冲正:各账户已按原金额重新扣款,原结算恢复有效;无需退费,如仍需撤销请以新的msgid重新发起2208",
    "VOIDED": ("原交易在医保平台没有生效(未到达,或到达后未处理),没有资金变动,已登记冲正,原报文此后到达将被拒绝;"
               "冲正2208的原结算仍然有效;如仍需办理,请以新的msgid重新发起"),
    "ALREADY_REVERSED": ("原结算此前已被撤销(撤销尚未完成的将自动完成),本次没有资金变动,该结算不再有效;"
                         "需要结算请以新的msgid重新结算"),
    "ALREADY_RESTORED": ("该撤销此前已被冲正(原结算已重新扣款),本次没有资金变动;此后如又被撤销,以最新的撤销为准,"
                         "请以5203查询结算当前状态"),
}


# The settings a refusal names (a limit, an age, a night window) differ by province and by wallet
# policy, so their values come from the refusal's own ErrorInfo metadata, never from this table;
# without them the sentence above stands alone. `{key:yuan}` shows fen as yuan.
DETAIL_ZH: dict[str, str] = {
    "AMOUNT_OVER_LIMIT": "每笔最多{limit_fen:yuan}元",
    "AMOUNT_TOO_LARGE": "每笔最多{limit_fen:yuan}元",
    "DAILY_LIMIT_REACHED": "每日最多{limit}次",
    "OUTSIDE_TRANSFER_HOURS": "{night_start_hour}:00至次日{night_end_hour}:00不能划转",
    "BELOW_MINIMUM_BALANCE": "须保留{keep_min_fen:yuan}元,本次最多可划拨{movable_fen:yuan}元",
    "MONTHLY_LIMIT_REACHED": "每月最多{limit}次",
    "VERIFICATION_REQUIRED": "年满{age}周岁",
    "FACE_VERIFICATION_REQUIRED": "年满{age}周岁",
    "PROXY_LIMIT_REACHED": "每人最多{limit}名",
    "OPERATOR_OUTSIDE_PROVINCE": "本工号可办理:{served}",
    "WALLET_NOT_LIVE": "统筹区{region}",
}
_FIELD = re.compile(r"\{(\w+)(:yuan)?\}")


def zh(code: str) -> str:
    return REASON_ZH.get(code, "业务处理失败")


def detail_zh(code: str, metadata: Mapping[str, str] | None) -> str:
    """The settings a refusal names, in words, from its metadata ('' when any of them is missing)."""
    template, values = DETAIL_ZH.get(code, ""), metadata or {}
    if not template or any(not values.get(key) for key, _ in _FIELD.findall(template)):
        return ""

    def one(m: re.Match[str]) -> str:
        value = values[m.group(1)]
        # fen as yuan by the one conversion (amounts.fen_to_yuan), a whole amount without its ".00"
        return str(fen_to_yuan(int(value))).removesuffix(".00") if m.group(2) else value

    try:
        return _FIELD.sub(one, template)
    except ValueError:  # not a number where one is due: the sentence stands alone
        return ""


_FIRST_CLAUSE = re.compile(r"[,;,;]")


def with_detail(text: str, detail: str) -> str:
    """`text` with the settings its refusal names (`detail_zh`) in brackets right after its first
    clause, the one saying what was refused, ahead of what was (not) done and what to do next:
    单笔划转金额超过上限(每笔最多2000元),本次未划转."""
    if not detail:
        return text
    cut = m.start() if (m := _FIRST_CLAUSE.search(text)) else len(text)
    return f"{text[:cut]}({detail}){text[cut:]}"


def operator_message(code: str, context: str = "", metadata: Mapping[str, str] | None = None,
                     words: str = "") -> str:
    """`CODE: 中文说明(settings)(context)`, the settings after the text's first clause (`with_detail`),
    at most 200 characters (the interface's err_msg width); `words`, when given, in place of the
    code's own 中文说明 (`mulaid_zh`)."""
    text = f"{code}: {with_detail(words or zh(code), detail_zh(code, metadata))}"
    if context:
        text += f"({context})"
    return text[:200]
