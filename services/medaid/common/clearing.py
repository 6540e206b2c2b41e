"""Who clears a settlement, and as what: the rules a settlement's answer (2206 / 2207 / 2208 / 5203:
clr_optins, clr_type) and reconciliation (3201 / 3202: setl_optins, clr_type) must both follow, so
that a hospital system grouping its settlements by the answers' clearing fields reconciles each
group with exactly that group's settlements.

- 清算经办机构 (clr_optins): the agency of the person's place of insurance, named by the insured
  统筹区 the registry settled the settlement under (insuplc_admdvs). The money this product settles
  (the personal account, its 共济, the 医保钱包) is the insuring province's. `of_agency` says which
  settlements a statement's setl_optins takes; an agency named by a settlement's own clr_optins
  takes that settlement.
- 清算类别 (clr_type): from the visit's 医疗类别 (med_type): 门诊 11, 住院 21, 药店 41, else 99 其他.
"""

from __future__ import annotations

from medaid.common import divisions

# 医疗类别 (med_type) → 清算类别 (clr_type); any other (or none known) is 99 其他.
CLR_TYPE = {"11": "11", "12": "11", "13": "11", "14": "11", "21": "21", "41": "41"}
OTHER_CLR_TYPE = "99"


def clr_type(med_type: str) -> str:
    """The 清算类别 of a visit of `med_type`."""
    return CLR_TYPE.get(med_type, OTHER_CLR_TYPE)


def clr_optins(insured_region: str) -> str:
    """The 清算经办机构 of a settlement of a person insured in `insured_region`: that 统筹区's."""
    return insured_region


def of_agency(insured_region: str, setl_optins: str) -> bool:
    """Whether the 结算经办机构 `setl_optins` clears a settlement of a person insured in `insured_region`
    (the insuplc_admdvs the registry settled it under). The agency is the place of insurance's: a
    province's code (ending 0000, 130000) clears every 统筹区 of the province, a city's (ending 00,
    130100) its own and those under it (130102, 450199 under 450100), any other code only itself
    (`divisions.contains`); none named: every agency."""
    return not setl_optins or divisions.contains(setl_optins, insured_region)
