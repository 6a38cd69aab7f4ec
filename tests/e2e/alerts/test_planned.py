"""Planned changes do not page (issue #27, item 2), on the alerts lab (the orchestration lab
has no alert path): ``orch.kcm.drill`` and ``orch.kcm.upgrade`` run by the lab's real
salt-master against its three systemd machines, their leader changes reported by the real
beacons, decided by the engine and runner, and posted to the real Alertmanager.

A leader change away from the master a step restarts is ``planned="true"``, severity info:
an upgrade and a drill page nothing above info; the leader's KCM killed while the upgrade
restarts a follower pages once, as a crash does.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

from kcmlab.controlplane import wait_until
from tests.e2e.orch.cluster import Result
from tests.e2e.orch.harness import runner_return, steps

from .conftest import WAIT, events, settled, wait_all_handled

# What an orchestration may take on a loaded 2-core machine: an upgrade applies kcm three times.
ORCH_TIMEOUT = 900
PAGES = ("warning", "critical")
# The reports of the kcm_leader beacon that raise an alert.
LEADER_KINDS = ("changed", "no_leader", "stale", "unreachable")


def orchestrate(cluster, sls: str) -> dict:
    """``salt-run state.orchestrate sls`` on the lab's salt-master; its states by id."""
    code, data = cluster.master.run("state.orchestrate", sls, timeout=ORCH_TIMEOUT)
    states = steps(Result(code, data, json.dumps(data)[-3000:]))
    assert code == 0, {sid: st["comment"] for sid, st in states.items()}
    return states


def fired(cluster, since: float, alertname: str | None = None) -> list[dict]:
    """The labels of every leader alert this Salt master decided to fire since ``since``,
    oldest first (the re-sends of older alerts give no follow-up event; the lab's 7-day
    certificates have alerts of their own, about no leader)."""
    return [
        alert["labels"]
        for _, tag, data in events(cluster, "kcm/alert/*", since)
        if data.get("action") == "fire" and data.get("kind") in LEADER_KINDS and tag != "kcm/alert/send_failed"
        for alert in data["alerts"]
        if alertname in (None, alert["labels"]["alertname"])
    ]


def in_alertmanager(alertmanager, labels: dict) -> dict:
    """The one alert with exactly these ``labels`` in Alertmanager, once it is there."""
    found = wait_until(lambda: alertmanager.active(**labels), WAIT, f"{labels} in Alertmanager")
    assert [alert["labels"] for alert in found] == [labels], found
    return found[0]


def test_a_drill_pages_nothing_above_info(alert_cluster, alertmanager, record_timing):
    old = settled(alert_cluster)
    since = time.time()

    report = runner_return(orchestrate(alert_cluster, "orch.kcm.drill")["kcm-orch-drill"])
    record_timing("planned: orch.kcm.drill, alerts lab", time.time() - since)

    assert report["stopped"] == [old], report
    wait_all_handled(alert_cluster, "changed", since, len(alert_cluster.nodes))
    (change,) = fired(alert_cluster, since, "KCMLeaderChanged")
    assert (change["old_node"], change["new_node"]) == (old, report["leader_after"]), change
    assert (change.get("planned"), change["severity"]) == ("true", "info"), change
    alert = in_alertmanager(alertmanager, change)
    assert f"Planned: kcm_orch.drill restarted {old}." in alert["annotations"]["description"]
    # The drill returned with every master healthy again, well after any debounced condition.
    assert [label for label in fired(alert_cluster, since) if label["severity"] in PAGES] == []
    assert events(alert_cluster, "salt/beacon/*/kcm_leader/no_leader", since) == []


def upgrade_in_background(cluster, pool):
    """``orch.kcm.upgrade`` of a change that restarts every KCM, one at a time, started."""
    cluster.change_pillar(verbosity=cluster.pillars[cluster.nodes[0]]["kcm"].get("verbosity", 2) + 1)
    return pool.submit(orchestrate, cluster, "orch.kcm.upgrade")


def test_an_upgrade_pages_nothing_above_info(alert_cluster, alertmanager, record_timing):
    old = settled(alert_cluster)
    since = time.time()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        states = upgrade_in_background(alert_cluster, pool).result(timeout=ORCH_TIMEOUT)
    record_timing("planned: orch.kcm.upgrade, alerts lab", time.time() - since)

    summary = runner_return(states["kcm-orch-upgrade-rolling"])
    assert (summary["order"][-1], summary["leader_changes"]) == (old, 1), summary
    # The last step restarts the leader: its Lease leaves the old process (for another master
    # or for its own new process), a change the Salt master planned.
    (change,) = wait_until(
        lambda: fired(alert_cluster, since, "KCMLeaderChanged") or None, WAIT, "the leader step's change decided"
    )
    assert (change["old_node"], change.get("planned"), change["severity"]) == (old, "true", "info"), change
    alert = in_alertmanager(alertmanager, change)
    assert f"Planned: kcm_orch.upgrade restarted {old}." in alert["annotations"]["description"]
    assert [label for label in fired(alert_cluster, since) if label["severity"] in PAGES] == []


def test_a_crash_of_the_leader_while_an_upgrade_restarts_a_follower_pages_once(
    alert_cluster, alertmanager, record_timing
):
    old = settled(alert_cluster)
    followers = [name for name in alert_cluster.nodes if name != old]
    pids = {name: alert_cluster.main_pid(name) for name in followers}
    since = time.time()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        upgrade = upgrade_in_background(alert_cluster, pool)

        def follower_restarted():
            assert not upgrade.done(), f"the upgrade ended before a follower restarted: {upgrade.result()}"
            return [name for name in followers if alert_cluster.main_pid(name) not in (0, pids[name])] or None

        # The upgrade's first step restarts a follower; the leader, which no step is
        # restarting now, crashes: a change away from a master the Salt master did not plan.
        wait_until(follower_restarted, ORCH_TIMEOUT, "the upgrade's first step restarting a follower", interval=0.1)
        alert_cluster.kill(old)
        states = upgrade.result(timeout=ORCH_TIMEOUT)
    record_timing("planned: orch.kcm.upgrade with a crash, alerts lab", time.time() - since)

    summary = runner_return(states["kcm-orch-upgrade-rolling"])
    assert summary["result"] is True and summary["leader_before"] == old, summary
    # One alert per Lease transition of the upgrade's window: the crash's, and the change of a
    # later step that restarted the new leader, if the Lease went to a master not yet done.
    count = summary["leader_changes"]
    assert count in (1, 2), summary

    def decided():
        found = fired(alert_cluster, since, "KCMLeaderChanged")
        return found if len(found) >= count else None

    changes = wait_until(decided, WAIT, f"{count} leader changes decided")
    crash, later = changes[0], changes[1:]
    assert (crash["old_node"], crash.get("planned"), crash["severity"]) == (old, None, "warning"), crash
    in_alertmanager(alertmanager, crash)
    assert all((label.get("planned"), label["severity"]) == ("true", "info") for label in later), later
    # The crash pages once: its leader change, and at most the dead leader called stale (its
    # beacons' early warning, as for any crash); nothing else.
    paged = [label for label in fired(alert_cluster, since) if label["severity"] in PAGES and label != crash]
    assert len(paged) <= 1 and all(
        label["alertname"] == "KCMLeaderStale" and label["node"] == old for label in paged
    ), paged
