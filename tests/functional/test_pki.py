"""PKI modes with Salt's x509_v2: keys made on the minion, certificates issued, renewed
when due and only then, never shown in the state output."""

import base64
import json
import stat
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.pillar import sandbox_pillar
from tests.support.tarball import build_tarball

VERSION = "v1.34.3"


def failed(ret):
    return [f"{r.id}: {r.comment}" for r in ret if r.result is False]


def changed(ret):
    return sorted({r.id for r in ret if r.changes})


def local_pillar(tmp_path, test_pki, **pki):
    base = {k: test_pki[k] for k in ("ca_cert", "ca_key", "service_account_key")}
    pillar = sandbox_pillar(tmp_path, build_tarball(tmp_path / "dl", VERSION), VERSION, base)
    pillar["kcm"]["pki"].update({"mode": "local", "days_valid": 30, "days_remaining": 7, **pki})
    # no certificate alert: its thresholds would have to sit below days_remaining
    pillar["kcm"].setdefault("beacon", {})["cert_thresholds"] = []
    return pillar


def read_cert(path):
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def embedded_client_cert(kubeconfig):
    doc = yaml.safe_load(Path(kubeconfig).read_text())
    return base64.b64decode(doc["users"][0]["user"]["client-certificate-data"])


def test_local_mode_issues_a_kcm_cert_on_the_minion(state, tmp_path, test_pki):
    pillar = local_pillar(tmp_path, test_pki)
    ret = state.apply("kcm", pillar=pillar)
    assert not failed(ret), failed(ret)
    files = pillar["kcm"]["paths"]
    cert = read_cert(f"{files['pki']}/kube-controller-manager.pem")
    ca = x509.load_pem_x509_certificate(test_pki["ca_cert"].encode())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-controller-manager"
    assert not cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME), "no system:masters"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    key = Path(f"{files['pki']}/kube-controller-manager-key.pem")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text() not in json.dumps(pillar), "the key was made on the minion, not taken from pillar"
    kubeconfig = f"{files['kubeconfig']}/kube-controller-manager.kubeconfig"
    assert embedded_client_cert(kubeconfig) == Path(f"{files['pki']}/kube-controller-manager.pem").read_bytes()

    again = state.apply("kcm", pillar=pillar)
    assert not failed(again) and changed(again) == [], "x509_v2 must not re-issue when nothing is due"


def test_renewal_rewrites_the_cert_and_the_kubeconfig_copy(state, tmp_path, test_pki):
    # issued for 5 days; then the policy asks for >= 10 days left: renewal is due
    pillar = local_pillar(tmp_path, test_pki, days_valid=5, days_remaining=1)
    assert not failed(state.apply("kcm", pillar=pillar))
    pki_dir = pillar["kcm"]["paths"]["pki"]
    kubeconfig = f"{pillar['kcm']['paths']['kubeconfig']}/kube-controller-manager.kubeconfig"
    old_serial = read_cert(f"{pki_dir}/kube-controller-manager.pem").serial_number
    old_key = Path(f"{pki_dir}/kube-controller-manager-key.pem").read_text()

    pillar["kcm"]["pki"].update(days_valid=30, days_remaining=10)
    ret = state.apply("kcm", pillar=pillar)
    assert not failed(ret), failed(ret)
    assert {"kcm-pki-cert", "kcm-kubeconfig-file"} <= set(changed(ret))
    new = read_cert(f"{pki_dir}/kube-controller-manager.pem")
    assert new.serial_number != old_serial
    assert embedded_client_cert(kubeconfig) == Path(f"{pki_dir}/kube-controller-manager.pem").read_bytes()
    assert Path(f"{pki_dir}/kube-controller-manager-key.pem").read_text() == old_key
    # nothing of any private key in what the state run returned
    text = json.dumps({r.id: {"comment": r.comment, "changes": r.changes} for r in ret}, default=str)
    for secret in (old_key, pillar["kcm"]["pki"]["ca_key"], pillar["kcm"]["pki"]["service_account_key"]):
        body = "".join(secret.strip().splitlines()[1:-1])
        assert body[:40] not in text
    assert "PRIVATE KEY" not in text


def test_bad_pki_inputs_fail_before_writing(state, tmp_path, test_pki):
    from tests.support import pki as testpki

    other_ca, other_key = testpki.make_ca("other")
    leaf, leaf_key = testpki.make_ca("not-a-ca", is_ca=False)
    cases = {
        "kcm:pki:ca_key: does not match kcm:pki:ca_cert": {"ca_key": testpki.key_pem(other_key)},
        "kcm:pki:ca_cert: not a CA certificate": {
            "ca_cert": testpki.cert_pem(leaf),
            "ca_key": testpki.key_pem(leaf_key),
        },
        "kcm:pki:days_remaining: '40' must be a number of days below days_valid (30)": {"days_remaining": 40},
    }
    for fragment, change in cases.items():
        pillar = local_pillar(tmp_path, test_pki, **change)
        ret = state.apply("kcm", pillar=pillar)
        comment = next(r.comment for r in ret if r.id == "kcm-config-validated")
        assert fragment in comment
        assert changed(ret) == []
        assert not (tmp_path / "fs").exists()
    # a file where the PKI directory should be
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    pillar = local_pillar(tmp_path, test_pki)
    pillar["kcm"]["paths"]["pki"] = str(blocker / "ssl")
    ret = state.apply("kcm", pillar=pillar)
    comment = next(r.comment for r in ret if r.id == "kcm-config-validated")
    assert f"kcm:paths:pki: '{blocker}/ssl' cannot be a directory: {blocker} is a file" in comment
    assert changed(ret) == []


def test_remote_mode_needs_a_ca_server_and_a_signer(state, tmp_path, test_pki):
    pillar = local_pillar(tmp_path, test_pki, mode="remote", ca_server="", ca_key="")
    ret = state.apply("kcm", pillar=pillar)
    comment = next(r.comment for r in ret if r.id == "kcm-config-validated")
    assert "kcm:pki:ca_server: required in remote mode" in comment
    assert "kcm:pki:signer_cert: remote mode keeps the CA key off the masters" in comment
