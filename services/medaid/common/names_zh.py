"""What a person reads for a status, a category, a province or an amount: one Chinese name (or form)
each, for every message and page that names one (the registries' diagnosis findings, the console's
pages, the CLI)."""

from __future__ import annotations

# 参保状态 (common.v1.PersonStatus, without its prefix).
STATUS_ZH = {"ACTIVE": "正常参保", "SUSPENDED": "暂停参保", "TERMINATED": "终止参保", "DECEASED": "已死亡"}
# 费用类别 (common.v1.Category, without its prefix).
CATEGORY_ZH = {
    "OUTPATIENT": "门诊", "INPATIENT": "住院", "PHARMACY": "药店购药", "RESIDENT_PREMIUM": "城乡居民医保缴费",
    "LONG_TERM_CARE_PREMIUM": "长期护理保险缴费", "CHECKUP": "体检", "VACCINE": "疫苗接种",
    "PUBLIC_HEALTH": "公共卫生", "FITNESS": "健身", "WELLNESS": "养生保健", "CASH_WITHDRAWAL": "提取现金",
}
# Provinces by their GB/T 2260 code (an admdvs code's first two digits).
PROVINCE_ZH = {
    "11": "北京", "12": "天津", "13": "河北", "14": "山西", "15": "内蒙古", "21": "辽宁", "22": "吉林",
    "23": "黑龙江", "31": "上海", "32": "江苏", "33": "浙江", "34": "安徽", "35": "福建", "36": "江西",
    "37": "山东", "41": "河南", "42": "湖北", "43": "湖南", "44": "广东", "45": "广西", "46": "海南",
    "50": "重庆", "51": "四川", "52": "贵州", "53": "云南", "54": "西藏", "61": "陕西", "62": "甘肃",
    "63": "青海", "64": "宁夏", "65": "新疆",
}


def province_name(code: str) -> str:
    """'11' → '北京 (11)': the name the desk reads, with the code; a code not in the table as it is."""
    name = PROVINCE_ZH.get(code, "")
    return f"{name} ({code})" if name else code


# 统筹区 the desks name (a pooling region's admdvs); others show their province's name or their digits.
REGION_ZH = {
    "130100": "石家庄", "130200": "唐山", "110000": "北京", "620100": "兰州", "350100": "福州",
    "350200": "厦门", "350500": "泉州",
}


def region_name(admdvs: str) -> str:
    """'130100' → '石家庄 (130100)', a province's '13' → '河北 (13)'; a code not in the tables keeps
    its digits alone."""
    if not admdvs:
        return "-"
    name = REGION_ZH.get(admdvs) or PROVINCE_ZH.get(admdvs[:2], "")
    return f"{name} ({admdvs})" if name else admdvs


def yuan(fen: int) -> str:
    """12850 → '¥128.50', 123456 → '¥1,234.56', -150 → '-¥1.50' (the sign before the currency sign, as
    zh-CN writes it): how the CLI, the console, the demo and the diagnosis findings show an amount to a
    person."""
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100:,}.{abs(fen) % 100:02d}"

