"""
The kcm_alert runner: one alert per change across reporters (also under concurrent
callers), the Alertmanager v2 payload, resolving, the outbox that keeps an alert until a
receiver accepts it (across a restart, bounded by the alert's endsAt), and the reconcile
that raises what no event brought, under the same key.
"""

import base64
import datetime
import http.server
import itertools
import json
import os
import threading

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kcmlab.formula import alert_settings, alert_store, load, utils

T0 = 1_800_000_000.0
REPORTERS = ("master-1", "master-2", "master-3")
AM = "http://127.0.0.1:9093/api/v2/alerts"

kcm_alert = load("_runners", "kcm_alert")
# A second instance of the runner: a salt-master restarted over the same cachedir, or
# the other master of a multi-master pair (over its own).
kcm_alert_other = load("_runners", "kcm_alert")
SIGNED_MESSAGE = utils()["kcm_trust.signed_message"]  # the bytes a minion signs
KEYS = {}


@pytest.fixture
def configure_loader_modules():
    return {module: {"__opts__": {}, "__utils__": utils()} for module in (kcm_alert, kcm_alert_other)}


def minion_key(minion):
    """One RSA key per minion id, as each minion has its own Salt key pair."""
    if minion not in KEYS:
        KEYS[minion] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KEYS[minion]


# Each minion's signing counter, as the beacons keep it (one epoch per test session).
COUNTER = itertools.count(1)


def signed(minion, kind, data, at, epoch=1, counter=None):
    """The event data as the beacons of ``minion`` send it: with id, signed_at, epoch, counter, sig."""
    data = dict(data, id=minion, signed_at=at, epoch=epoch, counter=next(COUNTER) if counter is None else counter)
    signature = minion_key(minion).sign(SIGNED_MESSAGE(kind, data), padding.PKCS1v15(), hashes.SHA256())
    return dict(data, sig=base64.b64encode(signature).decode())


class Harness:
    """The runner with its receivers and the master bus replaced by recorders; ``module``
    defaults to a fresh instance with its own loader dunders (for callers without a
    ``configure_loader_modules``)."""

    def __init__(self, tmp_path, monkeypatch, module=None, cache="cache", **cfg):
        self.module = module or load("_runners", "kcm_alert")
        self.posts = []
        self.events = []
        self.fail_next = 0
        self.lock = threading.Lock()
        pki = tmp_path / "pki"
        (pki / "minions").mkdir(parents=True, exist_ok=True)
        for minion in (*REPORTERS, "web-1"):
            (pki / "minions" / minion).write_bytes(
                minion_key(minion)
                .public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            )
        self.cachedir = tmp_path / cache
        monkeypatch.setattr(
            self.module,
            "__opts__",
            {
                "cachedir": str(self.cachedir),
                "sock_dir": str(tmp_path / "sock"),
                "pki_dir": str(pki),
                # What kcm.master writes from defaults.yaml, with this test's pillar kcm:master over it.
                "kcm_alert": alert_settings(
                    **dict(
                        {
                            "alertmanager_urls": ["http://127.0.0.1:9093"],
                            "labels": {"env": "test"},
                            "masters": list(REPORTERS),
                        },
                        **cfg,
                    )
                ),
            },
            raising=False,
        )
        # The KCM masters by id: the list in the master's own configuration.
        self.masters = self.module.__opts__["kcm_alert"]["masters"]
        if not getattr(self.module, "__utils__", None):
            monkeypatch.setattr(self.module, "__utils__", utils(), raising=False)
        monkeypatch.setattr(self.module, "_post", self._post)
        monkeypatch.setattr(self.module, "_fire", lambda tag, data: self.events.append((tag, data)))
        monkeypatch.setattr(self.module, "_sleep", lambda seconds: None)
        # The refusals logged (once per sender per interval) so far: none, in a new harness.
        monkeypatch.setattr(self.module, "_REFUSED_LOGGED", {})
        self.now = T0
        monkeypatch.setattr(self.module, "_now", lambda: self.now)

    def _post(self, url, payload, cfg):
        # JSON round trip: what goes on the wire must be serializable.
        wire = json.loads(json.dumps(payload))
        with self.lock:
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("connection refused")
            self.posts.append((url, wire))

    def raw(self, tag, data):
        """One event through the engine's entry point (a batch of one)."""
        return self.module.handle_batch([(tag, data)])[0]

    def handle(self, reporter, kind, **data):
        data.setdefault("cluster", "prod")
        beacon = "kcm_cert" if kind.startswith("cert_") else "kcm_leader"
        return self.raw(f"salt/beacon/{reporter}/{beacon}/{kind}", signed(reporter, kind, data, self.now))

    def alerts(self):
        return [alert for _, payload in self.posts for alert in payload]

    def tags(self):
        return [tag for tag, _ in self.events]

    def store(self):
        return alert_store(self.cachedir / "kcm_alert" / "dedupe.json")


CHANGE = {
    "transitions": 4,
    "old_holder": "master-1_aaaa",
    "old_node": "master-1",
    "old_minion": "master-1",
    "new_holder": "master-2_bbbb",
    "new_node": "master-2",
    "new_minion": "master-2",
    "holder": "master-2_bbbb",
}
DEAD = {"transitions": 4, "holder": "master-2_bbbb", "node": "master-2", "renew_time": "2027-01-15T08:00:00.000000Z"}


@pytest.fixture
def harness(tmp_path, monkeypatch):
    return Harness(tmp_path, monkeypatch, module=kcm_alert)


def test_three_reporters_of_one_change_give_one_alert(harness):
    results = [harness.handle(r, "changed", **CHANGE) for r in REPORTERS]
    assert [bool(r["fired"]) for r in results] == [True, False, False]
    assert [r["duplicate"] for r in results] == [False, True, True]
    assert len(harness.alerts()) == 1
    assert harness.tags().count("kcm/alert/changed") == 1
    assert harness.tags().count("kcm/alert/duplicate") == 2


def test_a_new_transition_is_a_new_alert(harness):
    harness.handle("master-1", "changed", **CHANGE)
    harness.handle(
        "master-1",
        "changed",
        **dict(CHANGE, transitions=5, old_node="master-2", new_node="master-3", new_holder="master-3_cccc"),
    )
    assert [a["labels"]["new_node"] for a in harness.alerts()] == ["master-2", "master-3"]


def test_dedupe_holds_under_concurrent_callers(tmp_path, monkeypatch):
    # 30 KCM masters (10 clusters' worth) report at once from as many threads.
    senders = [f"master-{t}-{i}" for t in range(10, 20) for i in (1, 2, 3)]
    harness = Harness(tmp_path, monkeypatch, module=kcm_alert, masters=["master-*"])
    for minion in senders:
        (tmp_path / "pki" / "minions" / minion).write_bytes(
            minion_key(minion)
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    original = harness._post

    def slow_post(url, payload, cfg):
        # widen the window between claim and send, as a real HTTP call does
        threading.Event().wait(0.02)
        original(url, payload, cfg)

    monkeypatch.setattr(harness.module, "_post", slow_post)
    barrier = threading.Barrier(30)
    errors = []

    def report(reporter, transitions):
        try:
            barrier.wait()
            harness.handle(reporter, "changed", **dict(CHANGE, transitions=transitions))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=report, args=(sender, int(sender.split("-")[1]))) for sender in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    sent = sorted(
        int(a["annotations"]["description"].split("leaseTransitions ")[1].split(";")[0]) for a in harness.alerts()
    )
    assert sent == list(range(10, 20))


def test_payload_is_an_alertmanager_v2_postable_alert(harness):
    harness.handle("master-3", "changed", **CHANGE)
    ((url, payload),) = harness.posts
    assert url == "http://127.0.0.1:9093/api/v2/alerts"
    assert isinstance(payload, list) and len(payload) == 1
    alert = payload[0]
    assert alert["labels"] == {
        "alertname": "KCMLeaderChanged",
        "cluster": "prod",
        "severity": "warning",
        "old_node": "master-1",
        "new_node": "master-2",
        "transitions": str(CHANGE["transitions"]),
        "env": "test",
    }
    assert "from master-1 to master-2" in alert["annotations"]["summary"]
    assert "leaseTransitions 4" in alert["annotations"]["description"]
    assert "master-3" in alert["annotations"]["description"]
    starts = datetime.datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00"))
    ends = datetime.datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00"))
    assert starts.timestamp() == pytest.approx(T0) and ends > starts
    assert all(isinstance(v, str) for v in alert["labels"].values())


def test_follow_up_event_says_what_was_sent(harness):
    harness.handle("master-1", "changed", **CHANGE)
    ((tag, data),) = [(t, d) for t, d in harness.events if t == "kcm/alert/changed"]
    assert data["action"] == "fire" and data["reporter"] == "master-1"
    assert data["alerts"][0]["labels"]["alertname"] == "KCMLeaderChanged"
    assert data["receivers"] == {"http://127.0.0.1:9093/api/v2/alerts": None}


def test_no_leader_fires_once_and_a_new_leader_resolves_it(harness):
    for reporter in REPORTERS:
        harness.handle(reporter, "no_leader", **DEAD)
    fired = harness.alerts()
    assert [a["labels"]["alertname"] for a in fired] == ["KCMNoLeader"]
    harness.now = T0 + 30
    harness.handle("master-1", "changed", **dict(CHANGE, transitions=5))
    resolved = [a for a in harness.alerts() if a["labels"]["alertname"] == "KCMNoLeader"][1]
    assert resolved["labels"] == fired[0]["labels"]
    assert resolved["startsAt"] == fired[0]["startsAt"]
    ends = datetime.datetime.fromisoformat(resolved["endsAt"].replace("Z", "+00:00")).timestamp()
    assert ends == pytest.approx(T0 + 30)
    assert "kcm/alert/resolved" in harness.tags()
    # the other reporters' recovered / changed find nothing left to resolve or send
    assert harness.handle("master-2", "recovered", condition="no_leader", **DEAD)["duplicate"] is True
    assert harness.handle("master-2", "changed", **dict(CHANGE, transitions=5))["duplicate"] is True
    assert len(harness.alerts()) == 3


def test_stale_is_resolved_by_recovered(harness):
    harness.handle("master-1", "stale", age_seconds=7.1, basis="observed", **DEAD)
    harness.handle("master-2", "stale", age_seconds=6.4, basis="observed", **DEAD)
    result = harness.handle("master-2", "recovered", condition="stale", **DEAD)
    assert result["resolved"][0]["alertname"] == "KCMLeaderStale"
    assert result["resolved"][0]["node"] == "master-2"
    assert len(harness.alerts()) == 2


def test_stale_again_after_recovering_is_alerted_again(harness):
    harness.handle("master-1", "stale", **DEAD)
    harness.handle("master-1", "recovered", condition="stale", **DEAD)
    later = dict(DEAD, renew_time="2027-01-15T08:05:00.000000Z")
    assert harness.handle("master-1", "stale", **later)["fired"]


def test_unreachable_is_one_alert_resolved_when_every_reporter_recovered(harness):
    for reporter in REPORTERS:
        harness.handle(reporter, "unreachable", reason="connection refused")
    assert [a["labels"]["alertname"] for a in harness.alerts()] == ["KCMApiserverUnreachable"]
    assert harness.handle("master-1", "recovered", condition="unreachable")["resolved"] == []
    assert harness.handle("master-2", "recovered", condition="unreachable")["resolved"] == []
    last = harness.handle("master-3", "recovered", condition="unreachable")
    assert last["resolved"][0]["alertname"] == "KCMApiserverUnreachable"
    assert len(harness.alerts()) == 2


def test_a_second_outage_of_the_same_master_is_a_second_alert(harness):
    harness.handle("master-1", "unreachable", reason="connection refused")
    harness.handle("master-1", "recovered", condition="unreachable")
    harness.now += 30
    again = harness.handle("master-1", "unreachable", reason="connection refused")

    assert again["fired"] and not again.get("duplicate")
    fired = [a for a in harness.alerts() if a["labels"]["alertname"] == "KCMApiserverUnreachable"]
    assert len(fired) == 3  # fired, resolved, fired again


def test_an_outage_the_reconcile_ended_is_a_new_incident_next_time(harness, masters):
    masters.record = lease("master-2", 5)
    harness.handle("master-3", "unreachable", reason="timeout", cluster_id=CID)
    assert harness.module.reconcile()["resolved"]  # master-3 answers again: over
    harness.now += 30

    assert harness.handle("master-3", "unreachable", reason="timeout", cluster_id=CID)["fired"]


LOOP = {
    "restarts": 3,
    "window_seconds": 600,
    "unit": "kube-controller-manager",
    "exit_status": 1,
    "last_error": 'E1207 run.go:72] "command failed" err="open /etc/k8s/kcm.kubeconfig: permission denied"',
}


def test_a_crash_loop_is_one_alert_per_master_each_ended_by_its_own_recovered(harness):
    harness.handle("master-2", "restarting", **LOOP)
    harness.handle("master-2", "restarting", **LOOP)  # the same report again (another path)
    harness.handle("master-3", "restarting", **dict(LOOP, exit_status=243, last_error=None))
    fired = harness.alerts()

    assert [(a["labels"]["alertname"], a["labels"]["minion"], a["labels"]["severity"]) for a in fired] == [
        ("KCMRestarting", "master-2", "warning"),
        ("KCMRestarting", "master-3", "warning"),
    ]
    assert "KCM on master-2 (prod) keeps restarting: 3 restarts in 600 s" in fired[0]["annotations"]["summary"]
    description = fired[0]["annotations"]["description"]
    assert "last exit status 1" in description and LOOP["last_error"] in description
    assert "none in its journal" in fired[1]["annotations"]["description"]

    harness.now += 120
    ended = harness.handle("master-2", "recovered", condition="restarting")
    assert [(r["alertname"], r["minion"]) for r in ended["resolved"]] == [("KCMRestarting", "master-2")]
    assert harness.alerts()[-1]["labels"] == fired[0]["labels"]
    assert [entry["labels"].get("minion") for entry in harness.store()["open"].values()] == ["master-3"]
    # master-2's next crash loop is a new incident
    harness.now += 600
    assert harness.handle("master-2", "restarting", **LOOP)["fired"]


def test_acquired_and_lost_are_not_alerts(harness):
    assert harness.handle("master-2", "acquired", holder="master-2_bbbb")["ignored"] is True
    assert harness.handle("master-1", "lost", holder="master-1_aaaa")["ignored"] is True
    assert harness.posts == [] and harness.events == []


def test_a_send_failure_is_retried_with_backoff(tmp_path, monkeypatch):
    harness = Harness(tmp_path, monkeypatch, module=kcm_alert, receiver_retries=3, receiver_backoff=0.5)
    sleeps = []
    monkeypatch.setattr(harness.module, "_sleep", sleeps.append)
    harness.fail_next = 2
    result = harness.handle("master-1", "changed", **CHANGE)
    assert result["failed"] is False and len(harness.alerts()) == 1
    assert sleeps == [0.5, 1.0]


def test_an_undeliverable_alert_is_kept_and_sent_by_the_next_flush(harness):
    harness.fail_next = 3
    result = harness.handle("master-1", "changed", **CHANGE)
    assert result["failed"] is True and harness.alerts() == []
    failed = [d for t, d in harness.events if t == "kcm/alert/send_failed"]
    assert len(failed) == 1
    assert "connection refused" in failed[0]["failed"][AM]
    # the same change from another master is a duplicate, and its flush delivers the kept alert
    assert harness.handle("master-2", "changed", **CHANGE)["duplicate"] is True
    assert [a["labels"]["new_node"] for a in harness.alerts()] == ["master-2"]
    assert harness.tags().count("kcm/alert/send_failed") == 1
    assert harness.tags().count("kcm/alert/delivered") == 1
    assert harness.store()["outbox"] == {}


def test_an_undelivered_unreachable_alert_is_sent_once_when_the_receiver_is_back(harness):
    harness.fail_next = 3
    assert harness.handle("master-1", "unreachable", reason="refused")["failed"] is True
    assert harness.handle("master-2", "unreachable", reason="refused")["fired"] == []
    assert harness.handle("master-3", "unreachable", reason="refused")["duplicate"] is True
    assert [a["labels"]["alertname"] for a in harness.alerts()] == ["KCMApiserverUnreachable"]


class _Receiver(http.server.BaseHTTPRequestHandler):
    answers = []
    bodies = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        length = int(self.headers["Content-Length"])
        type(self).bodies.append((self.path, json.loads(self.rfile.read(length))))
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Receiver.answers, _Receiver.bodies = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Receiver
    server.shutdown()
    server.server_close()


def test_real_http_retry_after_a_500_and_webhook_copy(tmp_path, monkeypatch, receiver):
    base, handler = receiver
    h = Harness(
        tmp_path,
        monkeypatch,
        module=kcm_alert,
        alertmanager_urls=[base + "/"],
        webhook_urls=[base + "/hook"],
        receiver_backoff=0.01,
    )
    real = load("_runners", "kcm_alert")
    real.__utils__ = utils()
    monkeypatch.setattr(h.module, "_post", real._post)  # the real HTTP client
    handler.answers = [500]
    result = h.handle("master-1", "changed", **CHANGE)
    events = h.tags()
    assert result["failed"] is False
    assert [path for path, _ in handler.bodies] == ["/api/v2/alerts", "/api/v2/alerts", "/hook"]
    hook = handler.bodies[-1][1]
    assert hook["kind"] == "changed" and hook["action"] == "fire"
    assert hook["alerts"][0]["labels"]["alertname"] == "KCMLeaderChanged"
    assert events == ["kcm/alert/changed"]


# --------------------------------------------------------------------------
# KCMCertExpiring
# --------------------------------------------------------------------------

NOT_AFTER = "2027-02-04T08:00:00Z"  # about 20 days after T0
CLIENT_FP = "c1" * 32
CA_FP = "ca" * 32
EXPIRING = {
    "fingerprint": CLIENT_FP,
    "files": ["cert", "kubeconfig:client"],
    "subject": "system:kube-controller-manager",
    "serial": "5eed01",
    "not_after": NOT_AFTER,
    "days_left": 20.0,
    "threshold": 21,
    "thresholds": [21, 7],
    "minion": "master-2",
}
CA = dict(EXPIRING, fingerprint=CA_FP, files=["ca_cert", "kubeconfig:ca"], subject="kcm-lab-ca", serial="ca01")
CRITICAL = {"threshold": 7, "days_left": 6.0}


def test_cert_expiring_payload(harness):
    result = harness.handle("master-2", "cert_expiring", **EXPIRING)
    assert result["fired"] and not result["failed"]
    ((url, (alert,)),) = harness.posts
    assert url == "http://127.0.0.1:9093/api/v2/alerts"
    # the certificate and the cluster are its identity: no master, file or threshold in the labels
    assert alert["labels"] == {
        "alertname": "KCMCertExpiring",
        "cluster": "prod",
        "severity": "warning",
        "fingerprint": CLIENT_FP,
        "env": "test",
    }
    text = alert["annotations"]["summary"] + " " + alert["annotations"]["description"]
    for part in ("system:kube-controller-manager", NOT_AFTER, "20.0 days", "5eed01", CLIENT_FP, "21-day"):
        assert part in text
    assert alert["annotations"]["used_by"] == "master-2 (cert, kubeconfig:client)"
    ends = datetime.datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00"))
    assert ends.timestamp() == pytest.approx(T0 + 4 * 60)  # re-sent while open: 4 intervals ahead
    starts = datetime.datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00"))
    assert starts.timestamp() == pytest.approx(T0)
    ((tag, data),) = harness.events
    assert tag == "kcm/alert/cert_expiring" and data["alerts"] == [alert]


@pytest.mark.parametrize(
    "threshold, thresholds, days_left, severity",
    [
        (21, [21, 7], 20.0, "warning"),
        (7, [21, 7], 6.5, "critical"),  # the smallest threshold
        (21, [21, 7], 5.0, "critical"),  # under 7 days, whatever the threshold
        (60, [60, 30, 14], 13.0, "warning"),  # 14 is the smallest here
        (14, [60, 30, 14], 13.0, "critical"),
        (400, [400], 6.9, "critical"),
    ],
)
def test_cert_expiring_severity(harness, threshold, thresholds, days_left, severity):
    harness.handle(
        "master-2", "cert_expiring", **dict(EXPIRING, threshold=threshold, thresholds=thresholds, days_left=days_left)
    )
    assert harness.alerts()[0]["labels"]["severity"] == severity


def test_one_alert_per_certificate_whichever_masters_and_files_use_it(harness):
    # the shared CA, reported by each of three masters; each master's own client certificate
    for master in ("master-1", "master-2", "master-3"):
        harness.handle(master, "cert_expiring", **dict(CA, minion=master))
        harness.handle(master, "cert_expiring", **dict(EXPIRING, minion=master, fingerprint=master[-1] * 64))
    identities = {tuple(sorted(a["labels"].items())) for a in harness.alerts()}
    assert sorted(dict(i)["fingerprint"] for i in identities) == sorted([CA_FP, "1" * 64, "2" * 64, "3" * 64])
    # each master that joins is posted at once in the alert's used_by (same labels: the same alert)
    ca = [a for a in harness.alerts() if a["labels"]["fingerprint"] == CA_FP]
    assert [a["annotations"]["used_by"] for a in ca] == [
        "master-1 (ca_cert, kubeconfig:ca)",
        "master-1 (ca_cert, kubeconfig:ca); master-2 (ca_cert, kubeconfig:ca)",
        "master-1 (ca_cert, kubeconfig:ca); master-2 (ca_cert, kubeconfig:ca); master-3 (ca_cert, kubeconfig:ca)",
    ]
    assert len({a["startsAt"] for a in ca}) == 1
    # the same report again, even days later: nothing; another cluster's certificate: its own alert
    posted = len(harness.alerts())
    harness.now = T0 + 5 * 86400
    assert harness.handle("master-2", "cert_expiring", **CA)["duplicate"] is True
    assert harness.handle("master-2", "cert_expiring", **dict(CA, cluster="other"))["fired"]
    assert len(harness.alerts()) == posted + 1


def test_a_rising_severity_replaces_the_warning_in_the_same_post(harness):
    harness.handle("master-1", "cert_expiring", **dict(CA, minion="master-1"))
    result = harness.handle("master-2", "cert_expiring", **dict(CA, **CRITICAL))
    assert [labels["severity"] for labels in result["fired"]] == ["critical"]
    assert [labels["severity"] for labels in result["resolved"]] == ["warning"]
    (_, last_post) = harness.posts[-1]
    assert sorted(a["labels"]["severity"] for a in last_post) == ["critical", "warning"]
    warning = next(a for a in last_post if a["labels"]["severity"] == "warning")
    assert warning["endsAt"].startswith(_iso(T0))
    # a master still at the warning threshold joins the critical alert, it does not bring the warning back
    joined = harness.handle("master-3", "cert_expiring", **dict(CA, minion="master-3"))
    assert [labels["severity"] for labels in joined["fired"]] == ["critical"] and joined["resolved"] == []


def test_cert_expiring_dedupe_holds_under_concurrent_reactor_threads(tmp_path, monkeypatch):
    harness = Harness(tmp_path, monkeypatch, module=kcm_alert)
    original = harness._post

    def slow_post(url, payload, cfg):
        threading.Event().wait(0.02)
        original(url, payload, cfg)

    monkeypatch.setattr(harness.module, "_post", slow_post)
    fingerprints = [f"{n}" * 64 for n in range(5)]
    barrier = threading.Barrier(30)
    errors = []

    def report(fingerprint, master):
        try:
            barrier.wait()
            harness.handle(master, "cert_expiring", **dict(EXPIRING, fingerprint=fingerprint, minion=master))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [
        threading.Thread(target=report, args=(fingerprint, master))
        for fingerprint in fingerprints
        for master in ("master-1", "master-2", "master-3")
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    # one alert each, posted once per master that joined it (its used_by grows), never per repeat
    posted = [a["labels"]["fingerprint"] for a in harness.alerts()]
    assert sorted(set(posted)) == fingerprints and all(posted.count(fp) == 3 for fp in fingerprints)
    assert {a["labels"]["severity"] for a in harness.alerts()} == {"warning"}


def test_a_certificate_alert_ends_when_every_master_using_it_has_renewed(harness):
    for master in ("master-1", "master-2", "master-3"):
        harness.handle(master, "cert_expiring", **dict(CA, minion=master))
    harness.now = T0 + 3600
    renewed = dict(CA, days_left=None)
    assert harness.handle("master-1", "cert_renewed", **renewed)["resolved"] == []
    assert harness.handle("master-2", "cert_renewed", **renewed)["resolved"] == []
    # posted again at once, naming the master still using it
    assert harness.alerts()[-1]["annotations"]["used_by"] == "master-3 (ca_cert, kubeconfig:ca)"
    harness.now = T0 + 3700
    result = harness.handle("master-3", "cert_renewed", **renewed)
    assert [labels["fingerprint"] for labels in result["resolved"]] == [CA_FP]
    assert harness.alerts()[-1]["endsAt"].startswith(_iso(T0 + 3700))
    assert "kcm/alert/resolved" in harness.tags()
    # a second report of the renewal has nothing left to do
    assert harness.handle("master-3", "cert_renewed", **renewed)["duplicate"] is True
    # its successor is alerted afresh when it runs low
    assert harness.handle("master-3", "cert_expiring", **dict(CA, fingerprint="ce" * 32, serial="ca02"))["fired"]


def test_an_expired_cert_does_not_arrive_resolved(harness):
    harness.handle(
        "master-2", "cert_expiring", **dict(EXPIRING, threshold=7, days_left=-2.0, not_after="2027-01-13T08:00:00Z")
    )
    ends = datetime.datetime.fromisoformat(harness.alerts()[0]["endsAt"].replace("Z", "+00:00")).timestamp()
    assert ends > T0


def _iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


# --------------------------------------------------------------------------
# trust: only KCM masters' own, signed reports count
# --------------------------------------------------------------------------


def _forge(h, case):
    """The tag and data of one forgery (or a replay) against the runner's checks."""
    data = dict(CHANGE, cluster="prod")
    if case == "a non-master signs its own report":
        return "salt/beacon/web-1/kcm_leader/changed", signed("web-1", "changed", data, h.now)
    if case == "a non-master names a master in the tag":
        return "salt/beacon/master-1/kcm_leader/changed", signed("web-1", "changed", data, h.now)
    if case == "a non-master fakes a master's id":
        forged = signed("web-1", "changed", data, h.now)
        return "salt/beacon/master-1/kcm_leader/changed", dict(forged, id="master-1")
    if case == "unsigned":
        return "salt/beacon/master-1/kcm_leader/changed", dict(data, id="master-1")
    if case == "a replay of an old signed report":
        return "salt/beacon/master-1/kcm_leader/changed", signed("master-1", "changed", data, h.now - 3600)
    if case == "a signed report altered on the way":
        return "salt/beacon/master-1/kcm_leader/changed", dict(
            signed("master-1", "changed", data, h.now), new_node="web-1"
        )
    if case == "a minion without an accepted key":
        h.masters.append("master-9")
        return "salt/beacon/master-9/kcm_leader/changed", signed("master-9", "changed", data, h.now)
    if case == "a path in the tag":
        return "salt/beacon/../../x/kcm_leader/changed", signed("master-1", "changed", data, h.now)
    raise AssertionError(case)


FORGERIES = [
    "a non-master signs its own report",
    "a non-master names a master in the tag",
    "a non-master fakes a master's id",
    "unsigned",
    "a replay of an old signed report",
    "a signed report altered on the way",
    "a minion without an accepted key",
    "a path in the tag",
]


@pytest.mark.parametrize("case", FORGERIES)
def test_a_forged_report_neither_alerts_nor_resolves(tmp_path, monkeypatch, case):
    h = Harness(tmp_path, monkeypatch, module=kcm_alert)
    h.handle("master-1", "no_leader", **DEAD)
    assert [a["labels"]["alertname"] for a in h.alerts()] == ["KCMNoLeader"]
    before = len(h.posts)

    tag, data = _forge(h, case)
    result = h.raw(tag, data)

    assert result.get("refused"), result
    assert len(h.posts) == before, "a forged report reached Alertmanager"
    assert "kcm/alert/refused" in h.tags()
    # the real condition stays open: a real change still resolves it
    h.handle("master-2", "changed", **CHANGE)
    assert [a["labels"]["alertname"] for a in h.alerts()[before:]] == ["KCMNoLeader", "KCMLeaderChanged"]


def test_the_signed_bytes_leave_out_the_signature_and_the_bus_fields():
    data = {"id": "master-1", "transitions": 4, "thresholds": [30, 7], "signed_at": T0, "_stamp": "x", "sig": "y"}
    signed = SIGNED_MESSAGE("changed", data)
    assert b"_stamp" not in signed and b'"y"' not in signed and signed == SIGNED_MESSAGE("changed", dict(data, sig="z"))


# --------------------------------------------------------------------------
# the store survives bad files, a full disk and floods
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", ["null", "[]", '"text"', '{"seen": [], "open": null}', '{"seen": {"k": 1}}', "{not json"]
)
def test_a_store_of_the_wrong_shape_is_reset_and_the_alert_sent(tmp_path, monkeypatch, content, caplog):
    h = Harness(tmp_path, monkeypatch, module=kcm_alert)
    store = tmp_path / "cache" / "kcm_alert" / "dedupe.json"
    store.parent.mkdir(parents=True)
    store.write_text(content)

    result = h.handle("master-1", "changed", **CHANGE)

    assert result["failed"] is False and result["fired"], result
    assert [a["labels"]["alertname"] for a in h.alerts()] == ["KCMLeaderChanged"]
    assert isinstance(json.loads(store.read_text())["seen"], dict)


def test_a_full_disk_still_sends_the_alert_and_leaves_no_temp_file(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch, module=kcm_alert)

    def full(fd):
        raise OSError(28, "No space left on device")

    # The state file is written, then synced: a full disk fails the sync at the latest.
    monkeypatch.setattr(os, "fsync", full)
    result = h.handle("master-1", "no_leader", **DEAD)

    assert result["failed"] is False
    assert [a["labels"]["alertname"] for a in h.alerts()] == ["KCMNoLeader"]
    assert sorted(p.name for p in (tmp_path / "cache" / "kcm_alert").iterdir()) == ["dedupe.json.lock"]


def test_the_store_is_bounded_and_a_certs_key_expires(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch, module=kcm_alert, max_seen=50)
    for serial in range(80):
        h.now += 1
        h.handle(
            "master-1",
            "cert_expiring",
            **dict(
                EXPIRING,
                serial=f"{serial:x}",
                fingerprint=f"{serial:064x}",
                not_after="9999-01-01T00:00:00Z",
                subject="x" * 5000,
            ),
        )
    store = json.loads((tmp_path / "cache" / "kcm_alert" / "dedupe.json").read_text())
    assert len(store["seen"]) <= 50
    assert max(e["keep_until"] for e in store["seen"].values()) <= h.now + 2 * 366 * 86400
    assert all(len(a["annotations"]["description"]) < 1000 for a in h.alerts())


# --------------------------------------------------------------------------
# the outbox: kept until accepted, bounded by endsAt, across restarts
# --------------------------------------------------------------------------


def test_an_alertmanager_that_refuses_then_accepts_gets_the_alert_once(harness):
    harness.fail_next = 3 * 2  # the report's own attempt and the first flush
    assert harness.handle("master-1", "changed", **CHANGE)["failed"] is True
    assert harness.module.flush() == {"delivered": 0, "pending": 1, "expired": 0}
    assert harness.module.flush() == {"delivered": 1, "pending": 0, "expired": 0}
    assert harness.module.flush() == {"delivered": 0, "pending": 0, "expired": 0}
    assert [a["labels"]["alertname"] for a in harness.alerts()] == ["KCMLeaderChanged"]
    assert harness.tags().count("kcm/alert/send_failed") == 1
    (delivered,) = [d for t, d in harness.events if t == "kcm/alert/delivered"]
    assert delivered["entries"] == [{"kind": "changed", "action": "fire", "attempts": 3}]
    assert delivered["alerts"] == harness.alerts()


def test_an_alert_whose_end_passed_undelivered_is_dropped_and_reported_once(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch, module=kcm_alert, event_ttl=600)
    h.fail_next = 3
    h.handle("master-1", "changed", **CHANGE)
    h.now = T0 + 599
    h.fail_next = 3
    assert h.module.flush() == {"delivered": 0, "pending": 1, "expired": 0}
    h.now = T0 + 601
    assert h.module.flush() == {"delivered": 0, "pending": 0, "expired": 1}
    assert h.module.flush() == {"delivered": 0, "pending": 0, "expired": 0}
    assert h.alerts() == []
    (expired,) = [d for t, d in h.events if t == "kcm/alert/expired"]
    assert expired["alert"]["labels"]["alertname"] == "KCMLeaderChanged"
    assert "connection refused" in expired["errors"][AM] and expired["attempts"] == 2


def test_a_restarted_master_delivers_what_its_outbox_held(tmp_path, monkeypatch):
    before = Harness(tmp_path, monkeypatch, module=kcm_alert)
    before.fail_next = 3
    assert before.handle("master-1", "no_leader", **DEAD)["failed"] is True

    after = Harness(tmp_path, monkeypatch, module=kcm_alert_other)  # a new process, the same cachedir
    assert after.module.flush() == {"delivered": 1, "pending": 0, "expired": 0}
    assert [a["labels"]["alertname"] for a in after.alerts()] == ["KCMNoLeader"]
    # what it had decided survived too: the condition is a duplicate, and still resolvable
    assert after.handle("master-2", "no_leader", **DEAD)["duplicate"] is True
    assert after.handle("master-2", "recovered", condition="no_leader", **DEAD)["resolved"]


def test_a_resolution_is_posted_after_the_firing_it_ends(harness):
    harness.fail_next = 3 + 3  # the firing's attempt, then the resolution's flush
    harness.handle("master-1", "stale", **DEAD)
    harness.now = T0 + 5
    harness.handle("master-1", "recovered", condition="stale", **DEAD)
    assert harness.alerts() == []
    assert harness.module.flush()["delivered"] == 2
    ((url, (fired, resolved)),) = harness.posts
    assert url == AM and fired["labels"] == resolved["labels"]
    assert resolved["endsAt"] == "2027-01-15T08:00:05Z" < fired["endsAt"]


def _holding(h, monkeypatch):
    """Make the next POSTs wait for the returned gate; `started` is set when one is waiting."""
    gate, started, original = threading.Event(), threading.Event(), h._post

    def held(url, payload, cfg):
        started.set()
        assert gate.wait(10)
        original(url, payload, cfg)

    monkeypatch.setattr(h.module, "_post", held)
    return gate, started


def test_two_flushes_at_once_post_an_entry_once(harness, monkeypatch):
    harness.fail_next = 3
    harness.handle("master-1", "changed", **CHANGE)
    gate, started = _holding(harness, monkeypatch)
    first = []
    thread = threading.Thread(target=lambda: first.append(harness.module.flush()))
    thread.start()
    assert started.wait(10)
    second = harness.module.flush()  # while the first one is posting
    gate.set()
    thread.join(10)
    assert second == {"delivered": 0, "pending": 1, "expired": 0}
    assert first == [{"delivered": 1, "pending": 0, "expired": 0}]
    assert len(harness.alerts()) == 1


def test_a_resolution_waits_while_another_sender_posts_its_firing(harness, monkeypatch):
    harness.fail_next = 3
    harness.handle("master-1", "no_leader", **DEAD)
    gate, started = _holding(harness, monkeypatch)
    thread = threading.Thread(target=harness.module.flush)
    thread.start()
    assert started.wait(10)
    resolving = harness.handle("master-2", "recovered", condition="no_leader", **DEAD)
    assert resolving["failed"] is True and harness.posts == []  # queued behind the firing
    gate.set()
    thread.join(10)
    harness.module.flush()
    assert [(a["labels"]["alertname"], a["endsAt"] > a["startsAt"]) for a in harness.alerts()] == [
        ("KCMNoLeader", True),
        ("KCMNoLeader", False),
    ]


def test_a_webhook_that_was_down_gets_its_copy_later_and_alertmanager_only_one(tmp_path, monkeypatch):
    hook = "https://hooks.example/kcm"
    h = Harness(tmp_path, monkeypatch, module=kcm_alert, webhook_urls=[hook])
    down, original = {hook}, h._post

    def post(url, payload, cfg):
        if url in down:
            raise ConnectionError("connection refused")
        original(url, payload, cfg)

    monkeypatch.setattr(h.module, "_post", post)
    assert h.handle("master-1", "changed", **CHANGE)["failed"] is True
    assert list(h.store()["outbox"].values())[0]["pending"] == [hook]
    down.clear()
    assert h.module.flush()["delivered"] == 1
    assert [url for url, _ in h.posts] == [AM, hook]
    assert h.posts[1][1]["alerts"] == h.posts[0][1]


# --------------------------------------------------------------------------
# two Salt masters (multi-master): the same report, the same alert
# --------------------------------------------------------------------------


def test_two_salt_masters_post_identical_labels_and_starts_at(tmp_path, monkeypatch):
    one = Harness(tmp_path, monkeypatch, module=kcm_alert, cache="cache-1")
    two = Harness(tmp_path, monkeypatch, module=kcm_alert_other, cache="cache-2")
    lost = dict(DEAD, renew_time="2027-01-15T07:59:30.5Z", lease_duration_seconds=15)
    change = dict(CHANGE, transitions=5, acquire_time="2027-01-15T07:59:58.123456Z")
    reports = [
        (f"salt/beacon/{r}/kcm_leader/{kind}", signed(r, kind, dict(data, cluster="prod"), T0 - 1))
        for kind, data in (
            ("no_leader", lost),
            ("unreachable", {"reason": "timeout"}),
            ("changed", change),
            ("stale", DEAD),
        )
        for r in REPORTERS
    ]
    for h, delay in ((one, 0.4), (two, 2.7)):  # each master handles them at its own time
        h.now = T0 + delay
        for tag, data in reports:
            h.raw(tag, data)

    def posted(h):
        return [(a["labels"], a["startsAt"]) for a in h.alerts()]

    assert posted(one) == posted(two)
    starts = {labels["alertname"]: start for labels, start in posted(one)}
    assert starts == {
        "KCMNoLeader": "2027-01-15T07:59:45Z",
        "KCMApiserverUnreachable": "2027-01-15T07:59:59Z",
        "KCMLeaderChanged": "2027-01-15T07:59:58Z",
        "KCMLeaderStale": "2027-01-15T07:59:59Z",
    }


# --------------------------------------------------------------------------
# reconcile: the Lease the masters read, against what was alerted
# --------------------------------------------------------------------------

CID = "6f1c0d3e-0000-4000-8000-00000000c1d0"
HOLDERS = {"master-1": "master-1_aaaa", "master-2": "master-2_bbbb", "master-3": "master-3_cccc"}


def lease(node, transitions, renewed=T0, expired=False):
    """A kcm.leader record as the masters return it."""
    text = datetime.datetime.fromtimestamp(renewed, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "holder": HOLDERS[node],
        "node": node,
        "minion": node,
        "transitions": transitions,
        "acquire_time": text,
        "renew_time": text,
        "lease_duration_seconds": 15,
        "expired": expired,
        "source": "lease",
    }


class Masters:
    """The answers of the KCM masters to the reconcile's one publish."""

    def __init__(self, h, monkeypatch):
        self.record, self.answering, self.erroring, self.asked = None, set(REPORTERS), set(), []
        monkeypatch.setitem(h.module.__utils__, "kcm_alert_decide.ask_masters", self.ask)

    def ask(self, opts, masters, timeout, trust, now, window, kit):
        self.asked.append(list(masters))
        return {
            m: {
                "kcm.leader": {"error": "unreachable", "detail": "timed out"} if m in self.erroring else self.record,
                "kcm.status": [{"minion": m, "cluster": "prod", "cluster_id": CID}],
            }
            for m in masters
            if m in self.answering
        }


@pytest.fixture
def masters(harness, monkeypatch):
    return Masters(harness, monkeypatch)


def test_a_missed_transition_is_raised_once_and_its_late_event_is_a_duplicate(harness, masters):
    masters.record = lease("master-1", 4)
    first = harness.module.reconcile()
    assert first["clusters"] == {f"prod#{CID}": "baseline"} and harness.posts == []
    assert masters.asked == [sorted(REPORTERS)]

    masters.record = lease("master-2", 5, renewed=T0 + 20)  # the failover's event never came
    harness.now = T0 + 30
    second = harness.module.reconcile()
    assert second["clusters"] == {f"prod#{CID}": "changed"} and second["delivered"] == 1
    ((_, (alert,)),) = harness.posts
    assert alert["labels"] == {
        "alertname": "KCMLeaderChanged",
        "cluster": "prod",
        "cluster_id": CID,
        "severity": "warning",
        "old_node": "master-1",
        "new_node": "master-2",
        "transitions": "5",
        "env": "test",
    }
    assert alert["startsAt"] == "2027-01-15T08:00:20Z"  # the Lease's acquireTime

    # the event that the minion held through the outage arrives now: the same key
    late = harness.handle("master-3", "changed", **dict(CHANGE, transitions=5, cluster_id=CID))
    assert late["duplicate"] is True
    assert harness.module.reconcile()["clusters"] == {f"prod#{CID}": "in step"}
    assert len(harness.alerts()) == 1


def test_a_transition_an_event_brought_is_not_raised_again_by_the_reconcile(harness, masters):
    masters.record = lease("master-1", 4)
    harness.module.reconcile()
    assert harness.handle("master-1", "changed", **dict(CHANGE, transitions=5, cluster_id=CID))["fired"]
    masters.record = lease("master-2", 5)
    assert harness.module.reconcile()["raised"] == []
    assert len(harness.alerts()) == 1


def test_the_unreachable_alert_of_a_master_that_died_is_resolved_when_the_others_read_the_lease(harness, masters):
    masters.record = lease("master-2", 5)
    harness.handle("master-3", "unreachable", reason="timeout", cluster_id=CID)
    masters.erroring = {"master-3"}  # still there, still failing: stays open
    assert harness.module.reconcile()["resolved"] == []
    masters.answering = {"master-1", "master-2"}  # then its machine is gone
    masters.erroring = set()
    harness.now = T0 + 60
    done = harness.module.reconcile()
    assert [labels["alertname"] for labels in done["resolved"]] == ["KCMApiserverUnreachable"]
    resolved = harness.alerts()[-1]
    assert resolved["endsAt"] == "2027-01-15T08:01:00Z"
    assert harness.module.reconcile()["resolved"] == []


def test_the_reconcile_resolves_stale_only_once_the_leader_renewed(harness, masters):
    harness.handle("master-1", "stale", cluster_id=CID, **dict(DEAD, renew_time=lease("master-2", 4)["renew_time"]))
    masters.record = lease("master-2", 4)
    assert harness.module.reconcile()["resolved"] == []
    masters.record = lease("master-2", 4, renewed=T0 + 10)
    assert [labels["alertname"] for labels in harness.module.reconcile()["resolved"]] == ["KCMLeaderStale"]


def test_no_leader_stays_open_while_no_master_reads_a_live_lease(harness, masters):
    harness.handle("master-1", "no_leader", cluster_id=CID, **DEAD)
    masters.record = lease("master-2", 4, expired=True)
    assert harness.module.reconcile()["resolved"] == []
    masters.erroring = set(REPORTERS)
    assert harness.module.reconcile()["clusters"] == {f"prod#{CID}": "no master could read the Lease"}
    masters.erroring, masters.record = set(), lease("master-2", 5)
    assert [labels["alertname"] for labels in harness.module.reconcile()["resolved"]] == ["KCMNoLeader"]


def signed_answer(minion, nonce, at, signer=None, **reading):
    """A kcm_beacon.answer as ``signer`` (default: ``minion``) signs it."""
    answer = dict(reading, id=minion, nonce=nonce, signed_at=at)
    signature = minion_key(signer or minion).sign(SIGNED_MESSAGE("answer", answer), padding.PKCS1v15(), hashes.SHA256())
    return dict(answer, sig=base64.b64encode(signature).decode())


def test_the_reconcile_reads_only_the_listed_masters_own_signed_answers(tmp_path, monkeypatch):
    # L11: a job return on the master bus can be fired by any minion in another's name.
    h = Harness(tmp_path, monkeypatch, module=kcm_alert)
    calls = []
    record = lease("master-2", 5)

    class Client:
        def cmd(self, tgt, fun, arg, timeout, tgt_type):
            calls.append((tgt, fun, timeout, tgt_type))
            nonce = arg[0]
            row = [{"cluster": "prod", "cluster_id": CID}]
            return {
                "master-1": signed_answer("master-1", nonce, T0, leader=record, status=row),
                "master-2": signed_answer("master-2", nonce, T0, signer="web-1", leader=record, status=row),
                "master-3": signed_answer("master-3", "an-old-question", T0, leader=record, status=row),
                "web-1": signed_answer("web-1", nonce, T0, leader=record, status=row),
            }

    import salt.client

    monkeypatch.setattr(salt.client, "get_local_client", lambda mopts: Client())
    trust = h.module._trust()
    answers = utils()["kcm_alert_decide.ask_masters"](
        {}, ["master-1", "master-2", "master-3"], 7, trust, T0, 300, h.module._kit()
    )
    assert calls == [(["master-1", "master-2", "master-3"], "kcm_beacon.answer", 7, "list")]
    assert list(answers) == ["master-1"]
    assert answers["master-1"]["kcm.leader"] == record
    assert utils()["kcm_alert_decide.ask_masters"]({}, [], 7, trust, T0, 300, h.module._kit()) == {} and len(calls) == 1


@pytest.mark.parametrize(
    "master, message",
    [
        ({"reconcile_interval": 0}, "kcm:master:reconcile_interval: 0 is not a positive number of seconds"),
        ({"flush_interval": -10}, "kcm:master:flush_interval: -10 is not a positive number of seconds"),
        ({"flush_interval": "10"}, "kcm:master:flush_interval: '10' is not an integer"),
        ({"reconcile_interval": 1.5}, "kcm:master:reconcile_interval: 1.5 is not an integer"),
        ({"renew_interval": -1}, "kcm:master:renew_interval: -1 is not seconds (0 turns the renewal off)"),
        ({"renew_interval": "daily"}, "kcm:master:renew_interval: 'daily' is not an integer"),
    ],
)
def test_the_schedule_intervals_are_validated_naming_the_key(kcm_config, master, message):
    settings = dict({"config_dir": "/etc/salt/master.d", "masters": "master-*"}, **master)
    problems = kcm_config.master_problems(settings)
    assert any(p.startswith(message) for p in problems), problems


@pytest.mark.parametrize(
    "tag", ["salt/beacon/master-2/kcm_leader/cert_expiring", "salt/beacon/master-2/kcm_cert/changed"]
)
def test_a_report_under_the_other_beacons_name_is_refused(harness, tag):
    kind = tag.rsplit("/", 1)[1]
    data = dict(EXPIRING, cluster="prod") if kind.startswith("cert_") else {"cluster": "prod", "holder": "master-2"}
    result = harness.raw(tag, signed("master-2", kind, data, harness.now))

    assert not result.get("fired") and harness.alerts() == []


def test_two_failovers_between_the_same_nodes_are_two_alerts(harness):
    first = harness.handle("master-1", "changed", **CHANGE)
    back = harness.handle("master-1", "changed", **dict(CHANGE, transitions=CHANGE["transitions"] + 2))

    assert first["fired"] and back["fired"]
    fingerprints = {tuple(sorted(a["labels"].items())) for a in harness.alerts()}
    assert len(fingerprints) == 2, "Alertmanager would merge them into one alert"
