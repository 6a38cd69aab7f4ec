"""
The kinds of report have one owner, ``KINDS`` in ``_utils/kcm_alert_rules.py`` (issue #26):
the runner acts on its kinds and no other, kcm_trust takes a kind only from the beacon the
table names, every alert kind has its own labels and text, the beacons send exactly its
kinds (driven through their pure steps), and "A new alert" in docs/contributing.md names every
file that still lists kinds. Before, the runner kept a list of its own that the README did not
name: an alert added as the README said never fired.
"""

import ast
import re

import pytest

from kcmlab.formula import REPO, load, utils
from tests.unit.test_kcm_alert import Harness

UTILS = utils()
TABLE = UTILS["kcm_alert_rules.beacons"]()
RULES = UTILS["kcm_alert_rules.beacons"].__globals__
# What the kcm_leader beacon sends along with `changed`, for other tools: no alert of its own.
RIDE_ALONG = {"acquired", "lost"}
# The alerts table and the paragraph on where a new alert goes (they left the README in #26).
ALERTS_DOC = (REPO / "docs/alerts.md").read_text()
CONTRIBUTING = (REPO / "docs/contributing.md").read_text()


def test_a_kind_added_to_the_table_alone_is_acted_on_and_raises_its_alert(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch)
    table = h.module.__utils__["kcm_alert_rules.beacons"].__globals__["KINDS"]
    monkeypatch.setitem(table, "flapping", ("kcm_leader", "KCMLeaderFlapping", "warning"))

    result = h.handle("master-1", "flapping", transitions=9, renew_time="2026-01-01T00:00:00Z")

    assert not result.get("ignored") and not result.get("refused"), result
    assert [(a["labels"]["alertname"], a["labels"]["severity"]) for a in h.alerts()] == [
        ("KCMLeaderFlapping", "warning")
    ]


@pytest.mark.parametrize("kind", sorted(TABLE))
def test_every_kind_is_acted_on_and_trusted_only_under_the_beacon_the_table_names(tmp_path, monkeypatch, kind):
    h = Harness(tmp_path, monkeypatch)
    beacon = TABLE[kind]
    other = {"kcm_leader": "kcm_cert", "kcm_cert": "kcm_leader"}[beacon]

    assert not h.module._new_result(f"salt/beacon/master-1/{beacon}/{kind}", {"id": "master-1"}).get("ignored")
    assert UTILS["kcm_trust.reporter_of"](f"salt/beacon/master-1/{beacon}/{kind}", TABLE) == "master-1"
    assert UTILS["kcm_trust.reporter_of"](f"salt/beacon/master-1/{other}/{kind}", TABLE) is None


def test_what_is_no_kind_of_the_table_is_ignored(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch)
    for kind in (*RIDE_ALONG, "answer"):
        assert h.module._new_result(f"salt/beacon/master-1/kcm_leader/{kind}", {"id": "master-1"})["ignored"]


def test_every_alert_kind_has_its_own_labels_and_text():
    data = {
        "cluster": "prod",
        "transitions": 3,
        "cert": "kcm-client",
        "threshold": 30,
        "thresholds": [30, 7],
        "days_left": 20,
        "id": "m",
    }
    summaries = {}
    for kind, (_, alertname, severity) in RULES["KINDS"].items():
        if alertname is None:
            continue
        labels = UTILS["kcm_alert_rules.alert_labels"](kind, data, {})
        assert (labels["alertname"], labels["severity"]) == (alertname, severity), kind
        summaries[kind] = UTILS["kcm_alert_rules.annotations"](kind, data, "m", "https://runbook")["summary"]
    assert len(set(summaries.values())) == len(summaries), summaries
    assert set(RULES["CONDITIONS"]) <= set(summaries) and set(RULES["CLEARED_BY_CHANGE"]) <= set(RULES["CONDITIONS"])


def leader_beacon_kinds():
    beacon = load("_beacons", "kcm_leader")
    conditions = ("ok", *beacon.BAD_CONDITIONS)
    sent = [e for before in conditions for after in conditions for e in beacon._condition_events(before, after, {})]
    sent += beacon._holder_events({"holder": "a_1", "minion": "m1"}, {"holder": "b_2", "minion": "m2"}, ("m1", "m2"))
    return {e["tag"] for e in sent}, set(beacon.BAD_CONDITIONS)


def cert_beacon_kinds():
    beacon = load("_beacons", "kcm_cert")
    settings = {"cert_thresholds": [30, 7]}
    state, first = beacon.cert_step(None, {"cert": {"fingerprint": "1", "days_left": 20}}, 0, settings)
    _, second = beacon.cert_step(state, {"cert": {"fingerprint": "2", "days_left": 300}}, 1, settings)
    return {e["tag"] for e in first + second}


def test_the_beacons_send_exactly_the_kinds_the_table_gives_them():
    leader, conditions = leader_beacon_kinds()

    assert leader - RIDE_ALONG == {k for k, b in TABLE.items() if b == "kcm_leader"}
    assert cert_beacon_kinds() == {k for k, b in TABLE.items() if b == "kcm_cert"}
    assert conditions == set(RULES["CONDITIONS"])
    assert not RIDE_ALONG & set(TABLE)


def test_every_kind_has_its_row_in_the_alerts_table():
    rows = {m.group(1) for m in re.finditer(r"^\| `(\w+)`", ALERTS_DOC, re.M)}
    assert set(TABLE) <= rows, sorted(set(TABLE) - rows)


def new_alert_paragraph():
    start = CONTRIBUTING.index("- **A new alert**")
    return CONTRIBUTING[start : CONTRIBUTING.index("\n- **", start + 1)]


def files_listing_kinds():
    """Product files with a literal tuple, list, set or dict (keys) of two or more kinds."""
    found = set()
    for folder in ("_beacons", "_runners", "_utils", "_engines", "_modules", "_states", "_output"):
        for path in sorted((REPO / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                items = (
                    node.keys
                    if isinstance(node, ast.Dict)
                    else getattr(node, "elts", None)
                    if isinstance(node, (ast.Tuple, ast.List, ast.Set))
                    else None
                )
                if items and sum(isinstance(i, ast.Constant) and i.value in TABLE for i in items) >= 2:
                    found.add(f"{folder}/{path.name}")
    return found


def test_the_new_alert_paragraph_names_existing_files_and_every_file_that_lists_kinds():
    paragraph = new_alert_paragraph()
    named = set(re.findall(r"`([\w./-]+\.py)`", paragraph))

    assert named and all((REPO / path).is_file() for path in named), named
    assert files_listing_kinds() <= named, sorted(files_listing_kinds() - named)
