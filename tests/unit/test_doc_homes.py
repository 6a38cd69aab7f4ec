"""Documents for their readers (issue #26 item 6): the README stays a ten-minute read that
links only to documents that exist (their headings too), every SLS of the formula has its line
in the README's state list, naming the prefix of its state ids, and every alert its row in the
README's alert table."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
KCM = REPO / "formula" / "kcm"
DOCUMENTS = [README, REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
STATE_ID = re.compile(r"^(kcm-[a-z0-9-]*)", re.M)


def slug(heading):
    """The anchor GitHub gives a heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    text = FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def links(path):
    for match in LINK.finditer(FENCE.sub("", path.read_text())):
        target = match.group(1)
        if not re.match(r"^[a-z]+:", target):
            yield target


def table_rows(text):
    """The cells of every Markdown table row, the header and separator rows included."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]


def test_the_readme_is_a_ten_minute_read():
    lines = README.read_text().count("\n")
    assert lines < 250, f"README.md has {lines} lines: move the detail to docs/ and link it"


def test_the_readme_links_only_to_documents_that_exist():
    wrong = []
    for target in links(README):
        path, _, anchor = target.partition("#")
        if not (re.fullmatch(r"docs/[\w.-]+\.md", path) or path == "CHANGELOG.md"):
            wrong.append(f"{target}: not a document of docs/ (or the changelog)")
        elif not (REPO / path).is_file():
            wrong.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(REPO / path):
            wrong.append(f"{target}: no such heading in {path}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_between_the_documents_resolves_heading_included(document):
    wrong = []
    for target in links(document):
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        if not resolved.exists():
            wrong.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            wrong.append(f"{target}: no such heading in {resolved.relative_to(REPO)}")
    assert not wrong, "\n".join(wrong)


def formula_sls():
    """Every SLS a user applies: `kcm` and `kcm.<name>` for formula/kcm/<name>.sls, and
    `kcm.<folder>` for formula/kcm/<folder>/init.sls, with the state ids its files declare."""
    found = {}
    for path in sorted(KCM.glob("*.sls")):
        name = "kcm" if path.stem == "init" else f"kcm.{path.stem}"
        found[name] = set(STATE_ID.findall(path.read_text()))
    for init in sorted(KCM.glob("*/init.sls")):
        folder = init.parent
        found[f"kcm.{folder.name}"] = {
            state for path in folder.glob("*.sls") for state in STATE_ID.findall(path.read_text())
        }
    return found


def readme_state_list():
    """{SLS: the state ids cell} of the README's state list."""
    return {
        row[0].strip("`"): row[1]
        for row in table_rows(README.read_text())
        if len(row) >= 3 and re.fullmatch(r"`kcm(\.\w+)?`", row[0])
    }


def test_the_formula_has_the_sls_the_state_list_is_checked_against():
    assert {"kcm", "kcm.clean", "kcm.config", "kcm.service", "kcm.pki_peer"} <= set(formula_sls())


@pytest.mark.parametrize("sls", sorted(formula_sls()))
def test_every_sls_has_its_line_in_the_readme_state_list_naming_its_state_ids(sls):
    rows = readme_state_list()
    assert sls in rows, f"{sls} has no line in the README's state list ('What `state.apply kcm` does')"
    states = formula_sls()[sls]
    if sls.count(".") == 1 and (KCM / sls.split(".")[1] / "init.sls").is_file():
        prefix = "kcm-" + sls.split(".")[1].replace("_", "-") + "-"
        assert f"`{prefix}*`" in rows[sls], f"the line of {sls} names no `{prefix}*`: {rows[sls]}"
        strays = sorted(s for s in states if not s.startswith(prefix))
        assert not strays, f"state ids of {sls} outside its prefix {prefix}: {strays}"
    else:
        assert not states, f"{sls} declares states of its own: {sorted(states)}"


def test_the_readme_state_list_names_no_sls_that_does_not_exist():
    assert set(readme_state_list()) <= set(formula_sls())


def test_every_alert_has_its_row_in_the_readme_alert_table():
    tree = ast.parse((REPO / "_utils" / "kcm_alert_rules.py").read_text())
    kinds = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "KINDS" for t in node.targets)
    )
    alerts = {alert for _, alert, _ in kinds.values() if alert}
    rows = {row[0].strip("`") for row in table_rows(README.read_text())}
    assert alerts and alerts <= rows, sorted(alerts - rows)
