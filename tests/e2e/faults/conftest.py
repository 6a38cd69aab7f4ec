"""The faults real clusters have, on the lab: a real salt-master (two for the multi-master
case) running the formula's ``kcm_alert`` engine and runner, Debian's Alertmanager on the host,
real etcd and kube-apiserver, three KCMs under systemd on systemd machines (``state.apply kcm``
over the bus), the ``kcm_leader`` beacon on each, short leader election (``FAULTS_ELECTION``, 4s/3s/1s).

One lab serves the module; ``fault`` puts it back together before each test (every link up,
every daemon up, Alertmanager restarted empty, so that what a test sees in it is its own
incident); a machine powered off stays gone, as a dead master does, and the tests after it
run on the masters left (the power-off tests come last). The end of the module checks that
nothing is left on the host (``kcmlab.machines.leftovers``), failed or not.

``AlertWatch`` (kcmlab.alertmanager) polls Alertmanager's API through the whole test: an alert is one
(fingerprint, startsAt) pair, so a condition that fires, resolves and fires again counts
twice, and one that two Salt masters post with identical labels counts once.
Each test prints one line ``FAULT <name> leader_after=<s> fired=<n> resolved=<n> lost=<n>``
(``lost``: incidents that never reached Alertmanager); the summary collects them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from kcmlab.alertmanager import Alertmanager, AlertWatch
from kcmlab.cluster import _election
from kcmlab.controlplane import wait_until
from kcmlab.machines import leftovers
from kcmlab.masterless import kcm_master_config
from kcmlab.saltmaster import EventRecorder
from tests.e2e.alerts.conftest import BEACON, BEACON_STATE, WAIT, settled
from tests.e2e.conftest import LOG_FILES, start_lab_cluster, stop_lab_cluster

# The faults module keeps the 4s/3s/1s it was proven with (KCM_FAULTS_ELECTION overrides it).
# At the shared clusters' 8s/6s/1s the whole module measured 7 of 7 at 4s/3s/1s (6 min) but
# its last test failed twice in a row (11 min): after the six faults before it, no
# KCMApiserverUnreachable opened within 270 s although every minion reported unreachable;
# that test passes alone at 8s/6s/1s. An open finding, not explained yet (closing note of
# the session that set this).
FAULTS_ELECTION = _election(os.environ.get("KCM_FAULTS_ELECTION", "4s/3s/1s"))

REPO = Path(__file__).resolve().parents[3]
SUITE = "e2e-faults"
# The master-side schedules of the delivery (issue 17): short, so that a test waits seconds.
DELIVERY = {"reconcile_interval": 5, "flush_interval": 2}
# Condition alerts: open until resolved; KCMLeaderChanged is an event and stays for event_ttl.
CONDITIONS = ("KCMNoLeader", "KCMLeaderStale", "KCMApiserverUnreachable")
FAULTS: list[str] = []


def delivery_pillar() -> dict:
    """The ``kcm:master`` delivery settings; each must be one this checkout's ``kcm.master``
    knows (its defaults list them): one it does not know is a missing part, and fails."""
    known = yaml.safe_load((REPO / "formula" / "kcm" / "defaults.yaml").read_text())["kcm"]["master"]
    unknown = sorted(set(DELIVERY) - set(known))
    if unknown:
        pytest.fail(
            f"kcm:master has no {unknown} in formula/kcm/defaults.yaml: the delivery schedule "
            "the fault tests rely on is missing",
            pytrace=False,
        )
    return dict(DELIVERY)


def report_fault(
    name: str, leader_after: float | None, watch: AlertWatch, lost: int, window=(0.0, float("inf")), **extra
) -> str:
    """Print (and keep for the summary) the one line of a fault's timings and alerts (those
    first seen within ``window``)."""
    fired, resolved = watch.counts(window)
    after = "none" if leader_after is None else f"{leader_after:.1f}"
    line = f"FAULT {name} leader_after={after} fired={fired} resolved={resolved} lost={lost}"
    line += " alerts=" + (",".join(f"{n}:{c}" for n, c in sorted(watch.by_name(window).items())) or "none")
    line += "".join(f" {key}={value}" for key, value in extra.items())
    print(line)
    FAULTS.append(line)
    return line


def beacon_state(cluster, name: str) -> dict:
    """What the beacon on ``name`` last recorded (read inside the machine, network or not)."""
    return json.loads(cluster.machine(name).read_file(BEACON_STATE))


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    am = Alertmanager(tmp_path_factory.mktemp("alertmanager")).start()
    LOG_FILES.append(am.log_path)
    yield am
    am.stop()


@pytest.fixture(scope="module")
def fault_lab(k8s_bin, alertmanager, tmp_path_factory, request):
    """The lab with the alert path in place; ``cluster.recorders`` records each master's bus."""
    workdir = tmp_path_factory.mktemp("lab-faults")
    conf = kcm_master_config(
        workdir / "master-host",
        {
            "alertmanager_urls": [alertmanager.url],
            "allow_http": True,
            "labels": {"env": "e2e"},
            "masters": "master-*",
            **delivery_pillar(),
            # A test waits fractions of a second for a retry, not seconds.
            "receiver_backoff": 0.2,
        },
    )
    cluster, names = None, ()
    try:
        cluster = start_lab_cluster(
            k8s_bin,
            workdir,
            "faults",
            suite=SUITE,
            election=FAULTS_ELECTION,
            kcm={"beacon": dict(BEACON, cert_thresholds=[])},
            master_config=conf,
        )
        names = cluster.all_names
        cluster.recorders = {cluster.master.id: EventRecorder(cluster.master).start()}
        cluster.events = cluster.recorders[cluster.master.id]
        cluster.apply("kcm.beacon")
        for name in cluster.nodes:
            wait_until(
                lambda n=name: cluster.machine(n).run(["test", "-s", BEACON_STATE], check=False).returncode == 0,
                WAIT,
                f"{name}: the first beacon poll",
            )
        yield cluster
    finally:
        if cluster is not None:
            for recorder in getattr(cluster, "recorders", {}).values():
                recorder.stop()
            stop_lab_cluster(cluster, request)
        left = leftovers(SUITE, names)
        assert left == [], f"the faults lab left {left}"


def restore(cluster, alertmanager) -> None:
    """Whatever the last fault took down, up again, but a machine powered off: it leaves the
    lab's masters; Alertmanager restarted (it keeps no alerts across a restart), so the next
    test starts with none."""
    cp = cluster.cp
    for daemon in (cp.etcd, cp.apiserver):
        if not daemon.running:
            daemon.start()
    wait_until(lambda: cp.request("GET", "/readyz", timeout=3).ok, WAIT, "kube-apiserver ready")
    for master in cluster.masters:
        if not master.running:
            master.start()
            cluster.recorders[master.id].stop()
            cluster.recorders[master.id].start()
    alertmanager.stop()
    alertmanager.start()
    cluster.nodes = tuple(name for name in cluster.nodes if cluster.machine(name).running)
    for name in cluster.nodes:
        cluster.machine(name).restore_link()
    for master in cluster.masters:
        master.wait_for_minions(cluster.nodes)


@pytest.fixture
def fault(fault_lab, alertmanager):
    """The lab whole and quiet, a renewing leader, an empty Alertmanager, and an
    ``AlertWatch`` on it (``fault.watch``) for the test's incident."""
    restore(fault_lab, alertmanager)
    settled(fault_lab, quiet=3)
    fault_lab.watch = AlertWatch(alertmanager.url).start()
    try:
        yield fault_lab
    finally:
        fault_lab.watch.stop()


def pytest_terminal_summary(terminalreporter):
    if FAULTS:
        terminalreporter.section("kcm faults (time to a live leader, alerts fired / resolved, incidents lost)")
        for line in FAULTS:
            terminalreporter.write_line(line)
