"""Every key a Lua script reaches is declared in KEYS (static check of services/medaid/**/lua/).

On a Redis Cluster a script that reaches a key it built itself (a prefix joined to an id) runs as
long as the slot is whole, but while that slot migrates the node stops it at the first such key that
has moved, after the writes before it: half-done, answered UNKNOWN. So the key position of every
`redis.call` / `redis.pcall` (and of the preludes' helpers that take keys) must be a `KEYS[...]`
entry, or a local that only ever holds one. The check is conservative: a key expression that joins
strings (`..`), reads ARGV or a literal, or a local assigned from one, fails it. Scripts proven to run
on one Redis only are listed in SINGLE_INSTANCE with why.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

LUA = Path(__file__).resolve().parent.parent / "services" / "medaid"
SCRIPTS = sorted(p for p in LUA.glob("*/lua/*.lua"))
# Scripts that never run on a cluster, with why.
SINGLE_INSTANCE = {
    # the atomic settlement path's read, used on one Redis only (engine.py; a cluster stages instead)
    "registry/settle_read.lua",
}
NO_KEY = {"TIME"}
MULTI_KEY = {"DEL", "EXISTS"}  # every argument is a key
# prelude helpers' key parameters: name -> positions (0-based) of the arguments that are keys
HELPERS = {"registry": {"fence_ok": [0], "entry": [0, 1], "move": [0, 1], "hist": [0], "person_set": [0],
                        "family_take": [0], "join_refusal": [0, 1]},
           "wallet": {"entry": [0, 1], "take_oldest_first": [0, 1]}}


def _strip_comments(src: str) -> str:
    out = []
    for line in src.splitlines():
        quote = ""
        for i, ch in enumerate(line):
            if quote:
                if ch == quote and line[i - 1] != "\\":
                    quote = ""
            elif ch in "'\"":
                quote = ch
            elif line.startswith("--", i):
                line = line[:i]
                break
        out.append(line)
    return "\n".join(out)


def _args(src: str, start: int) -> list[str]:
    """The top-level, comma-separated arguments of the call whose '(' is at `start`."""
    depth, quote, cur, args = 0, "", [], []
    for i in range(start + 1, len(src)):
        ch = src[i]
        if quote:
            cur.append(ch)
            if ch == quote and src[i - 1] != "\\":
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                args.append("".join(cur).strip())
                return args
            depth -= 1
        elif ch == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    raise AssertionError("unbalanced call")


def _calls(src: str, name: str) -> list[list[str]]:
    return [_args(src, m.end() - 1) for m in re.finditer(rf"(?<![\w.]){re.escape(name)}\(", src)]


def _bad(expr: str, src: str, params: set[str], seen: frozenset[str] = frozenset()) -> str:
    """Why `expr` may not be a declared key ('' when it is one)."""
    if re.fullmatch(r"KEYS\[[^\]]+\]", expr):
        return ""
    if expr.startswith("{") and expr.endswith("}"):  # a table of keys (a helper's `fk`)
        return next((why for part in _split(expr[1:-1]) if (why := _bad(part, src, params, seen))), "")
    if ".." in expr or "ARGV" in expr or "'" in expr or '"' in expr:
        return f"built key {expr!r}"
    base = re.match(r"[A-Za-z_]\w*", expr)
    if base is None or base.group() in seen:
        return f"unknown key {expr!r}" if base is None else ""
    name = base.group()
    if name in params:
        return ""  # a helper's key parameter: its callers are checked
    index = r"(?:\[(?:[^\[\]]|\[[^\]]*\])*\])?"
    assigned = [v.strip() for v in re.findall(rf"(?<![\w.]){name}{index}\s*=(?!=)\s*([^\n]+)", src)]
    # an empty table is filled by the assignments found; `for … do x = … end` ends with `end`
    assigned = [re.sub(r"(\s+end)+$", "", v) for v in assigned if v != "{}"]
    if re.search(rf"for\s+[\w\s,]*\b{name}\b[\w\s,]*\s+in\s", src):
        return f"key from a loop variable {expr!r}"
    if not assigned:
        return f"key {expr!r} from nowhere declared"
    for value in assigned:
        why = _bad(value, src, params, seen | {name})
        if why:
            return f"{expr!r} <- {why}"
    return ""


def _split(inner: str) -> list[str]:
    return [a for a in _args("(" + inner + ")", 0) if a]


def _key_args(src: str, helpers: dict[str, list[int]]) -> list[str]:
    keys = []
    for call in ("redis.call", "redis.pcall"):
        for args in _calls(src, call):
            cmd = args[0].strip("'\"").upper()
            if cmd in NO_KEY:
                continue
            keys += args[1:] if cmd in MULTI_KEY else args[1:2]
    for helper, positions in helpers.items():
        for args in _calls(src, helper):
            keys += [args[p] for p in positions if p < len(args)]
    return keys


def _helper_params(prelude: str, helpers: dict[str, list[int]]) -> set[str]:
    params: set[str] = set()
    for helper, positions in helpers.items():
        m = re.search(rf"local function {helper}\(([^)]*)\)", prelude)
        if m:
            names = [p.strip() for p in m.group(1).split(",")]
            params |= {names[p] for p in positions}
    return params


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_every_key_a_script_reaches_is_declared(script: Path):
    name = f"{script.parent.parent.name}/{script.name}"
    if name in SINGLE_INSTANCE:
        pytest.skip("runs on one Redis only")
    src = _strip_comments(script.read_text(encoding="utf-8"))
    helpers = HELPERS.get(script.parent.parent.name, {})
    # the prelude's helpers take keys as parameters; each script's calls of them are checked
    params = _helper_params(src, helpers) if script.name == "_prelude.lua" else set()
    bad = [why for key in _key_args(src, helpers) if (why := _bad(key, src, params))]
    assert not bad, f"{name}: keys not declared in KEYS: {bad}"


def test_the_check_finds_a_built_key():
    src = "local k = ARGV[1] .. 'x'\nredis.call('HDEL', k, 'f')\nhist(ARGV[2] .. 'h', 'A')\n"
    helpers = HELPERS["registry"]
    assert len([k for k in _key_args(src, helpers) if _bad(k, src, set())]) == 2
    assert not [k for k in _key_args("redis.call('GET', KEYS[1])", helpers) if _bad(k, "", set())]
    old = "local o = {}\nfor i = 9, #KEYS do o[ARGV[i]] = ARGV[9] .. ARGV[i] end\nredis.call('HDEL', o[t], 'f')\n"
    assert [k for k in _key_args(old, helpers) if _bad(k, old, set())]
