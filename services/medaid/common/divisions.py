"""The GB/T 2260 hierarchy of admdvs codes (6 digits: province 2, city 2, district 2), written once:
which codes a code takes in (`contains`), and the 统筹区 of a province an institution's code is
settled in (`pooling_region`).

Institutions send the code of where they sit (mdtrtarea_admvs), which is often finer than their
统筹区: a district (130102 长安区 in 石家庄 130100), a 市本级 code (130199, 450199 under 450100), or
any 北京 code (110105) where the province pools at the province level (110000).
"""

from __future__ import annotations

from collections.abc import Collection


def contains(area: str, code: str) -> bool:
    """Whether the division `area` takes in `code`: a province's code (ending 0000, 130000) every code
    of the province, a city's (ending 00, 130100) its own and those under it (130102, 130199), any
    other code only itself."""
    if area.endswith("0000"):
        return code[:2] == area[:2]
    if area.endswith("00"):
        return code[:4] == area[:4]
    return code == area


def pooling_region(code: str, regions: Collection[str]) -> str:
    """The 统筹区 among a province's `regions` that `code` is settled in: `code` itself when it is one,
    else the narrowest one that contains it (a city's before the province's); `code` as it is when
    none does (another province's code, or one of this province under none of its 统筹区), which is
    then the place of no 统筹区 of the province."""
    if code in regions:
        return code
    holders = [r for r in regions if contains(r, code)]
    if not holders:
        return code
    return max(holders, key=lambda r: not r.endswith("0000"))
