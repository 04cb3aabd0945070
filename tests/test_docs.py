"""The docs stay true to the code and to themselves.

1. docs/reference/cli.md and http.md are what docs/reference/generate.py writes from the
   code today: change a command, an option or a route, and this fails until the reference
   is regenerated (`python docs/reference/generate.py`) and committed.
2. Every relative link and image in README.md and docs/**/*.md points to a file that exists,
   and every #anchor to a heading that exists (GitHub's heading-anchor rule).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "reference" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """The reference written afresh from the code, once for this module."""
    out = tmp_path_factory.mktemp("reference")
    assert _generator().main(["--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", ["cli.md", "http.md"])
def test_generated_reference_is_current(regenerated, name):
    fresh = (regenerated / name).read_text(encoding="utf-8")
    committed = (DOCS / "reference" / name).read_text(encoding="utf-8")
    if committed != fresh:
        diff = [f"- {a}\n+ {b}" for a, b in zip(committed.splitlines(), fresh.splitlines(),
                                                strict=False) if a != b][:5]
        pytest.fail(f"docs/reference/{name} is out of date with the code; run "
                    f"`python docs/reference/generate.py` and commit it. First differences:\n"
                    + "\n".join(diff or ["(one file is longer than the other)"]))


def test_reference_covers_every_command_and_route(regenerated):
    """Not just 'equal to itself': the generator really walks the tree and the schema."""
    cli = (regenerated / "cli.md").read_text(encoding="utf-8")
    http = (regenerated / "http.md").read_text(encoding="utf-8")
    for command in ("sightwise train", "sightwise predict", "sightwise serve",
                    "sightwise models promote", "sightwise index build", "sightwise inspect fit"):
        assert f"\n## {command}\n" in cli or f"\n### {command}\n" in cli, command
    assert "| `--budget` | text |" in cli  # an option row with its type
    for route in ("POST /v1/predict", "POST /v1/explain", "GET /v1/model", "POST /v1/search",
                  "POST /v1/inspect"):
        assert f"\n### {route}\n" in http, route


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup stripped, lower case, punctuation other
    than '-' and '_' dropped, spaces to '-'.

    >>> github_anchor("`bench/train_throughput.py`")
    'benchtrain_throughputpy'
    >>> github_anchor("POST /v1/predict")
    'post-v1predict'
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.strip().lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        a = github_anchor(h)
        out.add(a if a not in seen else f"{a}-{seen[a]}")  # GitHub numbers repeats
        seen[a] = seen.get(a, 0) + 1
    return out


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return LINK.findall(CODE_SPAN.sub("", text))


def test_the_link_checker_sees_links_and_anchors(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A `b` c\n\n[x](other.md#y) ![i](f.png) `[no](code.md)`\n"
                    "```\n[no](fence.md)\n```\n## A b c\n", encoding="utf-8")
    assert links(page) == ["other.md#y", "f.png"]
    assert anchors(page) == {"a-b-c", "a-b-c-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if ROOT in dest.parents else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_index():
    """A page nobody links to is a page nobody finds."""
    linked = {(page.parent / t.partition("#")[0]).resolve()
              for page in PAGES for t in links(page) if not t.startswith("#")}
    orphans = [p.relative_to(ROOT) for p in DOCS.rglob("*.md") if p.resolve() not in linked]
    assert not orphans, f"pages no other page links to: {orphans}"
