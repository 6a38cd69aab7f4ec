"""
Trust by identity (issue #25): a minion is a KCM master because of its id, in the master's own
configuration, never because of what it says (grains, report fields, mine data, a row of the
fleet view). Each test here fails on 5f6804a: the finding it names is in the test's name.
"""

import logging
import math

import pytest

from kcmlab.formula import alert_settings, load, utils
from tests.unit.test_kcm_alert import CHANGE, DEAD, T0, Harness, signed

TRUST = utils()
EXPIRING = {
    "fingerprint": "0a1b" * 16,
    "files": ["cert", "kubeconfig:client"],
    "serial": "0a1b",
    "threshold": 21,
    "thresholds": [21, 7],
    "days_left": 20,
    "not_after": "2027-02-14T08:00:00Z",
    "cluster": "prod",
}


@pytest.fixture
def harness(tmp_path, monkeypatch):
    return Harness(tmp_path, monkeypatch)


def trust(masters, clusters=None, nodegroups=None, pki_dir=""):
    return TRUST["kcm_trust.trust"](
        {
            "kcm_alert": alert_settings(masters=masters, clusters=clusters or {}),
            "nodegroups": nodegroups or {},
            "pki_dir": pki_dir,
        }
    )


# --------------------------------------------------------------------------
# H1: who is a KCM master is decided by minion id only
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "role:k8s-master",
        "G@role:k8s-master",
        "I@kcm:cluster:prod",
        "master-* and G@role:k8s-master",
        "*",
        ["master-1", "P@os:.*"],
        "",
        "N@grained",
    ],
)
def test_h1_a_target_that_is_not_by_id_makes_nobody_a_kcm_master(target):
    found = trust(target, nodegroups={"grained": "master-1 or G@role:k8s-master"})
    assert found.problem, target
    assert not found.is_master("master-1") and not found.is_master("web-7")
    assert "kcm:master:masters" in found.why_not_master("web-7")


@pytest.mark.parametrize("target", ["master-*", ["master-1", "master-2", "master-3"], "N@kcm"])
def test_h1_an_id_target_names_the_masters_and_no_one_else(target):
    found = trust(target, nodegroups={"kcm": "L@master-1,master-2 or master-3"})
    assert found.problem is None
    assert [m for m in ("master-1", "master-2", "master-3", "web-7", "master") if found.is_master(m)] == [
        "master-1",
        "master-2",
        "master-3",
    ]


@pytest.mark.parametrize(
    "target, message",
    [
        ("role:k8s-master", "kcm:master:masters: 'role:k8s-master' is not a minion id glob such as master-*"),
        ("G@role:k8s-master", "kcm:master:masters: 'G@role:k8s-master' is not a minion id glob"),
        ("", "kcm:master:masters: required"),
        ("*", "kcm:master:masters: '*' matches every minion"),
    ],
)
def test_h1_kcm_master_refuses_a_target_that_is_not_by_id_naming_the_key(kcm_config, target, message):
    problems = kcm_config.master_problems({"config_dir": "/etc/salt/master.d", "masters": target})
    assert any(p.startswith(message) for p in problems), problems


def test_h1_the_old_grain_setting_is_refused_naming_its_replacement(kcm_config):
    problems = kcm_config.master_problems(
        {
            "config_dir": "/etc/salt/master.d",
            "masters": "master-*",
            "reporters": {"tgt": "role:k8s-master", "tgt_type": "grain"},
        }
    )
    assert any(p.startswith("kcm:master:reporters: replaced by kcm:master:masters") for p in problems), problems


def test_h1_a_cert_alert_names_its_verified_sender_not_the_minion_the_report_names(harness):
    harness.handle("master-1", "cert_expiring", **EXPIRING)
    # master-2 (a real KCM master) says master-1 renewed the certificate: it cannot end that alert
    renewed = harness.handle("master-2", "cert_renewed", **dict(EXPIRING, minion="master-1"))
    assert renewed["resolved"] == []
    # ... and the use of the certificate "by master-1" it reports is its own
    harness.handle("master-2", "cert_expiring", **dict(EXPIRING, minion="master-1", files=["ca_cert"]))
    assert harness.alerts()[-1]["annotations"]["used_by"] == "master-1 (cert, kubeconfig:client); master-2 (ca_cert)"


def test_h1_a_master_of_one_cluster_cannot_speak_for_another(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch, clusters={"prod": ["master-1", "master-2"], "staging": ["master-3"]})
    h.handle("master-1", "no_leader", **dict(DEAD, cluster_id="uid-prod"))
    before = len(h.posts)
    # master-3 (staging) resolves prod's condition, or raises one there
    assert (
        "not a KCM master of cluster 'prod'"
        in h.handle("master-3", "recovered", condition="no_leader", cluster_id="uid-prod")["refused"]
    )
    assert h.handle("master-3", "changed", **dict(CHANGE, cluster_id="uid-prod"))["refused"]
    assert len(h.posts) == before
    assert h.handle("master-3", "changed", **dict(CHANGE, cluster="staging", cluster_id="uid-staging"))["fired"]


def test_h1_a_clusters_cluster_id_is_pinned_at_its_first_report_until_unpinned(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch, clusters={"prod": ["master-1", "master-2", "master-3"]})
    assert h.handle("master-1", "changed", **dict(CHANGE, cluster_id="uid-prod"))["fired"]
    other = h.handle("master-2", "changed", **dict(CHANGE, transitions=9, cluster_id="uid-elsewhere"))
    assert "pinned to cluster_id 'uid-prod'" in other["refused"]
    assert h.module.unpin("prod") == "uid-prod"  # the cluster was rebuilt
    assert h.handle("master-2", "changed", **dict(CHANGE, transitions=10, cluster_id="uid-rebuilt"))["fired"]


# --------------------------------------------------------------------------
# L2 / L3: replays and reports that never expire
# --------------------------------------------------------------------------


def test_l2_a_replayed_recovered_does_not_end_a_newer_outage(harness):
    harness.handle("master-1", "no_leader", **DEAD)
    old_recovered = signed("master-1", "recovered", {"cluster": "prod", "condition": "no_leader"}, harness.now)
    tag = "salt/beacon/master-1/kcm_leader/recovered"
    assert harness.raw(tag, old_recovered)["resolved"]
    # a newer outage, then the captured recovered again (a batched event of any minion)
    harness.handle("master-1", "no_leader", **dict(DEAD, transitions=11))
    replay = harness.raw(tag, old_recovered)
    assert "a replay" in replay["refused"] and replay["resolved"] == []
    assert [a["labels"]["alertname"] for a in harness.alerts()][-1] == "KCMNoLeader"


def test_l2_a_reinstalled_master_same_key_fresh_disk_passes_with_a_new_epoch(harness):
    tag = "salt/beacon/master-1/kcm_leader/changed"
    assert harness.raw(tag, signed("master-1", "changed", dict(CHANGE, cluster="prod"), T0, epoch=5, counter=900))[
        "fired"
    ]
    fresh = signed("master-1", "changed", dict(CHANGE, transitions=7, cluster="prod"), T0, epoch=6, counter=1)
    assert harness.raw(tag, fresh)["fired"]
    older_epoch = signed("master-1", "changed", dict(CHANGE, transitions=8, cluster="prod"), T0, epoch=5, counter=901)
    assert "a replay" in harness.raw(tag, older_epoch)["refused"]


def test_l2_reports_a_little_out_of_order_count_once_each_and_never_twice():
    senders, check = {}, TRUST["kcm_trust.replay_problem"]
    report = {n: {"epoch": 7, "counter": n} for n in range(1, 200)}
    assert [check(senders, "master-1", report[n]) for n in (5, 3, 4, 9)] == [None] * 4
    assert all("a replay" in check(senders, "master-1", report[n]) for n in (3, 4, 5, 9))
    assert check(senders, "master-1", report[199]) is None
    assert "a replay" in check(senders, "master-1", report[8])  # far behind the newest: refused
    assert "a replay" in check(senders, "master-1", {"epoch": 6, "counter": 500})  # an older epoch


@pytest.mark.parametrize("signed_at", [math.nan, "NaN", math.inf, "-inf", 1e309])
def test_l3_a_report_signed_at_no_finite_time_is_refused(harness, signed_at):
    data = signed("master-1", "no_leader", dict(DEAD, cluster="prod"), signed_at)
    harness.now = T0 + 365 * 86400  # a year later
    result = harness.raw("salt/beacon/master-1/kcm_leader/no_leader", data)
    assert "not a finite time" in str(result["refused"]), result
    assert harness.alerts() == []


def test_l4_no_execution_function_signs_fields_a_caller_chooses():
    beacon = load("_modules", "kcm_beacon")
    public = [
        n
        for n in dir(beacon)
        if not n.startswith("_")
        and callable(getattr(beacon, n))
        and getattr(getattr(beacon, n), "__module__", None) == beacon.__name__
    ]
    assert "sign" not in public, public
    # the one function that signs (the reconcile's answer) signs this minion's own reading, under a
    # kind no report has: its signature cannot pass as a report
    assert (
        TRUST["kcm_trust.kind_of"]("salt/beacon/master-1/kcm_leader/answer") not in TRUST["kcm_alert_rules.beacons"]()
    )


# --------------------------------------------------------------------------
# M2 / L5: a refusal is cheap, quiet and cannot forge log lines
# --------------------------------------------------------------------------


def test_m2_l5_refusals_are_logged_once_per_sender_and_escaped(harness, caplog):
    tag = "salt/beacon/web-1\n2026-12-06 10:00:00,000 [CRITICAL] kcm_alert: delivered/kcm_leader/changed"
    with caplog.at_level(logging.WARNING):
        for _ in range(100):
            assert harness.raw(tag, {"id": "web-1"})["refused"]
            assert harness.handle("web-1", "changed", **CHANGE)["refused"]
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 2, lines  # one per sender (web-1, and the forged tag's "id")
    assert all("\n" not in line for line in lines), lines
    assert harness.tags().count("kcm/alert/refused") == 2
