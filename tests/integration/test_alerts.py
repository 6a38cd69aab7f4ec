"""
Beacon -> reactor -> runner -> Alertmanager, all real: a salt-master with three
salt-minions (pytest-salt-factories), the control plane of tests/support/controlplane.py
with three KCMs run from the formula's units, and Debian's prometheus-alertmanager.

Each master reports every failover; a human must get it once.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from kcmlab.controlplane import ControlPlane, free_port, node_of, wait_until
from tests.e2e.conftest import SHORT_ELECTION, build_cluster, k8s_bin  # noqa: F401 (fixture)
from tests.support.masterless import MasterlessMinion

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")
NODES = ("master-1", "master-2", "master-3")
# Minion ids differ from the KCM node names (as when hostnames are not minion ids): the
# deployed `identity` ties them, and the ids do not clash with other modules' minions.
MINION_ID = {node: f"al-{node}" for node in NODES}
BEACON = {"interval": 1, "debounce": 2, "stale_after": 3, "timeout": 2}
# Every wait below is an upper bound for something that must happen, never a speed claim.
WAIT = 90


# ---------------------------------------------------------------------------------------------
# Alertmanager


class Alertmanager:
    def __init__(self, workdir: Path):
        if not ALERTMANAGER.exists():
            pytest.fail(f"{ALERTMANAGER} is missing: apt-get install prometheus-alertmanager", pytrace=False)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "alertmanager.log"
        config = workdir / "alertmanager.yml"
        config.write_text(yaml.safe_dump({
            "route": {"receiver": "null", "group_wait": "1s", "group_interval": "1s"},
            "receivers": [{"name": "null"}],
        }))
        self.argv = [str(ALERTMANAGER), f"--config.file={config}", f"--storage.path={workdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="]
        self.session = requests.Session()
        self.session.trust_env = False
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self.session.get(self.url + "/-/ready", timeout=2).ok, 30, "alertmanager /-/ready")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def active(self, **labels):
        """Unresolved alerts whose labels match `labels`."""
        filters = [("filter", f'{key}="{value}"') for key, value in labels.items()]
        reply = self.session.get(self.url + "/api/v2/alerts", params=filters, timeout=5)
        reply.raise_for_status()
        return reply.json()


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    am = Alertmanager(tmp_path_factory.mktemp("alertmanager")).start()
    yield am
    am.stop()


# ---------------------------------------------------------------------------------------------
# control plane + three KCMs (the e2e tier's building blocks)


@pytest.fixture(scope="module")
def control_plane(k8s_bin, tmp_path_factory):  # noqa: F811
    cp = ControlPlane(k8s_bin, tmp_path_factory.mktemp("cp"), nodes=NODES).start()
    yield cp
    cp.stop()


@pytest.fixture(scope="module")
def cluster(control_plane, tmp_path_factory):
    kcms = build_cluster(control_plane, tmp_path_factory.mktemp("kcm"), SHORT_ELECTION, "alerts")
    yield kcms
    kcms.stop_all()


# ---------------------------------------------------------------------------------------------
# salt-master (configured by kcm.master) and three minions (kcm.beacon)


def _master_conf(tmp_path_factory, alertmanager):
    """What kcm.master writes for the master, rendered by the real state on a sandbox minion."""
    root = tmp_path_factory.mktemp("master-host")
    conf_dir = root / "master.d"
    pillar = {"kcm": {"master": {"config_dir": str(conf_dir), "alertmanager_urls": [alertmanager.url],
                                 "allow_http": True, "reporters": {"tgt": "al-master-*", "tgt_type": "glob"},
                                 "labels": {"env": "it"}, "sync_runners": False}}}
    minion = MasterlessMinion(root, "salt-master-host", pillar)
    ret = minion.apply("kcm.master")
    assert isinstance(ret, dict) and all(s.get("result") for s in ret.values()), ret
    return yaml.safe_load((conf_dir / "kcm.conf").read_text())


@pytest.fixture(scope="module")
def salt_master(salt_factories, alertmanager, tmp_path_factory):
    conf = _master_conf(tmp_path_factory, alertmanager)
    assert conf["reactor"] == [{"salt/beacon/*/kcm_leader/*": ["salt://reactor/kcm/leader.sls"]}]
    conf["kcm_alert"]["backoff"] = 0.2
    pillar_dir = tmp_path_factory.mktemp("pillar")
    (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - kcm\n")
    (pillar_dir / "kcm.sls").write_text(yaml.safe_dump({"kcm": {"beacon": BEACON}}))
    overrides = dict(conf, file_roots={"base": [str(REPO / "formula")]}, pillar_roots={"base": [str(pillar_dir)]})
    master = salt_factories.salt_master_daemon("kcm-alerts-master", overrides=overrides)
    with master.started():
        ret = master.salt_run_cli(timeout=120).run("saltutil.sync_runners")
        assert "runners.kcm_alert" in json.dumps(ret.data), ret
        yield master


@pytest.fixture(scope="module")
def minions(salt_master, cluster):
    started = {}
    try:
        for name in NODES:
            overrides = {"loop_interval": 1}
            minion = salt_master.salt_minion_daemon(MINION_ID[name], overrides=overrides)
            deployed = Path(minion.config["cachedir"]) / "kcm" / "deployed.json"
            deployed.parent.mkdir(parents=True, exist_ok=True)
            deployed.write_text(json.dumps(dict(cluster.nodes[name].deployed, identity=name)))
            deployed.chmod(0o600)
            minion.start()
            started[name] = minion
        cli = salt_master.salt_cli(timeout=180)
        ret = cli.run("saltutil.sync_all", minion_tgt="*")
        assert ret.returncode == 0, ret
        for minion in started.values():
            ret = minion.salt_call_cli(timeout=180).run("state.apply", "kcm.beacon")
            assert ret.returncode == 0 and all(s["result"] for s in ret.data.values()), ret
        for minion in started.values():
            state = Path(minion.config["cachedir"]) / "kcm" / "beacon-kcm_leader.json"
            wait_until(state.exists, WAIT, f"{minion.id}: first beacon poll")
        yield started
    finally:
        for minion in started.values():
            minion.terminate()


# ---------------------------------------------------------------------------------------------
# helpers


def _events(event_listener, master, pattern, since):
    """Events on the master bus matching `pattern` since `since`, oldest first."""
    return sorted(event_listener.get_events([(master.id, pattern)], after_time=since), key=lambda e: e.stamp)


def _wait_events(event_listener, master, pattern, since, count, what):
    def enough():
        found = _events(event_listener, master, pattern, since)
        return found if len(found) >= count else None

    return wait_until(enough, WAIT, what, interval=0.5)


def _handled(event_listener, master, kind, since):
    """Follow-ups of the runner for beacon events of `kind` (sent or duplicate)."""
    return [e for e in _events(event_listener, master, "kcm/alert/*", since)
            if e.data.get("kind") == kind and e.tag in (f"kcm/alert/{kind}", "kcm/alert/duplicate")]


def _wait_all_handled(event_listener, master, kind, since, reporters=3):
    return wait_until(lambda: len(_handled(event_listener, master, kind, since)) >= reporters or None,
                      WAIT, f"runner handled {reporters} '{kind}' reports", interval=0.5)


def _settled(cluster, event_listener=None, master=None, quiet=5.0):
    """
    All KCMs running and a leader that renews (not the expired record of a dead
    process); with `event_listener`, also `quiet` seconds without beacon events, so
    the reports of the previous scenario are over. Returns the leader's node.
    """
    cluster.start_all()

    def renewing():
        first = (cluster.control_plane.lease() or {}).get("spec", {})
        time.sleep(1.5)
        second = (cluster.control_plane.lease() or {}).get("spec", {})
        same = first.get("holderIdentity") == second.get("holderIdentity")
        return same and first.get("renewTime") != second.get("renewTime") and node_of(second.get("holderIdentity"))

    leader = wait_until(renewing, WAIT, "a KCM leader that renews its lease")
    if event_listener is not None:
        def quiet_now():
            recent = _events(event_listener, master, "salt/beacon/*/kcm_leader/*", time.time() - quiet)
            return not recent
        time.sleep(quiet)
        wait_until(quiet_now, WAIT, f"{quiet:g}s without kcm_leader beacon events", interval=1)
    return leader


# ---------------------------------------------------------------------------------------------
# scenarios


def test_sigkill_of_the_leader_gives_exactly_one_leader_changed_alert(
        minions, cluster, salt_master, event_listener, alertmanager):
    old = _settled(cluster, event_listener, salt_master)
    since = time.time()
    cluster.kill(old)
    new = cluster.wait_for_leader(WAIT, exclude=(old,))

    beacon_events = _wait_events(event_listener, salt_master, "salt/beacon/*/kcm_leader/changed", since, 3,
                                 "a 'changed' beacon event from every minion")
    assert sorted(e.data["id"] for e in beacon_events) == sorted(MINION_ID.values())
    assert {(e.data["old_node"], e.data["new_node"]) for e in beacon_events} == {(old, new)}
    _wait_all_handled(event_listener, salt_master, "changed", since)

    sent = [e for e in _events(event_listener, salt_master, "kcm/alert/changed", since)]
    assert len(sent) == 1, [e.data for e in sent]
    alerts = wait_until(lambda: alertmanager.active(alertname="KCMLeaderChanged", old_node=old, new_node=new),
                        WAIT, "KCMLeaderChanged in Alertmanager")
    assert len(alerts) == 1
    assert alerts[0]["labels"]["cluster"] and alerts[0]["labels"]["env"] == "it"
    assert f"from {old} to {new}" in alerts[0]["annotations"]["summary"]
    # the new leader's minion said 'acquired', the old one's 'lost'
    acquired = _wait_events(event_listener, salt_master, "salt/beacon/*/kcm_leader/acquired", since, 1, "acquired")
    lost = _wait_events(event_listener, salt_master, "salt/beacon/*/kcm_leader/lost", since, 1, "lost")
    assert [e.data["id"] for e in acquired] == [MINION_ID[new]]
    assert [e.data["id"] for e in lost] == [MINION_ID[old]]
    # the leader's own minion names itself in `minion`; the others see the node name
    own = [e for e in beacon_events if e.data["id"] == MINION_ID[new]]
    assert own[0].data["new_minion"] == MINION_ID[new]


def test_no_leader_fires_and_one_kcm_coming_back_resolves_it(
        minions, cluster, salt_master, event_listener, alertmanager):
    _settled(cluster, event_listener, salt_master)
    since = time.time()
    cluster.stop_all()
    _wait_events(event_listener, salt_master, "kcm/alert/no_leader", since, 1, "KCMNoLeader sent")
    firing = alertmanager.active(alertname="KCMNoLeader")
    assert len(firing) == 1

    back = time.time()
    cluster.start("master-2")
    cluster.wait_for_leader(WAIT)
    resolved = _wait_events(event_listener, salt_master, "kcm/alert/resolved", back, 1, "KCMNoLeader resolved")
    assert any(a["labels"]["alertname"] == "KCMNoLeader" for e in resolved for a in e.data["alerts"])
    wait_until(lambda: alertmanager.active(alertname="KCMNoLeader") == [], WAIT, "KCMNoLeader gone from Alertmanager")
    assert len(_events(event_listener, salt_master, "kcm/alert/no_leader", since)) == 1


def test_apiserver_down_is_one_unreachable_per_minion_and_one_alert(
        minions, cluster, control_plane, salt_master, event_listener, alertmanager):
    _settled(cluster, event_listener, salt_master)
    since = time.time()
    control_plane.apiserver.stop()
    try:
        reports = _wait_events(event_listener, salt_master, "salt/beacon/*/kcm_leader/unreachable", since, 3,
                               "an 'unreachable' beacon event from every minion")
        _wait_all_handled(event_listener, salt_master, "unreachable", since)
        assert sorted(e.data["id"] for e in reports) == sorted(MINION_ID.values())
        assert all(e.data["reason"] for e in reports)
        assert len(_events(event_listener, salt_master, "kcm/alert/unreachable", since)) == 1
        assert len(alertmanager.active(alertname="KCMApiserverUnreachable")) == 1
    finally:
        back = time.time()
        control_plane.apiserver.start()
        wait_until(lambda: control_plane.request("GET", "/readyz", timeout=5).ok, WAIT, "apiserver back")
    cluster.start_all()

    def recovered_from_unreachable():
        found = _events(event_listener, salt_master, "salt/beacon/*/kcm_leader/recovered", back)
        return {e.data["id"] for e in found if e.data["condition"] == "unreachable"} == set(MINION_ID.values())

    wait_until(recovered_from_unreachable, WAIT, "'recovered' (unreachable) from every minion", interval=0.5)
    wait_until(lambda: alertmanager.active(alertname="KCMApiserverUnreachable") == [], WAIT,
               "KCMApiserverUnreachable resolved")
    def resolve_sent():
        found = _events(event_listener, salt_master, "kcm/alert/resolved", back)
        return [a for e in found for a in e.data["alerts"] if a["labels"]["alertname"] == "KCMApiserverUnreachable"]

    assert len(wait_until(resolve_sent, WAIT, "kcm/alert/resolved for KCMApiserverUnreachable", interval=0.5)) == 1
    # unreachable repeats nothing while it lasts: one report per minion in all
    assert len(_events(event_listener, salt_master, "salt/beacon/*/kcm_leader/unreachable", since)) == 3


def test_minion_restart_and_pillar_refresh_do_not_alert_again(
        minions, cluster, salt_master, event_listener, alertmanager):
    leader = _settled(cluster, event_listener, salt_master)
    since = time.time()
    minions["master-1"].terminate()
    minions["master-1"].start()
    ret = salt_master.salt_cli(timeout=120).run("saltutil.refresh_pillar", wait=True, minion_tgt="*")
    assert ret.returncode == 0, ret
    # several polls of every beacon after the refresh
    time.sleep(3 * BEACON["interval"] + BEACON["debounce"] + 3)
    kinds = ("changed", "stale", "no_leader", "unreachable", "recovered", "acquired", "lost")
    repeated = [e for kind in kinds
                for e in _events(event_listener, salt_master, f"salt/beacon/*/kcm_leader/{kind}", since)]
    assert repeated == [], [(e.tag, e.data) for e in repeated]
    assert _events(event_listener, salt_master, "kcm/alert/*", since) == []
    # ... and the restarted minion's beacon is alive: it reports the next real change
    since = time.time()
    cluster.kill(leader)
    _wait_events(event_listener, salt_master, "salt/beacon/al-master-1/kcm_leader/changed", since, 1,
                 "al-master-1 reports the next failover after its restart")
    cluster.start_all()


def test_bad_beacon_config_is_refused_clearly_and_the_good_beacon_keeps_running(
        minions, cluster, salt_master, event_listener):
    minion = minions["master-3"]
    ret = minion.salt_call_cli(timeout=60).run("beacons.add", "kcm_worse", [{"beacon_module": "kcm_leader"},
                                                                            {"stale_after": "soon"}])
    assert ret.data["result"] is False
    assert "stale_after must be a number of retry periods > 0" in ret.data["comment"]
    # a broken second instance written into the minion config by hand, then a restart
    conf_dir = Path(minion.config["conf_file"]).parent / "minion.d"
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / "kcm_bad.conf").write_text(yaml.safe_dump(
        {"beacons": {"kcm_bad": [{"beacon_module": "kcm_leader"}, {"debounce": 0}]}}))
    minion.terminate()
    minion.start()
    log_path = Path(minion.config["log_file"])
    wait_until(lambda: "Beacon kcm_bad configuration invalid, not running" in log_path.read_text(errors="replace"),
               WAIT, "the minion reports the invalid kcm_bad config")
    assert "kcm_leader: debounce must be an integer >= 1" in log_path.read_text(errors="replace")
    # the configured (good) instance on the same minion still reports
    leader = _settled(cluster, event_listener, salt_master)
    since = time.time()
    cluster.kill(leader)
    _wait_events(event_listener, salt_master, "salt/beacon/al-master-3/kcm_leader/changed", since, 1,
                 "al-master-3's good beacon still reports")
    assert _events(event_listener, salt_master, "salt/beacon/al-master-3/kcm_bad/*", since) == []
    cluster.start_all()
