"""Planned changes do not page (issue #27, item 2), on the alerts lab (the orchestration lab
has no alert path): ``orch.kcm.drill`` and ``orch.kcm.upgrade`` run by the lab's real
salt-master against its three systemd machines, their leader changes reported by the real
beacons, decided by the engine and runner, and posted to the real Alertmanager.

A leader change away from the master a step restarts is ``planned="true"``, severity info;
a KCM killed on another master during the upgrade's leader step pages as a crash does.
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
    return [alert["labels"] for _, tag, data in events(cluster, "kcm/alert/*", since)
            if data.get("action") == "fire" and data.get("kind") in LEADER_KINDS and tag != "kcm/alert/send_failed"
            for alert in data["alerts"] if alertname in (None, alert["labels"]["alertname"])]


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


def test_an_upgrade_pages_only_for_a_crash_of_another_master_during_it(alert_cluster, alertmanager,
                                                                        record_timing):
    old = settled(alert_cluster)
    alert_cluster.change_pillar(verbosity=3)  # a change that restarts every KCM, one at a time
    since = time.time()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        upgrade = pool.submit(orchestrate, alert_cluster, "orch.kcm.upgrade")

        def moved():
            node = alert_cluster.cp.leader()
            if node and node != old:
                return node
            assert not upgrade.done(), f"the upgrade ended, the leader still {old}: {upgrade.result()}"
            return None

        # The upgrade's last step restarts the leader: the Lease moves off it (planned) ...
        new = wait_until(moved, ORCH_TIMEOUT, f"the Lease moving off {old}", interval=0.1)
        # ... and the master that took over crashes while that step still runs: not planned.
        alert_cluster.kill(new)
        states = upgrade.result(timeout=ORCH_TIMEOUT)
    record_timing("planned: orch.kcm.upgrade with a crash, alerts lab", time.time() - since)

    summary = runner_return(states["kcm-orch-upgrade-rolling"])
    assert summary["leader_before"] == old and summary["order"][-1] == old, summary

    def both_decided():
        found = fired(alert_cluster, since, "KCMLeaderChanged")
        return found if len(found) >= 2 else None

    planned, crash = wait_until(both_decided, WAIT, "the planned change and the crash's decided")
    assert (planned["old_node"], planned["new_node"], planned.get("planned"), planned["severity"]) == \
        (old, new, "true", "info"), planned
    assert (crash["old_node"], crash.get("planned"), crash["severity"]) == (new, None, "warning"), crash
    in_alertmanager(alertmanager, planned)
    in_alertmanager(alertmanager, crash)
    # The crash pages once: its leader change, and at most the dead leader called stale (its
    # beacons' early warning before the Lease expired, as for any crash); nothing else.
    paged = [label for label in fired(alert_cluster, since) if label["severity"] in PAGES and label != crash]
    assert len(paged) <= 1 and all(label["alertname"] == "KCMLeaderStale" and label["node"] == new
                                   for label in paged), paged
