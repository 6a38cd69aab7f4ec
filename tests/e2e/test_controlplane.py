"""Three real KCMs on three systemd machines, deployed by the formula over the bus.

What an operator checks on a fresh HA control plane: one leader and two standbys, the health
endpoint over TLS with the formula's certificate (on the machine's loopback, where the
formula's default bind address puts it; nothing else reaches it), the leader metric, failover when the leader
dies (and when two of three go away), the RBAC objects, and that the real binary accepts the
rendered flags. Every start, stop and restart here goes through systemd.
"""

from __future__ import annotations

import socket
import time

from cryptography import x509

from kcmlab.controlplane import metric_values, wait_until, write_private

EXPECTED_VERSION = "v1.37.2"
LEADER_METRIC = "leader_election_master_status"
PORT = 10257


def _metrics_identity(cp, tmp_path, cn, groups):
    cert, key = cp.issue_client_cert(cn, groups)
    return (write_private(tmp_path / f"{cn}.pem", cert), write_private(tmp_path / f"{cn}-key.pem", key))


def _metrics(cluster, name, client_cert):
    reply = cluster.kcm_https(name, "/metrics", cert=client_cert, timeout=10)
    assert "error" not in reply, f"{name}: {reply['error']}"
    return reply


def _leader_status(cluster, name, client_cert) -> float:
    """This KCM's own ``leader_election_master_status{name="kube-controller-manager"}``."""
    reply = _metrics(cluster, name, client_cert)
    assert reply["status"] == 200, f"{name}: /metrics answered {reply['status']}"
    values = [
        v
        for labels, v in metric_values(reply["text"], LEADER_METRIC)
        if labels.get("name") == "kube-controller-manager"
    ]
    assert len(values) == 1, f"{name}: expected one {LEADER_METRIC} sample, got {values}"
    return values[0]


def test_exactly_one_leader_and_two_standbys(kcm_cluster):
    cp = kcm_cluster.cp
    leader, holder, spec, _ = kcm_cluster.consistent()

    assert leader in kcm_cluster.nodes
    assert holder.startswith(f"{leader}_"), f"holderIdentity {holder!r} is not <hostname>_<uuid>"
    assert spec["leaseDurationSeconds"] == int(kcm_cluster.election_seconds["lease_duration"])
    assert kcm_cluster.running() == list(kcm_cluster.nodes)

    # The standbys keep running without taking the lock: after two lease durations the
    # same process (same identity, same transition count) still holds it.
    time.sleep(2 * kcm_cluster.election_seconds["lease_duration"])
    later = cp.lease()["spec"]
    moved = kcm_cluster.lease_log.summary()
    assert later["holderIdentity"] == holder, moved
    assert later.get("leaseTransitions") == spec.get("leaseTransitions"), moved
    assert kcm_cluster.running() == list(kcm_cluster.nodes)


def test_healthz_ok_over_tls_with_the_formulas_certificate(kcm_cluster):
    for name in kcm_cluster.nodes:
        reply = kcm_cluster.kcm_https(name, "/healthz", timeout=5)  # verifies the chain and 127.0.0.1
        assert (reply.get("status"), reply.get("text")) == (200, "ok"), f"{name}: {reply}"

        served = x509.load_pem_x509_certificate(reply["cert"].encode())
        installed = x509.load_pem_x509_certificate(
            kcm_cluster.machine(name).read_file("/etc/k8s/ssl/kube-controller-manager.pem").encode()
        )
        assert served == installed, f"{name} serves a certificate other than the formula's"


def test_the_secure_port_is_closed_to_the_network_by_default(kcm_cluster):
    # CIS 1.3.7: --bind-address=127.0.0.1. From the host, over the lab's bridge, nothing answers.
    for name in kcm_cluster.nodes:
        assert "--bind-address=127.0.0.1" in kcm_cluster.cmdline(name)
        with socket.socket() as sock:
            sock.settimeout(3)
            assert sock.connect_ex((kcm_cluster.lab.address_of(name), PORT)) != 0, f"{name}:{PORT} is reachable"


def test_metrics_show_leader_status_one_on_leader_zero_elsewhere(kcm_cluster, tmp_path):
    # A monitoring identity, not system:masters: /metrics goes through the apiserver's
    # SubjectAccessReview (bootstrap ClusterRole system:monitoring).
    monitor = _metrics_identity(kcm_cluster.cp, tmp_path, "prometheus", ["system:monitoring"])

    # One leader throughout the scrape (scraped again when the Lease moved meanwhile).
    leader, _, _, status = kcm_cluster.consistent(
        lambda: {name: _leader_status(kcm_cluster, name, monitor) for name in kcm_cluster.nodes}
    )

    assert status == {name: (1.0 if name == leader else 0.0) for name in kcm_cluster.nodes}


def test_metrics_refuse_a_client_without_rights(kcm_cluster, tmp_path):
    nobody = _metrics_identity(kcm_cluster.cp, tmp_path, "nobody", [])
    assert _metrics(kcm_cluster, kcm_cluster.nodes[0], nobody)["status"] == 403


def test_failover_after_sigkill_then_last_one_standing_leads(kcm_cluster, record_timing):
    # Upper bounds for "it happened"; how fast a failover is, bench/release.py measures.
    bound = kcm_cluster.failover_bound
    old = kcm_cluster.renewing_leader()

    began = time.monotonic()
    kcm_cluster.kill(old)
    new = kcm_cluster.wait_for_leader(bound + 10, exclude={old})
    record_timing("short timings: failover after kill -9 of the leader's KCM", time.monotonic() - began)
    assert new in kcm_cluster.nodes

    # The guide's drill: stop two of three (the leader among them) with systemctl; the one
    # left takes over.
    leader = kcm_cluster.ensure_running()
    survivor = next(name for name in kcm_cluster.nodes if name not in (leader, old))
    stopped = [name for name in kcm_cluster.nodes if name != survivor]
    began = time.monotonic()
    for name in stopped:
        kcm_cluster.stop(name)
    last = kcm_cluster.wait_for_leader(bound + 10, exclude=stopped)
    record_timing("short timings: failover after systemctl stop on 2 of 3", time.monotonic() - began)
    assert last == survivor
    assert kcm_cluster.running() == [survivor]


def test_rbac_clusterrole_and_per_controller_service_accounts(kcm_cluster):
    cp = kcm_cluster.cp
    role = cp.get_json("/apis/rbac.authorization.k8s.io/v1/clusterroles/system:kube-controller-manager")
    binding = cp.get_json("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/system:kube-controller-manager")
    assert role is not None, "ClusterRole system:kube-controller-manager is missing"
    assert (
        binding is not None
        and {"kind": "User", "name": "system:kube-controller-manager", "apiGroup": "rbac.authorization.k8s.io"}
        in binding["subjects"]
    )

    for name in kcm_cluster.nodes:
        assert "--use-service-account-credentials=true" in kcm_cluster.cmdline(name)
    wanted = ("deployment-controller", "replicaset-controller", "namespace-controller")

    def created():
        return all(cp.get_json(f"/api/v1/namespaces/kube-system/serviceaccounts/{sa}") for sa in wanted)

    wait_until(created, 60, f"service accounts {wanted} in kube-system")


def test_the_running_binary_is_the_release_and_rejects_a_bogus_flag(kcm_cluster):
    name = kcm_cluster.nodes[0]
    binary = kcm_cluster.cmdline(name)[0]
    version = kcm_cluster.machine(name).run([binary, "--version"])
    assert version.stdout.strip() == f"Kubernetes {EXPECTED_VERSION}"
    bogus = kcm_cluster.machine(name).run([binary, "--no-such-flag=1", "--version"], check=False)
    assert bogus.returncode != 0
    assert "unknown flag: --no-such-flag" in bogus.stderr


def test_failover_at_default_timings(kcm_cluster_default_timings, record_timing):
    cluster = kcm_cluster_default_timings
    assert cluster.election_seconds == {"lease_duration": 15.0, "renew_deadline": 10.0, "retry_period": 2.0}
    assert "--leader-elect-lease-duration=15s" in cluster.cmdline(cluster.nodes[0])
    bound = cluster.failover_bound
    old = cluster.renewing_leader(bound + 30)

    began = time.monotonic()
    cluster.kill(old)
    new = cluster.wait_for_leader(bound + 10, exclude={old})
    record_timing("default timings: failover after kill -9 of the leader's KCM", time.monotonic() - began)
    assert new in cluster.nodes
