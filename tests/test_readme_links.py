"""README.md, docs/*.md and the other READMEs point at files and sections that exist (issue 17 item 6: long details moved into docs/
with links): every relative link's file, every `#anchor` a heading of the page it names, and the set-up commands
the README gives are Makefile targets."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OTHER_PAGES = ("benchmarks/README.md", "native/README.md", "native/compile/README.md", "tests/data/README.md")
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *(REPO / p for p in OTHER_PAGES)]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks (a `[x](y)` in a shell example is not a link)."""
    return "\n".join(part for i, part in enumerate(re.split(r"^```.*$", text, flags=re.M)) if i % 2 == 0)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", prose(page.read_text(encoding="utf-8")), re.M)}


def test_slugs_are_githubs():
    assert slug("Labeling workflow: unlabeled audio → trusted training labels") == \
        "labeling-workflow-unlabeled-audio--trusted-training-labels"
    assert slug("The run folder's life cycle") == "the-run-folders-life-cycle"
    assert slug("`bm1684x`: the BM1684X runtime") == "bm1684x-the-bm1684x-runtime"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_reaches_a_file_and_heading(page):
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: {dest.name} has no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_set_up_commands_are_makefile_targets():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(encoding="utf-8"), re.M))
    named = set(re.findall(r"^make (\w+)", readme, re.M)) | set(re.findall(r"`make (\w+)`", readme))
    assert {"demo", "test"} <= named and named <= targets, named - targets
