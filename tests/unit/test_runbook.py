"""
Every alert says what to do (issue #27, item 5): each alert name of the KINDS table has its
section in docs/runbook.md (what it means, what to check first with the exact commands, how
it resolves), and every alert the rules build carries ``summary``, ``description`` and a
``runbook_url`` that ends in that section's anchor; a description shows neither a secret nor
a raw control character from a report.
"""

import re

import pytest

from kcmlab.formula import REPO, alert_settings, load, utils

UTILS = utils()
# What the kcm_alert runner hands kcm_alert_decide of the other utils (a util calls no util).
RUNNER = load("_runners", "kcm_alert")
RUNNER.__utils__ = UTILS
KINDS = UTILS["kcm_alert_rules.beacons"].__globals__["KINDS"]
ALERTS = sorted({row[1] for row in KINDS.values() if row[1]})
RUNBOOK = (REPO / "docs" / "runbook.md").read_text()
# What kcm.master writes from defaults.yaml: the runner's only source of a runbook_url.
CFG = alert_settings()
DEFAULT_BASE = CFG["runbook_url"]
DATA = {
    "cluster": "prod",
    "cluster_id": "c1d",
    "transitions": 3,
    "cert": "cert",
    "threshold": 30,
    "thresholds": [30, 7],
    "days_left": 20,
    "id": "master-1",
    "holder": "master-1_a",
    "node": "master-1",
    "reason": "connection refused",
    "not_after": "2027-02-04T08:00:00Z",
}


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections():
    """{anchor: section text} of the runbook's level-2 headings."""
    parts = re.split(r"^## (.+)$", RUNBOOK, flags=re.M)
    return {github_anchor(title): body for title, body in zip(parts[1::2], parts[2::2])}


@pytest.mark.parametrize("alertname", ALERTS)
def test_every_alert_has_its_runbook_section_with_the_commands_to_run(alertname):
    anchor = UTILS["kcm_alert_rules.runbook_anchor"](alertname)
    found = sections()
    assert anchor in found, f"docs/runbook.md has no '## {alertname}' section"
    body = found[anchor]
    leader_alert = any(row[:2] == ("kcm_leader", alertname) for row in KINDS.values())
    for part in (
        "**What it means.**",
        "**Check first.**",
        "**How it resolves.**",
        "salt-run kcm.status",
        "kcm.status",
        "journalctl -u kube-controller-manager",
        *(["kcm.leader"] if leader_alert else []),
    ):
        assert part in body, (alertname, part)


@pytest.mark.parametrize("kind", sorted(k for k, row in KINDS.items() if row[1]))
@pytest.mark.parametrize("base", [DEFAULT_BASE, "https://wiki.example.com/kcm/runbook"])
def test_every_alert_built_carries_the_three_annotations_and_its_anchor(kind, base):
    alert = UTILS["kcm_alert_decide.build_alert"](
        kind, DATA, "master-1", dict(CFG, runbook_url=base), 1.8e9, RUNNER._kit()
    )
    annotations = alert["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert all(isinstance(v, str) and v for v in annotations.values())
    anchor = UTILS["kcm_alert_rules.runbook_anchor"](KINDS[kind][1])
    assert annotations["runbook_url"] == f"{base}#{anchor}" and anchor in sections()


def test_the_base_is_the_pillar_default_and_an_empty_one_is_refused_naming_the_key(kcm_config):
    # One owner: defaults.yaml. No second default hides behind '' in the rules.
    assert DEFAULT_BASE == "https://github.com/kcm-formula/kcm-formula/blob/main/docs/runbook.md"
    problems = kcm_config.master_problems({"config_dir": "/etc/salt/master.d", "masters": "m-*", "runbook_url": ""})
    assert any(p.startswith("kcm:master:runbook_url: required") for p in problems), problems


@pytest.mark.parametrize(
    "reason, secret",
    [
        ("Get https://kcm:s3cr3t@10.0.0.1:6443/apis: refused", "s3cr3t"),
        ("401: Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.payload", "eyJhbGciOiJSUzI1NiJ9"),
        ("GET /x?token=abcdef123 failed", "abcdef123"),
        ("password: hunter2, retrying", "hunter2"),
    ],
)
def test_no_secret_in_a_description(reason, secret):
    text = UTILS["kcm_alert_rules.annotations"]("unreachable", dict(DATA, reason=reason), "master-1", DEFAULT_BASE)
    assert secret not in text["description"] and "[filtered]" in text["description"]


def test_no_raw_control_character_in_a_description():
    hostile = dict(DATA, reason="refused\n[ALERT] forged line\x1b[31m\u2028x", holder="a\rb")
    for kind in ("unreachable", "no_leader"):
        for text in UTILS["kcm_alert_rules.annotations"](kind, hostile, "master-1", DEFAULT_BASE).values():
            assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", text), repr(text)
    text = UTILS["kcm_alert_rules.annotations"]("unreachable", hostile, "master-1", DEFAULT_BASE)["description"]
    assert "refused\\x0a[ALERT] forged line\\x1b[31m\\u2028x" in text
