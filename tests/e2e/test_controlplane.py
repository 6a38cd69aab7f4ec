"""Three real KCMs, started from the units the formula rendered, against a real apiserver.

What an operator would check on a fresh HA control plane: one leader and two standbys, the
health endpoint over TLS with the formula's certificate, the leader metric, failover when
the leader dies (and when two of three go away), the RBAC objects, and that the real binary
accepts the rendered flags.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path

from cryptography import x509

from kcmlab.controlplane import https_session, metric_values, node_of, wait_until, write_private

EXPECTED_VERSION = "v1.37.2"
LEADER_METRIC = "leader_election_master_status"


def _metrics_identity(cp, tmp_path, cn, groups):
    cert, key = cp.issue_client_cert(cn, groups)
    return (write_private(tmp_path / f"{cn}.pem", cert), write_private(tmp_path / f"{cn}-key.pem", key))


def _leader_status(node, client_cert) -> float:
    """This KCM's own ``leader_election_master_status{name="kube-controller-manager"}``."""
    text = node.process.metrics(node.ca_path, client_cert)
    values = [v for labels, v in metric_values(text, LEADER_METRIC)
              if labels.get("name") == "kube-controller-manager"]
    assert len(values) == 1, f"{node.name}: expected one {LEADER_METRIC} sample, got {values}"
    return values[0]


def test_exactly_one_leader_and_two_standbys(kcm_cluster):
    cp = kcm_cluster.control_plane
    leader = kcm_cluster.wait_for_leader(kcm_cluster.failover_bound)
    lease = cp.lease()
    holder = lease["spec"]["holderIdentity"]

    assert leader in kcm_cluster.nodes
    assert holder.startswith(f"{leader}_"), f"holderIdentity {holder!r} is not <node>_<uuid>"
    assert lease["spec"]["leaseDurationSeconds"] == int(kcm_cluster.election["lease_duration"])
    assert sorted(kcm_cluster.running()) == sorted(kcm_cluster.nodes)

    # The standbys keep running without taking the lock: after two lease durations the
    # same process (same identity, same transition count) still holds it.
    time.sleep(2 * kcm_cluster.election["lease_duration"])
    later = cp.lease()["spec"]
    assert later["holderIdentity"] == holder
    assert later.get("leaseTransitions") == lease["spec"].get("leaseTransitions")
    assert sorted(kcm_cluster.running()) == sorted(kcm_cluster.nodes)


def test_healthz_ok_over_tls_with_the_formulas_certificate(kcm_cluster):
    for name, node in kcm_cluster.nodes.items():
        assert node.process.secure_port == node.secure_port, f"{name}: rendered port differs from pillar"
        reply = node.process.healthz(node.ca_path)  # verifies the chain and 127.0.0.1
        assert (reply.status_code, reply.text) == (200, "ok"), f"{name}: {reply.status_code} {reply.text!r}"

        served = x509.load_pem_x509_certificate(
            ssl.get_server_certificate(("127.0.0.1", node.secure_port), ca_certs=str(node.ca_path)).encode())
        installed = x509.load_pem_x509_certificate(Path(node.deployed["files"]["cert"]).read_bytes())
        assert served == installed, f"{name} serves a certificate other than the formula's"


def test_metrics_show_leader_status_one_on_leader_zero_elsewhere(kcm_cluster, tmp_path):
    cp = kcm_cluster.control_plane
    # A monitoring identity, not system:masters: /metrics goes through the apiserver's
    # SubjectAccessReview (bootstrap ClusterRole system:monitoring).
    monitor = _metrics_identity(cp, tmp_path, "prometheus", ["system:monitoring"])
    leader = kcm_cluster.wait_for_leader(kcm_cluster.failover_bound)

    status = {name: _leader_status(node, monitor) for name, node in kcm_cluster.nodes.items()}

    assert kcm_cluster.leader() == leader, "leader changed during the scrape"
    assert status == {name: (1.0 if name == leader else 0.0) for name in kcm_cluster.nodes}


def test_metrics_refuse_a_client_without_rights(kcm_cluster, tmp_path):
    node = next(iter(kcm_cluster.nodes.values()))
    nobody = _metrics_identity(kcm_cluster.control_plane, tmp_path, "nobody", [])
    with https_session(node.ca_path, nobody) as session:
        reply = session.get(f"https://127.0.0.1:{node.secure_port}/metrics", timeout=10)
    assert reply.status_code == 403


def test_failover_after_sigkill_then_last_one_standing_leads(kcm_cluster, record_timing):
    bound = kcm_cluster.failover_bound
    old = kcm_cluster.wait_for_leader(bound)

    began = time.monotonic()
    kcm_cluster.kill(old)
    new = kcm_cluster.wait_for_leader(bound + 10, exclude={old})
    took = time.monotonic() - began
    record_timing("short timings: failover after SIGKILL of the leader", took)
    assert new != old
    assert took <= bound, f"new leader after {took:.1f}s, bound {bound:.1f}s"

    # The guide's drill: with the killed one back, stop two of three (the leader among
    # them); the one left takes over.
    kcm_cluster.start(old)
    leader = kcm_cluster.wait_for_leader(bound)
    survivor = next(name for name in kcm_cluster.nodes if name != leader and name != old)
    stopped = [name for name in kcm_cluster.nodes if name != survivor]
    began = time.monotonic()
    for name in stopped:
        kcm_cluster.stop(name)
    last = kcm_cluster.wait_for_leader(bound + 10, exclude=stopped)
    took = time.monotonic() - began
    record_timing("short timings: failover after stopping 2 of 3 (SIGTERM)", took)
    assert last == survivor
    assert kcm_cluster.running() == [survivor]
    assert took <= bound, f"survivor led after {took:.1f}s, bound {bound:.1f}s"


def test_rbac_clusterrole_and_per_controller_service_accounts(kcm_cluster):
    cp = kcm_cluster.control_plane
    role = cp.get_json("/apis/rbac.authorization.k8s.io/v1/clusterroles/system:kube-controller-manager")
    binding = cp.get_json(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/system:kube-controller-manager")
    assert role is not None, "ClusterRole system:kube-controller-manager is missing"
    assert binding is not None and {"kind": "User", "name": "system:kube-controller-manager",
                                    "apiGroup": "rbac.authorization.k8s.io"} in binding["subjects"]

    for node in kcm_cluster.nodes.values():
        assert node.process.flag("use-service-account-credentials") == "true"
    wanted = ("deployment-controller", "replicaset-controller", "namespace-controller")

    def created():
        return all(cp.get_json(f"/api/v1/namespaces/kube-system/serviceaccounts/{sa}") for sa in wanted)

    wait_until(created, 60, f"service accounts {wanted} in kube-system")


def test_rendered_flags_are_accepted_by_the_real_binary(kcm_cluster):
    for name, node in kcm_cluster.nodes.items():
        result = node.process.run_once(["--version"])
        assert result.returncode == 0, f"{name}: {result.stderr.strip()[-2000:]}"
        assert result.stdout.strip() == f"Kubernetes {EXPECTED_VERSION}"


def test_a_bogus_flag_is_rejected_by_the_real_binary(kcm_cluster):
    node = kcm_cluster.nodes["master-1"]
    result = node.process.run_once(["--no-such-flag=1", "--version"])
    assert result.returncode != 0
    assert "unknown flag: --no-such-flag" in result.stderr


def test_failover_at_default_timings(kcm_cluster_default_timings, record_timing):
    cluster = kcm_cluster_default_timings
    assert cluster.election == {"lease_duration": 15.0, "renew_deadline": 10.0, "retry_period": 2.0}
    bound = cluster.failover_bound
    old = cluster.wait_for_leader(bound)
    assert node_of(cluster.control_plane.lease()["spec"]["holderIdentity"]) == old

    began = time.monotonic()
    cluster.kill(old)
    new = cluster.wait_for_leader(bound + 10, exclude={old})
    took = time.monotonic() - began
    record_timing("default timings: failover after SIGKILL of the leader", took)
    assert new in cluster.nodes and new != old
    assert took <= bound, f"new leader after {took:.1f}s, bound {bound:.1f}s"
