"""The docs outside Sphinx's build (README, CHANGELOG, the extension's README): every link inside the tree
leads to a file that exists. Sphinx checks the links under docs/ itself (`make docs`, warnings as errors)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", "CHANGELOG.md", "labextension/README.md"]


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in target and not target.startswith("#")]


@pytest.mark.parametrize("page", PAGES)
def test_every_link_inside_the_tree_leads_to_a_file(page):
    path = ROOT / page
    missing = [t for t in links(path) if not (path.parent / t.split("#")[0]).exists()]
    assert missing == [], f"{page} links to files that do not exist: {missing}"


def test_the_readme_links_to_every_page_of_the_docs():
    linked = {(ROOT / t.split("#")[0]).resolve() for t in links(ROOT / "README.md")}
    pages = {p.resolve() for p in (ROOT / "docs").glob("*/*.md")}
    assert pages - linked == set(), "pages the README does not lead to"
