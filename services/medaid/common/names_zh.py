"""What a person reads for a status or a category: one Chinese name each, for every message and page
that names one (the registries' diagnosis findings, the console's pages)."""

from __future__ import annotations

# 参保状态 (common.v1.PersonStatus, without its prefix).
STATUS_ZH = {"ACTIVE": "正常参保", "SUSPENDED": "暂停参保", "TERMINATED": "终止参保", "DECEASED": "已死亡"}
# 费用类别 (common.v1.Category, without its prefix).
CATEGORY_ZH = {
    "OUTPATIENT": "门诊", "INPATIENT": "住院", "PHARMACY": "药店购药", "RESIDENT_PREMIUM": "城乡居民医保缴费",
    "LONG_TERM_CARE_PREMIUM": "长期护理保险缴费", "CHECKUP": "体检", "VACCINE": "疫苗接种",
    "PUBLIC_HEALTH": "公共卫生", "FITNESS": "健身", "WELLNESS": "养生保健", "CASH_WITHDRAWAL": "提取现金",
}
