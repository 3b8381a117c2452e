"""The documentation holds together: every relative link in README.md, docs/ and benchmarks/README.md leads to a
file of the checkout, and every #anchor to a heading of the page it names (GitHub's rule for anchors)."""
import os
import re

import pytest

from tests.cifar_fixtures import REPO

PAGES = ["README.md", "benchmarks/README.md"] + [f"docs/{n}" for n in sorted(os.listdir(os.path.join(REPO, "docs")))
                                                 if n.endswith(".md")]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path):
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    found, fenced = set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return found


def links(path):
    fenced = False
    for number, line in enumerate(open(path, encoding="utf-8"), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            for target in LINK.findall(line):
                if not target.startswith(("http://", "https://", "mailto:")):
                    yield number, target


@pytest.mark.parametrize("page", PAGES)
def test_every_link_of_a_page_resolves(page):
    here = os.path.join(REPO, page)
    broken = []
    for number, target in links(here):
        path, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(os.path.dirname(here), path)) if path else here
        if not os.path.exists(file):
            broken.append(f"{page}:{number}: {target} (no such file)")
        elif anchor and file.endswith(".md") and anchor not in anchors(file):
            broken.append(f"{page}:{number}: {target} (no heading #{anchor} there)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_front_page():
    assert sum(1 for _ in open(os.path.join(REPO, "README.md"), encoding="utf-8")) <= 250
