"""Certificate expiry on the lab: the beacon of each machine reads the KCM certificate the
formula installed, the runner alerts once per certificate and threshold, across a minion
restart too, and no key material is ever on the bus."""

from __future__ import annotations

import datetime
import json
import time

import yaml

from kcmlab.controlplane import wait_until
from kcmlab.formula import REPO

from .conftest import BEACON, WAIT, events

NODE = "master-1"
THRESHOLD = 400  # above the lab CA's 7 days: every certificate of NODE is below it
MARKER = 200  # the last threshold added: its report and alert follow any repeat of the others
# Beacon polls (interval 1 s, one certificate read per poll) after which a repeat would have shown.
SETTLE = 6 * BEACON["interval"]
# kcm:master:resend_interval as the lab's kcm.master writes it (the default).
RESEND = yaml.safe_load((REPO / "formula/kcm/defaults.yaml").read_text())["kcm"]["master"]["resend_interval"]


def _cert_reports(cluster, since, cert="cert", threshold=THRESHOLD):
    found = events(cluster, f"salt/beacon/{NODE}/kcm_cert/cert_expiring", since)
    return [e for e in found if e[2].get("cert") == cert and e[2].get("threshold") == threshold]


def _cert_alerts_sent(cluster, since, cert="cert", threshold=THRESHOLD):
    return [a for e in events(cluster, "kcm/alert/cert_expiring", since) for a in e[2]["alerts"]
            if a["labels"].get("minion") == NODE and a["labels"].get("cert") == cert
            and a["labels"].get("threshold") == str(threshold)]


def _with_cert_thresholds(cluster, thresholds, interval=1):
    """Pillar kcm:beacon for NODE only, then kcm.beacon: the state passes the keys to the beacon."""
    cluster.change_pillar([NODE], beacon={"cert_thresholds": thresholds, "cert_check_interval": interval})
    cluster.apply("kcm.beacon", target=[NODE])
    listed = cluster.salt("beacons.list", target=[NODE], return_yaml=False)[NODE]
    settings = {k: v for item in listed["kcm_cert"] for k, v in item.items()}
    assert settings["cert_thresholds"] == thresholds and settings["cert_check_interval"] == interval, listed


def _restart_minion(cluster):
    cluster.machine(NODE).systemctl("restart", "salt-minion")
    cluster.master.wait_for_minions([NODE])


def test_a_certificate_below_a_threshold_gives_one_alert_also_across_a_restart(alert_cluster, alertmanager):
    cluster = alert_cluster
    # the formula's defaults ([30, 7]) already did their part on every machine: the 7-day
    # lab certificates are below 30 days (7.0 left, rounded, for the first minutes: below 7
    # only later, when the smallest threshold makes it critical); one alert per cert either way
    for node in ("master-2", "master-3"):
        default = wait_until(lambda node=node: alertmanager.active(alertname="KCMCertExpiring", minion=node,
                                                                   cert="cert"),
                             WAIT, f"KCMCertExpiring (default thresholds) for {node}")
        assert len(default) == 1, default
        labels = default[0]["labels"]
        assert (labels["threshold"], labels["severity"]) in (("30", "warning"), ("7", "critical")), labels

    since = time.time()
    try:
        _with_cert_thresholds(cluster, [THRESHOLD])
        reports = wait_until(lambda: _cert_reports(cluster, since) or None, WAIT,
                             f"cert_expiring for 'cert' below {THRESHOLD} days")
        report = reports[0][2]
        assert report["subject"] == "system:kube-controller-manager"
        assert 0 < report["days_left"] <= 7 and report["serial"] and report["not_after"].endswith("Z")
        assert report["minion"] == NODE and report["thresholds"] == [THRESHOLD]

        sent = wait_until(lambda: _cert_alerts_sent(cluster, since) or None, WAIT,
                          "kcm/alert/cert_expiring from the runner")
        assert len(sent) == 1
        firing = wait_until(lambda: alertmanager.active(alertname="KCMCertExpiring", minion=NODE, cert="cert",
                                                        threshold=str(THRESHOLD)),
                            WAIT, "KCMCertExpiring in Alertmanager")
        assert len(firing) == 1
        alert = firing[0]
        assert alert["labels"]["severity"] == "critical" and alert["labels"]["env"] == "e2e"
        assert "system:kube-controller-manager" in alert["annotations"]["description"]
        assert report["not_after"] in alert["annotations"]["description"]
        # Open while the certificate is below the threshold: re-sent every resend_interval (the
        # default 60 s here), each time with endsAt 4 intervals ahead, never the certificate's notAfter.
        ends = datetime.datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00")).timestamp()
        assert time.time() < ends <= time.time() + 4 * RESEND + 1, alert["endsAt"]

        # the beacon keeps reading every second: nothing is announced twice, nor after a
        # minion restart (the announced set is in the beacon's state file): a threshold added
        # after the restart is the only news, which also shows that the restarted beacon
        # reads the certificates. Each wait gives the beacon polls in which a repeat would
        # show; a last threshold's report, which follows them all, closes the window.
        time.sleep(SETTLE)
        restarted = time.time()
        _restart_minion(cluster)
        time.sleep(SETTLE)
        _with_cert_thresholds(cluster, [THRESHOLD, 300])
        wait_until(lambda: _cert_reports(cluster, restarted, threshold=300) or None, WAIT,
                   f"cert_expiring for 'cert' below 300 days from the restarted {NODE}")
        time.sleep(SETTLE)
        _with_cert_thresholds(cluster, [THRESHOLD, 300, MARKER])
        wait_until(lambda: _cert_alerts_sent(cluster, restarted, threshold=MARKER) or None, WAIT,
                   f"the runner's alert for the marker threshold {MARKER}")
        again = events(cluster, f"salt/beacon/{NODE}/kcm_cert/cert_*", restarted)
        assert sorted(e[2]["threshold"] for e in again if e[2]["cert"] == "cert") == [MARKER, 300], again
        assert len(_cert_reports(cluster, since)) == 1
        assert len(_cert_alerts_sent(cluster, since)) == 1
        assert len(alertmanager.active(alertname="KCMCertExpiring", minion=NODE, cert="cert",
                                       threshold=str(THRESHOLD))) == 1
        assert events(cluster, "kcm/alert/refused", since) == []

        # no key material anywhere on the master's bus while this ran (the minions' events included)
        everything = events(cluster, "*", since)
        leaked = [e[1] for e in everything if "PRIVATE KEY" in json.dumps(e[2], default=str)]
        assert leaked == []
        cert_events = [e for e in everything if "cert_expiring" in e[1] or "cert_renewed" in e[1]]
        assert cert_events and not [e[1] for e in cert_events if "BEGIN" in json.dumps(e[2], default=str)]
    finally:
        cluster.change_pillar([NODE], beacon={"cert_thresholds": [30, 7], "cert_check_interval": 3600})
        cluster.apply("kcm.beacon", target=[NODE])
