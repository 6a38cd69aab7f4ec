"""orch.kcm.upgrade and orch.kcm.drill through a real salt-master and three systemd machines
with real minions, against a real control plane and three real KCMs run by systemd
(fixtures in conftest.py).

A version change between two real minor releases: test_version_upgrade.py.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.orch.harness import BOUND, LeaseWatch, runner_return, starts, steps

pytestmark = pytest.mark.e2e


def orch_lease_seconds(orch):
    return orch.cp.lease()["spec"]["leaseDurationSeconds"]


def flag_in_units(orch, flag):
    return {name: flag in node.exec_start() for name, node in orch.nodes.items()}


def test_rolling_config_change_restarts_each_kcm_once_with_one_leader_change(orch, record_timing):
    orch.change_pillar(verbosity=3)
    since = time.time()

    with LeaseWatch(orch.cp, nodes=orch.nodes) as watch:
        begin = time.monotonic()
        result = orch.salt_run("state.orchestrate", "orch.kcm.upgrade")
        record_timing("orch.kcm.upgrade (config change, 3 masters)", time.monotonic() - begin)

    states = steps(result)
    assert result.returncode == 0, {k: v["comment"] for k, v in states.items()}
    summary = runner_return(states["kcm-orch-upgrade-rolling"])
    print("\n".join(summary["summary"]))
    watch.assert_sound()
    # The leader the watch saw first is the one the orchestration found and restarted last.
    leader = watch.leader_nodes[0]
    assert summary["leader_before"] == leader and summary["order"][-1] == leader, (summary["order"], watch.holders)
    assert flag_in_units(orch, "--v=3") == {name: True for name in orch.nodes}
    assert starts(orch, since) == {name: 1 for name in orch.nodes}
    assert watch.transitions == 1 and summary["leader_changes"] == 1, orch.lab.lease_log.summary()
    assert len(watch.holders) == 2, watch.holders
    # No poll lacks a live leader except in the one handover when the old leader stops.
    # (How long that window is: bench/rolling.py.)
    assert len(watch.gaps()) <= 1, watch.gaps()
    assert watch.min_healthy >= len(orch.nodes) - 1, watch.healthy_counts  # one master at a time
    assert states["kcm-orch-upgrade-leader-elected"]["result"] is True
    record_timing("rolling: longest window without a live leader", watch.longest_gap)


def test_the_same_kind_of_change_by_a_plain_apply_of_all_masters_for_contrast(orch, record_timing):
    orch.change_pillar(verbosity=4)
    holder = orch.lab.consistent().holder
    since = time.time()

    with LeaseWatch(orch.cp, nodes=orch.nodes) as watch:
        begin = time.monotonic()
        # What `salt 'master*' state.apply kcm` does: every master applies at once and its
        # service.running (watching the unit) restarts KCM through systemd.
        result = orch.salt("state.apply", "kcm", timeout=900)
        orch.ensure_running()
        # Every process restarted, so the old holder's lock must be taken over by a new one.
        watch.wait_for_live_holder_other_than(holder, BOUND + 30)
        elapsed = time.monotonic() - begin
        time.sleep(orch_lease_seconds(orch))  # a late takeover still counts

    assert result.returncode == 0, result.stdout
    watch.assert_sound()
    restarted = {
        m: any(st.get("__id__") == "kcm-service-running" and st.get("changes") for st in r.values())
        for m, r in result.data.items()
    }
    assert restarted == {name: True for name in orch.nodes}
    assert starts(orch, since) == {name: 1 for name in orch.nodes}
    assert flag_in_units(orch, "--v=4") == {name: True for name in orch.nodes}
    print(
        f"\nplain apply: {watch.transitions} leader change(s), holders {watch.leader_nodes}, "
        f"longest window without a live leader {watch.longest_gap:.1f}s, "
        f"{watch.polls_without_leader}/{len(watch.polls)} polls without one, "
        f"fewest healthy KCMs at a poll {watch.min_healthy}, {elapsed:.1f}s"
    )
    record_timing("plain apply of all masters (config change)", elapsed)
    record_timing("plain apply: longest window without a live leader", watch.longest_gap)


def test_preflight_failure_restarts_nothing_and_fails_with_the_binarys_message(orch):
    units = {name: node.exec_start() for name, node in orch.nodes.items()}
    holder = orch.lab.consistent().holder
    since = time.time()

    # A typo (the flag is --concurrent-deployment-syncs) that the formula's version table
    # cannot know about: only the real binary refuses it.
    result = orch.salt_run(
        "state.orchestrate", "orch.kcm.upgrade", pillar={"kcm": {"extra_args": {"concurrent-deployment-sync": 5}}}
    )

    states = steps(result)
    assert result.returncode != 0
    preflight = runner_return(states["kcm-orch-upgrade-preflight"])
    assert states["kcm-orch-upgrade-preflight"]["result"] is False
    assert "unknown flag: --concurrent-deployment-sync" in preflight["comment"], preflight["comment"]
    assert all(r["result"] is False for r in preflight["masters"].values()), preflight["masters"]
    assert states["kcm-orch-upgrade-rolling"]["result"] is False
    assert "requisite" in states["kcm-orch-upgrade-rolling"]["comment"].lower()
    assert starts(orch, since) == {name: 0 for name in orch.nodes}
    assert {name: node.exec_start() for name, node in orch.nodes.items()} == units
    assert orch.cp.lease()["spec"]["holderIdentity"] == holder, orch.lab.lease_log.summary()


def test_drill_reports_a_failover_and_starts_the_leader_again(orch, record_timing):
    leader = orch.lab.renewing_leader()
    since = time.time()

    result = orch.salt_run("state.orchestrate", "orch.kcm.drill")

    states = steps(result)
    assert result.returncode == 0, {k: v["comment"] for k, v in states.items()}
    report = runner_return(states["kcm-orch-drill"])
    print("\n".join(report["summary"]))
    assert report["leader_before"] == leader and report["stopped"] == [leader], orch.lab.lease_log.summary()
    assert report["leader_after"] in orch.nodes and report["leader_after"] != leader
    # The old leader came back as a standby: the new one still leads (and renews).
    assert orch.lab.renewing_leader() == report["leader_after"], orch.lab.lease_log.summary()
    # How fast the failover is: bench/release.py ("stop"); here that it was measured.
    assert report["failover_seconds"] > 0, report
    assert report["leader_changes"] == 1
    assert report["healthy_after"] == sorted(orch.nodes)
    assert starts(orch, since) == {name: int(name == leader) for name in orch.nodes}
    record_timing("drill: failover after stopping the leader", report["failover_seconds"])


def test_drill_refuses_when_fewer_than_two_healthy_masters_would_remain(orch):
    holder = orch.lab.consistent().holder
    since = time.time()

    result = orch.salt_run("state.orchestrate", "orch.kcm.drill", pillar={"kcm_orch": {"count": 2}})

    states = steps(result)
    assert result.returncode != 0
    report = runner_return(states["kcm-orch-drill"])
    assert "would leave 1" in report["comment"] and "min_remaining=2" in report["comment"], report
    assert starts(orch, since) == {name: 0 for name in orch.nodes}
    assert orch.cp.lease()["spec"]["holderIdentity"] == holder, orch.lab.lease_log.summary()
