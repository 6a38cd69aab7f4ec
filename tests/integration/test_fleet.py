"""
A fleet on one Salt master: a burst of failovers in many clusters, all reported by
every master, reaches Alertmanager once per cluster. Real salt-master (configured by
kcm.master), real kcm_alert engine and runner, real Alertmanager; the reports come
from one real salt-minion standing in for 3 masters of each cluster, with exactly the
events its kcm_leader beacon fires (kcmlab/fleet.py), not from real KCMs.
"""

import json
import random
import time

import pytest

from kcmlab.alertmanager import Alertmanager
from kcmlab.controlplane import wait_until
from kcmlab.fleet import BeaconStandIn, failover_events, kcm_master_conf, new_cluster_id
from tests.support.pillar import REPO

pytestmark = [pytest.mark.integration]

STAND_IN = "fleet-standin"
# The grain a KCM master carries in the README's targeting.
WAIT = 90


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    am = Alertmanager(tmp_path_factory.mktemp("fleet-am")).start()
    yield am
    am.stop()


@pytest.fixture(scope="module")
def fleet_master(salt_factories, alertmanager, tmp_path_factory):
    conf = kcm_master_conf(
        tmp_path_factory.mktemp("fleet-host"), alertmanager.url, {"env": "fleet"}, allow_http=True, masters=[STAND_IN]
    )  # Alertmanager on loopback
    assert conf["engines"] == [{"kcm_alert": {"batch_wait": 0.2, "max_batch": 500}}]
    # engines_dirs stands in for kcm.master's saltutil.sync_engines + master restart
    overrides = dict(conf, file_roots={"base": [str(REPO / "formula")]}, engines_dirs=[str(REPO / "_engines")])
    master = salt_factories.salt_master_daemon("kcm-fleet-master", overrides=overrides)
    with master.started():
        ret = master.salt_run_cli(timeout=120).run("saltutil.sync_all")  # the runners and their _utils
        assert "runners.kcm_alert" in json.dumps(ret.data), ret
        yield master


@pytest.fixture(scope="module")
def stand_in(fleet_master):
    minion = fleet_master.salt_minion_daemon(STAND_IN)
    with minion.started():
        bus = BeaconStandIn(minion.config)
        yield bus
        bus.close()


def test_a_burst_of_30_clusters_times_3_reports_is_exactly_30_alerts(
    fleet_master, stand_in, alertmanager, event_listener
):
    clusters = [new_cluster_id() for _ in range(30)]
    # every cluster kept the default name: only the cluster_id tells them apart
    reports = [failover_events("kubernetes", cid) for cid in clusters for _ in range(3)]
    random.Random(16).shuffle(reports)
    since = time.time()
    for events in reports:  # 90 beacon returns within about a second, each signed as it is sent
        stand_in.send(stand_in.returns(events))
        time.sleep(1.0 / len(reports))

    def ours():
        found = alertmanager.active(alertname="KCMLeaderChanged")
        return [a for a in found if a["labels"].get("cluster_id") in clusters]

    wait_until(lambda: len(ours()) >= 30 or None, WAIT, "30 KCMLeaderChanged in Alertmanager", interval=0.5)

    def handled():
        found = event_listener.get_events([(fleet_master.id, "kcm/alert/*")], after_time=since)
        return [e for e in found if e.data.get("kind") == "changed"]

    followups = wait_until(
        lambda: (lambda f: f if len(f) >= 90 else None)(handled()),
        WAIT,
        "the runner handled all 90 reports",
        interval=0.5,
    )
    alerts = ours()
    assert sorted(a["labels"]["cluster_id"] for a in alerts) == sorted(clusters)
    assert {a["labels"]["cluster"] for a in alerts} == {"kubernetes"}
    sent = [e for e in followups if e.tag == "kcm/alert/changed"]
    assert sorted(e.data["alerts"][0]["labels"]["cluster_id"] for e in sent) == sorted(clusters)
    assert sum(1 for e in followups if e.tag == "kcm/alert/duplicate") == 60
    assert not [e for e in followups if e.tag == "kcm/alert/send_failed"]


def test_fleet_view_through_the_real_master_lists_a_minion_without_kcm(fleet_master, stand_in):
    # the stand-in has no KCM deployed: it answers, and is listed as not a KCM master
    ret = fleet_master.salt_cli(timeout=120).run("saltutil.sync_all", minion_tgt=STAND_IN)
    assert ret.returncode == 0, ret
    ret = fleet_master.salt_run_cli(timeout=60).run("kcm.status", f"tgt={STAND_IN}", "timeout=20")
    (row,) = ret.data["masters"]
    assert row["minion"] == STAND_IN and "not_deployed" in row["errors"]
    (group,) = ret.data["clusters"]
    assert group["cluster"] == "(no cluster)" and "kcm is not deployed on 1 of" in group["verdict"]
    assert ret.returncode == 0, ret  # a wide target is not a failed cluster

    # a target naming a minion that does not exist, with it: that one is a failure
    ret = fleet_master.salt_run_cli(timeout=60).run(
        "kcm.status", f"tgt={STAND_IN},gone-1", "tgt_type=list", "timeout=5"
    )
    assert ret.returncode == 1, ret
