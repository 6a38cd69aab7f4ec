"""pki:mode local on systemd machines: each master makes its key and has its KCM certificate
issued there with x509_v2; the real kube-apiserver accepts it and KCM serves it on the
machine's own address. A renewal (a pillar change, one master at a time, the leader last)
re-issues the certificate, and systemd restarts KCM through ``watch`` on the kubeconfig,
never by hand: one leader change (the leader's restart), at most one short window without a
live leader, never more than one KCM down."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from cryptography import x509

from kcmlab.cluster import SHORT_ELECTION, changed_states
from kcmlab.formula import runner_settings
from kcmlab.leasewatch import LeaseWatch
from tests.e2e.conftest import start_lab_cluster, stop_lab_cluster

pytestmark = pytest.mark.e2e

# Short-lived so that the renewal below (days_remaining 10 > days_valid 5) is due.
LOCAL_PKI = {"mode": "local", "cert": "", "key": "", "days_valid": 5, "days_remaining": 1}


@pytest.fixture(scope="module")
def local_cluster(k8s_bin, tmp_path_factory, request):
    # The renewal runner targets the KCM masters the salt-master trusts (kcm.master's kcm_alert:masters).
    cluster = start_lab_cluster(
        k8s_bin,
        tmp_path_factory.mktemp("lab-pki"),
        "pki local",
        suite="e2e-pki",
        election=SHORT_ELECTION,
        # no certificate alert here: its thresholds must sit below days_remaining
        kcm={"pki": LOCAL_PKI, "beacon": {"cert_thresholds": []}},
        master_config=runner_settings(masters="master-*"),
    )
    try:
        yield cluster
    finally:
        stop_lab_cluster(cluster, request)


def served_cert(cluster, name) -> x509.Certificate:
    reply = cluster.kcm_https(name, "/healthz")  # inside the machine: KCM binds 127.0.0.1
    assert "cert" in reply, f"{name}: {reply}"
    return x509.load_pem_x509_certificate(reply["cert"].encode())


def file_cert(cluster, name) -> x509.Certificate:
    path = cluster.deployed(name)["files"]["cert"]
    return x509.load_pem_x509_certificate(cluster.machine(name).read_file(path).encode())


def test_issued_certs_serve_healthz_and_lead(local_cluster):
    assert local_cluster.renewing_leader() in local_cluster.nodes
    for name in local_cluster.nodes:
        assert local_cluster.healthz(name), f"{name}: /healthz over TLS verified against the cluster CA"
        cert = file_cert(local_cluster, name)
        assert served_cert(local_cluster, name).serial_number == cert.serial_number, "KCM serves the issued cert"
        addresses = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        # the bind address (127.0.0.1 by default, CIS 1.3.7) and the host's name
        assert "127.0.0.1" in {str(a) for a in addresses.get_values_for_type(x509.IPAddress)}
        assert name in addresses.get_values_for_type(x509.DNSName)
        key_path = local_cluster.deployed(name)["files"]["key"]
        machine = local_cluster.machine(name)
        # root's alone; KCM reads systemd's copy (LoadCredential=), the KCM user owns nothing
        assert machine.run(["stat", "-c", "%a %U", key_path]).stdout.split() == ["600", "root"]
        key = machine.read_file(key_path)
        assert "PRIVATE KEY" in key
        assert key not in str(local_cluster.pillars[name]), "the key was made on the master, not taken from pillar"


def test_renewal_restarts_kcm_through_systemd_with_a_leader_throughout(local_cluster):
    cluster = local_cluster
    leader = cluster.renewing_leader()
    # Followers first, the leader last: what orch.kcm.upgrade does for a renewal.
    order = [n for n in cluster.nodes if n != leader] + [leader]
    nodes = {
        name: SimpleNamespace(healthy=lambda name=name: cluster.healthz(name, timeout=1)) for name in cluster.nodes
    }
    with LeaseWatch(cluster.cp, nodes=nodes) as watch:
        for name in order:
            before = file_cert(cluster, name).serial_number
            pid = cluster.main_pid(name)
            since = time.time()
            cluster.change_pillar([name], pki={"days_valid": 30, "days_remaining": 10})
            ret = cluster.apply("kcm", target=[name])[name]
            assert {"kcm-pki-cert", "kcm-kubeconfig-file"} <= set(changed_states(ret)), changed_states(ret)
            assert file_cert(cluster, name).serial_number != before
            # Nobody but systemd restarted it: the state run's watch did, once.
            assert cluster.starts_since(name, since) == 1, f"{name}: not restarted exactly once"
            assert cluster.main_pid(name) not in (0, pid)
            cluster.wait_healthy([name], timeout=60)
            assert served_cert(cluster, name).serial_number == file_cert(cluster, name).serial_number
            cluster.wait_for_leader(cluster.failover_bound + 10)
        time.sleep(2)
    watch.assert_sound()
    # The leader's restart is the one handover; the followers' move nothing.
    assert watch.transitions == 1, (watch.holders, cluster.lease_log.summary())
    assert watch.leader_nodes[0] == leader, watch.holders
    # One window without a live leader, in the handover (how long: bench/rolling.py).
    assert len(watch.gaps()) <= 1, watch.gaps()
    assert watch.min_healthy >= len(cluster.nodes) - 1, watch.healthy_counts  # one master at a time
    again = cluster.apply("kcm", target=[order[0]])[order[0]]
    assert changed_states(again) == [], "nothing is due after the renewal"


def test_the_salt_masters_renewal_rolls_the_due_certificates_the_leader_last(local_cluster):
    """What kcm.master's schedule runs daily: ``salt-run kcm_orch.renew``."""
    cluster = local_cluster
    pids = {name: cluster.main_pid(name) for name in cluster.nodes}
    code, report = cluster.master.run("kcm_orch.renew", timeout=600)
    assert (code, report["clusters"], report["due"]) == (0, {}, {}), report
    assert {name: cluster.main_pid(name) for name in cluster.nodes} == pids, "nothing due, nothing restarted"

    # The certificates (30 days) fall under a renewal threshold of 45 days.
    cluster.change_pillar(pki={"days_valid": 60, "days_remaining": 45})
    before = {name: file_cert(cluster, name).serial_number for name in cluster.nodes}
    leader = cluster.renewing_leader()
    nodes = {
        name: SimpleNamespace(healthy=lambda name=name: cluster.healthz(name, timeout=1)) for name in cluster.nodes
    }
    with LeaseWatch(cluster.cp, nodes=nodes) as watch:
        code, report = cluster.master.run("kcm_orch.renew", timeout=900)
        assert code == 0, report
        cluster.wait_for_leader(cluster.failover_bound + 10)
    assert sorted(report["due"]) == sorted(cluster.nodes), report
    (rolled,) = report["clusters"].values()
    assert rolled["order"][-1] == leader, rolled
    for name in cluster.nodes:
        assert file_cert(cluster, name).serial_number != before[name], f"{name}: not renewed"
        assert served_cert(cluster, name).serial_number == file_cert(cluster, name).serial_number
    assert watch.transitions == 1, (watch.holders, cluster.lease_log.summary())
    assert watch.min_healthy >= len(cluster.nodes) - 1, watch.healthy_counts
    code, report = cluster.master.run("kcm_orch.renew", timeout=600)
    assert (code, report["due"]) == (0, {}), "nothing is due after the renewal"
