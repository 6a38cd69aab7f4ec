"""A minor upgrade between two real builds through ``orch.kcm.upgrade``, then the rollback:
three systemd machines deployed at the previous minor's newest patch (PREVIOUS) are rolled to
the pinned release (what ``scripts/k8s-binaries`` builds by default), as an operator does it:

    salt-run state.orchestrate orch.kcm.upgrade \\
        pillar='{"kcm": {"version": "v1.37.2", "source": {"url": ..., "hash": ...}}}'

and back to PREVIOUS the same way (the kept binary: no download). The control plane runs the
pinned release throughout (KCM one minor older than the apiserver is within the supported
skew). Both builds come from scripts/k8s-binaries; a missing one fails the fixtures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from kcmlab.cluster import UNIT
from tests.e2e.orch.cluster import built_release, deployed_cluster, release_of
from tests.e2e.orch.harness import LeaseWatch, runner_return, starts, steps

pytestmark = pytest.mark.e2e

PREVIOUS = "v1.36.3"


@dataclass
class Rollout:
    """One ``orch.kcm.upgrade`` run and what was watched around it."""

    result: object
    watch: LeaseWatch
    since: float
    leader: str
    holder: str
    seconds: float

    @property
    def states(self) -> dict:
        return steps(self.result)

    @property
    def summary(self) -> dict:
        return runner_return(self.states["kcm-orch-upgrade-rolling"])


INSTALL = "/data/apps/k8s/kubernetes"


@pytest.fixture(scope="module")
def target_bin(k8s_bin):
    if release_of(k8s_bin) == PREVIOUS:
        pytest.fail(f"scripts/k8s-binaries builds {PREVIOUS} by default: nothing to upgrade to", pytrace=False)
    return k8s_bin


@pytest.fixture(scope="module")
def previous_cluster(request, target_bin, tmp_path_factory):
    """Three masters deployed and running at PREVIOUS, against a control plane at the target."""
    built_release(request, PREVIOUS)
    with deployed_cluster(request, tmp_path_factory, target_bin, PREVIOUS, "e2e-vup") as cluster:
        yield cluster


@pytest.fixture
def vup(previous_cluster):
    """The cluster with every KCM running and healthy and a leader, before and after the test."""
    previous_cluster.ensure_running()
    yield previous_cluster
    previous_cluster.ensure_running()


def release_pillar(cluster, version: str) -> dict:
    """The pillar override an operator passes: the new version and where its tarball lies."""
    url, hash_url = cluster.lab.tarball(version)
    return {"kcm": {"version": version, "source": {"type": "tarball", "url": url, "hash": hash_url}}}


def run_upgrade(cluster, version: str) -> Rollout:
    """The upgrade under a LeaseWatch; ``leader``/``holder``: the first the watch saw."""
    cluster.lab.renewing_leader()
    since = time.time()
    with LeaseWatch(cluster.cp, nodes=cluster.nodes) as watch:
        begin = time.monotonic()
        result = cluster.salt_run("state.orchestrate", "orch.kcm.upgrade", pillar=release_pillar(cluster, version))
        seconds = time.monotonic() - begin
    watch.assert_sound()
    return Rollout(result, watch, since, watch.leader_nodes[0], watch.holders[0], seconds)


@pytest.fixture(scope="module")
def first_rollout(previous_cluster, target_bin):
    """The upgrade from PREVIOUS to the target, run once for the module (the tests assert on it)."""
    previous_cluster.ensure_running()
    versions = previous_cluster.salt("kcm.version", timeout=60).data
    assert versions == {name: PREVIOUS for name in previous_cluster.nodes}, versions
    return run_upgrade(previous_cluster, release_of(target_bin))


def versions_kept(node) -> list[str]:
    return sorted(node.machine.run(["ls", f"{INSTALL}/versions"]).stdout.split())


def active_binary(node) -> str:
    return node.machine.run(["readlink", f"{INSTALL}/sbin/kube-controller-manager"]).stdout.strip()


def version_binary(version) -> str:
    return f"{INSTALL}/versions/{version}/kube-controller-manager"


def release_runs(node, binary: str) -> str:
    return node.machine.run([binary, "--version"]).stdout.strip()


def running_binary(node) -> str:
    """The executable of the KCM process systemd runs now."""
    pid = node.cluster.main_pid(node.name)
    return node.machine.run(["readlink", f"/proc/{pid}/exe"]).stdout.strip()


@pytest.fixture
def apiserver_at_previous(request, vup, target_bin):
    """The lab's kube-apiserver downgraded in place to PREVIOUS for one test, then back to the target."""
    vup.cp.replace_apiserver(built_release(request, PREVIOUS))
    assert vup.cp.get_json("/version")["gitVersion"] == PREVIOUS
    # KCMs that lost their Lease while the apiserver was down are back before the test counts starts
    vup.ensure_running()
    try:
        yield vup
    finally:
        vup.cp.replace_apiserver(target_bin)
        vup.ensure_running()


def test_an_upgrade_past_the_apiserver_is_refused_on_every_master_before_any_changes(apiserver_at_previous, target_bin):
    # Issue 28: KCM is never newer than its kube-apiserver; here every apiserver is PREVIOUS.
    vup, target = apiserver_at_previous, release_of(target_bin)
    units = {name: node.exec_start() for name, node in vup.nodes.items()}
    kept = {name: versions_kept(node) for name, node in vup.nodes.items()}
    active = {name: active_binary(node) for name, node in vup.nodes.items()}
    since = time.time()

    result = vup.salt_run("state.orchestrate", "orch.kcm.upgrade", pillar=release_pillar(vup, target))

    states = steps(result)
    assert result.returncode != 0
    preflight = runner_return(states["kcm-orch-upgrade-preflight"])
    refusal = (
        f"kcm:version: {target} is newer than the kube-apiserver ({PREVIOUS} on master-1); the skew policy"
        " allows KCM at most one minor older than the apiserver, never newer: upgrade the apiservers first"
        " (or set kcm:skew:override_reason to a reason to override)"
    )
    assert preflight["comment"] == "preflight failed, nothing was restarted: " + "; ".join(
        f"{name}: {refusal}" for name in sorted(vup.nodes)
    )
    assert states["kcm-orch-upgrade-preflight"]["result"] is False
    assert states["kcm-orch-upgrade-rolling"]["result"] is False
    # nothing downloaded, installed, rewritten or restarted on any master
    assert {name: versions_kept(node) for name, node in vup.nodes.items()} == kept
    assert {name: active_binary(node) for name, node in vup.nodes.items()} == active
    assert {name: node.exec_start() for name, node in vup.nodes.items()} == units
    assert starts(vup, since) == {name: 0 for name in vup.nodes}
    assert vup.salt("kcm.version", timeout=60).data == {name: PREVIOUS for name in vup.nodes}

    # state.apply on each master, test mode included, says the same through the formula's own guard
    own = "Refused by the version skew guard, nothing was changed:\n- " + refusal.replace(
        f"({PREVIOUS} on master-1)", f"({PREVIOUS})"
    )
    for test in (True, False):
        applied = vup.salt("state.apply", "kcm", test=test, pillar=release_pillar(vup, target), timeout=300).data
        assert {
            name: [
                (st["result"], st["comment"]) for st in applied[name].values() if st["__id__"] == "kcm-config-validated"
            ]
            for name in vup.nodes
        } == {name: [(False, own)] for name in vup.nodes}
    assert {name: versions_kept(node) for name, node in vup.nodes.items()} == kept
    assert {name: node.exec_start() for name, node in vup.nodes.items()} == units
    assert starts(vup, since) == {name: 0 for name in vup.nodes}


def test_rolling_version_upgrade_moves_every_master_to_the_new_release_with_one_leader_change(
    vup, first_rollout, target_bin, record_timing
):
    target = release_of(target_bin)
    run, states = first_rollout, first_rollout.states
    record_timing(f"orch.kcm.upgrade {PREVIOUS} -> {target} (3 masters)", run.seconds)
    assert run.result.returncode == 0, {k: v["comment"] for k, v in states.items()}
    summary = run.summary
    print("\n".join(summary["summary"]))

    preflight = runner_return(states["kcm-orch-upgrade-preflight"])["masters"]
    assert {m: (r["version"], r["deployed_version"]) for m, r in preflight.items()} == {
        name: (target, PREVIOUS) for name in vup.nodes
    }
    # What the user sees on every master: the new release active, the old one kept for rollback.
    assert vup.salt("kcm.version", timeout=60).data == {name: target for name in vup.nodes}
    assert {n: active_binary(node) for n, node in vup.nodes.items()} == {n: version_binary(target) for n in vup.nodes}
    assert {n: versions_kept(node) for n, node in vup.nodes.items()} == {
        n: sorted([PREVIOUS, target]) for n in vup.nodes
    }
    assert {n: running_binary(node) for n, node in vup.nodes.items()} == {n: version_binary(target) for n in vup.nodes}
    # The kept release still runs: a rollback is a pillar change, not a download.
    assert {n: release_runs(node, version_binary(PREVIOUS)) for n, node in vup.nodes.items()} == {
        n: f"Kubernetes {PREVIOUS}" for n in vup.nodes
    }

    assert {m: (r["version_before"], r["version_after"], r["restarted"]) for m, r in summary["masters"].items()} == {
        name: (PREVIOUS, target, True) for name in vup.nodes
    }
    table = {line.split()[0]: line.split()[1:3] for line in summary["summary"][1:-1]}
    assert table == {name: [PREVIOUS, target] for name in vup.nodes}, summary["summary"]

    assert starts(vup, run.since) == {name: 1 for name in vup.nodes}
    assert summary["order"][-1] == run.leader and summary["leader_before"] == run.leader, summary["order"]
    assert run.watch.transitions == 1 and summary["leader_changes"] == 1, vup.lab.lease_log.summary()
    assert len(run.watch.holders) == 2, run.watch.holders
    assert run.watch.min_healthy >= len(vup.nodes) - 1, run.watch.healthy_counts
    # One window without a live leader, in the handover (how long: bench/rolling.py).
    assert len(run.watch.gaps()) <= 1, run.watch.gaps()
    assert states["kcm-orch-upgrade-leader-elected"]["result"] is True
    record_timing("version upgrade: longest window without a live leader", run.watch.longest_gap)


def test_running_the_same_upgrade_again_changes_and_restarts_nothing(vup, first_rollout, target_bin):
    target = release_of(target_bin)
    assert first_rollout.result.returncode == 0, "the first upgrade failed; see the test above"
    units = {name: node.exec_start() for name, node in vup.nodes.items()}
    kept = {name: versions_kept(node) for name, node in vup.nodes.items()}

    again = run_upgrade(vup, target)

    states = again.states
    assert again.result.returncode == 0, {k: v["comment"] for k, v in states.items()}
    summary = again.summary
    print("\n".join(summary["summary"]))
    assert {m: (r["version_before"], r["version_after"], r["restarted"]) for m, r in summary["masters"].items()} == {
        name: (target, target, False) for name in vup.nodes
    }
    assert starts(vup, again.since) == {name: 0 for name in vup.nodes}
    assert {name: node.exec_start() for name, node in vup.nodes.items()} == units
    assert {name: versions_kept(node) for name, node in vup.nodes.items()} == kept
    assert summary["leader_changes"] == 0 and again.watch.transitions == 0, vup.lab.lease_log.summary()
    assert vup.cp.lease()["spec"]["holderIdentity"] == again.holder


def test_a_rollback_by_pillar_is_rolling_too_and_runs_the_kept_release(vup, first_rollout, target_bin, record_timing):
    target = release_of(target_bin)
    assert first_rollout.result.returncode == 0, "the first upgrade failed; see the test above"
    vup.change_pillar(**release_pillar(vup, PREVIOUS)["kcm"])

    back = run_upgrade(vup, PREVIOUS)

    states = back.states
    assert back.result.returncode == 0, {k: v["comment"] for k, v in states.items()}
    summary = back.summary
    print("\n".join(summary["summary"]))
    record_timing(f"orch.kcm.upgrade rollback {target} -> {PREVIOUS} (3 masters)", back.seconds)
    assert {m: (r["version_before"], r["version_after"], r["restarted"]) for m, r in summary["masters"].items()} == {
        name: (target, PREVIOUS, True) for name in vup.nodes
    }
    assert vup.salt("kcm.version", timeout=60).data == {name: PREVIOUS for name in vup.nodes}
    running = {n: running_binary(node) for n, node in vup.nodes.items()}
    assert running == {n: version_binary(PREVIOUS) for n in vup.nodes}
    kept = {n: versions_kept(node) for n, node in vup.nodes.items()}
    assert kept == {n: sorted([PREVIOUS, target]) for n in vup.nodes}
    assert starts(vup, back.since) == {name: 1 for name in vup.nodes}
    assert summary["order"][-1] == back.leader, summary["order"]
    assert back.watch.transitions == 1 and summary["leader_changes"] == 1, vup.lab.lease_log.summary()
    assert back.watch.min_healthy >= len(vup.nodes) - 1, back.watch.healthy_counts
    for node in vup.nodes.values():
        assert node.machine.systemctl("is-active", UNIT).stdout.strip() == "active"
