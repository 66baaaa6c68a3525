"""The README and docs/ link to each other by file and by heading: every relative link must
name a file that exists and, for a Markdown file, a heading it has (GitHub's anchors). The
results moved from the README to docs/results.md once; this keeps such moves honest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than ``-`` and ``_``
    dropped (letters of any script kept), spaces as ``-``."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def prose(text: str) -> str:
    """``text`` without its fenced code blocks (a ``# comment`` there is no heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in prose(path.read_text()).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            a = anchor(m.group(1))
            seen[a] = seen.get(a, 0) + 1
            yield a if seen[a] == 1 else f"{a}-{seen[a] - 1}"


def links(path: Path) -> list[str]:
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", prose(path.read_text())) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("heading, expected", [
    ("The teacher with its input dropout (today's default)", "the-teacher-with-its-input-dropout-todays-default"),
    ("With the teacher's logits: the recipe (`experiments/unlabelled.yaml`)",
     "with-the-teachers-logits-the-recipe-experimentsunlabelledyaml"),
    ("Revision 1 - preset v2.0", "revision-1---preset-v20"),
    ("Brémond — RGB ≥ probe", "brémond--rgb--probe"),
])
def test_anchor_follows_githubs_rule(heading, expected):
    assert anchor(heading) == expected


def test_code_blocks_and_repeated_headings(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("# A\n```\n# not a heading\n[l](missing.md)\n```\n## A\n[b](#a-1)\n")
    assert set(anchors(doc)) == {"a", "a-1"}
    assert links(doc) == ["#a-1"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc):
    broken = []
    for target in links(doc):
        path, _, name = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif name and dest.suffix == ".md" and name not in set(anchors(dest)):
            broken.append(f"{target}: no such heading in {dest.relative_to(ROOT)}")
    assert not broken, broken
