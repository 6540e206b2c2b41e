"""Where the data files that ship with the code are: in an installed wheel, inside the package;
in a source checkout, at the repository root."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def policies_dir() -> Path:
    """The province and wallet policy TOML files: medaid/policies in a wheel (the build copies
    deploy/policies there), else deploy/policies of the source tree."""
    packaged = _PACKAGE / "policies"
    return packaged if packaged.is_dir() else _PACKAGE.parents[1] / "deploy" / "policies"
