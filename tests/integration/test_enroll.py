"""A fourth master joins by highstate: the enrollment reactor highstates a new minion with
the control-plane grain once; it installs KCM, which stands by. Real salt-master and
minions, the real control plane with three KCMs leading/standing by, a real Alertmanager.

The three running masters were deployed beforehand (their KCMs come from the e2e
harness); they carry no role grain here so that only the newcomer enrolls. No systemd
runs here: the test starts the new master's KCM from the unit highstate rendered."""

import json
import time
from pathlib import Path

import pytest
import yaml

from kcmlab.controlplane import KcmProcess, free_port
from tests.e2e.conftest import NODES, SHORT_ELECTION, _server_tarball, k8s_bin  # noqa: F401
from tests.integration.test_alerts import BEACON, alertmanager, cluster, control_plane  # noqa: F401 (fixtures)
from tests.support.masterless import MasterlessMinion
from tests.support.pillar import REPO, sandbox_pillar

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
NEW = "en-master-4"
NEW_NODE = "master-4"
# The test CA lives 7 days: certificate-expiry warnings would be right, but this test is
# about leader alerts, so the beacons here check no certificate.
ENROLL_BEACON = dict(BEACON, cert_thresholds=[])
TOP = """base:
  'role:k8s-master':
    - match: grain
    - kcm
    - kcm.beacon
"""


@pytest.fixture(scope="module")
def salt_master(salt_factories, alertmanager, control_plane, tmp_path_factory):  # noqa: F811
    # the master config kcm.master writes, enrollment on
    host = tmp_path_factory.mktemp("master-host-enroll")
    conf_dir = host / "master.d"
    master_pillar = {"kcm": {"master": {"config_dir": str(conf_dir), "alertmanager_urls": [alertmanager.url],
                                 "allow_http": True, "reporters": {"tgt": "en-master-*", "tgt_type": "glob"},
                                        "sync_runners": False,
                                        "enroll": {"enabled": True, "grain": "role", "value": "k8s-master"}}}}
    ret = MasterlessMinion(host, "salt-master-host", master_pillar).apply("kcm.master")
    assert isinstance(ret, dict) and all(s["result"] for s in ret.values()), ret
    conf = yaml.safe_load((conf_dir / "kcm.conf").read_text())
    assert {"salt/minion/*/start": ["salt://reactor/kcm/enroll.sls"]} in conf["reactor"]

    states = tmp_path_factory.mktemp("states")
    (states / "top.sls").write_text(TOP)
    pillar_dir = tmp_path_factory.mktemp("pillar-enroll")
    tarball, version = _server_tarball(control_plane.bin_dir)
    root = tmp_path_factory.mktemp(NEW)
    newcomer = sandbox_pillar(root, tarball, version, control_plane.kcm_pki(NODES + (NEW_NODE,)),
                              apiserver=control_plane.apiserver_url, secure_port=free_port(),
                              leader_election=SHORT_ELECTION, identity=NEW_NODE, beacon=ENROLL_BEACON)
    (pillar_dir / "beacon.sls").write_text(yaml.safe_dump({"kcm": {"beacon": ENROLL_BEACON}}))
    (pillar_dir / "newcomer.sls").write_text(json.dumps(newcomer))
    (pillar_dir / "top.sls").write_text(f"base:\n  '*':\n    - beacon\n  '{NEW}':\n    - newcomer\n")
    overrides = dict(conf, file_roots={"base": [str(REPO / "formula"), str(states)]},
                     pillar_roots={"base": [str(pillar_dir)]})
    master = salt_factories.salt_master_daemon("kcm-enroll-master", overrides=overrides)
    with master.started():
        ret = master.salt_run_cli(timeout=120).run("saltutil.sync_runners")
        assert "runners.kcm_enroll" in json.dumps(ret.data), ret
        master.newcomer_pillar = newcomer
        yield master


@pytest.fixture(scope="module")
def running_masters(salt_master, cluster):  # noqa: F811
    """The three masters already in service, with the beacon on."""
    started = []
    try:
        for name in NODES:
            minion = salt_master.salt_minion_daemon(f"en-{name}", overrides={"loop_interval": 1})
            deployed = Path(minion.config["cachedir"]) / "kcm" / "deployed.json"
            deployed.parent.mkdir(parents=True, exist_ok=True)
            deployed.write_text(json.dumps(dict(cluster.nodes[name].deployed, identity=name)))
            minion.start()
            started.append(minion)
        cli = salt_master.salt_cli(timeout=180)
        assert cli.run("saltutil.sync_all", minion_tgt="en-master-*").returncode == 0
        for minion in started:
            ret = minion.salt_call_cli(timeout=180).run("state.apply", "kcm.beacon")
            assert ret.returncode == 0, ret
        yield started
    finally:
        for minion in started:
            minion.terminate()


def test_a_new_master_joins_by_highstate_as_a_standby(
        salt_master, running_masters, cluster, alertmanager, event_listener, tmp_path):  # noqa: F811
    cp = cluster.control_plane
    before = cp.lease()["spec"]
    since = time.time()
    newcomer = salt_master.salt_minion_daemon(NEW, overrides={"loop_interval": 1, "grains": {"role": "k8s-master"}})
    with newcomer.started(start_timeout=120):
        enrolled = event_listener.wait_for_events([(salt_master.id, "kcm/enroll/highstate")],
                                                  timeout=120, after_time=since)
        assert enrolled.found_all_events, "the enrollment reactor did not highstate the new master"
        jid = next(iter(enrolled.matches)).data["jid"]
        done = event_listener.wait_for_events([(salt_master.id, f"salt/job/{jid}/ret/{NEW}")],
                                              timeout=600, after_time=since)
        assert done.found_all_events, "the enrollment highstate did not return"
        ret = next(iter(done.matches)).data["return"]
        failed = [f"{k}: {v['comment']}" for k, v in ret.items() if not v["result"]]
        assert not failed, failed
        assert any("kcm-beacon-present" in k for k in ret), "highstate applied kcm.beacon too"

        paths = salt_master.newcomer_pillar["kcm"]["paths"]
        unit = Path(paths["unit"]) / "kube-controller-manager.service"
        kcm4 = KcmProcess(unit, NEW_NODE, tmp_path / "kcm-master-4.log")
        kcm4.start()
        try:
            kcm4.wait_healthy(Path(paths["pki"]) / "ca.pem")
            time.sleep(3 * cluster.election["retry_period"] + 2)
            after = cp.lease()["spec"]
            assert after["holderIdentity"] == before["holderIdentity"], "the leader was disturbed"
            assert after.get("leaseTransitions") == before.get("leaseTransitions")

            cli = salt_master.salt_cli(timeout=120)
            status = cli.run("kcm.status", minion_tgt="en-master-*")
            rows = {mid: rows[0] for mid, rows in status.data.items()}
            assert sorted(rows) == ["en-master-1", "en-master-2", "en-master-3", NEW], status.stdout
            assert [r["leader"] for r in rows.values()].count("yes") == 1
            assert rows[NEW]["leader"] == "no" and rows[NEW]["healthy"] is True

            assert alertmanager.active() == [], "a new standby must not wake anyone up"

            again = cli.run("state.highstate", minion_tgt=NEW)
            assert [k for k, v in again.data.items() if v["changes"]] == [], "highstate with nothing changed"
            enrolled = salt_master.salt_run_cli(timeout=60).run("kcm_enroll.enrolled")
            assert enrolled.data == [NEW]
        finally:
            kcm4.stop()
