"""The README's five-minute walkthrough, run as written against `make up` (doc-test style): every
`$ command` line of its console block is run in order, and what it prints must be what the README
shows below it (`...` in a shown line stands for any text, e.g. a port). A README that promises an
output the product no longer gives fails here.

`python tests/test_readme_walkthrough.py` prints the transcript the product gives today."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def walkthrough_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Five-minute walkthrough", 1)[1]
    return section.split("```console\n", 1)[1].split("\n```", 1)[0]


def steps(block: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        else:
            out[-1][1].append(line)
    return out


def make_recipe(target: str) -> str:
    """The command a make target runs, as the Makefile says (so the translation cannot drift)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(f"{target}:"))
    return lines[i + 1].strip().lstrip("@")


def to_argv(command: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(command)
    env: dict[str, str] = {}
    while "=" in words[0] and not words[0].startswith((".", "/")):
        k, _, v = words.pop(0).partition("=")
        env[k] = v
    if words[:1] == ["make"]:
        (target,) = words[1:]
        found = re.search(r"\$\(PY\) -m (medaid\.topology \w+)", make_recipe(target))
        assert found, make_recipe(target)
        return env, [sys.executable, "-m", *found.group(1).split()]
    if words[0] == ".venv/bin/medaid":
        return env, [str(BIN / "medaid"), *words[1:]]
    raise AssertionError(f"the walkthrough runs only make targets and .venv/bin/medaid: {command}")


def run_step(command: str, cwd: Path) -> list[str]:
    extra, argv = to_argv(command)
    env = {**os.environ, **extra, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return (done.stdout + done.stderr).rstrip("\n").splitlines()


def matches(shown: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in shown.split("..."))
    return re.fullmatch(pattern, actual) is not None


def gateway_examples() -> tuple[str, list[str]]:
    """docs/gateway-reference.md's curl block, which runs against the walkthrough's people: its commands
    as written, and for each `curl` the answer its `# ` lines show."""
    text = (ROOT / "docs" / "gateway-reference.md").read_text(encoding="utf-8")
    block = text.split("```sh\n", 1)[1].split("\n```", 1)[0]
    script: list[str] = []
    shown: list[str] = []
    for line in block.splitlines():
        if line.startswith("# "):
            shown[-1] += line[2:]
            continue
        if line.startswith("curl "):
            shown.append("")
        script.append(line)
    return "\n".join(script), shown


def run_gateway_examples(cwd: Path) -> list[str]:
    """The block run by bash in `cwd` (its `.venv/bin/python` the one running the tests): each answer."""
    script, _ = gateway_examples()
    if not (cwd / ".venv").exists():
        (cwd / ".venv").symlink_to(BIN.parent)
    if shutil.which("curl") is None:
        return []
    done = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60)
    text, answers, decoder = done.stdout.strip(), [], json.JSONDecoder()
    while text:
        _, end = decoder.raw_decode(text)
        answers.append(text[:end])
        text = text[end:].lstrip()
    return answers


SHOWN_PAIR = re.compile(r'"(\w+)":("[^"]*"|-?\d+(?:\.\d+)?|true|false|null)')
VARYING = {"inf_refmsgid", "refmsg_time", "respond_time", "setl_time"}  # the clock's, shown as an example


def unshown(shown: str, answer: str) -> list[str]:
    """The `"field":value` pairs a shown answer gives that the answer does not (times excepted)."""
    said = set(SHOWN_PAIR.findall(answer))
    return [f'"{k}":{v}' for k, v in SHOWN_PAIR.findall(shown) if k not in VARYING and (k, v) not in said]


def transcript(cwd: Path, before_down: Callable[[Path], object] | None = None
               ) -> list[tuple[str, list[str], list[str]]]:
    """Each step with what the README shows and what it printed; `make down` always runs at the end
    (`before_down` runs before it, against the walkthrough's topology)."""
    out = []
    try:
        for command, shown in steps(walkthrough_block()):
            if before_down and command == "make down":
                before_down(cwd)
            out.append((command, shown, run_step(command, cwd)))
    finally:
        if (cwd / "build" / "run" / "topology.json").exists():
            subprocess.run([sys.executable, "-m", "medaid.topology", "down"], cwd=cwd, capture_output=True)
    return out


def test_readme_walkthrough_prints_what_the_readme_shows(tmp_path: Path):
    # Its own working folder: its own build/run/topology.json, whatever else is running here.
    answers: list[str] = []
    results = transcript(tmp_path, before_down=lambda cwd: answers.extend(run_gateway_examples(cwd)))
    assert [c for c, _, _ in results][0].endswith("make up") and results[-1][0] == "make down"
    for command, shown, actual in results:
        assert len(shown) == len(actual) and all(map(matches, shown, actual)), (
            f"$ {command}\nREADME shows:\n" + "\n".join(shown) + "\nthe product prints:\n" + "\n".join(actual))
    # docs/gateway-reference.md's curl examples, sent once the walkthrough's helper and child are bound.
    if shutil.which("curl") is None:
        pytest.skip("the walkthrough matched; docs/gateway-reference.md's examples need curl")
    _, shown_answers = gateway_examples()
    assert len(answers) == len(shown_answers) == 2, answers
    for shown, answer in zip(shown_answers, answers, strict=True):
        assert not unshown(shown, answer), (f"docs/gateway-reference.md shows {unshown(shown, answer)}, "
                                            f"the gateway answers:\n{answer}")


def test_walkthrough_matcher_can_fail():
    assert matches("registry-13  127.0.0.1:...", "registry-13  127.0.0.1:43117")
    assert not matches("credited ¥500.00; balance ¥500.00", "credited ¥500.00; balance ¥1,000.00")
    assert not matches("transfer ...: COMPLETED", "transfer T1: FAILED")
    assert unshown('{"infcode":0,…,"balc":0.00,"age":11,"setl_time":"x"}', '{"infcode":0,"balc":0.00,"age":11}') == []
    assert unshown('{"balc":0.00,"psn_no":"1"}', '{"balc":1.00,"psn_no":"1"}') == ['"balc":0.00']


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        for command, _, actual in transcript(Path(d)):
            print("$ " + command, *actual, sep="\n")
