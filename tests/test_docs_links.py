"""Every relative link in README.md and docs/ reaches a file, and an anchor a heading.

Pages move (docs/guides/…, docs/reference/…); a link left pointing at the old place reads
fine and leads nowhere, so the docs are checked like code.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# The front page, the docs tree, and the READMEs next to what they describe.
PAGES = sorted(
    {
        *ROOT.glob("*.md"),
        *DOCS.rglob("*.md"),
        *(ROOT / "deploy").rglob("*.md"),
        *(ROOT / "examples").rglob("*.md"),
        *(ROOT / "model_store").glob("*.md"),
    }
)

FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target) and ![alt](target); the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def prose_lines(path):
    """The lines of a Markdown file outside fenced code blocks, with their numbers."""
    in_fence = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            yield number, line


def slug(heading):
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda match: match.group(0)[1:-1], heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor GitHub makes for the headings of path (repeats get -1, -2, …)."""
    seen = {}
    found = set()
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path):
    for number, line in prose_lines(path):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def broken_links(path):
    problems = []
    for number, target in links(path):
        if target.startswith(EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        shown = path.relative_to(ROOT) if ROOT in path.parents else path.name
        where = f"{shown}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading with anchor #{anchor}")
    return problems


def test_pages_are_found():
    assert ROOT / "README.md" in PAGES
    assert DOCS / "index.md" in PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_the_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n[fine](#a-page) [gone](missing.md) [bad anchor](#nowhere)\n"
        "```\n[in code](not-checked.md)\n```\n",
        encoding="utf-8",
    )
    found = [target for _, target in links(page)]
    assert found == ["#a-page", "missing.md", "#nowhere"]
    assert anchors(page) == {"a-page"}
    assert broken_links(page) == [
        "page.md:3: missing.md: no such file",
        "page.md:3: #nowhere: no heading with anchor #nowhere",
    ]
    assert slug("The compiled backend (ONNX)") == "the-compiled-backend-onnx"
    assert slug("`POST /v1/models/<name>/predict`") == "post-v1modelsnamepredict"


def linked_pages(path):
    """The Markdown pages path links to, resolved."""
    found = set()
    for _, target in links(path):
        file_part = target.partition("#")[0]
        if target.startswith(EXTERNAL) or not file_part.endswith(".md"):
            continue
        resolved = (path.parent / file_part).resolve()
        if resolved.exists():
            found.add(resolved)
    return found


def clicks_from_readme():
    """Each page reachable from README.md by links, with the fewest clicks it takes."""
    distance = {ROOT / "README.md": 0}
    frontier = [ROOT / "README.md"]
    while frontier:
        following = []
        for page in frontier:
            for linked in linked_pages(page):
                if linked not in distance:
                    distance[linked] = distance[page] + 1
                    following.append(linked)
        frontier = following
    return distance


def test_every_docs_page_is_reachable_from_the_readme():
    reachable = clicks_from_readme()
    assert [page for page in DOCS.rglob("*.md") if page not in reachable] == []


@pytest.mark.parametrize("guide", ["training.md", "serving.md", "fleet-deploy.md", "monitoring.md"])
def test_train_serve_deploy_and_monitor_are_two_clicks_from_the_readme(guide):
    assert clicks_from_readme()[DOCS / "guides" / guide] <= 2
