"""The alert path on the lab, all real: the kcm_leader beacon of three systemd machines'
salt-minions (``kcm.beacon`` applied over the bus, KCM run by systemd), the kcm_alert engine
(the only alert path) and the kcm_alert runner of a salt-master configured by the formula's
own ``kcm.master``, and Debian's prometheus-alertmanager on the host, where the runner posts.

The KCM masters are named by minion id (``kcm:master:masters: master-*``), and the beacon
signs every report with its minion's key: the runner checks both before it alerts.
"""

from __future__ import annotations

import time

import pytest

from kcmlab.alertmanager import Alertmanager
from kcmlab.cluster import BEACON, BEACON_STATE, SHORT_ELECTION
from kcmlab.controlplane import wait_until
from kcmlab.masterless import kcm_master_config
from kcmlab.saltmaster import EventRecorder
from tests.e2e.conftest import LOG_FILES, start_lab_cluster, stop_lab_cluster

# healthy_for: 10 s of healthy /healthz end a crash loop (60 s by default), so its test waits less.
# Every wait is an upper bound for something that must happen, never a speed claim.
WAIT = 90


@pytest.fixture(scope="package")
def alertmanager(tmp_path_factory):
    yield from running_alertmanager(tmp_path_factory)


def running_alertmanager(tmp_path_factory, name: str = "alertmanager"):
    """Debian's Alertmanager started, its log listed on failure; yields it and stops it."""
    am = Alertmanager(tmp_path_factory.mktemp(name)).start()
    LOG_FILES.append(am.log_path)
    yield am
    am.stop()


@pytest.fixture(scope="package")
def alert_cluster(k8s_bin, alertmanager, tmp_path_factory, request):
    """The lab with the alert path in place; ``cluster.events`` records the master's bus."""
    yield from alert_lab(
        k8s_bin, alertmanager, tmp_path_factory.mktemp("lab-alerts"), request, "alerts", suite="e2e-alerts"
    )


def alert_lab(k8s_bin, alertmanager, workdir, request, label, **lab):
    """A lab cluster (``lab``: LabCluster's keywords) whose salt-master alerts ``alertmanager``,
    every beacon polling; yields it and removes it (a fixture's body)."""
    conf = kcm_master_config(
        workdir / "master-host",
        {
            "alertmanager_urls": [alertmanager.url],
            "allow_http": True,
            "labels": {"env": "e2e"},
            "masters": "master-*",
            # A test waits fractions of a second for a retry, not seconds.
            "receiver_backoff": 0.2,
            # Each forgery's refusal on the bus (test_intruder), not once per sender per minute as in production.
            "refusal_log_interval": 1,
        },
    )
    assert conf["engines"] == [{"kcm_alert": {"batch_wait": 0.2, "max_batch": 500}}] and "reactor" not in conf, conf
    assert conf["kcm_alert"]["masters"] == "master-*", conf
    cluster = start_lab_cluster(
        k8s_bin, workdir, label, election=SHORT_ELECTION, kcm={"beacon": BEACON}, master_config=conf, **lab
    )
    cluster.events = EventRecorder(cluster.master).start()
    try:
        cluster.apply("kcm.beacon")
        for name in cluster.nodes:
            machine = cluster.machine(name)
            wait_until(
                lambda m=machine: m.run(["test", "-s", BEACON_STATE], check=False).returncode == 0,
                WAIT,
                f"{name}: the first beacon poll",
            )
        yield cluster
    finally:
        cluster.events.stop()
        stop_lab_cluster(cluster, request)


def events(cluster, pattern: str, since: float) -> list[tuple[float, str, dict]]:
    """Events on the master's bus matching ``pattern`` since ``since``, oldest first."""
    return cluster.events.find(pattern, since)


def wait_events(cluster, pattern: str, since: float, count: int, what: str):
    def enough():
        found = events(cluster, pattern, since)
        return found if len(found) >= count else None

    return wait_until(enough, WAIT, what, interval=0.5)


def handled(cluster, kind: str, since: float):
    """The runner's follow-ups to beacon reports of ``kind`` (sent or duplicate)."""
    return [
        e
        for e in events(cluster, "kcm/alert/*", since)
        if e[2].get("kind") == kind and e[1] in (f"kcm/alert/{kind}", "kcm/alert/duplicate")
    ]


def wait_all_handled(cluster, kind: str, since: float, reporters: int = 3):
    return wait_until(
        lambda: len(handled(cluster, kind, since)) >= reporters or None,
        WAIT,
        f"the runner handling {reporters} '{kind}' reports",
        interval=0.5,
    )


def settled(cluster, quiet: float = 5.0) -> str:
    """Every KCM running, ``quiet`` seconds without beacon reports (the previous scenario is
    over) and a leader that renews (not the record of a dead process); returns its node."""
    cluster.ensure_running()
    time.sleep(quiet)
    wait_until(
        lambda: not events(cluster, "salt/beacon/*/kcm_leader/*", time.time() - quiet),
        WAIT,
        f"{quiet:g}s without kcm_leader beacon events",
        interval=1,
    )
    return cluster.renewing_leader(WAIT)


def failover_alerted_once(cluster, alertmanager, old, since):
    """The new leader, after the three minions' reports of old -> new gave one alert."""
    new = cluster.wait_for_leader(WAIT, exclude=(old,))
    reports = wait_events(
        cluster, "salt/beacon/*/kcm_leader/changed", since, len(cluster.nodes), "a 'changed' report from every minion"
    )
    assert sorted(e[2]["id"] for e in reports) == sorted(cluster.nodes)
    assert {(e[2]["old_node"], e[2]["new_node"]) for e in reports} == {(old, new)}
    assert all(e[2].get("sig") for e in reports), "every report is signed by its minion"
    wait_all_handled(cluster, "changed", since, len(cluster.nodes))
    sent = events(cluster, "kcm/alert/changed", since)
    assert len(sent) == 1, [e[2] for e in sent]
    # This failover's own alert: an earlier one between the same nodes is another alert.
    transitions = str(reports[0][2]["transitions"])
    alerts = wait_until(
        lambda: alertmanager.active(alertname="KCMLeaderChanged", old_node=old, new_node=new, transitions=transitions),
        WAIT,
        "KCMLeaderChanged in Alertmanager",
    )
    assert len(alerts) == 1, alerts
    assert alerts[0]["labels"]["cluster"] and alerts[0]["labels"]["env"] == "e2e"
    assert f"from {old} to {new}" in alerts[0]["annotations"]["summary"]
    assert events(cluster, "kcm/alert/refused", since) == []
    return new, reports
