"""The documentation cites only what the repository has: no design notes or reference files kept
outside it, and every relative link in the README and docs/ leads to a file of the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Files outside the repository that earlier text cited; a clone has none of them.
NOT_IN_THE_REPOSITORY = re.compile(r"DESIGN\.md|shared/(reference|seed)|reference/[\w-]+\.md")
# Pages written on other branches of the same round of work (docs/README.md lists them); once
# they are merged, this set is empty and every link is checked.
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(
            ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = [REPO_ROOT / n for n in names]
    return [p for p in paths if p.suffix in {".py", ".md", ".sh", ".toml", ".j2", ".yml", ".txt"}]


def test_nothing_cites_a_file_the_repository_lacks():
    this = Path(__file__).resolve()
    cited = [
        f"{p.relative_to(REPO_ROOT)}:{n}: {line.strip()}"
        for p in _tracked_text_files()
        if p.resolve() != this and p.exists()
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if NOT_IN_THE_REPOSITORY.search(line)
    ]
    assert not cited, "\n".join(cited)


@pytest.mark.parametrize(
    "page",
    [
        "README.md",
        *sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md")),
    ],
)
def test_relative_links_lead_to_files_of_the_repository(page: str):
    path = REPO_ROOT / page
    missing = []
    for target in MARKDOWN_LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor
        resolved = (path.parent / target.split("#")[0]).resolve()
        if not resolved.exists() or not resolved.is_relative_to(REPO_ROOT):
            missing.append(target)
    assert not missing, f"{page} links to {missing}, which the repository does not have"


def test_the_docs_index_lists_every_page():
    index = (REPO_ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    pages = {p.name for p in (REPO_ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages <= set(MARKDOWN_LINK.findall(index))
    assert "docs/README.md" in (REPO_ROOT / "README.md").read_text(encoding="utf-8")
