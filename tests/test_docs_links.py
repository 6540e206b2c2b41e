"""Every relative markdown link `[text](target#anchor)` in README.md, CONTRIBUTING.md, CHANGELOG.md
and docs/**/*.md resolves: the target file exists, and an anchor names a heading of the target by
GitHub's slug rule (Chinese headings included; a repeated heading gets -1, -2, ...) or an
`<a id="...">` / `<a name="...">` in it; README's Documentation table lists every docs/*.md page.
No servers: reads files only."""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]

LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"(`+).+?\1")
HEADING = re.compile(r"#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r'<a (?:id|name)="([^"]+)"')
SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:")


def doc_files() -> list[Path]:
    top = [ROOT / name for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")]
    return [p for p in top if p.exists()] + sorted((ROOT / "docs").rglob("*.md"))


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out: list[tuple[int, str]] = []
    fence = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        marker = re.match(r"\s*(```|~~~)", line)
        if marker:
            if not fence:
                fence = marker.group(1)
            elif marker.group(1) == fence:
                fence = ""
            continue
        if not fence:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, tags dropped, lower case, every character
    but letters, marks, digits, spaces, '-' and '_' dropped (so Chinese stays and its
    punctuation goes), spaces turned into '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    kept = (ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LMN")
    return "".join(kept).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in prose_lines(path):
        found.update(HTML_ANCHOR.findall(line))
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


def relative_links(path: Path) -> list[tuple[int, str]]:
    links: list[tuple[int, str]] = []
    for number, line in prose_lines(path):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if not SCHEME.match(target):
                links.append((number, target))
    return links


def broken_links(path: Path) -> list[str]:
    broken: list[str] = []
    where = path.relative_to(ROOT)
    for number, target in relative_links(path):
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{where}:{number}: no file {target}")
        elif fragment and resolved.suffix == ".md" and unquote(fragment) not in anchors(resolved):
            broken.append(f"{where}:{number}: no anchor {target}")
    return broken


def test_relative_links_and_anchors_resolve() -> None:
    files = doc_files()
    assert ROOT / "README.md" in files and any(p.parent.name == "docs" for p in files)
    assert sum(len(relative_links(p)) for p in files) > 50, "the link pattern matched almost nothing"
    broken = [line for p in files for line in broken_links(p)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_slug_follows_github() -> None:
    assert slug("Exit codes") == "exit-codes"
    assert slug("`MEDAID_REDIS` and the *store*") == "medaid_redis-and-the-store"
    assert slug("家庭共济（family mutual aid）、划拨") == "家庭共济family-mutual-aid划拨"
    assert slug("See [the rules](rules.md#x) here") == "see-the-rules-here"


def test_repeated_headings_and_html_anchors(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text('# Notes\n## Notes\n```\n# not a heading\n```\n<a id="here"></a>text\n', encoding="utf-8")
    assert anchors(doc) == {"notes", "notes-1", "here"}


def test_readme_documentation_map_lists_every_doc() -> None:
    """README's "Documentation" table is the map of docs/: each docs/*.md page has a row there."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Documentation\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    mapped = {target for target in LINK.findall(section) if target.startswith("docs/")}
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages, "no docs/*.md found"
    assert not pages - mapped, f"docs pages missing from README's Documentation table: {sorted(pages - mapped)}"
