"""
Many clusters on one Salt master: two clusters that share a `kcm:cluster` name stay
apart in dedupe and in Alertmanager's labels.
"""

import pytest

from tests.unit.test_kcm_alert import CHANGE, DEAD, REPORTERS, Harness

# Two clusters that both kept the default name, as two teams would.
A = {"cluster": "kubernetes", "cluster_id": "0b7c2d6e-aaaa-4c1e-9a8f-2b6d4e8c1a07"}
B = {"cluster": "kubernetes", "cluster_id": "9e41f3a0-bbbb-4d2f-8b7e-3c5a6f9d2b18"}


@pytest.fixture
def harness(tmp_path, monkeypatch):
    return Harness(tmp_path, monkeypatch)


def _names(alerts):
    return sorted((a["labels"]["alertname"], a["labels"].get("cluster_id")) for a in alerts)


def test_same_named_clusters_failing_over_at_once_give_two_alerts_each_resolving_its_own(harness):
    # both clusters' leaders stopped renewing: one KCMLeaderStale each
    for reporter in REPORTERS:
        for cluster in (A, B):
            harness.handle(reporter, "stale", age_seconds=7.0, basis="observed", **DEAD, **cluster)
    assert _names(harness.alerts()) == [("KCMLeaderStale", A["cluster_id"]), ("KCMLeaderStale", B["cluster_id"])]

    # the same failover (same transitions, same node names) in both, reported by all
    harness.posts.clear()
    results = {(r, c["cluster_id"]): harness.handle(r, "changed", **CHANGE, **c)
               for r in REPORTERS for c in (A, B)}

    fired = [a for a in harness.alerts() if a["endsAt"] > a["startsAt"]]
    resolved = [a for a in harness.alerts() if a["endsAt"] == a["startsAt"]]
    assert _names(fired) == [("KCMLeaderChanged", A["cluster_id"]), ("KCMLeaderChanged", B["cluster_id"])]
    assert _names(resolved) == [("KCMLeaderStale", A["cluster_id"]), ("KCMLeaderStale", B["cluster_id"])]
    # each cluster's first report resolved that cluster's condition, and only that one
    for cluster in (A, B):
        first = results[("master-1", cluster["cluster_id"])]
        assert [labels["cluster_id"] for labels in first["resolved"]] == [cluster["cluster_id"]]
        assert [labels["cluster_id"] for labels in first["fired"]] == [cluster["cluster_id"]]
    assert sum(1 for r in results.values() if r["duplicate"]) == 4


def test_alerts_of_same_named_clusters_have_different_label_sets(harness):
    harness.handle("master-1", "changed", **CHANGE, **A)
    harness.handle("master-1", "changed", **CHANGE, **B)
    first, second = (a["labels"] for a in harness.alerts())
    # Alertmanager identifies an alert by its labels: equal sets would be one alert
    assert first != second
    assert {k: v for k, v in first.items() if k != "cluster_id"} == {
        k: v for k, v in second.items() if k != "cluster_id"}


def test_unreachable_of_one_cluster_is_not_resolved_by_the_other(harness):
    harness.handle("master-1", "unreachable", reason="timeout", **A)
    harness.handle("master-1", "unreachable", reason="timeout", **B)
    result = harness.handle("master-1", "recovered", condition="unreachable", **B)
    assert [labels["cluster_id"] for labels in result["resolved"]] == [B["cluster_id"]]
    again = harness.handle("master-2", "recovered", condition="unreachable", **B)
    assert again["resolved"] == []


def test_events_without_a_cluster_id_still_dedupe_by_name(harness):
    results = [harness.handle(r, "changed", **CHANGE) for r in REPORTERS]
    assert [bool(r["fired"]) for r in results] == [True, False, False]
    assert "cluster_id" not in harness.alerts()[0]["labels"]
