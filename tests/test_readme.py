"""The README and docs/ lead somewhere: every link to a heading or a file resolves, and
none points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.processes import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (?P<title>.+)$", re.MULTILINE)
FENCED = re.compile(r"^```.*?^```$", re.MULTILINE | re.DOTALL)


def anchor(title: str) -> str:
    """The id a Markdown renderer (GitHub's rules) gives a heading."""
    text = title.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(document: Path) -> set[str]:
    text = FENCED.sub("", document.read_text())
    return {anchor(found["title"]) for found in HEADING.finditer(text)}


def links(document: Path) -> list[str]:
    return [found["target"] for found in LINK.finditer(FENCED.sub("", document.read_text()))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_link_resolves_inside_the_repository(document: Path) -> None:
    for target in links(document):
        if target.startswith(("http://", "https://")):
            continue
        path, _, fragment = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        assert linked.is_relative_to(ROOT), f"{document.name}: {target} is outside the repository"
        assert linked.exists(), f"{document.name}: {target} does not exist"
        if fragment:
            assert fragment in anchors(linked), f"{document.name}: no heading for #{fragment}"


def test_the_readme_names_no_file_outside_the_repository() -> None:
    text = (ROOT / "README.md").read_text()

    assert "../" not in text
    assert "/work/" not in text
