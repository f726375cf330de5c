"""The docs stand alone: nothing a user reads points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
# The project's shared folder (specs, data) sits next to the checkout on the developers'
# machines only; a user's clone has no such folder.
OUTSIDE = re.compile(r"(?:\.\./)+shared\b|\bshared/(?:specs|data)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_method_pages_exist() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    pages = {"README.md", "docs/recipes.md", "docs/methods/learndrop.md", "docs/methods/dcp.md"}
    assert pages <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_page_points_outside_the_repo(page: Path) -> None:
    hits = [
        f"{page.name}:{n}: {line.strip()}"
        for n, line in enumerate(page.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert hits == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve_inside_the_repo(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path = (page.parent / target).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"{page.name} links to {target}"


def test_method_pages_carry_the_papers_numbers() -> None:
    """The formulas and the papers' numbers live in the repo, not in a spec elsewhere."""
    learndrop = (ROOT / "docs/methods/learndrop.md").read_text()
    dcp = (ROOT / "docs/methods/dcp.md").read_text()
    for text in ("arXiv 2604.23403", "17.83%", "83.74%", "61.77%", "R_cum", "10⁻¹²"):
        assert text in learndrop
    for text in ("arXiv 2007.01486", "93.50%", "73.3%", "92.60%", "50.2%", "1/C_l", "γ·U_c + v_c"):
        assert text in dcp
