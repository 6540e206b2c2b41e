"""docs/configuration.md's tables of policy knobs are the province policy's and the wallet policy's:
every knob the registry or the wallet reads has a row, every row is a knob, and a row's default is
the one a policy file that omits the knob gets. No servers: reads files only."""

from __future__ import annotations

import re
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path

from medaid.registry.policy import Policy
from medaid.wallet.rules import WalletPolicy

ROOT = Path(__file__).resolve().parents[1]


def knob_rows() -> dict[str, str]:
    """knob → its default column, from the rows between the policy-knobs markers."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = text.split("<!-- policy-knobs:begin -->", 1)[1].split("<!-- policy-knobs:end -->", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([a-z_]+)`", cells[0]) if len(cells) >= 4 else None
        if name:
            assert name.group(1) not in rows, f"knob {name.group(1)} has two rows"
            rows[name.group(1)] = cells[1]
    return rows


def as_toml(value: object) -> object:
    """A dataclass default as the TOML value a file would give for it."""
    if isinstance(value, frozenset | tuple):
        return sorted(value)
    return value


def documented_default(cell: str) -> object:
    literal = re.fullmatch(r"`(.+)`", cell)
    assert literal, f"default {cell!r} is not one TOML literal in backticks"
    value = tomllib.loads(f"v = {literal.group(1)}")["v"]
    return sorted(value) if isinstance(value, list) else value


def test_every_policy_knob_has_a_row_with_its_default():
    rows = knob_rows()
    knobs = [*fields(Policy), *fields(WalletPolicy)]
    assert not {k.name for k in knobs} ^ set(rows), "knobs and rows differ: " + \
        str(sorted({k.name for k in knobs} ^ set(rows)))
    for knob in knobs:
        if knob.default is not MISSING:
            default: object = knob.default
        elif knob.default_factory is not MISSING:
            default = knob.default_factory()
        else:  # read from the file itself (province, name, regions)
            continue
        assert documented_default(rows[knob.name]) == as_toml(default), \
            f"{knob.name}: configuration.md says {rows[knob.name]}, the default is {default!r}"
