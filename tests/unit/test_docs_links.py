"""Every relative link in README.md and docs/*.md points to a file that exists, and every
``#anchor`` to a heading of the Markdown file it names (GitHub's heading ids)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCED_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = ("http://", "https://", "mailto:")


def prose(text: str) -> str:
    """The text without code blocks, inline code and comments, where links are not links."""
    return INLINE_CODE.sub("", FENCED_BLOCK.sub("", HTML_COMMENT.sub("", text)))


def slug(heading: str) -> str:
    """GitHub's id of a heading: lower case, punctuation other than ``-`` and ``_`` dropped, spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(document: Path) -> set[str]:
    """The heading ids of a Markdown file, with GitHub's ``-1``, ``-2`` suffixes for repeats."""
    seen: dict[str, int] = {}
    ids = set()
    for heading in HEADING.findall(FENCED_BLOCK.sub("", document.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        ids.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return ids


def broken_links(document: Path, root: Path = ROOT) -> list[str]:
    """``target: why`` for every relative link of ``document`` that does not resolve."""
    broken = []
    for target in LINK.findall(prose(document.read_text(encoding="utf-8"))):
        if target.startswith(EXTERNAL):
            continue
        path_part, _, anchor = target.partition("#")
        path = document if not path_part else (document.parent / path_part).resolve()
        if not path.exists():
            broken.append(f"{target}: no file {path.relative_to(root)}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(root)}")
    return broken


def test_the_slug_follows_github() -> None:
    assert slug("The whole SAC update as one compiled function") == "the-whole-sac-update-as-one-compiled-function"
    assert slug("`mean`: the average gradient") == "mean-the-average-gradient"
    assert slug("Optimizers, schedules, clipping, mixed precision") == "optimizers-schedules-clipping-mixed-precision"
    assert slug("Reports: `mtrl-report`") == "reports-mtrl-report"


def test_a_broken_link_and_a_missing_anchor_are_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Title\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-section) [gone](missing.md) [bad](other.md#nowhere) [web](https://x.org/y)\n"
        "`[code](not-a-link.md)`\n```\n[block](not-a-link.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page, root=tmp_path) == ["missing.md: no file missing.md", "other.md#nowhere: no heading #nowhere in other.md"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(document: Path) -> None:
    assert broken_links(document) == []
