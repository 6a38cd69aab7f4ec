"""pki:mode remote: a real CA minion signs the masters' KCM certificates through an
x509_v2 signing policy, over a real master's peer publish; the real kube-apiserver accepts
the issued certificate and KCM, started from the rendered unit, leads with it.
(No systemd here: the test starts the unit's ExecStart itself.)"""

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from kcmlab.controlplane import ControlPlane, KcmProcess, free_port
from tests.e2e.conftest import _server_tarball, k8s_bin  # noqa: F401 (fixture)
from tests.support import pki as testpki
from tests.support.pillar import REPO, sandbox_pillar

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture(scope="module")
def control_plane(k8s_bin, tmp_path_factory):  # noqa: F811
    cp = ControlPlane(k8s_bin, tmp_path_factory.mktemp("cp-remote"), nodes=("master-r1",)).start()
    yield cp
    cp.stop()


@pytest.fixture(scope="module")
def remote_setup(salt_factories, tmp_path_factory, control_plane):
    pillar_dir = tmp_path_factory.mktemp("pillar-remote")
    ca_dir = tmp_path_factory.mktemp("kcm-ca")
    # the CA minion signs with the cluster CA, the one kube-apiserver trusts for clients
    full = control_plane.kcm_pki(("master-r1",))
    signer_cert, signer_key = testpki.make_ca("kcm-cluster-signer")
    master = salt_factories.salt_master_daemon(
        "kcm-pki-master",
        overrides={
            "file_roots": {"base": [str(REPO / "formula")]},
            "pillar_roots": {"base": [str(pillar_dir)]},
            "fileserver_list_cache_time": 0,
            # what kcm.pki_peer installs
            "peer": {".*": ["x509.sign_remote_certificate"]},
        },
    )
    root = tmp_path_factory.mktemp("master-r1")
    tarball, version = _server_tarball(control_plane.bin_dir)
    kcm = sandbox_pillar(root, tarball, version,
                         {"ca_cert": full["ca_cert"], "service_account_key": full["service_account_key"],
                          "signer_cert": testpki.cert_pem(signer_cert), "signer_key": testpki.key_pem(signer_key)})
    kcm["kcm"]["pki"].update(mode="remote", ca_server="kcm-ca", signing_policy="kcm",
                             days_valid=30, days_remaining=7)
    kcm["kcm"].update(apiserver=control_plane.apiserver_url, secure_port=free_port(),
                      leader_election={"lease_duration": "4s", "renew_deadline": "3s", "retry_period": "1s"})
    ca_pillar = {
        "kcm_ca": {"dir": str(ca_dir), "ca_cert": full["ca_cert"], "ca_key": full["ca_key"]},
        "x509_signing_policies": {
            "kcm": [
                {"minions": "master-*"},
                {"signing_cert": f"{ca_dir}/ca.pem"},
                {"signing_private_key": f"{ca_dir}/ca-key.pem"},
                {"CN": "system:kube-controller-manager"},
                {"basicConstraints": "critical, CA:false"},
                {"extendedKeyUsage": "serverAuth, clientAuth"},
                {"days_valid": 30},
            ]
        },
    }
    (pillar_dir / "ca.sls").write_text(json.dumps(ca_pillar))
    (pillar_dir / "m1.sls").write_text(json.dumps(kcm))
    (pillar_dir / "top.sls").write_text("base:\n  'kcm-ca':\n    - ca\n  'master-r1':\n    - m1\n")
    with master.started(start_timeout=120):
        ca = master.salt_minion_daemon("kcm-ca", overrides={"features": {"x509_v2": True}})
        m1 = master.salt_minion_daemon("master-r1", overrides={"features": {"x509_v2": True}})
        with ca.started(start_timeout=120), m1.started(start_timeout=120):
            yield {"master": master, "pillar": kcm, "full": full, "ca_dir": ca_dir}


def test_the_ca_minion_signs_and_the_ca_key_stays_there(remote_setup, control_plane, tmp_path):
    cli = remote_setup["master"].salt_cli(timeout=300)
    assert cli.run("saltutil.sync_all", minion_tgt="*").returncode == 0
    ca_ret = cli.run("state.apply", "kcm.ca", minion_tgt="kcm-ca")
    assert all(v["result"] for v in ca_ret.data.values()), ca_ret.stdout
    ret = cli.run("state.apply", "kcm", minion_tgt="master-r1")
    assert isinstance(ret.data, dict), ret.stdout
    failures = [f"{k}: {v['comment']}" for k, v in ret.data.items() if not v["result"]]
    assert not failures, failures

    paths = remote_setup["pillar"]["kcm"]["paths"]
    cert = x509.load_pem_x509_certificate(Path(paths["pki"], "kube-controller-manager.pem").read_bytes())
    ca = x509.load_pem_x509_certificate(remote_setup["full"]["ca_cert"].encode())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-controller-manager"
    assert not Path(paths["pki"], "ca-key.pem").exists(), "the CA key never reaches a master in remote mode"
    unit = Path(paths["unit"], "kube-controller-manager.service").read_text()
    assert f"--cluster-signing-key-file={paths['pki']}/cluster-signer-key.pem" in unit
    assert remote_setup["full"]["ca_key"].splitlines()[1] not in ret.stdout

    again = cli.run("state.apply", "kcm", minion_tgt="master-r1")
    assert [k for k, v in again.data.items() if v["changes"]] == []

    # the real kube-apiserver accepts the issued client cert: KCM leads with it, and
    # /healthz verifies against the issued serving cert
    kcm = KcmProcess(Path(paths["unit"], "kube-controller-manager.service"), "master-r1",
                     tmp_path / "kcm-master-r1.log")
    kcm.start()
    try:
        kcm.wait_healthy(Path(paths["pki"], "ca.pem"))
        assert control_plane.wait_for_leader(60) == "master-r1"
    finally:
        kcm.stop()


def test_a_refusing_policy_fails_the_run_with_its_reason(remote_setup):
    cli = remote_setup["master"].salt_cli(timeout=300)
    ret = cli.run("state.apply", "kcm", minion_tgt="master-r1",
                  pillar={"kcm": {"pki": {"signing_policy": "nosuchpolicy", "days_remaining": 29}}})
    assert isinstance(ret.data, dict), ret.stdout
    cert_state = next(v for k, v in ret.data.items() if "kcm-pki-cert" in k)
    assert cert_state["result"] is False
    assert "nosuchpolicy" in cert_state["comment"] or "policy" in cert_state["comment"].lower()
