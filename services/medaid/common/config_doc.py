"""The option tables of docs/configuration.md, written from the services' declarations.

    python -m medaid.common.config_doc docs/configuration.md           # rewrite the tables
    python -m medaid.common.config_doc --check docs/configuration.md   # exit 1 when they differ

The tables sit between `<!-- options:begin -->` and `<!-- options:end -->`; the rest of the page is
written by hand. tests/test_config.py runs the check, so a new option without its row fails the suite.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from medaid.common import config, tls

BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"
SERVICES = ("registry", "wallet", "router", "gateway", "console")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _default(opt: config.Option) -> str:
    if opt.default == "" or opt.default is None:
        return "required" if opt.required else "empty"
    if isinstance(opt.default, bool):
        return f"`{str(opt.default).lower()}`"
    return f"`{opt.default:g}`" if isinstance(opt.default, float) else f"`{opt.default}`"


def table(options: Sequence[config.Option]) -> list[str]:
    rows = ["| flag / variable | type | default | accepted | meaning |", "|---|---|---|---|---|"]
    for o in options:
        meaning = o.help + (f"; also from the file `{o.env}_FILE` / `{o.flag}-file`" if o.secret else "")
        rows.append(f"| `{o.flag}`<br>`{o.env}` | {o.type.name} | {_cell(_default(o))} | "
                    f"{_cell(o.type.accepted)} | {_cell(meaning)} |")
    return rows


def service_options(service: str) -> Sequence[config.Option]:
    return tuple(importlib.import_module(f"medaid.{service}.__main__").OPTIONS)


def render() -> str:
    shared = (*config.COMMON_OPTIONS, *tls.OPTIONS)
    shared_names = {o.name for o in shared}
    out = [BEGIN, "", "### Every service", "", *table(shared)]
    for service in SERVICES:
        options = service_options(service)
        own = [o for o in options if o.name not in shared_names]
        out += ["", f"### {service}", "", *table(own)]
        taken = {o.name for o in options}
        left_out = [o for o in shared if o.name not in taken]
        if left_out:  # the console keeps no state in a Redis of its own: it reads no --redis-url
            names = ", ".join(f"`{o.flag}`" for o in left_out)
            out += ["", f"Of the options every service takes, the {service} does not read {names} "
                        "(nor their variables)."]
    return "\n".join([*out, "", END])


def rewrite(page: str) -> str:
    head, begin, rest = page.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the page has no {BEGIN} … {END} section")
    return head + render() + tail


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medaid.common.config_doc")
    p.add_argument("page", type=Path)
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the tables are out of date")
    args = p.parse_args(argv)
    page = args.page.read_text(encoding="utf-8")
    wanted = rewrite(page)
    if args.check:
        if wanted != page:
            print(f"{args.page}: option tables out of date; run python -m medaid.common.config_doc {args.page}",
                  file=sys.stderr)
            return 1
        return 0
    args.page.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
