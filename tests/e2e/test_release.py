"""The Lease release step on real KCMs: what the unit's ``ExecStopPost=`` does after an exit.

The KCMs run from the units the formula rendered (tests/e2e/conftest.py); after a KCM has
exited, the test runs the unit's ``ExecStopPost=`` lines exactly as written, under that
node's hostname, the way systemd would (``KcmProcess.run_stop_post``).

The property, not a timer: after ``kill -9`` of the leader, a standby holds the Lease
before the old holder's ``renewTime + leaseDurationSeconds`` with the release step, and not
before it without (client-go only takes an unreleased Lease once it has expired).
"""

from __future__ import annotations

import datetime

import pytest

from kcmlab.controlplane import node_of, wait_until

PROGRAM_MANAGER = "kcm-release-lease"


def micro(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)


def kill_right_after_a_renewal(cluster, leader: str) -> dict:
    """SIGKILL the leader just after it renewed (so the gap to expiry is a full lease); return
    the Lease as the dead leader left it."""
    cp = cluster.control_plane
    first = cp.lease()["spec"]["renewTime"]
    wait_until(lambda: cp.lease()["spec"]["renewTime"] != first, 10, "a renewal of the Lease", interval=0.02)
    cluster.kill(leader)
    return cp.lease()


def new_holder(cluster, old_holder: str, timeout: float) -> dict:
    cp = cluster.control_plane

    def taken():
        lease = cp.lease()
        holder = lease["spec"].get("holderIdentity")
        return lease if holder and holder != old_holder else None

    return wait_until(taken, timeout, "a new Lease holder", interval=0.05)


def set_release_on_exit(node, enabled: bool) -> None:
    """Re-apply the formula on ``node`` with the switch (the unit changes; KCM is not restarted)."""
    pillar = node.minion.pillar
    election = dict(pillar["kcm"].get("leader_election") or {}, release_on_exit=enabled)
    node.minion.set_pillar({"kcm": dict(pillar["kcm"], leader_election=election)})
    ret = node.minion.apply("kcm")
    failed = [f"{sid}: {st.get('comment')}" for sid, st in ret.items() if st.get("result") is not True]
    assert not failed, failed


def test_after_kill_9_the_stop_hook_hands_the_lease_to_a_standby_before_it_expires(kcm_cluster, record_timing):
    leader = kcm_cluster.wait_for_leader(kcm_cluster.failover_bound)
    node = kcm_cluster.nodes[leader]
    dead = kill_right_after_a_renewal(kcm_cluster, leader)
    spec = dead["spec"]
    expiry = micro(spec["renewTime"]) + datetime.timedelta(seconds=spec["leaseDurationSeconds"])

    [hook] = node.process.run_stop_post()

    assert hook.returncode == 0, hook.stderr
    assert len(hook.stdout.splitlines()) == 1 and "released Lease kube-system/kube-controller-manager" in hook.stdout
    assert "[signal, killed=KILL]" in hook.stdout
    taken = new_holder(kcm_cluster, spec["holderIdentity"], kcm_cluster.failover_bound)
    acquired = micro(taken["spec"]["acquireTime"])
    assert node_of(taken["spec"]["holderIdentity"]) != leader
    assert acquired < expiry, f"acquired at {acquired}, the dead leader's Lease expired at {expiry}"
    assert taken["spec"]["leaseTransitions"] == spec["leaseTransitions"] + 1
    record_timing("release on: new holder's acquireTime before the old expiry by", (expiry - acquired).total_seconds())


def test_with_release_on_exit_off_a_standby_waits_for_the_expiry(kcm_cluster, record_timing):
    leader = kcm_cluster.wait_for_leader(kcm_cluster.failover_bound)
    node = kcm_cluster.nodes[leader]
    set_release_on_exit(node, False)
    try:
        dead = kill_right_after_a_renewal(kcm_cluster, leader)
        spec = dead["spec"]
        expiry = micro(spec["renewTime"]) + datetime.timedelta(seconds=spec["leaseDurationSeconds"])

        assert node.process.run_stop_post() == []
        taken = new_holder(kcm_cluster, spec["holderIdentity"], kcm_cluster.failover_bound)
    finally:
        set_release_on_exit(node, True)
    acquired = micro(taken["spec"]["acquireTime"])
    assert acquired >= expiry, f"acquired at {acquired}, before the unreleased Lease expired at {expiry}"
    record_timing("release off: new holder's acquireTime after the old expiry by", (acquired - expiry).total_seconds())


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_standbys_stop_hook_never_writes_the_leaders_lease(kcm_cluster, how):
    cp = kcm_cluster.control_plane
    leader = kcm_cluster.wait_for_leader(kcm_cluster.failover_bound)
    standby = next(name for name in kcm_cluster.nodes if name != leader)
    before = cp.lease()
    started = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)

    getattr(kcm_cluster, how)(standby)
    [hook] = kcm_cluster.nodes[standby].process.run_stop_post()
    after = cp.lease()

    assert hook.returncode == 0 and "left alone" in hook.stdout, hook.stdout
    for key in ("holderIdentity", "acquireTime", "leaseTransitions", "leaseDurationSeconds"):
        assert after["spec"][key] == before["spec"][key], key
    # The leader renews every retry period, so the resourceVersion moves by itself; what must
    # never appear is a write by the release program (the apiserver names its field manager).
    ours = [entry for entry in after["metadata"].get("managedFields", [])
            if entry.get("manager") == PROGRAM_MANAGER and micro_seconds(entry["time"]) >= started]
    assert ours == [], ours


def test_with_no_standby_running_the_lease_stays_released_as_client_go_leaves_it(kcm_cluster):
    """Also what makes the check above able to fail: a release shows under the program's manager."""
    cp = kcm_cluster.control_plane
    leader = kcm_cluster.wait_for_leader(kcm_cluster.failover_bound)
    for name in kcm_cluster.nodes:
        if name != leader:
            kcm_cluster.stop(name)
    before = cp.lease()["spec"]
    kcm_cluster.kill(leader)

    [hook] = kcm_cluster.nodes[leader].process.run_stop_post()

    released = cp.lease()
    assert "released" in hook.stdout, hook.stdout
    assert released["spec"]["holderIdentity"] == "" and released["spec"]["leaseDurationSeconds"] == 1
    assert released["spec"]["leaseTransitions"] == before["leaseTransitions"]
    assert released["spec"]["acquireTime"] == released["spec"]["renewTime"]
    managers = [entry.get("manager") for entry in released["metadata"].get("managedFields", [])]
    assert PROGRAM_MANAGER in managers, managers


def micro_seconds(text: str) -> datetime.datetime:
    """managedFields times are RFC 3339 to the second."""
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
