"""A fourth master joins by highstate on the lab: the enrollment reactor of a salt-master
configured by ``kcm.master`` highstates a machine that starts with the control-plane grain,
once; the highstate installs KCM (systemd starts it), which stands by: the leader is not
disturbed and nobody is alerted. The three masters in service are reporters (grain
``role:k8s-master``, set after their first start, so only the newcomer enrolls)."""

from __future__ import annotations

import copy
import time

import pytest

from kcmlab.alertmanager import Alertmanager
from kcmlab.cluster import SHORT_ELECTION
from kcmlab.controlplane import wait_until
from kcmlab.saltmaster import REPO, EventRecorder, formula_master_config
from tests.e2e.conftest import LOG_FILES, start_lab_cluster, stop_lab_cluster

pytestmark = pytest.mark.e2e

NEW = "master-4"
# The lab CA lives 7 days: expiry warnings would be right, but this is about leader alerts.
BEACON = {"interval": 1, "debounce": 2, "stale_after": 3, "timeout": 2, "cert_thresholds": []}
TOP = """base:
  'role:k8s-master':
    - match: grain
    - kcm
    - kcm.beacon
"""
WAIT = 120


@pytest.fixture(scope="module")
def enroll_lab(k8s_bin, tmp_path_factory, request):
    workdir = tmp_path_factory.mktemp("lab-enroll")
    alertmanager = Alertmanager(workdir / "alertmanager").start()
    LOG_FILES.append(alertmanager.log_path)
    states = workdir / "states"
    states.mkdir()
    (states / "top.sls").write_text(TOP)
    conf = formula_master_config({"alertmanager_urls": [alertmanager.url], "allow_http": True,
                                  "sync_runners": False,
                                  "enroll": {"enabled": True, "grain": "role", "value": "k8s-master"}}, workdir)
    assert {"salt/minion/*/start": ["salt://reactor/kcm/enroll.sls"]} in conf["reactor"], conf
    conf["file_roots"] = {"base": [str(REPO / "formula"), str(states)]}
    try:
        cluster = start_lab_cluster(k8s_bin, workdir, "enroll", suite="e2e-enroll", election=SHORT_ELECTION,
                                    kcm={"beacon": BEACON}, master_config=conf)
    except BaseException:
        alertmanager.stop()
        raise
    cluster.events = EventRecorder(cluster.master).start()
    cluster.alertmanager = alertmanager
    try:
        marked = cluster.salt("grains.setval", "role", "k8s-master")
        assert len(marked) == 3 and all(ret == {"role": "k8s-master"} for ret in marked.values()), marked
        cluster.apply("kcm.beacon")
        # the newcomer's pillar: the others' (nothing in it is per master), with its
        # certificate issued on the machine (pki:mode local) so that it names its own address
        pillar = copy.deepcopy(cluster.pillars["master-1"])
        cp = cluster.cp
        pillar["kcm"]["pki"] = {"mode": "local", "ca_cert": cp.ca.cert_pem, "ca_key": cp.ca.key_pem,
                                "service_account_key": cp.sa_key_pem}
        cluster.pillars[NEW] = pillar
        cluster.master.write_pillar(cluster.pillars)
        yield cluster
    finally:
        cluster.events.stop()
        stop_lab_cluster(cluster, request)
        alertmanager.stop()


def test_a_new_master_joins_by_highstate_as_a_standby(enroll_lab):
    cluster = enroll_lab
    before = cluster.lease()["spec"]
    since = time.time()
    cluster.lab.boot(NEW, dict(cluster.master.minion_config(NEW), grains={"role": "k8s-master"}))

    def event(pattern):
        return wait_until(lambda: cluster.events.find(pattern, since) or None, WAIT, pattern, interval=0.5)

    (_, _, enrolled), = event("kcm/enroll/highstate")
    assert enrolled["minion"] == NEW
    (_, _, done), = event(f"salt/job/{enrolled['jid']}/ret/{NEW}")
    ret = done["return"]
    assert isinstance(ret, dict), ret
    failed = [f"{k}: {v['comment']}" for k, v in ret.items() if not v["result"]]
    assert not failed, failed
    assert any("kcm-beacon-present" in k for k in ret), "the highstate applied kcm.beacon too"

    # systemd started the newcomer's KCM: healthy, a standby, the leader undisturbed
    cluster.nodes = (*cluster.nodes, NEW)
    cluster.wait_healthy([NEW], timeout=WAIT)
    time.sleep(3 * cluster.election["retry_period"] + 2)
    after = cluster.lease()["spec"]
    assert after["holderIdentity"] == before["holderIdentity"], "the leader was disturbed"
    assert after.get("leaseTransitions") == before.get("leaseTransitions")

    rows = {mid: rows[0] for mid, rows in cluster.salt("kcm.status").items()}
    assert sorted(rows) == ["master-1", "master-2", "master-3", NEW], rows
    assert [r["leader"] for r in rows.values()].count("yes") == 1
    assert rows[NEW]["leader"] == "no" and rows[NEW]["healthy"] is True
    assert rows[NEW]["service_active"] == "active"

    # a new standby wakes nobody up, and the runner refused nobody (the reporters are real)
    time.sleep(BEACON["debounce"] + BEACON["stale_after"])
    assert cluster.alertmanager.active() == []
    assert cluster.events.find("kcm/alert/*", since) == []

    again = cluster.master.salt([NEW], "state.highstate", job_timeout=300)[NEW]
    assert [k for k, v in again.items() if v["changes"]] == [], "highstate with nothing changed"
    code, listed = cluster.master.run("kcm_enroll.enrolled")
    assert code == 0 and listed == [NEW], listed
