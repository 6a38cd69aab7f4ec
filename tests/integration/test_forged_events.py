"""
Forged events on a real salt-master: a minion that is no KCM master (its id is not in
``kcm:master:masters``) claims the control-plane grain, fires a start event for an id made to
widen a target, a start and a leader report in a KCM master's name, signed reports of its
own, a replay of a KCM master's genuine report (as a batched beacon return, which the master
re-fires with the minion's tag and data), and answers the fleet view as a KCM master. Nothing
is highstated but the KCM master itself, nothing forged reaches the receiver, each forgery is
refused with its reason on the master bus, and the fleet view shows the row as refused.
Real salt-master (configured by kcm.master, the kcm_alert engine loaded) and real minions;
no control plane is needed for this.
"""

import http.server
import json
import threading
import time

import pytest

from kcmlab.fleet import BeaconStandIn
from kcmlab.masterless import kcm_master_config
from tests.support.bus import bus_marker
from tests.support.pillar import REPO

pytestmark = [pytest.mark.integration]
WEB, MASTER = "fg-web-1", "fg-master-1"
WAIT = 60
DEAD = {
    "transitions": 4,
    "holder": "fg-master-1_x",
    "node": "fg-master-1",
    "cluster": "prod",
    "renew_time": "2027-01-15T08:00:00.000000Z",
}


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
    conf = kcm_master_config(
        host,
        {
            "alertmanager_urls": [receiver],
            "allow_http": True,
            "masters": [MASTER],
            "enroll": {"enabled": True},
            # Each forgery's refusal on the bus, not once per sender per minute as in production.
            "refusal_log_interval": 1,
        },
    )
    assert conf["kcm_alert"]["masters"] == [MASTER] and conf["kcm_alert"]["refusal_log_interval"] == 1, conf
    # engines_dirs stands in for kcm.master's saltutil.sync_engines + master restart
    overrides = dict(conf, file_roots={"base": [str(REPO / "formula")]}, engines_dirs=[str(REPO / "_engines")])
    master = salt_factories.salt_master_daemon("kcm-forged-master", overrides=overrides)
    with master.started(start_timeout=120):
        ret = master.salt_run_cli(timeout=120).run("saltutil.sync_all")  # the runners and their _utils
        assert "runners.kcm_enroll" in json.dumps(ret.data), ret
        yield master


@pytest.fixture(scope="module")
def minions(salt_master):
    # WEB claims the control-plane grain: it makes it nothing. MASTER is one by its id.
    web = salt_master.salt_minion_daemon(WEB, overrides={"grains": {"role": "k8s-master"}})
    kcm_master = salt_master.salt_minion_daemon(MASTER, overrides={"grains": {"role": "web"}})
    with web.started(start_timeout=120), kcm_master.started(start_timeout=120):
        for minion in (web, kcm_master):  # the grains reach the master's cache, as in H1
            assert minion.salt_call_cli(timeout=120).run("saltutil.sync_all").returncode == 0
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


def _wait_for(what, check):
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {WAIT} s"
        time.sleep(0.5)


def test_forged_events_highstate_nothing_and_alert_nobody(salt_master, minions, event_listener):
    web, _ = minions
    since = time.time()
    Receiver.posts.clear()

    _send(web, "salt/minion/nobody or */start", {"id": "nobody or *"})
    _send(web, f"salt/minion/{WEB}/start", {"id": WEB})  # H1/M1: its grain says k8s-master
    _send(web, f"salt/beacon/{MASTER}/kcm_leader/no_leader", dict(DEAD, id=MASTER))

    enroll = _refusals(event_listener, salt_master, "kcm/enroll/refused", since, 1)
    assert any("is not a well-formed minion id" in why for why in enroll), enroll
    # WEB's own start is refused (also when it started), and remembered in the master's cache.
    # Refused again quietly within kcm:master:refusal_log_interval: 1 s here, less than one
    # salt-run call takes on a busy machine, so that repeat is the unit tier's (test_kcm_enroll).
    run = salt_master.salt_run_cli(timeout=60)
    again = run.run("kcm_enroll.on_start", f"salt/minion/{WEB}/start", f"sender={WEB}").data
    assert again["result"] == "refused" and f"{WEB} is not a KCM master" in again["reason"], again
    record = run.run("cache.fetch", "kcm/enroll-refused", WEB).data
    assert isinstance(record, dict) and f"{WEB} is not a KCM master" in record.get("reason", ""), record
    alerts = _refusals(event_listener, salt_master, "kcm/alert/refused", since, 1)
    assert any(f"the tag names {MASTER} but the event comes from '{WEB}'" in why for why in alerts), alerts

    # Each forgery got its refusal (the runner's last word on it); a job it started anyway
    # would be published before a marker sent now comes back.
    bus_marker(salt_master, event_listener)
    jobs = event_listener.get_events([(salt_master.id, "salt/job/*/new")], after_time=since)
    assert [
        e.data.get("tgt") for e in jobs if e.data.get("fun") == "state.highstate" and WEB in str(e.data.get("tgt"))
    ] == []
    assert WEB not in salt_master.salt_run_cli(timeout=60).run("kcm_enroll.enrolled").data
    assert Receiver.posts == [], "a forged report reached the receiver"


def test_signed_reports_of_a_minion_claiming_the_grain_and_a_replay_are_refused(salt_master, minions, event_listener):
    web, kcm_master = minions
    Receiver.posts.clear()
    forger, genuine = BeaconStandIn(web.config), BeaconStandIn(kcm_master.config)
    try:
        since = time.time()
        # H1: WEB (grain role:k8s-master, in the master's cache) signs reports of its own, every kind
        for kind, data in (
            ("no_leader", DEAD),
            ("changed", dict(DEAD, new_node=WEB, transitions=9)),
            (
                "cert_expiring",
                {"cluster": "prod", "fingerprint": "f0" * 32, "threshold": 7, "days_left": 1, "minion": MASTER},
            ),
        ):
            returns = forger.returns([dict(data, tag=kind)])
            if kind.startswith("cert_"):
                returns = [dict(r, tag=r["tag"].replace("/kcm_leader/", "/kcm_cert/")) for r in returns]
            forger.send(returns)
        refused = _refusals(event_listener, salt_master, "kcm/alert/refused", since, 1)
        assert f"{WEB} is not a KCM master (kcm_alert:masters ['{MASTER}'])" in refused, refused

        # the KCM master's genuine report alerts; WEB captured it and replays it as a batched event
        captured = genuine.returns([dict(DEAD, tag="no_leader")])
        genuine.send(captured)
        _wait_for("genuine KCMNoLeader at the receiver", lambda: Receiver.posts)
        assert len(Receiver.posts) == 1 and b"KCMNoLeader" in Receiver.posts[0][1]
        since = time.time()
        forger.send(captured)
        replay = _refusals(event_listener, salt_master, "kcm/alert/refused", since, 1)
        assert any("a replay" in why for why in replay), replay
        time.sleep(2)
        assert len(Receiver.posts) == 1, "a replay reached the receiver"
    finally:
        forger.close()
        genuine.close()


def test_the_fleet_view_shows_a_minion_answering_as_a_master_as_refused(salt_master, minions):
    ret = salt_master.salt_run_cli(timeout=90).run("kcm.status", "tgt=*", "timeout=20")
    rows = {row["minion"]: row for row in ret.data["masters"]}
    assert rows[WEB]["cluster"] == "(refused)" and f"{WEB} is not a KCM master" in rows[WEB]["errors"], rows
    assert rows[MASTER]["cluster"] != "(refused)", rows  # signed by its own key; no kcm deployed there
    # the default target is the KCM masters by id: WEB is not even asked
    ret = salt_master.salt_run_cli(timeout=90).run("kcm.status", "timeout=20")
    assert [row["minion"] for row in ret.data["masters"]] == [MASTER], ret.data


def test_a_batched_start_forged_in_a_masters_name_enrolls_nothing_more(salt_master, minions, event_listener):
    # L1: a batched event carries any tag and data; the master re-fires them as the minion sent them.
    web, _ = minions
    run = salt_master.salt_run_cli(timeout=60)
    _wait_for(f"{MASTER}'s own enrollment at its start", lambda: run.run("kcm_enroll.enrolled").data == [MASTER])
    forger = BeaconStandIn(web.config)
    try:
        since = time.time()
        forger.send(
            [
                {"tag": f"salt/minion/{MASTER}/start", "data": {"id": MASTER}},
                {"tag": f"salt/minion/{WEB}/start", "data": {"id": WEB}},
            ]
        )
        time.sleep(5)  # the reactor has handed both to kcm_enroll by now
    finally:
        forger.close()
    starts = event_listener.get_events([(salt_master.id, f"salt/minion/{MASTER}/start")], after_time=since)
    assert starts, "the forged start did not reach the master bus"
    assert not event_listener.get_events([(salt_master.id, "kcm/enroll/highstate")], after_time=since)
    jobs = event_listener.get_events([(salt_master.id, "salt/job/*/new")], after_time=since)
    assert [e.data.get("tgt") for e in jobs if e.data.get("fun") == "state.highstate"] == []
    assert run.run("kcm_enroll.enrolled").data == [MASTER]
