"""
The kcm_cert beacon: its state machine (`cert_step`), when it reads the certificates, its
validate() messages, and the state file that stops a refresh or restart from re-announcing.

The beacon, ``kcm_beacon`` and ``kcm_pki`` get their dunders from pytest-salt-factories'
``configure_loader_modules``.
"""

import base64
import json

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from kcmlab import formula
from tests.unit.conftest import MINION_KEY

kcm_cert = formula.load("_beacons", "kcm_cert")
KCM_BEACON = formula.load("_modules", "kcm_beacon")
KCM_PKI = formula.load("_modules", "kcm_pki")
UTILS = formula.utils()
T0 = 1_800_000_000.0


@pytest.fixture
def deployed(beacon_deployed):
    return beacon_deployed


@pytest.fixture
def configure_loader_modules(beacon_opts, deployed):
    salt = {
        "kcm_config.deployed": lambda: deployed,
        "kcm_pki.cert_status": KCM_PKI.cert_status,
        "kcm.cluster_id": lambda: "uid-of-prod-a",
    }
    salt.update({f"kcm_beacon.{name}": getattr(KCM_BEACON, name) for name in ("settings", "validate")})
    opts = beacon_opts
    # The beacons sign through a utils loader of their own (the formula's _utils here).
    context = {"kcm_trust.utils": UTILS}
    common = {"__salt__": salt, "__opts__": opts, "__context__": context}
    return {kcm_cert: common, KCM_BEACON: dict(common, __utils__=UTILS), KCM_PKI: dict(common, __utils__=UTILS)}


CERTS = {"cert_thresholds": [30, 7], "minion": "master-2", "cluster": "prod"}


def status(days, serial="5eed01", name="cert", **more):
    """A kcm_pki.cert_status result with one certificate (plus `more` entries); a serial
    stands for one certificate, so it makes the fingerprint too."""
    entry = {
        "source": "/etc/k8s/ssl/kube-controller-manager.pem",
        "subject": "system:kube-controller-manager",
        "not_after": "2027-01-15T08:00:00Z",
        "days_left": days,
        "serial": serial,
        "fingerprint": f"fp-{serial}",
    }
    return dict({name: entry}, **more)


class CertRun:
    """Feeds cert_status results through cert_step() one read at a time."""

    def __init__(self, settings=None, state=None):
        self.state = state
        self.settings = dict(CERTS, **(settings or {}))

    def read(self, result, now=T0):
        self.state, events = kcm_cert.cert_step(self.state, result, now, self.settings)
        return events


def crossed(events):
    return [(e["tag"], tuple(e["files"]), e.get("threshold")) for e in events]


def test_each_threshold_is_announced_once_as_the_days_run_out():
    run = CertRun()
    assert run.read(status(45)) == []
    events = run.read(status(29.5))
    assert crossed(events) == [("cert_expiring", ("cert",), 30)]
    assert {
        k: events[0][k] for k in ("fingerprint", "subject", "serial", "not_after", "days_left", "minion", "cluster")
    } == {
        "fingerprint": "fp-5eed01",
        "subject": "system:kube-controller-manager",
        "serial": "5eed01",
        "not_after": "2027-01-15T08:00:00Z",
        "days_left": 29.5,
        "minion": "master-2",
        "cluster": "prod",
    }
    assert events[0]["thresholds"] == [30, 7]
    assert run.read(status(20)) == [] and run.read(status(7.0)) == []  # 7.0 is not below 7
    assert crossed(run.read(status(6.9))) == [("cert_expiring", ("cert",), 7)]
    assert run.read(status(1)) == [] and run.read(status(-2)) == []


def test_a_cert_already_past_several_thresholds_is_one_event_for_the_smallest():
    run = CertRun()
    assert crossed(run.read(status(3))) == [("cert_expiring", ("cert",), 7)]
    assert run.read(status(2.5)) == []  # 30 counts as announced with it


def test_each_cert_is_judged_on_its_own():
    run = CertRun()
    both = status(29, **status(6, name="kubeconfig:client", serial="c11e47"))
    assert sorted(crossed(run.read(both))) == [
        ("cert_expiring", ("cert",), 30),
        ("cert_expiring", ("kubeconfig:client",), 7),
    ]


def test_one_certificate_in_several_files_is_one_report():
    # the CA as ca_cert and inside the kubeconfig, the client certificate as file and inside it
    ca = status(6, serial="ca", name="ca_cert", **status(6, serial="ca", name="kubeconfig:ca"))
    client = status(20, serial="c1", name="cert", **status(20, serial="c1", name="kubeconfig:client"))
    run = CertRun()
    assert sorted(crossed(run.read(dict(ca, **client)))) == [
        ("cert_expiring", ("ca_cert", "kubeconfig:ca"), 7),
        ("cert_expiring", ("cert", "kubeconfig:client"), 30),
    ]


def test_announced_thresholds_survive_a_restart_through_the_state_file(tmp_path):
    path = str(tmp_path / "beacon.json")
    run = CertRun()
    run.read(status(29))
    UTILS["kcm_state_file.write_json"](path, {"announced": run.state["announced"]})  # as beacon() saves it
    saved = UTILS["kcm_state_file.read_json"](path)
    restarted = CertRun(state=dict(kcm_cert.initial_state(), announced=saved["announced"]))  # as beacon() loads it
    assert kcm_cert.cert_check_due(restarted.state, T0 + 1, 3600)  # re-read at once after a restart ...
    assert restarted.read(status(28.9), T0 + 1) == []  # ... without announcing 30 again
    assert crossed(restarted.read(status(6), T0 + 2)) == [("cert_expiring", ("cert",), 7)]


def test_a_renewed_cert_says_so_and_its_successor_starts_over():
    run = CertRun()
    run.read(status(29, serial="01d"))
    events = run.read(status(365, serial="2e3"))
    assert [(e["tag"], e["fingerprint"], e["serial"], e["files"]) for e in events] == [
        ("cert_renewed", "fp-01d", "01d", ["cert"])
    ]
    assert crossed(run.read(status(29, serial="2e3"))) == [("cert_expiring", ("cert",), 30)]


def test_a_new_certificate_replacing_one_never_announced_is_not_news():
    run = CertRun()
    run.read(status(200, serial="01d"))
    assert run.read(status(365, serial="2e3")) == []


def test_a_renewal_is_told_only_once_every_file_of_the_certificate_is_read():
    run = CertRun()
    run.read(status(29, serial="01d", **status(29, serial="01d", name="kubeconfig:client")))
    # the file is renewed, the kubeconfig is caught mid-rewrite: the old certificate may still be there
    half = status(
        365,
        serial="2e3",
        **{"kubeconfig:client": {"source": "/etc/k8s/kcm.kubeconfig", "error": "unreadable: ValueError"}},
    )
    assert run.read(half) == []
    renewed = run.read(status(365, serial="2e3", **status(365, serial="2e3", name="kubeconfig:client")))
    assert [(e["tag"], e["fingerprint"]) for e in renewed] == [("cert_renewed", "fp-01d")]


def test_an_unreadable_cert_keeps_what_was_announced_for_it():
    run = CertRun()
    run.read(status(29))
    assert run.read({"cert": {"source": "/etc/k8s/ssl/kcm.pem", "error": "unreadable: OSError"}}) == []
    assert run.read(None) == []
    assert run.read(status(28)) == []


def test_cert_check_due_honours_the_interval():
    state = kcm_cert.initial_state()
    assert kcm_cert.cert_check_due(state, T0, 3600)
    state, _ = kcm_cert.cert_step(state, status(100), T0, CERTS)
    assert not kcm_cert.cert_check_due(state, T0 + 3599, 3600)
    assert kcm_cert.cert_check_due(state, T0 + 3600, 3600)
    assert kcm_cert.cert_check_due(state, T0 - 60, 3600)  # the clock stepped back


@pytest.fixture
def pki_files(tmp_path, deployed):
    """Real PEM files as the formula lays them down: a 20-day KCM cert, its key, a 300-day CA, a kubeconfig."""
    from tests.support import pki as testpki

    ca_cert, ca_key = testpki.make_ca(days=300)
    cert, key = testpki.issue(ca_cert, ca_key, days=20)
    ssl = tmp_path / "ssl"
    ssl.mkdir()
    files = {
        "ca_cert": ssl / "ca.pem",
        "ca_key": ssl / "ca-key.pem",
        "cert": ssl / "kcm.pem",
        "key": ssl / "kcm-key.pem",
        "kubeconfig": tmp_path / "kcm.kubeconfig",
    }
    files["ca_cert"].write_text(testpki.cert_pem(ca_cert))
    files["ca_key"].write_text(testpki.key_pem(ca_key))
    files["cert"].write_text(testpki.cert_pem(cert))
    files["key"].write_text(testpki.key_pem(key))
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    files["kubeconfig"].write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "k", "cluster": {"certificate-authority-data": b64(testpki.cert_pem(ca_cert))}}],
                "users": [
                    {
                        "name": "u",
                        "user": {
                            "client-certificate-data": b64(testpki.cert_pem(cert)),
                            "client-key-data": b64(testpki.key_pem(key)),
                        },
                    }
                ],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    deployed["files"] = {name: str(path) for name, path in files.items()}
    return deployed["files"]


@pytest.fixture
def reads(monkeypatch):
    """Counts kcm_pki.cert_status calls (the real one, on the files of ``pki_files``)."""
    calls = []

    def cert_status():
        calls.append(1)
        return KCM_PKI.cert_status()

    kcm_cert.__salt__["kcm_pki.cert_status"] = cert_status
    return calls


def test_beacon_reads_certs_once_per_interval_and_sends_no_pem(pki_files, reads, monkeypatch):
    now = {"t": T0}
    monkeypatch.setattr(kcm_cert, "_now", lambda: now["t"])
    config = [{"_beacon_name": "kcm_cert"}, {"cert_thresholds": [30, 7]}, {"cert_check_interval": 10}]
    all_events = []
    for second in range(25):
        now["t"] = T0 + second
        all_events += kcm_cert.beacon(config)
    assert len(reads) == 3  # at T0, T0+10, T0+20
    expiring = [e for e in all_events if e["tag"] == "cert_expiring"]
    # the KCM certificate as a file and inside the kubeconfig: one certificate, one report
    assert [(e["files"], e["threshold"]) for e in expiring] == [(["cert", "kubeconfig:client"], 30)]
    with open(pki_files["cert"], "rb") as pem:
        assert (
            expiring[0]["fingerprint"] == x509.load_pem_x509_certificate(pem.read()).fingerprint(hashes.SHA256()).hex()
        )
    assert all(
        e["minion"] == "master-2"
        and e["cluster"] == "prod"
        and e["cluster_id"] == "uid-of-prod-a"
        and 19.9 <= e["days_left"] <= 20
        for e in expiring
    )
    text = json.dumps(all_events)
    assert "BEGIN" not in text and "PRIVATE KEY" not in text and "MII" not in text

    # a refresh reloads the state file: it re-reads at once, and announces nothing again
    kcm_cert.__context__.clear()
    kcm_cert.__context__["kcm_trust.utils"] = UTILS
    now["t"] = T0 + 30
    assert kcm_cert.beacon(config) == [] and len(reads) == 4


def test_cert_events_are_signed_with_the_minions_key(pki_files, reads, monkeypatch):
    monkeypatch.setattr(kcm_cert, "_now", lambda: T0)
    [event] = kcm_cert.beacon([{"_beacon_name": "kcm_cert"}, {"cert_thresholds": [30]}])
    kind, data = event["tag"], {k: v for k, v in event.items() if k != "tag"}
    assert data["id"] == "master-2"
    MINION_KEY.public_key().verify(
        base64.b64decode(data["sig"]),
        UTILS["kcm_trust.signed_message"](kind, data),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_a_key_left_out_comes_from_the_deployed_kcm_beacon(pki_files, reads, deployed, monkeypatch):
    monkeypatch.setattr(kcm_cert, "_now", lambda: T0)
    deployed["beacon"]["cert_thresholds"] = [25]
    events = kcm_cert.beacon([{"_beacon_name": "kcm_cert"}])
    assert [(e["files"], e["threshold"]) for e in events] == [(["cert", "kubeconfig:client"], 25)]


def test_beacon_without_thresholds_never_reads_certs(monkeypatch):
    kcm_cert.__salt__["kcm_pki.cert_status"] = lambda: pytest.fail("cert_status called with cert_thresholds: []")
    monkeypatch.setattr(kcm_cert, "_now", lambda: T0)
    assert kcm_cert.beacon([{"_beacon_name": "kcm_cert"}, {"cert_thresholds": []}]) == []


@pytest.mark.parametrize("failure", [OSError("disk on fire"), "not_deployed"])
def test_beacon_survives_a_failing_cert_status(monkeypatch, failure, caplog):
    def boom():
        if isinstance(failure, Exception):
            raise failure
        raise UTILS["kcm_error.failure"](failure, "kcm is not deployed on this minion")

    kcm_cert.__salt__["kcm_pki.cert_status"] = boom
    monkeypatch.setattr(kcm_cert, "_now", lambda: T0)
    assert kcm_cert.beacon([{"_beacon_name": "kcm_cert"}]) == []
    assert "certificates not checked" in caplog.text and "Traceback" not in caplog.text


def test_beacon_is_quiet_where_kcm_is_not_deployed(deployed):
    deployed.clear()
    kcm_cert.__salt__["kcm_pki.cert_status"] = lambda: pytest.fail("nothing to read where kcm is not deployed")
    assert kcm_cert.beacon([{"_beacon_name": "kcm_cert"}]) == []


@pytest.mark.parametrize(
    "config, message",
    [
        ([{"cert_thresholds": 30}], "kcm_cert: cert_thresholds must be a list of days > 0, e.g. [21, 7]"),
        ([{"cert_thresholds": [30, "7"]}], "cert_thresholds must be a list of days > 0"),
        ([{"cert_thresholds": [0]}], "cert_thresholds must be a list of days > 0"),
        ([{"cert_check_interval": 0}], "cert_check_interval must be a number of seconds > 0"),
        ([{"cert_check_interval": "1h"}], "cert_check_interval must be a number of seconds > 0"),
        ([{"debounce": 2}], "kcm_cert: unknown key 'debounce'"),
        ([{"state_file": "beacon.json"}], "state_file must be an absolute path"),
        ({"interval": 10}, "kcm_cert: configuration must be a list of one-key dicts"),
    ],
)
def test_validate_cert_keys(config, message):
    valid, comment = kcm_cert.validate(config)
    assert valid is False and message in comment


def test_validate_accepts_cert_keys():
    assert kcm_cert.validate([{"cert_thresholds": [30, 7]}, {"cert_check_interval": 3600}])[0] is True
    assert kcm_cert.validate([{"cert_thresholds": []}, {"cert_check_interval": 0.5}, {"interval": 10}])[0] is True
