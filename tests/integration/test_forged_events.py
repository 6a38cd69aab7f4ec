"""
Forged events on a real salt-master: a minion that is no KCM master fires a start event
for an id made to widen a target, a start and a leader report in a KCM master's name, and a
leader report of its own. Nothing is highstated, nothing reaches the receiver, and each
forgery is refused with its reason on the master bus. Real salt-master and minions, the
master configured by kcm.master; no control plane is needed for this.
"""

import http.server
import json
import threading
import time

import pytest
import yaml

from tests.support.bus import bus_marker
from tests.support.masterless import MasterlessMinion
from tests.support.pillar import REPO

pytestmark = [pytest.mark.integration]
WEB, MASTER = "fg-web-1", "fg-master-1"
WAIT = 60
DEAD = {"transitions": 4, "holder": "fg-master-1_x", "node": "fg-master-1", "cluster": "prod",
        "renew_time": "2027-01-15T08:00:00.000000Z"}


class Receiver(http.server.BaseHTTPRequestHandler):
    posts = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        Receiver.posts.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def salt_master(salt_factories, receiver, tmp_path_factory):
    host = tmp_path_factory.mktemp("forged-master-host")
    pillar = {"kcm": {"master": {
        "config_dir": str(host / "master.d"), "alertmanager_urls": [receiver], "allow_http": True,
        "sync_runners": False, "reporters": {"tgt": MASTER, "tgt_type": "list"},
        "enroll": {"enabled": True, "grain": "role", "value": "k8s-master"}}}}
    ret = MasterlessMinion(host, "forged-salt-master-host", pillar).apply("kcm.master")
    assert isinstance(ret, dict) and all(s["result"] for s in ret.values()), ret
    conf = yaml.safe_load((host / "master.d" / "kcm.conf").read_text())
    overrides = dict(conf, file_roots={"base": [str(REPO / "formula")]})
    master = salt_factories.salt_master_daemon("kcm-forged-master", overrides=overrides)
    with master.started(start_timeout=120):
        ret = master.salt_run_cli(timeout=120).run("saltutil.sync_all")  # the runners and their _utils
        assert "runners.kcm_enroll" in json.dumps(ret.data), ret
        yield master


@pytest.fixture(scope="module")
def minions(salt_master):
    # Neither carries the enrollment grain: their own starts enroll nothing.
    web = salt_master.salt_minion_daemon(WEB, overrides={"grains": {"role": "web"}})
    kcm_master = salt_master.salt_minion_daemon(MASTER, overrides={"grains": {"role": "kcm"}})
    with web.started(start_timeout=120), kcm_master.started(start_timeout=120):
        yield web, kcm_master


def _send(minion, tag, data):
    ret = minion.salt_call_cli(timeout=60).run("event.send", tag, data=json.dumps(data))
    assert ret.returncode == 0, ret


def _refusals(event_listener, master, tag, since, count):
    deadline = time.monotonic() + WAIT
    while True:
        matches = sorted(event_listener.get_events([(master.id, tag)], after_time=since), key=lambda e: e.stamp)
        if len(matches) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(matches) >= count, f"expected {count} '{tag}' events, got {[e.data for e in matches]}"
    return [e.data["reason"] for e in matches]


def test_forged_events_highstate_nothing_and_alert_nobody(salt_master, minions, event_listener):
    web, _ = minions
    since = time.time()
    Receiver.posts.clear()

    _send(web, "salt/minion/nobody or */start", {"id": "nobody or *"})
    _send(web, f"salt/minion/{MASTER}/start", {"id": MASTER})
    _send(web, f"salt/beacon/{MASTER}/kcm_leader/no_leader", dict(DEAD, id=MASTER))
    _send(web, f"salt/beacon/{WEB}/kcm_leader/changed", {"cluster": "prod", "transitions": 5})

    enroll = _refusals(event_listener, salt_master, "kcm/enroll/refused", since, 2)
    assert any("is not a well-formed minion id" in why for why in enroll), enroll
    assert any(f"the start of {MASTER} was sent by '{WEB}'" in why for why in enroll), enroll
    alerts = _refusals(event_listener, salt_master, "kcm/alert/refused", since, 2)
    assert any(f"the tag names {MASTER} but the event comes from '{WEB}'" in why for why in alerts), alerts
    assert any(f"{WEB} is not a KCM master" in why for why in alerts), alerts

    # Each forgery got its refusal (the runner's last word on it); a job it started anyway
    # would be published before a marker sent now comes back.
    bus_marker(salt_master, event_listener)
    jobs = event_listener.get_events([(salt_master.id, "salt/job/*/new")], after_time=since)
    assert [e.data.get("fun") for e in jobs if e.data.get("fun") == "state.highstate"] == []
    assert not list(event_listener.get_events([(salt_master.id, "kcm/enroll/highstate")], after_time=since))
    assert salt_master.salt_run_cli(timeout=60).run("kcm_enroll.enrolled").data == []
    assert Receiver.posts == [], "a forged report reached the receiver"
