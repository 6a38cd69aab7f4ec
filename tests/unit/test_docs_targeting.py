"""Audit H2, in the docs: no document, example or demo matches the pillar (or the states) by
grain; the integration test (tests/integration/test_pillar_targeting.py) applies the top the
docs show on a real master."""

import re

from kcmlab.formula import REPO

GRAIN_MATCH = re.compile(r"^[\s#]*-\s*match:\s*grain\b", re.M)


def test_no_document_or_demo_targets_the_kcm_pillar_by_grain():
    files = [
        REPO / "README.md",
        REPO / "pillar.example",
        *sorted((REPO / "docs").rglob("*.md")),
        *sorted((REPO / "scripts").rglob("*.py")),
        *sorted((REPO / "kcmlab").rglob("*.py")),
    ]
    found = [
        f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}"
        for path in files
        for text in [path.read_text()]
        for m in GRAIN_MATCH.finditer(text)
    ]
    assert found == []
