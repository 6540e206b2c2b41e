"""The GB/T 2260 hierarchy of admdvs codes: the 统筹区 an institution's code is settled in, and the
clearing agency's reach, which follow the one rule (`divisions.contains`)."""

from __future__ import annotations

import pytest
from medaid.common import clearing, divisions
from medaid.registry import policy

HEBEI = frozenset(policy.load_for("13").regions)
BEIJING = frozenset(policy.load_for("11").regions)


@pytest.mark.parametrize(("code", "regions", "region"), [
    ("130100", HEBEI, "130100"),  # a 统筹区 itself
    ("130102", HEBEI, "130100"),  # a district of 石家庄
    ("130199", HEBEI, "130100"),  # 石家庄 市本级
    ("130203", HEBEI, "130200"),  # a district of 唐山
    ("131082", HEBEI, "131000"),  # a county of 廊坊 (131000 takes in 1310xx only)
    ("110105", BEIJING, "110000"),  # 北京 pools at the province level
    ("110199", BEIJING, "110000"),
    ("139900", HEBEI, "139900"),  # 河北 省本级: under no 统筹区 of the policy, kept as it is
    ("130000", HEBEI, "130000"),  # the province's own code is no city's
    ("110105", HEBEI, "110105"),  # another province's code, kept as it is
    ("450199", frozenset({"450100", "450000"}), "450100"),  # a city's before the province's
    ("450299", frozenset({"450100", "450000"}), "450000"),
])
def test_the_pooling_region_of_a_code(code: str, regions: frozenset[str], region: str):
    assert divisions.pooling_region(code, regions) == region


def test_the_clearing_agency_reaches_what_the_hierarchy_contains():
    for agency, region, takes in (("130000", "130102", True), ("130100", "130102", True),
                                  ("130100", "130200", False), ("450100", "450199", True),
                                  ("130102", "130100", False), ("", "620100", True)):
        assert clearing.of_agency(region, agency) is takes, (agency, region)
        if agency:
            assert divisions.contains(agency, region) is takes
