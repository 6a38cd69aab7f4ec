"""A fourth master joins on its own: its machine boots, its salt-minion service starts, and the
enrollment reactor on the real salt-master (``kcm.master`` applied with
``kcm:master:enroll: {enabled: true}``) highstates it once, because its minion id is one of
``kcm:master:masters`` (no grain is read).
systemd then runs its KCM, which stands by: the leader and the Lease transitions are
untouched, no alert is sent, and a second highstate changes nothing.

The three masters already in service were deployed with ``state.apply kcm`` by the lab; only
the newcomer is named in ``kcm:master:masters`` here, so only it enrolls (the lab's own apply
and an enrollment highstate of the others would otherwise run at once)."""

from __future__ import annotations

import time

import pytest

from kcmlab.cluster import SHORT_ELECTION, UNIT, changed_states, failed_states
from kcmlab.masterless import kcm_master_config
from tests.e2e.conftest import start_lab_cluster, stop_lab_cluster

pytestmark = pytest.mark.e2e

NEW = "master-4"
# The lab CA lives 7 days: certificate-expiry alerts would be right, but this test is about
# leader alerts, so the beacon checks no certificate.
BEACON = {"cert_thresholds": []}
TOP = """base:
  'master-*':
    - kcm
    - kcm.beacon
"""


def kcm_master_conf(root) -> dict:
    """kcm.master's kcm.conf, rendered by the real state on the master host (salt-call --local)."""
    conf = kcm_master_config(root, {"masters": [NEW], "enroll": {"enabled": True}})
    assert {"salt/minion/*/start": ["salt://reactor/kcm/enroll.sls"]} in conf["reactor"]
    return conf


@pytest.fixture(scope="module")
def enroll_cluster(k8s_bin, tmp_path_factory, request):
    states = tmp_path_factory.mktemp("states")
    (states / "top.sls").write_text(TOP)
    conf = kcm_master_conf(tmp_path_factory.mktemp("master-host"))
    cluster = start_lab_cluster(
        k8s_bin,
        tmp_path_factory.mktemp("lab-enroll"),
        "enroll",
        suite="e2e-enroll",
        election=SHORT_ELECTION,
        kcm={"beacon": BEACON},
        master_config=conf,
        file_roots=[states],
        spares=[NEW],
    )
    try:
        yield cluster
    finally:
        stop_lab_cluster(cluster, request)


def wait_for_event(bus, match, timeout: float, seen: list) -> dict:
    """The data of the first event whose tag satisfies ``match``; every event read goes to ``seen``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = bus.get_event(wait=1, full=True)
        if not event:
            continue
        seen.append(event["tag"])
        if match(event["tag"]):
            return event["data"]
    raise TimeoutError(f"no matching event in {timeout:.0f}s; saw {sorted(set(seen))[:40]}")


def test_a_new_machine_enrolls_by_the_reactor_and_stands_by_under_systemd(enroll_cluster, record_timing):
    cluster = enroll_cluster
    _, _, before, _ = cluster.consistent()
    seen: list[str] = []
    with cluster.master.events() as bus:
        began = time.monotonic()
        cluster.boot(NEW)
        enrolled = wait_for_event(bus, lambda tag: tag == "kcm/enroll/highstate", 120, seen)
        assert enrolled["minion"] == NEW
        ret = wait_for_event(bus, lambda tag: tag == f"salt/job/{enrolled['jid']}/ret/{NEW}", 600, seen)["return"]
        assert failed_states(ret) == [], "the enrollment highstate failed"
        ids = {st.get("__id__") for st in ret.values()}
        assert {"kcm-beacon-present-kcm_leader", "kcm-beacon-present-kcm_cert"} <= ids, "highstate applies kcm.beacon"
        record_timing("enrollment: boot -> highstate returned", time.monotonic() - began)

        # systemd runs the newcomer's KCM: enabled, active, healthy, never restarted.
        machine = cluster.machine(NEW)
        assert machine.systemctl("is-enabled", UNIT, check=False).stdout.strip() == "enabled"
        cluster.wait_healthy([NEW], timeout=60)
        assert cluster.active(NEW) == "active" and cluster.restarts(NEW) == 0
        assert (
            'Attempting to acquire leader lease..." lock="kube-system/kube-controller-manager"'
            in machine.run(["journalctl", "--no-pager", "-o", "cat", "-u", UNIT]).stdout
        )
        time.sleep(3 * cluster.election_seconds["retry_period"] + 2)
        after = cluster.lease()["spec"]
        moved = cluster.lease_log.summary()
        assert after["holderIdentity"] == before["holderIdentity"], f"the leader was disturbed ({moved})"
        assert after.get("leaseTransitions") == before.get("leaseTransitions"), moved

        leader, _, _, status = cluster.consistent(lambda: cluster.salt("kcm.status"))
        rows = {name: rows[0] for name, rows in status.items()}
        assert sorted(rows) == sorted(cluster.nodes) == ["master-1", "master-2", "master-3", NEW], rows
        assert {name: r["leader"] for name, r in rows.items()} == {
            name: "yes" if name == leader else "no" for name in rows
        }, rows
        assert leader != NEW and rows[NEW]["healthy"] is True, rows[NEW]
        assert rows[NEW]["service_active"] == "active", rows[NEW]

        again = cluster.salt("state.highstate", target=[NEW], timeout=600, job_timeout=600)[NEW]
        assert failed_states(again) == [] and changed_states(again) == [], "a second highstate changes nothing"
        assert cluster.starts_since(NEW, 0) == 1, "KCM on the newcomer was started once, by the enrollment"
        # Drain what the bus holds: a new standby must not wake anyone up.
        while event := bus.get_event(wait=0.5, full=True):
            seen.append(event["tag"])
    assert [tag for tag in seen if tag.startswith("kcm/alert/")] == [], "a new standby sent an alert"
    beacons = cluster.salt("beacons.list", target=[NEW], return_yaml=False)[NEW]
    assert "kcm_leader" in beacons, f"the newcomer watches the leader: {beacons}"
    code, listed = cluster.master.run("kcm_enroll.enrolled")
    assert code == 0 and listed == [NEW], listed
