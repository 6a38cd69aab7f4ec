"""kcm_pki: days left on the certificates the formula manages, the kubeconfig's copies read
from its current context (the one kubectl and the API client use), and its errors."""

import base64
import functools
import os
import time

import pytest
import yaml
from salt.exceptions import CommandExecutionError

from kcmlab import formula
from tests.support import pki as testpki

KCM_PKI = formula.load("_modules", "kcm_pki")


def b64(text):
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def deployed():
    return {}


@pytest.fixture
def pillar():
    """``kcm:`` as kcm_config.requested merges it (pillar over defaults)."""
    return {}


@pytest.fixture
def configure_loader_modules(deployed, pillar):
    return {
        KCM_PKI: {
            "__salt__": {
                "kcm_config.deployed": lambda: deployed,
                "kcm_config.requested": lambda key: functools.reduce(
                    lambda node, part: (node or {}).get(part), key.split(":"), pillar
                ),
            },
            "__utils__": formula.utils(),
        }
    }


@pytest.fixture
def kubeconfig(tmp_path, deployed):
    """Two users and two clusters; the current context names the second of each."""
    ca_cert, ca_key = testpki.make_ca(days=300)
    old, _ = testpki.issue(ca_cert, ca_key, days=3)
    current, _ = testpki.issue(ca_cert, ca_key, days=20)
    path = tmp_path / "kcm.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {"name": "old", "cluster": {"certificate-authority-data": b64(testpki.cert_pem(old))}},
                    {"name": "k", "cluster": {"certificate-authority-data": b64(testpki.cert_pem(ca_cert))}},
                ],
                "users": [
                    {"name": "old", "user": {"client-certificate-data": b64(testpki.cert_pem(old))}},
                    {"name": "u", "user": {"client-certificate-data": b64(testpki.cert_pem(current))}},
                ],
                "contexts": [
                    {"name": "old", "context": {"cluster": "old", "user": "old"}},
                    {"name": "c", "context": {"cluster": "k", "user": "u"}},
                ],
                "current-context": "c",
            }
        )
    )
    deployed["files"] = {"kubeconfig": str(path)}
    return path


def test_the_kubeconfig_copies_are_those_of_its_current_context(kubeconfig):
    status = KCM_PKI.cert_status()
    assert 19.9 <= status["kubeconfig:client"]["days_left"] <= 20
    assert 299.9 <= status["kubeconfig:ca"]["days_left"] <= 300


def test_an_unreadable_kubeconfig_is_reported_inside_the_answer(kubeconfig):
    kubeconfig.write_text("current-context: nowhere\ncontexts: []\n")
    assert KCM_PKI.cert_status()["kubeconfig:client"]["error"] == "unreadable: ValueError"


def test_not_deployed_raises_with_its_reason():
    with pytest.raises(CommandExecutionError) as excinfo:
        KCM_PKI.cert_status()
    assert excinfo.value.info["reason"] == "not_deployed"
    assert str(excinfo.value) == "not_deployed: kcm is not deployed on this minion (run state.apply kcm first)"


def test_certificate_days_left_and_its_errors(tmp_path):
    ca_cert, ca_key = testpki.make_ca(days=10)
    path = tmp_path / "ca.pem"
    path.write_text(testpki.cert_pem(ca_cert))
    assert 9.9 <= KCM_PKI.certificate(str(path))["days_left"] <= 10
    path.write_text("not a certificate")
    with pytest.raises(CommandExecutionError, match=f"cert: {path} is not a PEM certificate"):
        KCM_PKI.certificate(str(path))


def test_a_fifo_or_a_link_planted_as_a_certificate_is_refused_at_once(tmp_path, deployed):
    # H3 e: a FIFO planted as kube-controller-manager.pem blocked kcm.cert_status (and the kcm_cert beacon)
    fifo = tmp_path / "kube-controller-manager.pem"
    os.mkfifo(fifo)
    link = tmp_path / "ca.pem"
    ca_cert, _ = testpki.make_ca(days=10)
    (tmp_path / "real.pem").write_text(testpki.cert_pem(ca_cert))
    link.symlink_to(tmp_path / "real.pem")
    deployed["files"] = {"cert": str(fifo), "ca_cert": str(link)}
    started = time.monotonic()
    status = KCM_PKI.cert_status()
    assert time.monotonic() - started < 5
    assert status["cert"]["error"] == status["ca_cert"]["error"] == "unreadable: ValueError", status
    with pytest.raises(CommandExecutionError, match="is not a regular file"):
        KCM_PKI.certificate(str(fifo))


@pytest.fixture
def kcm_cert(tmp_path, deployed, pillar, kubeconfig):
    """The KCM certificate file, 40 days left; the kubeconfig's copy has 20."""
    ca_cert, ca_key = testpki.make_ca(days=300)
    cert, _ = testpki.issue(ca_cert, ca_key, days=40)
    path = tmp_path / "kcm.pem"
    path.write_text(testpki.cert_pem(cert))
    # what the last apply laid down; the pillar, which the next apply follows, may differ
    deployed.update(cluster="prod", pki={"mode": "pillar", "days_remaining": 5})
    pillar.update(cluster="prod", pki={"mode": "local", "days_remaining": 30})
    deployed["files"]["cert"] = str(path)
    return path


@pytest.mark.parametrize(
    ("mode", "days_remaining", "due"),
    [
        ("local", 30, True),  # the kubeconfig's copy (20 days) is due even though the file (40) is not
        ("remote", 30, True),
        ("local", 10, False),
        ("pillar", 30, False),  # pillar brings the certificate: state.apply cannot renew it
    ],
)
def test_renewal_is_due_when_state_apply_would_issue_the_certificate_again(kcm_cert, pillar, mode, days_remaining, due):
    pillar["pki"] = {"mode": mode, "days_remaining": days_remaining}

    answer = KCM_PKI.renewal_due()

    assert (answer["due"], answer["cluster"], answer["mode"]) == (due, "prod", mode)
    assert 19.9 <= answer["days_left"] <= 20


def test_an_unreadable_certificate_is_due_for_renewal(kcm_cert, pillar):
    pillar["pki"]["days_remaining"] = 10
    kcm_cert.write_text("gone")
    assert KCM_PKI.renewal_due()["due"] is True
