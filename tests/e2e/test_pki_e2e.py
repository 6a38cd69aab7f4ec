"""pki:mode local against the real control plane: keys made on each master, the KCM
certificate issued there with x509_v2, accepted by the real kube-apiserver, served on
/healthz; a renewal rolls through the masters with a leader at every poll.

No systemd runs here: where production restarts KCM through `service.running` watching the
kubeconfig, this test restarts the KcmProcess when the state run reports that change."""

import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.e2e.conftest import NODES, SHORT_ELECTION, _start_control_plane, build_cluster

pytestmark = pytest.mark.e2e


def local_pki(cp, **over):
    pems = cp.kcm_pki(NODES)
    return {"mode": "local", "ca_cert": pems["ca_cert"], "ca_key": pems["ca_key"],
            "service_account_key": pems["service_account_key"], "days_valid": 5, "days_remaining": 1, **over}


@pytest.fixture(scope="module")
def local_cluster(k8s_bin, tmp_path_factory):
    cp = _start_control_plane(k8s_bin, tmp_path_factory.mktemp("cp-pki"), "pki local")
    try:
        cluster = build_cluster(cp, tmp_path_factory.mktemp("kcm-pki"), SHORT_ELECTION, "pki local",
                                pki=local_pki(cp))
        try:
            yield cluster
        finally:
            cluster.stop_all()
    finally:
        cp.stop()


def served_cert(port):
    pem = ssl.get_server_certificate(("127.0.0.1", port))
    return x509.load_pem_x509_certificate(pem.encode())


def file_cert(node):
    return x509.load_pem_x509_certificate(Path(node.deployed["files"]["cert"]).read_bytes())


def test_issued_certs_serve_healthz_and_lead(local_cluster):
    cp = local_cluster.control_plane
    leader = cp.leader()
    assert leader in NODES
    for name, node in local_cluster.nodes.items():
        reply = node.process.healthz(node.ca_path)  # TLS verified against the formula's CA, host 127.0.0.1
        assert reply.status_code == 200 and reply.text.strip() == "ok", name
        cert = file_cert(node)
        assert served_cert(node.secure_port).serial_number == cert.serial_number, "KCM serves the issued cert"
        key = Path(node.deployed["files"]["key"]).read_text()
        assert key not in str(node.minion.pillar), "the key was made on the master, not taken from pillar"


def test_renewal_rolls_through_with_a_leader_throughout(local_cluster):
    cp = local_cluster.control_plane
    holders, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            lease = cp.lease() or {}
            spec = lease.get("spec", {})
            holders.append((time.monotonic(), spec.get("holderIdentity"), spec.get("renewTime")))
            time.sleep(0.2)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    leader = cp.leader()
    # followers first, the leader last: what orch.kcm.upgrade does for a renewal
    order = [n for n in NODES if n != leader] + [leader]
    try:
        for name in order:
            node = local_cluster.nodes[name]
            before = file_cert(node).serial_number
            pillar = node.minion.pillar
            pillar["kcm"]["pki"].update(days_valid=30, days_remaining=10)
            node.minion.set_pillar(pillar)
            ret = node.minion.apply("kcm")
            changed = {v["__id__"] for v in ret.values() if v["changes"]}
            assert {"kcm-pki-cert", "kcm-kubeconfig-file"} <= changed, changed
            assert file_cert(node).serial_number != before
            node.process.stop()
            node.process.start()
            node.process.wait_healthy(node.ca_path)
            assert served_cert(node.secure_port).serial_number == file_cert(node).serial_number
            cp.wait_for_leader(local_cluster.failover_bound + 10)
        cp.wait_for_leader(local_cluster.failover_bound + 10)
        time.sleep(2)
    finally:
        stop.set()
        watcher.join()
    identities = [h for _, h, _ in holders]
    changes = sum(1 for a, b in zip(identities, identities[1:]) if a != b)
    assert changes <= 1, f"leader changed {changes} times during the renewal"
    # a holder was named at every poll (a stopped leader keeps the Lease until it expires)
    assert all(identities), "a poll saw no leader"
    again = local_cluster.nodes[order[0]].minion.apply("kcm")
    assert [k for k, v in again.items() if v["changes"]] == [], "nothing is due after the renewal"
