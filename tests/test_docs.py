"""README.md is the front page and docs/ the manual: every relative link in them (and in the model
card) leads to a file of the repository, every #anchor to a heading of its document, as GitHub
renders them. Reads Markdown only: no Paddle, no network."""
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250  # issue 24: the README is a front page; the manual lives in docs/
EXTERNAL = re.compile(r"^(https?|mailto):", re.I)  # checked by nobody here: tests never reach the internet

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
ATX_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
CODE_SPAN = re.compile(r"(`+).*?\1", re.S)  # may run over a line break, as in Markdown
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^>\s]+)>?", re.M)
HTML_ATTRIBUTE = re.compile(r"\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)


def documents():
    """The pages a reader follows links between: the front page, the manual, the model card."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "Model" / "README.md"]


def prose_lines(markdown):
    """The lines outside fenced code blocks, whose links and headings GitHub renders."""
    in_code = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            yield line


def github_anchor(heading):
    """The id GitHub gives a heading: its text lower-cased, punctuation other than '-' and '_'
    dropped, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text only
    text = re.sub(r"<[^>]+>", "", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown):
    """Every heading's id; a repeated heading gets -1, -2, ... as on GitHub."""
    seen = {}
    for line in prose_lines(markdown):
        if match := ATX_HEADING.match(line):
            anchor = github_anchor(match.group(1))
            seen[anchor] = seen.get(anchor, -1) + 1
            yield anchor if seen[anchor] == 0 else f"{anchor}-{seen[anchor]}"


def link_targets(markdown):
    """Targets of [text](target), ![alt](target), [name]: target and HTML src/href, outside code.
    A paragraph at a time, since a link's text may run over a line break."""
    for paragraph in re.split(r"\n\s*\n", "\n".join(prose_lines(markdown))):
        paragraph = CODE_SPAN.sub("", paragraph)
        yield from INLINE_LINK.findall(paragraph)
        yield from REFERENCE_DEFINITION.findall(paragraph)
        yield from HTML_ATTRIBUTE.findall(paragraph)


def broken_links(document, root=ROOT):
    """One line per relative link of `document` that leads nowhere in the repository at `root`, saying why."""
    document, root, problems = document.resolve(), root.resolve(), []
    for target in link_targets(document.read_text()):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        destination = (document.parent / unquote(path.partition("?")[0])).resolve() if path else document
        where = f"{document.relative_to(root)}: ({target})"
        if not destination.is_relative_to(root):
            problems.append(f"{where} leads out of the repository")
        elif not destination.exists():
            problems.append(f"{where}: {destination.relative_to(root)} does not exist")
        elif anchor and destination.suffix == ".md" and anchor not in set(anchors(destination.read_text())):
            problems.append(f"{where}: {destination.relative_to(root)} has no heading #{anchor}")
    return problems


def test_github_anchors_are_lower_case_with_spaces_as_dashes_and_other_punctuation_dropped():
    assert github_anchor("Results: the shipped CPU model") == "results-the-shipped-cpu-model"
    assert github_anchor("`state.json`'s format") == "statejsons-format"
    assert github_anchor("An averaged generator, `--ema DECAY`") == "an-averaged-generator---ema-decay"
    assert github_anchor("Loading with paddle.hub") == "loading-with-paddlehub"
    assert github_anchor("G_ema and [DiffAugment](https://arxiv.org/abs/2006.10738)") == "g_ema-and-diffaugment"
    assert list(anchors("# Speed\n## Speed\n```bash\n# a comment, not a heading\n```\n## Speed ##\n")) == \
        ["speed", "speed-1", "speed-2"]


def test_links_are_found_in_text_pictures_references_and_html_but_not_in_code():
    markdown = ("See [the manual](docs/training.md#resuming) and ![avatars](Res/avatars.png \"64 faces\"), [two\n"
                "lines](docs/gpus.md#several-gpus).\n[card]: Model/README.md\n<img src=\"Res/studio.png\"> `[not\n"
                "a](link.md)`\n\n```bash\necho [neither](this.md)\n```\n")
    assert list(link_targets(markdown)) == ["docs/training.md#resuming", "Res/avatars.png", "docs/gpus.md#several-gpus",
                                            "Model/README.md", "Res/studio.png"]


def test_a_link_to_a_missing_file_a_missing_heading_or_outside_the_repository_is_reported(tmp_path):
    root = tmp_path / "repository"
    (root / "docs").mkdir(parents=True)
    (root / "README.md").write_text("# Front page\n## Quick start\n")
    page = root / "docs" / "page.md"
    page.write_text("# Here\n[fine](#here) [front](../README.md#quick-start) [gone](missing.md) "
                    "[no such part](../README.md#no-such-part) [out](../../elsewhere/data) "
                    "[web](https://example.org/x.md) [mail](mailto:someone@example.org)\n")
    assert broken_links(page, root) == [
        "docs/page.md: (missing.md): docs/missing.md does not exist",
        "docs/page.md: (../README.md#no-such-part): README.md has no heading #no-such-part",
        "docs/page.md: (../../elsewhere/data) leads out of the repository",
    ]


@pytest.mark.parametrize("document", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_of_the_repository_and_every_anchor_to_a_heading(document):
    problems = broken_links(document)
    assert problems == [], "broken links:\n" + "\n".join(problems)


def test_the_readme_links_to_every_page_of_the_manual():
    readme_links = {target.partition("#")[0] for target in link_targets((ROOT / "README.md").read_text())}
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert len(pages) >= 5 and pages - readme_links == set()


def test_the_readme_is_a_front_page_of_at_most_250_lines():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"
