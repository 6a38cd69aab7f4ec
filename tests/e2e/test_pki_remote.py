"""pki:mode remote on the lab: the CA minion (a machine of its own, as a CA host is) signs
the master's KCM certificate through an x509_v2 signing policy over the salt-master's peer
publish; the CA key never reaches the master; the real kube-apiserver accepts the issued
client certificate, KCM (run by systemd) serves /healthz with it and leads."""

from __future__ import annotations

import json

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from kcmlab.cluster import SHORT_ELECTION, LabCluster, changed_states, failed_states
from kcmlab.pki import CertificateAuthority
from tests.e2e.conftest import CLUSTERS, LOG_FILES, stop_lab_cluster

pytestmark = pytest.mark.e2e

MASTER, CA = "master-1", "kcm-ca"
CA_DIR = "/etc/pki/kcm-ca"


@pytest.fixture(scope="module")
def remote_lab(k8s_bin, tmp_path_factory, request):
    # what kcm.pki_peer installs on the salt-master: masters may ask for a signature, nothing else
    cluster = LabCluster(
        k8s_bin,
        tmp_path_factory.mktemp("lab-pki-remote"),
        suite="e2e-pkirem",
        nodes=(MASTER,),
        election=SHORT_ELECTION,
        master_config={"peer": {".*": ["x509.sign_remote_certificate"]}},
    )
    CLUSTERS.append(cluster)
    try:
        cluster.start()
        LOG_FILES.extend(cluster.log_paths())
        cluster.lab.boot(CA, cluster.master.minion_config(CA))
        cluster.master.wait_for_minions([CA])
        cp = cluster.cp
        signer = CertificateAuthority("kcm-cluster-signer")
        cluster.pillars[MASTER]["kcm"]["pki"] = {
            "mode": "remote",
            "ca_server": CA,
            "signing_policy": "kcm",
            "days_valid": 30,
            "days_remaining": 7,
            "ca_cert": cp.ca.cert_pem,
            "service_account_key": cp.sa_key_pem,
            "signer_cert": signer.cert_pem,
            "signer_key": signer.key_pem,
        }
        # a certificate alert's thresholds sit below days_remaining, where the renewal runs
        cluster.pillars[MASTER]["kcm"]["beacon"] = {"cert_thresholds": [3]}
        # the CA minion signs with the cluster CA, the one kube-apiserver trusts for clients
        cluster.pillars[CA] = {
            "kcm_ca": {"dir": CA_DIR, "ca_cert": cp.ca.cert_pem, "ca_key": cp.ca.key_pem},
            "x509_signing_policies": {
                "kcm": [
                    {"minions": "master-*"},
                    {"signing_cert": f"{CA_DIR}/ca.pem"},
                    {"signing_private_key": f"{CA_DIR}/ca-key.pem"},
                    {"CN": "system:kube-controller-manager"},
                    {"basicConstraints": "critical, CA:false"},
                    {"extendedKeyUsage": "serverAuth, clientAuth"},
                    {"days_valid": 30},
                ]
            },
        }
        cluster.master.write_pillar(cluster.pillars)
        synced = cluster.salt("saltutil.sync_all", target=[MASTER, CA], timeout=300)
        assert sorted(synced) == [CA, MASTER], synced
        yield cluster
    finally:
        stop_lab_cluster(cluster, request)


def test_the_ca_minion_signs_the_ca_key_stays_there_and_kcm_leads(remote_lab):
    cluster = remote_lab
    ca_ret = cluster.apply("kcm.ca", target=[CA])
    assert failed_states(ca_ret[CA]) == []
    returns = cluster.apply("kcm", target=[MASTER])

    files = cluster.deployed(MASTER)["files"]
    cert = x509.load_pem_x509_certificate(cluster.machine(MASTER).read_file(files["cert"]).encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(cluster.cp.ca.cert_pem.encode()))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-controller-manager"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # The bind address (127.0.0.1 by default, CIS 1.3.7) and the host's names.
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert MASTER in sans.get_values_for_type(x509.DNSName)
    master = cluster.machine(MASTER)
    assert master.run(["test", "-e", files["ca_key"]], check=False).returncode != 0, (
        "the CA key never reaches a master in remote mode"
    )
    ca_key_line = cluster.cp.ca.key_pem.splitlines()[1]
    found = master.run(["grep", "-r", "-l", "-F", ca_key_line, "/etc/k8s", "/etc/salt", "/var/cache/salt"], check=False)
    assert found.returncode == 1, f"a line of the CA key is on the master: {found.stdout}{found.stderr}"
    assert ca_key_line not in json.dumps(returns)
    assert ca_key_line in cluster.machine(CA).read_file(f"{CA_DIR}/ca-key.pem")
    unit = master.read_file("/usr/lib/systemd/system/kube-controller-manager.service")
    # the signer key reaches KCM as a systemd credential: its root-only source, systemd's copy
    signer = files["signer_key"]
    assert f"LoadCredential={signer.rsplit('/', 1)[1]}:{signer}" in unit
    assert (
        f"--cluster-signing-key-file=/run/credentials/kube-controller-manager.service/{signer.rsplit('/', 1)[1]}"
        in unit
    )

    again = cluster.apply("kcm", target=[MASTER])
    assert changed_states(again[MASTER]) == []

    # the real kube-apiserver accepts the issued client certificate: KCM, started by
    # systemd, leads with it, and /healthz verifies against the issued serving certificate
    cluster.wait_healthy(timeout=120)
    assert cluster.wait_for_leader(60) == MASTER
    served = cluster.cmdline(MASTER)
    assert f"--tls-cert-file={files['cert']}" in served, served


def test_a_refusing_policy_fails_the_run_with_its_reason(remote_lab):
    cluster = remote_lab
    returns = cluster.master.salt(
        [MASTER],
        "state.apply",
        "kcm",
        job_timeout=300,
        pillar={"kcm": {"pki": {"signing_policy": "nosuchpolicy", "days_remaining": 29}}},
    )
    ret = returns[MASTER]
    assert isinstance(ret, dict), returns
    cert_state = next(v for k, v in ret.items() if "kcm-pki-cert" in k)
    assert cert_state["result"] is False
    # x509_v2 on the CA minion: the policy the master asked for is not one it has.
    assert "signing_policy must be specified and defined on signing minion" in cert_state["comment"], cert_state
    assert cluster.active(MASTER) == "active", "a refused renewal leaves the running KCM alone"
