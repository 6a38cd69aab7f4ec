"""
Certificate expiry, all real: the kcm_leader beacon reads the certificates the formula laid
down (kcm_pki.cert_status), reports `cert_expiring`, the reactor hands it to the kcm_alert
runner, and Alertmanager holds exactly one KCMCertExpiring per cert and threshold.

The fixtures are those of test_alerts.py (imported, so this module starts its own copies):
a control plane whose CA and certificates live 7 days, three minions with the formula's
default thresholds [30, 7]. One minion then gets `kcm:beacon:cert_thresholds: [400]` and
`cert_check_interval: 1` through pillar and `kcm.beacon`, so its certificates cross a new
threshold while the test watches.
"""

import json
import time
from pathlib import Path

import pytest
import yaml

from kcmlab.controlplane import wait_until
from tests.e2e.conftest import k8s_bin  # noqa: F401 (fixture)
from tests.integration.test_alerts import (  # noqa: F401 (fixtures)
    MINION_ID,
    WAIT,
    _events,
    _wait_events,
    alertmanager,
    cluster,
    control_plane,
    minions,
    salt_master,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

NODE = "master-1"
THRESHOLD = 400  # above the test CA's 7 days: every certificate of NODE is below it
# Beacon polls (interval 1 s, one cert read per poll) after which a repeat would have shown.
SETTLE = 6


def _cert_reports(event_listener, master, minion_id, since, cert="cert", threshold=THRESHOLD):
    found = _events(event_listener, master, f"salt/beacon/{minion_id}/kcm_leader/cert_expiring", since)
    return [e for e in found if e.data.get("cert") == cert and e.data.get("threshold") == threshold]


def _cert_alerts_sent(event_listener, master, minion_id, since, cert="cert", threshold=THRESHOLD):
    found = _events(event_listener, master, "kcm/alert/cert_expiring", since)
    return [a for e in found for a in e.data["alerts"]
            if a["labels"].get("minion") == minion_id and a["labels"].get("cert") == cert
            and a["labels"].get("threshold") == str(threshold)]


def _with_cert_thresholds(master, minion, thresholds):
    """Pillar kcm:beacon for `minion` only, then kcm.beacon: the state passes the keys to the beacon."""
    # the directory test_alerts' salt_master fixture wrote kcm.sls to (salt-factories adds its own)
    (pillar_dir,) = [Path(d) for d in master.config["pillar_roots"]["base"] if (Path(d) / "kcm.sls").exists()]
    (pillar_dir / "kcm_cert.sls").write_text(yaml.safe_dump(
        {"kcm": {"beacon": {"cert_thresholds": thresholds, "cert_check_interval": 1}}}))
    top = pillar_dir / "top.sls"
    entry = f"  '{minion.id}':\n    - kcm_cert\n"
    if entry not in top.read_text():
        top.write_text(top.read_text() + entry)
    ret = minion.salt_call_cli(timeout=180).run("state.apply", "kcm.beacon")
    assert ret.returncode == 0 and all(s["result"] for s in ret.data.values()), ret
    listed = minion.salt_call_cli(timeout=60).run("beacons.list", return_yaml=False)
    settings = {k: v for item in listed.data["kcm_leader"] for k, v in item.items()}
    assert settings["cert_thresholds"] == thresholds and settings["cert_check_interval"] == 1, listed.data


def test_a_certificate_below_a_threshold_gives_one_alert_also_across_a_restart(
        minions, cluster, salt_master, event_listener, alertmanager):  # noqa: F811 (imported fixtures)
    minion_id = MINION_ID[NODE]
    # the formula's defaults ([30, 7]) already did their part on every minion: the 7-day
    # test certificates are below 30 days (7.0 left, rounded, for the first minutes: below 7
    # only later, when the smallest threshold makes it critical); one alert per cert either way
    for node in ("master-2", "master-3"):
        default = wait_until(lambda node=node: alertmanager.active(
            alertname="KCMCertExpiring", minion=MINION_ID[node], cert="cert"),
            WAIT, f"KCMCertExpiring (default thresholds) for {MINION_ID[node]}")
        assert len(default) == 1, default
        labels = default[0]["labels"]
        assert (labels["threshold"], labels["severity"]) in (("30", "warning"), ("7", "critical")), labels

    since = time.time()
    _with_cert_thresholds(salt_master, minions[NODE], [THRESHOLD])

    reports = _wait_events(event_listener, salt_master, f"salt/beacon/{minion_id}/kcm_leader/cert_expiring",
                           since, 1, f"a cert_expiring beacon event from {minion_id}")
    reports = wait_until(lambda: _cert_reports(event_listener, salt_master, minion_id, since) or None,
                         WAIT, f"cert_expiring for 'cert' below {THRESHOLD} days")
    report = reports[0].data
    assert report["subject"] == "system:kube-controller-manager"
    assert 0 < report["days_left"] <= 7 and report["serial"] and report["not_after"].endswith("Z")
    assert report["minion"] == minion_id and report["thresholds"] == [THRESHOLD]

    sent = wait_until(lambda: _cert_alerts_sent(event_listener, salt_master, minion_id, since) or None,
                      WAIT, "kcm/alert/cert_expiring from the runner")
    assert len(sent) == 1
    firing = wait_until(lambda: alertmanager.active(alertname="KCMCertExpiring", minion=minion_id, cert="cert",
                                                    threshold=str(THRESHOLD)),
                        WAIT, "KCMCertExpiring in Alertmanager")
    assert len(firing) == 1
    alert = firing[0]
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["env"] == "it"
    assert "system:kube-controller-manager" in alert["annotations"]["description"]
    assert report["not_after"] in alert["annotations"]["description"]
    ends = alert["endsAt"].replace("Z", "").split(".")[0]
    assert ends == report["not_after"].rstrip("Z")  # the alert lasts as long as the certificate

    # the beacon keeps reading every second: nothing is announced twice ...
    time.sleep(SETTLE)
    assert len(_cert_reports(event_listener, salt_master, minion_id, since)) == 1
    # ... nor after a minion restart (the announced set is in the beacon's state file):
    # a threshold added after the restart is the only news, which also shows that the
    # restarted beacon reads the certificates
    restarted = time.time()
    minions[NODE].terminate()
    minions[NODE].start()
    time.sleep(SETTLE)
    _with_cert_thresholds(salt_master, minions[NODE], [THRESHOLD, 300])
    wait_until(lambda: _cert_reports(event_listener, salt_master, minion_id, restarted, threshold=300) or None,
               WAIT, f"cert_expiring for 'cert' below 300 days from the restarted {minion_id}")
    time.sleep(SETTLE)
    again = _events(event_listener, salt_master, f"salt/beacon/{minion_id}/kcm_leader/cert_*", restarted)
    assert sorted(e.data["threshold"] for e in again if e.data["cert"] == "cert") == [300], \
        [(e.tag, e.data) for e in again]
    assert len(_cert_reports(event_listener, salt_master, minion_id, since)) == 1
    assert len(_cert_alerts_sent(event_listener, salt_master, minion_id, since)) == 1
    assert len(alertmanager.active(alertname="KCMCertExpiring", minion=minion_id, cert="cert",
                                   threshold=str(THRESHOLD))) == 1

    # no key material anywhere on the buses while this ran
    daemons = [salt_master.id] + [m.id for m in minions.values()]
    everything = event_listener.get_events([(daemon, "*") for daemon in daemons], after_time=since)
    leaked = [e.tag for e in everything if "PRIVATE KEY" in json.dumps(e.data, default=str)]
    assert leaked == []
    cert_events = [e for e in everything if "cert_expiring" in e.tag or "cert_renewed" in e.tag]
    assert cert_events and not [e.tag for e in cert_events if "BEGIN" in json.dumps(e.data, default=str)]
