"""Certificate expiry on the lab: the beacon of each machine reads the certificates the formula
installed; Alertmanager holds one KCMCertExpiring per certificate (the lab CA, the KCM client
certificate the three masters share, later each master's own), whichever masters and files use
it; a threshold is announced once, across a minion restart too; the alert ends when every master
using the certificate has renewed it; no key material is ever on the bus."""

from __future__ import annotations

import datetime
import json
import time

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from kcmlab.controlplane import wait_until
from kcmlab.formula import REPO
from kcmlab.pki import KCM_CN

from .conftest import BEACON, WAIT, events

NODE = "master-1"
MASTERS = ("master-1", "master-2", "master-3")
THRESHOLD = 400  # above the lab's 7-day certificates: every certificate of NODE is below it
MARKER = 200  # the last threshold added: its report follows any repeat of the others
# Beacon polls (interval 1 s, one certificate read per poll) after which a repeat would have shown.
SETTLE = 6 * BEACON["interval"]
DEFAULTS = yaml.safe_load((REPO / "formula/kcm/defaults.yaml").read_text())["kcm"]
# kcm:master:resend_interval as the lab's kcm.master writes it (the default).
RESEND = DEFAULTS["master"]["resend_interval"]


def _fingerprint(pem: str) -> str:
    """SHA-256 of the certificate, computed here from the PEM the lab handed out."""
    return x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA256()).hex()


def _lab_certificates(cluster) -> dict[str, str]:
    """{fingerprint: what it is} of the two certificates every master of the lab uses."""
    pki = cluster.pillars[NODE]["kcm"]["pki"]
    return {_fingerprint(pki["ca_cert"]): "ca", _fingerprint(pki["cert"]): "client"}


def _reports(cluster, since, fingerprint, threshold=None, node=NODE, kind="cert_expiring"):
    found = events(cluster, f"salt/beacon/{node}/kcm_cert/{kind}", since)
    return [
        e
        for e in found
        if e[2].get("fingerprint") == fingerprint and (threshold is None or e[2].get("threshold") == threshold)
    ]


def _with_cert_thresholds(cluster, thresholds, nodes=(NODE,), interval=1):
    """Pillar kcm:beacon for ``nodes`` only, then kcm.beacon: the state passes the keys to the beacon."""
    cluster.change_pillar(list(nodes), beacon={"cert_thresholds": thresholds, "cert_check_interval": interval})
    cluster.apply("kcm.beacon", target=list(nodes))
    for node, listed in cluster.salt("beacons.list", target=list(nodes), return_yaml=False).items():
        settings = {k: v for item in listed["kcm_cert"] for k, v in item.items()}
        assert settings["cert_thresholds"] == thresholds and settings["cert_check_interval"] == interval, (node, listed)


def _restore_beacons(cluster):
    beacon = DEFAULTS["beacon"]
    _with_cert_thresholds(cluster, beacon["cert_thresholds"], MASTERS, beacon["cert_check_interval"])


def _used_by(files, masters=MASTERS):
    return "; ".join(f"{master} ({files})" for master in masters)


def test_each_certificate_is_one_alert_whichever_masters_and_files_use_it(alert_cluster, alertmanager):
    cluster = alert_cluster
    certificates = _lab_certificates(cluster)
    expected = {"ca": _used_by("ca_cert, kubeconfig:ca"), "client": _used_by("cert, kubeconfig:client")}

    # The formula's default thresholds (21, 7) did their part at each beacon's first read: the
    # lab's 7-day certificates are below 21 days. Three masters, two files each, two certificates.
    def two_alerts_naming_every_master():
        found = alertmanager.active(alertname="KCMCertExpiring")
        by_cert = {certificates.get(a["labels"]["fingerprint"]): a["annotations"].get("used_by") for a in found}
        return found if len(found) == 2 and by_cert == expected else None

    found = wait_until(
        two_alerts_naming_every_master,
        WAIT + RESEND,
        "one KCMCertExpiring per lab certificate, each naming the three masters",
    )
    for alert in found:
        assert set(alert["labels"]) == {"alertname", "cluster", "cluster_id", "fingerprint", "severity", "env"}
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["labels"]


def test_a_threshold_is_announced_once_also_across_a_restart(alert_cluster, alertmanager):
    cluster = alert_cluster
    client = next(fp for fp, what in _lab_certificates(cluster).items() if what == "client")
    since = time.time()
    try:
        _with_cert_thresholds(cluster, [THRESHOLD])
        reports = wait_until(
            lambda: _reports(cluster, since, client, THRESHOLD) or None,
            WAIT,
            f"cert_expiring for the client certificate below {THRESHOLD} days",
        )
        report = reports[0][2]
        assert report["subject"] == KCM_CN and report["files"] == ["cert", "kubeconfig:client"]
        assert 0 < report["days_left"] <= 7 and report["serial"] and report["not_after"].endswith("Z")
        assert report["minion"] == NODE and report["thresholds"] == [THRESHOLD]

        # the smallest threshold of NODE is critical: the certificate's one alert is critical now
        firing = wait_until(
            lambda: alertmanager.active(alertname="KCMCertExpiring", fingerprint=client, severity="critical") or None,
            WAIT,
            "the client certificate's KCMCertExpiring, critical",
        )
        assert len(alertmanager.active(alertname="KCMCertExpiring", fingerprint=client)) == 1
        alert = firing[0]
        assert alert["labels"]["env"] == "e2e" and KCM_CN in alert["annotations"]["summary"]
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
        cluster.machine(NODE).systemctl("restart", "salt-minion")
        cluster.master.wait_for_minions([NODE])
        time.sleep(SETTLE)
        _with_cert_thresholds(cluster, [THRESHOLD, 300])
        wait_until(
            lambda: _reports(cluster, restarted, client, 300) or None,
            WAIT,
            f"cert_expiring below 300 days from the restarted {NODE}",
        )
        time.sleep(SETTLE)
        _with_cert_thresholds(cluster, [THRESHOLD, 300, MARKER])
        wait_until(
            lambda: _reports(cluster, restarted, client, MARKER) or None,
            WAIT,
            f"the report of the marker threshold {MARKER}",
        )
        again = _reports(cluster, restarted, client)
        assert sorted(e[2]["threshold"] for e in again) == [MARKER, 300], again
        assert len(_reports(cluster, since, client, THRESHOLD)) == 1
        assert len(alertmanager.active(alertname="KCMCertExpiring", fingerprint=client)) == 1
        assert events(cluster, "kcm/alert/refused", since) == []

        # no key material anywhere on the master's bus while this ran (the minions' events included)
        everything = events(cluster, "*", since)
        leaked = [e[1] for e in everything if "PRIVATE KEY" in json.dumps(e[2], default=str)]
        assert leaked == []
        cert_events = [e for e in everything if "cert_expiring" in e[1] or "cert_renewed" in e[1]]
        assert cert_events and not [e[1] for e in cert_events if "BEGIN" in json.dumps(e[2], default=str)]
    finally:
        _restore_beacons(cluster)


def test_the_alert_ends_once_every_master_using_the_certificate_has_renewed_it_to_its_own(alert_cluster, alertmanager):
    """The shared client certificate's alert ends once all three masters renewed it; then each
    master has its own client certificate (near expiry too, like the lab CA they share): one
    alert per distinct certificate, four in all, each naming only the masters that use it."""
    cluster = alert_cluster
    old = next(fp for fp, what in _lab_certificates(cluster).items() if what == "client")
    names = cluster.pillars[NODE]["kcm"]["pki"]
    assert wait_until(
        lambda: alertmanager.active(alertname="KCMCertExpiring", fingerprint=old) or None,
        WAIT,
        "the client certificate's KCMCertExpiring",
    )
    since = time.time()
    renewed = {}
    try:
        # each master reads its certificates every second from here on
        _with_cert_thresholds(cluster, DEFAULTS["beacon"]["cert_thresholds"], MASTERS)
        sans = [*cluster.all_names, *(cluster.lab.address_of(n) for n in cluster.all_names), "127.0.0.1", "localhost"]
        for master in MASTERS:
            cert, key = cluster.cp.ca.issue(KCM_CN, server=True, client=True, names=sans)  # the lab's 7 days
            renewed[master] = _fingerprint(cert)
            cluster.change_pillar([master], pki={"cert": cert, "key": key})
        assert names["ca_cert"] == cluster.pillars[NODE]["kcm"]["pki"]["ca_cert"]

        cluster.apply("kcm", target=["master-1", "master-2"])
        for master in ("master-1", "master-2"):
            wait_until(
                lambda m=master: _reports(cluster, since, old, node=m, kind="cert_renewed") or None,
                WAIT,
                f"{master}: cert_renewed of the old client certificate",
            )
        # still used by master-3: the alert stays, and says so
        still = wait_until(
            lambda: (
                [
                    a
                    for a in alertmanager.active(alertname="KCMCertExpiring", fingerprint=old)
                    if a["annotations"].get("used_by") == "master-3 (cert, kubeconfig:client)"
                ]
                or None
            ),
            WAIT,
            "the old certificate's alert naming master-3 only",
        )
        assert len(still) == 1
        assert [
            e
            for e in events(cluster, "kcm/alert/resolved", since)
            if any(a["labels"].get("fingerprint") == old for a in e[2].get("alerts", []))
        ] == []

        cluster.apply("kcm", target=["master-3"])
        wait_until(
            lambda: not alertmanager.active(alertname="KCMCertExpiring", fingerprint=old),
            WAIT,
            "the old client certificate's alert resolved once master-3 renewed too",
        )
        # The runner fires its follow-up after Alertmanager took the post: wait for it too.
        resolutions = wait_until(
            lambda: (
                [
                    e
                    for e in events(cluster, "kcm/alert/resolved", since)
                    if any(a["labels"].get("fingerprint") == old for a in e[2].get("alerts", []))
                ]
                or None
            ),
            WAIT,
            "the runner's kcm/alert/resolved of the old client certificate",
        )
        assert len(resolutions) == 1, resolutions
        # each master's own certificate is one alert naming that master; the CA's names all three
        ca = next(fp for fp, what in _lab_certificates(cluster).items() if what == "ca")
        expected = {fp: _used_by("cert, kubeconfig:client", [master]) for master, fp in renewed.items()}
        expected[ca] = _used_by("ca_cert, kubeconfig:ca")

        def one_alert_per_certificate():
            found = alertmanager.active(alertname="KCMCertExpiring")
            used_by = {a["labels"]["fingerprint"]: a["annotations"].get("used_by") for a in found}
            return found if len(found) == len(expected) and used_by == expected else None

        wait_until(
            one_alert_per_certificate,
            WAIT + RESEND,
            "one KCMCertExpiring per certificate: the CA and each master's own",
        )
    finally:
        _restore_beacons(cluster)
