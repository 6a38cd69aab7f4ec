"""
Delivery that survives outages, on real daemons: a salt-master configured by kcm.master (the
kcm_alert engine, its schedule flushing the outbox every 2 s), Debian's prometheus-alertmanager,
a real etcd + kube-apiserver holding the Lease, and two real salt-minions as the KCM masters,
whose own kcm.leader / kcm.status read that Lease when the reconcile asks them.

No KCM runs: the test writes the Lease as a KCM would (holder, leaseTransitions), so it
decides when a transition happens and that its event is lost; the events it does send are
the kcm_leader beacon's own (kcmlab/fleet.py), signed with the minion's key.

Last, an open condition survives an Alertmanager restart: the schedule's flush re-sends it
within one resend interval (issue #27, item 4). It stays open to the end of the module.
"""

import datetime
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from kcmlab.alertmanager import Alertmanager
from kcmlab.controlplane import LEASE_PATH, ControlPlane, wait_until
from kcmlab.fleet import BeaconStandIn, failover_events, kcm_master_conf, new_cluster_id
from tests.support.bus import bus_marker
from tests.support.pillar import REPO

pytestmark = [pytest.mark.integration]

MASTERS = ("dl-master-1", "dl-master-2")
CLUSTER = "dl-prod"
WAIT = 60
# The schedule's flush runs every FLUSH s and re-sends an open condition every RESEND s.
FLUSH, RESEND = 2, 3


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory):
    proc = subprocess.run([str(REPO / "scripts" / "k8s-binaries")], stdout=subprocess.PIPE, text=True, check=True)
    cp = ControlPlane(Path(proc.stdout.strip()), tmp_path_factory.mktemp("dl-cp")).start()
    yield cp
    cp.stop()


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    am = Alertmanager(tmp_path_factory.mktemp("dl-am")).start()
    yield am
    am.stop()


@pytest.fixture(scope="module")
def salt_master(salt_factories, alertmanager, tmp_path_factory):
    conf = kcm_master_conf(
        tmp_path_factory.mktemp("dl-host"),
        alertmanager.url,
        {"env": "it"},
        allow_http=True,
        flush_interval=FLUSH,
        resend_interval=RESEND,
        reconcile_interval=3600,
        runbook_url="https://wiki.example.com/kcm/runbook",
        masters=list(MASTERS),
    )
    assert conf["schedule"]["kcm_alert_flush"] == {"function": "kcm_alert.flush", "seconds": FLUSH, "maxrunning": 1}
    assert (conf["kcm_alert"]["resend_interval"], conf["kcm_alert"]["runbook_url"]) == (
        RESEND,
        "https://wiki.example.com/kcm/runbook",
    )
    assert conf["schedule"]["kcm_alert_reconcile"]["run_on_start"] is True
    master = salt_factories.salt_master_daemon(
        "kcm-delivery-master",
        overrides=dict(conf, file_roots={"base": [str(REPO / "formula")]}, engines_dirs=[str(REPO / "_engines")]),
    )
    with master.started(start_timeout=120):
        ret = master.salt_run_cli(timeout=120).run("saltutil.sync_all")  # what kcm.master's sync does
        assert "utils.kcm_outbox" in json.dumps(ret.data) and "runners.kcm_alert" in json.dumps(ret.data), ret
        yield master


@pytest.fixture(scope="module")
def kcm_masters(salt_master, control_plane):
    """The two minions, deployed as the formula leaves a master: kcm.* read this cluster with
    KCM's own credentials (CN system:kube-controller-manager, no group: through the real
    apiserver's RBAC, as on a master)."""
    factories = [salt_master.salt_minion_daemon(mid) for mid in MASTERS]
    kcm_kubeconfig = control_plane.write_kubeconfig(
        control_plane.workdir / "kcm.kubeconfig", cn="system:kube-controller-manager", groups=()
    )
    started = []
    try:
        for factory in factories:
            factory.start(start_timeout=120)
            started.append(factory)
            deployed = Path(factory.config["cachedir"]) / "kcm" / "deployed.json"
            deployed.parent.mkdir(parents=True, exist_ok=True)
            deployed.write_text(json.dumps({"cluster": CLUSTER, "files": {"kubeconfig": str(kcm_kubeconfig)}}))
        ret = salt_master.salt_cli(timeout=120).run("saltutil.sync_all", minion_tgt="dl-master-*")
        assert ret.returncode == 0, ret
        yield factories
    finally:
        for factory in started:
            factory.terminate()


@pytest.fixture(scope="module")
def beacon(kcm_masters):
    bus = BeaconStandIn(kcm_masters[0].config)
    yield bus
    bus.close()


def _holder(node):
    # the identity kcmlab/fleet.py gives a node's KCM, so the beacon's events name it
    return f"{node}_{uuid.uuid5(uuid.NAMESPACE_DNS, node)}"


def _micro(moment):
    return datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_lease(cp, node, transitions):
    """Take the Lease for ``node`` as its KCM would on acquiring it."""
    now = time.time()
    spec = {
        "holderIdentity": _holder(node),
        "leaseDurationSeconds": 15,
        "acquireTime": _micro(now),
        "renewTime": _micro(now),
        "leaseTransitions": transitions,
    }
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "kube-controller-manager", "namespace": "kube-system"},
        "spec": spec,
    }
    current = cp.lease()
    if current:
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        reply = cp.request("PUT", LEASE_PATH, json=body)
    else:
        reply = cp.request("POST", LEASE_PATH.rsplit("/", 1)[0], json=body)
    reply.raise_for_status()


def _events(listener, master, tag, since, cluster_id):
    found = listener.get_events([(master.id, tag)], after_time=since)
    return [e for e in found if cluster_id in json.dumps(e.data)]


def _wait_events(listener, master, tag, since, cluster_id, count=1):
    return wait_until(
        lambda: (lambda f: f if len(f) >= count else None)(_events(listener, master, tag, since, cluster_id)),
        WAIT,
        f"{count} '{tag}' for {cluster_id}",
        interval=0.5,
    )


def test_a_failover_while_alertmanager_is_down_arrives_once_when_it_is_back(
    salt_master, kcm_masters, beacon, alertmanager, event_listener
):
    cluster_id, since = new_cluster_id(), time.time()
    alertmanager.stop()
    beacon.fire(failover_events(CLUSTER, cluster_id, old="dl-master-1", new="dl-master-2", transitions=7))
    (failed,) = _wait_events(event_listener, salt_master, "kcm/alert/send_failed", since, cluster_id)
    assert failed.data["alerts"][0]["labels"]["alertname"] == "KCMLeaderChanged"
    flush = salt_master.salt_run_cli(timeout=60)
    for _ in range(2):  # two more flushes, each refused (the outbox keeps the alert) ...
        assert set(flush.run("kcm_alert.flush").data) == {"delivered", "pending", "expired"}
    bus_marker(salt_master, event_listener)  # ... and what they told is on the bus by now
    assert len(_events(event_listener, salt_master, "kcm/alert/send_failed", since, cluster_id)) == 1

    alertmanager.daemon.start()  # the same port and storage
    alerts = wait_until(
        lambda: alertmanager.active(alertname="KCMLeaderChanged", cluster_id=cluster_id) or None,
        WAIT,
        "the kept alert in Alertmanager (the schedule's flush)",
        interval=0.5,
    )
    (delivered,) = _wait_events(event_listener, salt_master, "kcm/alert/delivered", since, cluster_id)
    assert [a["labels"] for a in delivered.data["alerts"]] == [alerts[0]["labels"]]
    assert alerts[0]["labels"]["new_node"] == "dl-master-2" and alerts[0]["labels"]["env"] == "it"
    # a later flush has nothing left to post
    assert set(salt_master.salt_run_cli(timeout=60).run("kcm_alert.flush").data) == {"delivered", "pending", "expired"}
    bus_marker(salt_master, event_listener)
    assert len(alertmanager.active(alertname="KCMLeaderChanged", cluster_id=cluster_id)) == 1
    assert len(_events(event_listener, salt_master, "kcm/alert/delivered", since, cluster_id)) == 1
    assert salt_master.salt_run_cli(timeout=60).run("kcm_alert.flush").data == {
        "delivered": 0,
        "pending": 0,
        "expired": 0,
    }


def test_a_transition_whose_event_was_lost_is_raised_by_the_reconcile_once(
    salt_master, kcm_masters, beacon, alertmanager, control_plane, event_listener
):
    cluster_id = control_plane.get_json("/api/v1/namespaces/kube-system")["metadata"]["uid"]
    key = f"{CLUSTER}#{cluster_id}"
    run = salt_master.salt_run_cli(timeout=120)
    write_lease(control_plane, "dl-master-1", 3)
    first = run.run("kcm_alert.reconcile").data
    assert first["asked"] == list(MASTERS) and first["answered"] == list(MASTERS), first
    assert first["clusters"] == {key: "baseline"}, first

    write_lease(control_plane, "dl-master-2", 4)  # a failover whose event nobody sends
    second = run.run("kcm_alert.reconcile").data
    assert second["clusters"] == {key: "changed"}, second
    (alert,) = wait_until(
        lambda: alertmanager.active(alertname="KCMLeaderChanged", cluster_id=cluster_id) or None,
        WAIT,
        "the reconciled KCMLeaderChanged",
        interval=0.5,
    )
    assert (alert["labels"]["old_node"], alert["labels"]["new_node"]) == ("dl-master-1", "dl-master-2")

    since = time.time()  # now the event a minion held through the outage arrives
    beacon.fire(failover_events(CLUSTER, cluster_id, old="dl-master-1", new="dl-master-2", transitions=4))
    _wait_events(event_listener, salt_master, "kcm/alert/duplicate", since, cluster_id)
    assert run.run("kcm_alert.reconcile").data["clusters"] == {key: "in step"}
    assert not _events(event_listener, salt_master, "kcm/alert/changed", since, cluster_id)
    assert len(alertmanager.active(alertname="KCMLeaderChanged", cluster_id=cluster_id)) == 1


def test_an_open_condition_is_back_within_a_resend_interval_after_alertmanager_restarts(
    salt_master, kcm_masters, beacon, alertmanager
):
    cluster_id = new_cluster_id()
    lost = _micro(time.time() - 30)
    beacon.fire(
        [
            {
                "tag": "no_leader",
                "cluster": CLUSTER,
                "cluster_id": cluster_id,
                "holder": _holder("dl-master-1"),
                "node": "dl-master-1",
                "transitions": 11,
                "renew_time": lost,
                "lease_duration_seconds": 15,
            }
        ]
    )
    (alert,) = wait_until(
        lambda: alertmanager.active(alertname="KCMNoLeader", cluster_id=cluster_id) or None,
        WAIT,
        "KCMNoLeader",
        interval=0.5,
    )
    assert alert["annotations"]["runbook_url"] == "https://wiki.example.com/kcm/runbook#kcmnoleader"
    ends = datetime.datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00")).timestamp()
    assert ends - time.time() <= 4 * RESEND + 1  # it ends by itself unless re-sent

    alertmanager.stop()
    alertmanager.start()  # the same port and storage: the alerts were in its memory only
    restarted = time.monotonic()
    assert alertmanager.active(alertname="KCMNoLeader", cluster_id=cluster_id) == []
    (back,) = wait_until(
        lambda: alertmanager.active(alertname="KCMNoLeader", cluster_id=cluster_id) or None,
        WAIT,
        "the re-sent KCMNoLeader",
        interval=0.2,
    )
    took = time.monotonic() - restarted
    assert (back["labels"], back["startsAt"], back["annotations"]) == (
        alert["labels"],
        alert["startsAt"],
        alert["annotations"],
    )
    # one resend interval, plus the flush that runs it
    assert took <= RESEND + FLUSH + 1, f"back after {took:.1f} s"
