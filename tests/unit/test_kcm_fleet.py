"""
Many clusters on one Salt master: two clusters that share a `kcm:cluster` name stay
apart in dedupe and in Alertmanager's labels.
"""

import time

import pytest
from cryptography.hazmat.primitives import serialization

from kcmlab.formula import alert_settings, load, utils
from tests.unit.test_kcm_alert import CHANGE, DEAD, REPORTERS, Harness, minion_key, signed, signed_answer

FLEET_RUNNER = load("_runners", "kcm")
FLEET_OUTPUT = load("_output", "kcm_fleet")
ENGINE = load("_engines", "kcm_alert")

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
    results = {(r, c["cluster_id"]): harness.handle(r, "changed", **CHANGE, **c) for r in REPORTERS for c in (A, B)}

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
        k: v for k, v in second.items() if k != "cluster_id"
    }


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


# ---------------------------------------------------------------------------------------------
# the fleet view: salt-run kcm.status


@pytest.fixture
def configure_loader_modules():
    return {FLEET_RUNNER: {"__opts__": {"conf_file": "/etc/salt/master"}, "__context__": {}}}


def status_row(minion, cluster, leader, holder, **more):
    """A row as kcm.status returns it on a master (a one-element list)."""
    row = {
        "minion": minion,
        "cluster": cluster["cluster"],
        "cluster_id": cluster["cluster_id"],
        "version": "v1.37.2",
        "service_active": "active",
        "healthy": True,
        "leader": leader,
        "holder": holder,
        "lease_age_seconds": 1.2,
        "cert_days_left": 300,
        "errors": "",
    }
    row.update(more)
    return [row]


FLEET_MASTERS = ["a-*", "b-*", "c-*", "salt-master-host"]


def accept_key(pki, minion):
    (pki / "minions").mkdir(parents=True, exist_ok=True)
    (pki / "minions" / minion).write_bytes(
        minion_key(minion)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@pytest.fixture
def fleet(monkeypatch, tmp_path):
    """The fleet runner; ``answers``: what each minion's kcm.status says (signed by that
    minion on the way unless ``signers`` names another key, or it is a plain string)."""
    runner = FLEET_RUNNER
    asked = []
    answers = {}
    expected = []
    pki = tmp_path / "pki"
    monkeypatch.setattr(
        runner, "__opts__", {"pki_dir": str(pki), "kcm_alert": alert_settings(masters=FLEET_MASTERS)}, raising=False
    )
    monkeypatch.setattr(runner, "__utils__", utils(), raising=False)
    for minion in ("a-1", "a-2", "a-3", "b-1", "b-2", "b-3", "c-1", "salt-master-host", "web-7"):
        accept_key(pki, minion)  # the keys this master accepted

    def ask(tgt, tgt_type, timeout, nonce):
        asked.append((tgt, tgt_type, timeout))
        out = {}
        for minion, answer in answers.items():
            out[minion] = (
                answer
                if isinstance(answer, str)
                else signed_answer(minion, nonce, time.time(), signer=runner.signers.get(minion), status=answer)
            )
        return out

    monkeypatch.setattr(runner, "signers", {}, raising=False)

    monkeypatch.setattr(runner, "_ask", ask)
    monkeypatch.setattr(runner, "_expected", lambda tgt, tgt_type: list(expected))
    return runner, answers, expected, asked


def test_fleet_table_flags_the_cluster_without_a_leader(fleet):
    runner, answers, expected, asked = fleet
    lost = {"cluster": "kubernetes", "cluster_id": B["cluster_id"]}
    for n in (1, 2, 3):
        answers[f"a-{n}"] = status_row(f"a-{n}", A, "yes" if n == 2 else "no", "a-2_1234")
        answers[f"b-{n}"] = status_row(f"b-{n}", lost, "no", "b-1_5678", healthy=n != 1)
    expected.extend(answers)

    ret = runner.status(tgt="*", timeout=5)

    assert asked == [("*", "glob", 5.0)]  # the masters are asked once
    data = ret["data"]
    assert ret["outputter"] == "kcm_fleet"
    assert [(c["cluster_id"], c["ok"], c["leader"], c["live_leaders"]) for c in data["clusters"]] == [
        (A["cluster_id"], True, "a-2", 1),
        (B["cluster_id"], False, None, 0),
    ]
    assert data["ok"] is False and data["retcode"] == 1  # what salt-run exits with

    table = FLEET_OUTPUT.output(data).splitlines()
    header, rows = table[0], table[1:]
    assert header.split()[:3] == ["CLUSTER", "CLUSTER", "ID"]
    # grouped: a cluster's three rows, then its verdict line
    assert [line.split()[2] for line in rows[0:3]] == ["a-1", "a-2", "a-3"]
    assert rows[3].strip() == f"ok  kubernetes ({A['cluster_id'][:8]}): ok, one live leader: a-2"
    assert [line.split()[2] for line in rows[4:7]] == ["b-1", "b-2", "b-3"]
    assert rows[7].strip() == f"!!  kubernetes ({B['cluster_id'][:8]}): NO LIVE LEADER (the Lease names b-1)"
    assert len(rows) == 8


def test_fleet_view_lists_a_silent_master_and_filters_by_cluster(fleet):
    runner, answers, expected, _ = fleet
    for n in (1, 2):
        answers[f"a-{n}"] = status_row(f"a-{n}", A, "yes" if n == 1 else "no", "a-1_1234")
    answers["c-1"] = status_row("c-1", {"cluster": "staging", "cluster_id": "77aa"}, "yes", "c-1_99")
    expected.extend(["a-1", "a-2", "a-3", "c-1"])

    data = runner.status()["data"]
    silent = [c for c in data["clusters"] if c["cluster"] == "(no answer)"]
    assert [(c["masters"], c["ok"]) for c in silent] == [(1, False)]
    assert [r["errors"] for r in data["masters"] if r["minion"] == "a-3"] == ["no answer within 15 s"]

    only = runner.status(cluster="staging")["data"]
    assert [c["cluster"] for c in only["clusters"]] == ["staging"] and only["ok"] is True
    assert only["retcode"] == 0
    by_id = runner.status(cluster=A["cluster_id"][:8])["data"]
    assert [c["cluster_id"] for c in by_id["clusters"]] == [A["cluster_id"]]


def test_two_live_leaders_in_one_cluster_are_flagged(fleet):
    runner, answers, expected, _ = fleet
    for n in (1, 2):
        answers[f"a-{n}"] = status_row(f"a-{n}", A, "yes", f"a-{n}_1")
    expected.extend(answers)
    (summary,) = runner.status()["data"]["clusters"]
    assert summary["ok"] is False
    assert summary["verdict"].endswith("2 LIVE LEADERS (a-1, a-2)")


def test_a_master_without_the_module_is_a_row_with_the_reason(fleet):
    runner, answers, expected, _ = fleet
    answers["a-1"] = "'kcm.status' is not available."
    expected.append("a-1")
    (row,) = runner.status()["data"]["masters"]
    assert row["errors"] == "'kcm.status' is not available."


# ---------------------------------------------------------------------------------------------
# the alert path at fleet scale: batches


def test_a_batch_of_a_storm_is_one_post_and_still_one_alert_per_cluster(harness):
    clusters = [{"cluster": "kubernetes", "cluster_id": f"uid-{n:03d}"} for n in range(100)]
    events = [
        (f"salt/beacon/{r}/kcm_leader/changed", signed(r, "changed", dict(CHANGE, **c), harness.now))
        for c in clusters
        for r in REPORTERS
    ]
    events.insert(5, ("salt/beacon/master-1/kcm_leader/acquired", {"id": "master-1", **clusters[0]}))

    results = harness.module.handle_batch(events)

    assert len(harness.posts) == 1  # one request to Alertmanager for the whole batch
    assert sorted(a["labels"]["cluster_id"] for a in harness.alerts()) == [c["cluster_id"] for c in clusters]
    assert sum(1 for r in results if r["fired"]) == 100
    assert sum(1 for r in results if r["duplicate"]) == 200
    assert results[5].get("ignored") is True
    assert harness.tags().count("kcm/alert/changed") == 100
    # the same storm again (a re-sent batch) is all replays: refused, nothing posted
    harness.posts.clear()
    again = harness.module.handle_batch(events)
    assert harness.posts == [] and sum(1 for r in again if "a replay" in str(r.get("refused"))) == 300


def test_a_failed_post_of_a_batch_is_retried_by_the_next_report(harness):
    harness.fail_next = 3  # every attempt of the first batch fails

    def reports(reporter):
        return [
            (f"salt/beacon/{reporter}/kcm_leader/changed", signed(reporter, "changed", dict(CHANGE, **c), harness.now))
            for c in (A, B)
        ]

    first = harness.module.handle_batch(reports("master-1"))
    assert all(r["failed"] for r in first) and harness.alerts() == []
    assert harness.tags().count("kcm/alert/send_failed") == 2

    later = harness.module.handle_batch(reports("master-2"))
    # duplicates now: the first batch's alerts were kept in the outbox, and this flush sends them
    assert [r["duplicate"] for r in later] == [True, True]
    assert _names(harness.alerts()) == [("KCMLeaderChanged", A["cluster_id"]), ("KCMLeaderChanged", B["cluster_id"])]


def test_a_forged_report_in_a_batch_is_refused_and_the_rest_acted_on(harness):
    good = ("salt/beacon/master-1/kcm_leader/changed", signed("master-1", "changed", dict(CHANGE, **A), harness.now))
    forged = ("salt/beacon/master-2/kcm_leader/changed", dict(CHANGE, id="master-2", **B))  # no signature
    outsider = ("salt/beacon/web-1/kcm_leader/changed", signed("web-1", "changed", dict(CHANGE, **B), harness.now))

    results = harness.module.handle_batch([forged, good, outsider])

    assert [bool(r.get("refused")) for r in results] == [True, False, True]
    assert "not a KCM master" in results[2]["refused"]
    assert _names(harness.alerts()) == [("KCMLeaderChanged", A["cluster_id"])]
    assert harness.tags().count("kcm/alert/refused") == 2


class Clock:
    def __init__(self):
        self.now = 0.0


def test_engine_batches_close_batch_wait_after_their_first_event():
    engine = ENGINE
    clock = Clock()
    arrivals = [
        (0.05, "salt/beacon/m1/kcm_leader/changed"),
        (0.1, "salt/beacon/m2/kcm_cert/cert_expiring"),
        (0.15, "salt/beacon/m1/other/changed"),
        (0.3, "salt/beacon/m3/kcm_leader/changed"),
        (1.0, "salt/beacon/m1/kcm_leader/stale"),
    ]

    def next_event(timeout):
        if arrivals and arrivals[0][0] <= clock.now + timeout:
            at, tag = arrivals.pop(0)
            clock.now = max(clock.now, at)
            return {"tag": tag, "data": {"id": tag.split("/")[2]}}
        clock.now += timeout
        if not arrivals and clock.now > 5:
            raise StopIteration
        return None

    batches = []
    try:
        for batch in engine._batches(next_event, batch_wait=0.2, max_batch=10, clock=lambda: clock.now):
            batches.append([tag.split("/")[2] for tag, _ in batch])
    except RuntimeError:  # StopIteration inside a generator
        pass
    # kcm_cert's events ride with kcm_leader's (one alert path); another beacon's event is not
    # ours; 0.3 s is past the first batch's 0.2 s
    assert batches == [["m1", "m2"], ["m3"], ["m1"]]


def test_engine_closes_a_batch_at_max_batch():
    engine = ENGINE
    events = iter([{"tag": f"salt/beacon/m{n}/kcm_leader/changed", "data": {}} for n in range(7)])
    gen = engine._batches(lambda timeout: next(events), batch_wait=60, max_batch=3, clock=lambda: 0.0)
    assert [len(next(gen)), len(next(gen))] == [3, 3]


def test_engine_hands_a_failed_batch_over_again_and_never_stops(monkeypatch):
    engine = ENGINE
    calls = []

    def handle_batch(batch):
        calls.append(list(batch))
        if len(calls) < 2:
            raise OSError("No space left on device")

    # Engines get __runners__, which the loader mock does not know.
    monkeypatch.setattr(engine, "__runners__", {"kcm_alert.handle_batch": handle_batch}, raising=False)
    batch = [("salt/beacon/m1/kcm_leader/changed", {"id": "m1"})]
    assert engine._handle(batch, sleep=lambda s: None) is True
    assert calls == [batch, batch]

    monkeypatch.setattr(engine, "__runners__", {"kcm_alert.handle_batch": lambda b: 1 / 0})
    assert engine._handle(batch, sleep=lambda s: None) is False  # logged, and the engine goes on


def test_minions_without_kcm_are_listed_but_do_not_fail_the_view(fleet):
    runner, answers, expected, _ = fleet
    answers["a-1"] = status_row("a-1", A, "yes", "a-1_1")
    answers["salt-master-host"] = [
        {
            "minion": "salt-master-host",
            "cluster": None,
            "cluster_id": None,
            "leader": "unknown",
            "errors": "leader: not_deployed",
        }
    ]
    expected.extend(answers)
    data = runner.status()["data"]
    assert [(c["cluster"], c["ok"]) for c in data["clusters"]] == [("(no cluster)", True), ("kubernetes", True)]
    assert data["retcode"] == 0


@pytest.mark.parametrize(
    "master, message",
    [
        ({"batch_wait": 0}, "kcm:master:batch_wait: 0 is not seconds in (0, 5], such as 0.2"),
        ({"batch_wait": 30}, "kcm:master:batch_wait: 30 is not seconds in (0, 5], such as 0.2"),
        ({"batch_wait": "0.2"}, "kcm:master:batch_wait: '0.2' is not a number"),
    ],
)
def test_the_alert_path_settings_are_validated_naming_the_key(kcm_config, master, message):
    settings = dict({"config_dir": "/etc/salt/master.d", "masters": "master-*"}, **master)
    problems = kcm_config.master_problems(settings)
    assert any(p.startswith(message) for p in problems), problems


def test_the_default_alert_path_settings_are_valid(kcm_config):
    from pathlib import Path

    import yaml

    defaults = yaml.safe_load((Path(__file__).resolve().parents[2] / "formula/kcm/defaults.yaml").read_text())
    # Valid but for the one setting without a default: who the KCM masters are (by minion id).
    assert kcm_config.master_problems(defaults["kcm"]["master"]) == [
        "kcm:master:masters: required (a minion id glob such as master-*, a list of ids or N@<nodegroup of ids>):"
        " the KCM masters by minion id"
    ]
    assert kcm_config.master_problems(dict(defaults["kcm"]["master"], masters="master-*")) == []


def test_unreachable_reported_by_three_masters_in_one_batch_is_one_alert_and_one_event(harness):
    # An apiserver outage: every master's beacon says so within the same batch_wait.
    events = [
        (f"salt/beacon/{r}/kcm_leader/unreachable", signed(r, "unreachable", dict(A, reason="refused"), harness.now))
        for r in REPORTERS
    ]

    results = harness.module.handle_batch(events)

    assert [bool(r["fired"]) for r in results] == [True, False, False]
    assert harness.tags().count("kcm/alert/unreachable") == 1
    assert [a["labels"]["alertname"] for a in harness.alerts()] == ["KCMApiserverUnreachable"]
    # every reporter is remembered: the alert resolves only when the last one recovers
    for reporter in REPORTERS[:-1]:
        assert (
            harness.module.handle_batch(
                [
                    (
                        f"salt/beacon/{reporter}/kcm_leader/recovered",
                        signed(reporter, "recovered", dict(A, condition="unreachable"), harness.now),
                    )
                ]
            )[0]["resolved"]
            == []
        )
    last = REPORTERS[-1]
    [done] = harness.module.handle_batch(
        [
            (
                f"salt/beacon/{last}/kcm_leader/recovered",
                signed(last, "recovered", dict(A, condition="unreachable"), harness.now),
            )
        ]
    )
    assert len(done["resolved"]) == 1


# --------------------------------------------------------------------------
# M5: the fleet view believes no row
# --------------------------------------------------------------------------


def test_m5_a_row_from_a_minion_that_is_no_kcm_master_neither_counts_nor_reaches_the_terminal(fleet):
    runner, answers, expected, _ = fleet
    lost = {"cluster": "kubernetes", "cluster_id": A["cluster_id"]}
    for n in (1, 2, 3):
        answers[f"a-{n}"] = status_row(f"a-{n}", lost, "no", "a-1_1")
    # web-7 answers as "a-3, the live leader"; a-2's row claims to be a-3's
    answers["web-7"] = status_row("a-3", lost, "yes", "a-3_1", version="\x1b]0;owned\x07v1")
    answers["a-2"] = status_row("a-3", lost, "yes", "a-3_1")
    runner.signers["a-2"] = "a-2"
    expected.extend(answers)

    ret = runner.status(tgt="*", timeout=5)
    data = ret["data"]
    group = next(c for c in data["clusters"] if c["cluster"] == "kubernetes")
    assert group["live_leaders"] == 1 and group["leader"] == "a-2"  # a-2's row, under its own id
    assert [r["minion"] for r in data["masters"] if r["cluster"] == "(refused)"] == ["web-7"]
    table = FLEET_OUTPUT.output(data)
    assert "\x1b" not in table and "\x07" not in table


def test_m5_a_row_signed_by_another_key_is_refused(fleet):
    runner, answers, expected, _ = fleet
    answers["a-1"] = status_row("a-1", A, "yes", "a-1_1")
    runner.signers["a-1"] = "web-7"  # web-7 put a return of a-1 on the bus (L11)
    expected.extend(answers)
    data = runner.status(tgt="*", timeout=5)["data"]
    assert [(r["minion"], r["cluster"]) for r in data["masters"]] == [("a-1", "(refused)")]
    assert data["clusters"][0]["live_leaders"] == 0


def test_m5_the_view_fails_when_a_cluster_has_no_live_leader_whatever_a_spoofer_says(fleet):
    runner, answers, expected, _ = fleet
    for n in (1, 2, 3):
        answers[f"a-{n}"] = status_row(f"a-{n}", A, "no", "a-1_1")
    answers["web-7"] = status_row("a-3", A, "yes", "a-3_1")
    expected.extend(answers)
    ret = runner.status(tgt="*", timeout=5)
    assert ret["data"]["retcode"] == 1 and "NO LIVE LEADER" in FLEET_OUTPUT.output(ret["data"])
