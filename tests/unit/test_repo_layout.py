"""The tree keeps its own promises: every repository path that the documents and the code
cite exists, and what ships to users (bench/, scripts/, kcmlab/) imports nothing from tests/."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOP = (
    "_modules",
    "_states",
    "_beacons",
    "_runners",
    "_utils",
    "_engines",
    "_output",
    "formula",
    "kcmlab",
    "tests",
    "bench",
    "scripts",
    "docs",
    ".ci",
)
# A repository path as the documents write it: a top directory, then path characters. Placeholders
# (<version>), globs and Salt's salt:// or dotted names are not paths of this tree.
TOPS = "|".join(re.escape(t) for t in TOP)
CITED = re.compile(rf"(?<![\w./:~-])((?:{TOPS})/[\w./-]*[\w/])")
CITING = sorted(
    [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("*/README.md")]
    + [
        p
        for top in TOP[:12]
        for p in (REPO / top).rglob("*")
        if p.suffix in (".py", ".sls", ".jinja", ".md") and p.is_file()
    ]
)


def cited_paths(path):
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for match in CITED.finditer(line):
            end = match.end()
            if line[end : end + 1] in ("<", "*", "{") or line[end : end + 2] == "..":
                continue  # a placeholder or a glob
            yield number, match.group(1).rstrip(".")


@pytest.mark.parametrize("path", CITING, ids=lambda p: str(p.relative_to(REPO)))
def test_every_path_cited_exists(path):
    missing = [
        f"{path.relative_to(REPO)}:{number}: {cited}"
        for number, cited in cited_paths(path)
        if not (REPO / cited).exists() and not (REPO / f"{cited}.py").exists()
    ]
    assert not missing, "cited but not in the tree:\n" + "\n".join(missing)


@pytest.mark.parametrize("top", ["bench", "scripts", "kcmlab"])
def test_what_ships_imports_nothing_from_tests(top):
    offenders = []
    for path in sorted((REPO / top).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n == "tests" or n.startswith("tests.")
            ]
    assert not offenders, "\n".join(offenders)
