"""Beacon -> kcm_alert engine -> runner -> Alertmanager on the lab: each master reports every
failover, a human gets it once; a released Lease is a handover, not a missing leader."""

from __future__ import annotations

import json
import time

import yaml

from kcmlab.controlplane import wait_until

from .conftest import BEACON, WAIT, events, failover_alerted_once, settled, wait_all_handled, wait_events

CONDITION_KINDS = ("changed", "stale", "no_leader", "unreachable", "recovered", "acquired", "lost")


def test_kill_9_of_the_leader_gives_exactly_one_leader_changed_alert(alert_cluster, alertmanager, record_timing):
    old = settled(alert_cluster)
    since = time.time()
    alert_cluster.kill(old)
    new, reports = failover_alerted_once(alert_cluster, alertmanager, old, since)
    record_timing("alerts: kill -9 of the leader -> KCMLeaderChanged in Alertmanager", time.time() - since)

    # the new leader's minion said 'acquired', the old one's 'lost'
    acquired = wait_events(alert_cluster, "salt/beacon/*/kcm_leader/acquired", since, 1, "acquired")
    lost = wait_events(alert_cluster, "salt/beacon/*/kcm_leader/lost", since, 1, "lost")
    assert [e[2]["id"] for e in acquired] == [new]
    assert [e[2]["id"] for e in lost] == [old]
    own = [e for e in reports if e[2]["id"] == new]
    assert own[0][2]["new_minion"] == new
    # the unit released the Lease on the way out: a handover, never "no leader"
    assert events(alert_cluster, "salt/beacon/*/kcm_leader/no_leader", since) == []
    assert alertmanager.active(alertname="KCMNoLeader") == []


def reports_after(cluster, marker: float) -> dict[str, float]:
    """Kill the leader at ``marker`` (epoch) and wait for every minion's 'changed' report of
    it: each minion's beacon reports in order, so anything it reported before has arrived
    by then. Returns, per minion, when its marker report arrived."""
    cluster.kill(cluster.renewing_leader())
    found = wait_events(
        cluster,
        "salt/beacon/*/kcm_leader/changed",
        marker,
        len(cluster.nodes),
        "every minion's report of the marker failover",
    )
    arrived = {}
    for stamp, _, data in found:
        arrived.setdefault(data["id"], stamp)
    assert sorted(arrived) == sorted(cluster.nodes), found
    return arrived


def test_systemctl_stop_of_the_leader_is_one_alert_and_no_no_leader(alert_cluster, alertmanager):
    old = settled(alert_cluster)
    since = time.time()
    alert_cluster.stop(old)
    failover_alerted_once(alert_cluster, alertmanager, old, since)
    time.sleep(BEACON["stale_after"] + BEACON["debounce"] + 2)  # past the grace of an expired Lease
    reports_after(alert_cluster, time.time())  # a handover too: it may not say no_leader either
    assert events(alert_cluster, "salt/beacon/*/kcm_leader/no_leader", since) == []
    assert events(alert_cluster, "kcm/alert/no_leader", since) == []


def test_no_leader_fires_and_one_kcm_coming_back_resolves_it(alert_cluster, alertmanager):
    settled(alert_cluster)
    since = time.time()
    for name in alert_cluster.nodes:
        alert_cluster.stop(name)
    wait_events(alert_cluster, "kcm/alert/no_leader", since, 1, "KCMNoLeader sent")
    firing = wait_until(lambda: alertmanager.active(alertname="KCMNoLeader"), WAIT, "KCMNoLeader in Alertmanager")
    assert len(firing) == 1, firing

    back = time.time()
    alert_cluster.start_unit("master-2")
    assert alert_cluster.wait_for_leader(WAIT) == "master-2"
    resolved = wait_events(alert_cluster, "kcm/alert/resolved", back, 1, "KCMNoLeader resolved")
    assert any(a["labels"]["alertname"] == "KCMNoLeader" for e in resolved for a in e[2]["alerts"])
    wait_until(lambda: alertmanager.active(alertname="KCMNoLeader") == [], WAIT, "KCMNoLeader gone from Alertmanager")
    assert len(events(alert_cluster, "kcm/alert/no_leader", since)) == 1


def test_apiserver_down_is_one_unreachable_per_minion_and_one_alert(alert_cluster, alertmanager):
    settled(alert_cluster)
    cp = alert_cluster.cp
    since = time.time()
    cp.apiserver.stop()
    try:
        reports = wait_events(
            alert_cluster, "salt/beacon/*/kcm_leader/unreachable", since, 3, "an 'unreachable' report from every minion"
        )
        wait_all_handled(alert_cluster, "unreachable", since)
        assert sorted(e[2]["id"] for e in reports) == sorted(alert_cluster.nodes)
        assert all(e[2]["reason"] for e in reports)
        assert len(events(alert_cluster, "kcm/alert/unreachable", since)) == 1
        assert len(alertmanager.active(alertname="KCMApiserverUnreachable")) == 1
    finally:
        back = time.time()
        cp.apiserver.start()
        wait_until(lambda: cp.request("GET", "/readyz", timeout=5).ok, WAIT, "apiserver back")
    alert_cluster.ensure_running()

    def recovered_from_unreachable():
        found = events(alert_cluster, "salt/beacon/*/kcm_leader/recovered", back)
        return {e[2]["id"] for e in found if e[2]["condition"] == "unreachable"} == set(alert_cluster.nodes)

    wait_until(recovered_from_unreachable, WAIT, "'recovered' (unreachable) from every minion", interval=0.5)
    wait_until(
        lambda: alertmanager.active(alertname="KCMApiserverUnreachable") == [], WAIT, "KCMApiserverUnreachable resolved"
    )

    def resolve_sent():
        found = events(alert_cluster, "kcm/alert/resolved", back)
        return [a for e in found for a in e[2]["alerts"] if a["labels"]["alertname"] == "KCMApiserverUnreachable"]

    assert len(wait_until(resolve_sent, WAIT, "kcm/alert/resolved for KCMApiserverUnreachable", interval=0.5)) == 1
    # unreachable repeats nothing while it lasts: one report per minion in all
    assert len(events(alert_cluster, "salt/beacon/*/kcm_leader/unreachable", since)) == 3


def test_minion_restart_and_pillar_refresh_do_not_alert_again(alert_cluster):
    settled(alert_cluster)
    since = time.time()
    alert_cluster.machine("master-1").systemctl("restart", "salt-minion")
    alert_cluster.master.wait_for_minions(["master-1"])
    refreshed = alert_cluster.salt("saltutil.refresh_pillar", wait=True)
    assert sorted(refreshed) == sorted(alert_cluster.nodes), refreshed
    # several polls of every beacon after the refresh ...
    time.sleep(3 * BEACON["interval"] + BEACON["debounce"] + 3)
    # ... then the next real change, which the restarted minion's beacon reports too: what
    # each minion reported before its report of it is what the restart and refresh caused.
    marker = time.time()
    arrived = reports_after(alert_cluster, marker)
    marked = ("changed", "acquired", "lost")  # what the marker failover itself reports
    repeated = [
        e
        for kind in CONDITION_KINDS
        for e in events(alert_cluster, f"salt/beacon/*/kcm_leader/{kind}", since)
        if e[0] < arrived[e[2]["id"]] and not (kind in marked and e[0] >= marker)
    ]
    assert repeated == [], repeated
    assert [e for e in events(alert_cluster, "kcm/alert/*", since) if e[0] < marker] == []


def test_grains_decide_nothing_and_a_report_in_another_masters_name_is_refused(alert_cluster, alertmanager):
    """H1: a KCM master is one by its id. One master says it is a web server (its grain), and
    still alerts; another puts a report in the leader's name on the bus, which is refused."""
    old = settled(alert_cluster)
    other = next(n for n in alert_cluster.nodes if n != old)
    claims = alert_cluster.salt("grains.setval", "role", "web", target=[other])
    assert claims[other] == {"role": "web"}, claims
    try:
        alert_cluster.salt("saltutil.refresh_pillar", wait=True, target=[other])  # the master's grain cache
        since = time.time()
        forged = {
            "cluster": "kubernetes",
            "transitions": 999,
            "holder": f"{old}_x",
            "node": old,
            "renew_time": "2027-01-15T08:00:00.000000Z",
        }
        alert_cluster.salt("event.send", f"salt/beacon/{old}/kcm_leader/no_leader", json.dumps(forged), target=[other])
        refused = wait_events(alert_cluster, "kcm/alert/refused", since, 1, f"the runner refusing {other}'s forgery")
        assert f"the tag names {old} but the event comes from '{other}'" in refused[0][2]["reason"], refused
        alert_cluster.kill(old)
        new = alert_cluster.wait_for_leader(WAIT, exclude=(old,))
        reports = wait_events(
            alert_cluster, "salt/beacon/*/kcm_leader/changed", since, 3, "a 'changed' report from every minion"
        )
        wait_all_handled(alert_cluster, "changed", since, reporters=3)
        assert len(events(alert_cluster, "kcm/alert/changed", since)) == 1
        assert (
            len(
                alertmanager.active(
                    alertname="KCMLeaderChanged",
                    old_node=old,
                    new_node=new,
                    transitions=str(reports[0][2]["transitions"]),
                )
            )
            == 1
        )
    finally:
        alert_cluster.salt("grains.delkey", "role", target=[other])


def test_bad_beacon_config_is_refused_clearly_and_the_good_beacon_keeps_running(alert_cluster):
    name = "master-3"
    machine = alert_cluster.machine(name)
    worse = json.dumps([{"beacon_module": "kcm_leader"}, {"stale_after": "soon"}])
    ret = alert_cluster.salt("beacons.add", "kcm_worse", worse, target=[name])[name]
    assert ret["result"] is False, ret
    assert "stale_after must be a number of retry periods > 0" in ret["comment"]
    # a broken second instance written into the minion config by hand, then a restart
    bad = "/etc/salt/minion.d/kcm_bad.conf"
    machine.run(
        ["tee", bad], input=yaml.safe_dump({"beacons": {"kcm_bad": [{"beacon_module": "kcm_leader"}, {"debounce": 0}]}})
    )
    try:
        log_from = len(machine.read_file("/var/log/salt/minion"))
        machine.systemctl("restart", "salt-minion")
        alert_cluster.master.wait_for_minions([name])

        def minion_log():
            return machine.read_file("/var/log/salt/minion")[log_from:]

        wait_until(
            lambda: "Beacon kcm_bad configuration invalid, not running" in minion_log(),
            WAIT,
            "the minion reporting the invalid kcm_bad config",
        )
        assert "kcm_leader: debounce must be an integer >= 1" in minion_log()
        # the configured (good) instance on the same minion still reports
        leader = settled(alert_cluster)
        since = time.time()
        alert_cluster.kill(leader)
        wait_events(
            alert_cluster, f"salt/beacon/{name}/kcm_leader/changed", since, 1, f"{name}'s good beacon still reporting"
        )
        assert events(alert_cluster, f"salt/beacon/{name}/kcm_bad/*", since) == []
    finally:
        machine.run(["rm", "-f", bad])
        machine.systemctl("restart", "salt-minion")
        alert_cluster.master.wait_for_minions([name])
