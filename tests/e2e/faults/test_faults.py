"""Six faults of a real cluster, each ending in exactly one alert per incident in Alertmanager
(resolved when the incident ends) and a live leader; each test prints its ``FAULT`` line.

Alert counts are Alertmanager's (``fault.watch``); the runner's ``kcm/alert/<kind>`` events on
each master's bus show which master sent what.
"""

from __future__ import annotations

import time

from kcmlab.cluster import UNIT
from kcmlab.controlplane import node_of, wait_until
from kcmlab.formula import utils
from kcmlab.saltmaster import EventRecorder
from tests.e2e.alerts.conftest import WAIT, events, settled, wait_events

from .conftest import CONDITIONS, FAULTS_ELECTION, beacon_state, report_fault

LEASE = float(FAULTS_ELECTION["lease_duration"].rstrip("s"))
RENEW_DEADLINE = float(FAULTS_ELECTION["renew_deadline"].rstrip("s"))
RETRY = float(FAULTS_ELECTION["retry_period"].rstrip("s"))
EPOCH = utils()["kcm_time.epoch"]
# The beacon reports that open an alert of their own.
REPORTED_AS = {"unreachable": "KCMApiserverUnreachable", "no_leader": "KCMNoLeader", "changed": "KCMLeaderChanged"}
# An outage longer than the runner's old retry window (3 tries in about 1.5 s).
RECEIVER_OUTAGE = 25.0


def spec(cluster) -> dict:
    return (cluster.lease() or {}).get("spec") or {}


def live_leader_after(cluster, began: float, exclude=(), timeout: float = WAIT) -> tuple[str, float]:
    """The node that holds the Lease and has renewed it since ``began`` (epoch seconds), not one
    of ``exclude``, and the seconds from ``began`` to its acquisition (or to its first renewal
    after ``began`` when it kept the Lease through the fault)."""

    def live():
        current = spec(cluster)
        node = node_of(current.get("holderIdentity"))
        if node and node not in exclude and current.get("renewTime") and EPOCH(current["renewTime"]) > began:
            return node, current
        return None

    node, current = wait_until(live, timeout, f"a leader renewing after {began:.1f}", interval=0.2)
    acquired = EPOCH(current["acquireTime"])
    return node, (acquired if acquired > began else EPOCH(current["renewTime"])) - began


def reported_incidents(cluster, kind: str, since: float) -> int:
    """How many incidents of ``kind`` the beacons reported since ``since``: one per Lease
    transition for ``changed`` (every master reports each), else one if any reported it."""
    found = events(cluster, f"salt/beacon/*/kcm_leader/{kind}", since)
    if kind == "changed":
        return len({(e[2].get("transitions"), e[2].get("new_holder")) for e in found})
    return int(bool(found))


def kcm_exit_after(cluster, name: str, began: float, timeout: float) -> float:
    """Seconds from ``began`` (epoch) until KCM's main process on ``name`` exited, read from
    systemd inside the machine (it shares the host's monotonic clock)."""

    def exited():
        mono = int(cluster.machine(name).unit_property(UNIT, "ExecMainExitTimestampMonotonic") or 0) / 1e6
        at = time.time() - (time.monotonic() - mono) if mono else None
        return at if at and at > began else None

    return wait_until(exited, timeout, f"{name}: KCM's exit", interval=0.2) - began


def leader_changes_alerted(cluster, old: str, new: str, timeout: float = WAIT) -> tuple[list, str]:
    """(old_node, new_node) of every KCMLeaderChanged Alertmanager listed during the test, once
    the one of old -> new is there and a few polls later (a second one, another startsAt,
    would be seen too), and why it is missing ('' when it is there). The caller prints its
    FAULT line with the loss, then asserts exactly ``[(old, new)]``: a timeout, a wrongly
    labelled or a second alert fails the test."""
    why = ""
    try:
        wait_until(
            lambda: cluster.watch.open("KCMLeaderChanged", old_node=old, new_node=new),
            timeout,
            f"KCMLeaderChanged {old} -> {new} in Alertmanager",
            interval=0.3,
        )
    except TimeoutError as exc:
        why = str(exc)
    else:
        time.sleep(3)
    alerts = [
        (a["labels"].get("old_node"), a["labels"].get("new_node")) for a in cluster.watch.alerts("KCMLeaderChanged")
    ]
    return alerts, why


def lost(alerts, old: str, new: str) -> int:
    return int((old, new) not in alerts)


def test_leader_cut_off_the_network(fault):
    cluster = fault
    old = settled(cluster)
    before = spec(cluster)
    machine = cluster.machine(old)
    began = time.time()
    machine.cut_link()
    try:
        stopped = kcm_exit_after(cluster, old, began, RENEW_DEADLINE + RETRY + 10)
        new, leader_after = live_leader_after(cluster, began, exclude=(old,))
        # nothing was released: the standby waited for the Lease to expire
        assert EPOCH(spec(cluster)["acquireTime"]) >= EPOCH(before["renewTime"]) + LEASE - 0.1
        wait_until(
            lambda: beacon_state(cluster, old)["condition"] == "unreachable",
            WAIT,
            f"{old}'s beacon recording unreachable for itself",
            interval=0.5,
        )
        assert beacon_state(cluster, old)["reason"], beacon_state(cluster, old)
    finally:
        cut_for = time.time() - began
        machine.restore_link()
    back = time.time()
    # it rejoins as a standby: it reports the change it missed, which is no second alert
    wait_events(cluster, f"salt/beacon/{old}/kcm_leader/changed", back, 1, f"{old} reporting the new leader")
    cluster.ensure_running()
    alerts, why = leader_changes_alerted(cluster, old, new)
    assert cluster.renewing_leader() == new, cluster.lease_log.summary()
    assert cluster.active(old) == "active"
    cluster.watch.wait_closed(CONDITIONS, WAIT)
    sent = events(cluster, "kcm/alert/changed", began)
    report_fault(
        "cut_link",
        leader_after,
        cluster.watch,
        lost=lost(alerts, old, new),
        stopped_leading=f"{stopped:.1f}",
        cut_for=f"{cut_for:.0f}",
    )
    # Never two leaders: the cut-off one stopped before the other one took the Lease.
    assert stopped < leader_after, f"{old} led {stopped:.1f}s into the cut, {new} from {leader_after:.1f}s"
    assert alerts == [(old, new)], why or alerts
    assert len(sent) == 1, [e[2] for e in sent]
    assert len(cluster.watch.alerts("KCMApiserverUnreachable")) <= 1


def test_salt_master_down_while_the_minions_restart(fault):
    """The beacons' reports of the failover are lost for good (held by minions that restart
    while the master is away); the master learns of the transition when it is back."""
    cluster = fault
    settled(cluster)
    old, old_holder, _, _ = cluster.consistent()  # the node and its process, read at one moment
    recorder = cluster.recorders[cluster.master.id]
    recorder.stop()
    cluster.master.stop()
    began = time.time()
    try:
        cluster.kill(old)
        new_holder = cluster.wait_for_new_holder(old_holder, WAIT)
        new, leader_after = live_leader_after(cluster, began, exclude=(old,))
        # every beacon saw it and raised its report for a master that is away ...
        wait_until(
            lambda: all(beacon_state(cluster, n)["held"].get("holder") == new_holder for n in cluster.nodes),
            WAIT,
            "every beacon recording the new holder",
            interval=0.5,
        )
        # ... and loses it: a restarted minion has nothing of what it held
        cluster.restart_minions()
    finally:
        down_for = time.time() - began
        cluster.master.start()
        recorder.start()
    cluster.master.wait_for_minions(cluster.nodes)
    alerts, why = leader_changes_alerted(cluster, old, new)
    reports = events(cluster, "salt/beacon/*/kcm_leader/changed", began)
    report_fault(
        "salt_master_down",
        leader_after,
        cluster.watch,
        lost=lost(alerts, old, new),
        reports_dropped=len(cluster.nodes) - len(reports),
        master_down=f"{down_for:.0f}",
    )
    assert reports == [], "the scenario needs the reports lost; the minions delivered them"
    assert alerts == [(old, new)], why or alerts


def test_alertmanager_down_across_a_failover(fault, alertmanager):
    cluster = fault
    old = settled(cluster)
    alertmanager.stop()
    began = time.time()
    try:
        cluster.kill(old)
        new, leader_after = live_leader_after(cluster, began, exclude=(old,))
        wait_events(
            cluster,
            "salt/beacon/*/kcm_leader/changed",
            began,
            len(cluster.nodes),
            "a 'changed' report from every minion",
        )
        failed = wait_events(cluster, "kcm/alert/send_failed", began, 1, "kcm/alert/send_failed")
        time.sleep(max(0.0, RECEIVER_OUTAGE - (time.time() - began)))
    finally:
        down_for = time.time() - began
        alertmanager.start()
    alerts, why = leader_changes_alerted(cluster, old, new, timeout=WAIT)
    report_fault(
        "alertmanager_down", leader_after, cluster.watch, lost=lost(alerts, old, new), am_down=f"{down_for:.0f}"
    )
    assert alerts == [(old, new)], why or alerts
    # the first failed send is told once, not once per retry
    assert len(events(cluster, "kcm/alert/send_failed", began)) == len(failed) == 1


def test_etcd_and_apiserver_restarted(fault):
    """etcd, then kube-apiserver, each down longer than the Lease: each incident the beacons
    report in an outage (unreachable, no leader, a new holder) is one alert, resolved, and
    a leader renews again after each."""
    cluster = fault
    settled(cluster)
    problems = {}
    for name, restart in (("etcd", cluster.cp.restart_etcd), ("apiserver", cluster.cp.restart_apiserver)):
        began = time.time()
        down_for = restart(down=LEASE + 2)
        _, leader_after = live_leader_after(cluster, began)
        cluster.watch.wait_closed(CONDITIONS, WAIT)
        settled(cluster, quiet=3)
        window = (began, time.time())
        alerted = cluster.watch.by_name(window)
        incidents = {alert: reported_incidents(cluster, kind, began) for kind, alert in REPORTED_AS.items()}
        lost = sum(max(0, count - alerted.get(alert, 0)) for alert, count in incidents.items())
        report_fault(
            f"{name}_restart",
            leader_after,
            cluster.watch,
            lost=lost,
            window=window,
            api_back_after=f"{down_for:.1f}",
            reported=",".join(f"{a}:{n}" for a, n in incidents.items() if n) or "none",
        )
        problems[name] = {
            alert: (count, alerted.get(alert, 0))
            for alert, count in incidents.items()
            if alerted.get(alert, 0) != count
        }
        # An outage longer than the Lease that no beacon reported is a loss too, not a pass.
        if not incidents["KCMApiserverUnreachable"] + incidents["KCMNoLeader"]:
            problems[name]["nothing reported"] = incidents
    assert problems == {"etcd": {}, "apiserver": {}}, f"(incidents reported, alerts) per outage: {problems}"
    assert not [a for n in CONDITIONS for a in cluster.watch.open(n)]
    assert cluster.renewing_leader() in cluster.nodes


def test_leader_powered_off(fault):
    cluster = fault
    old = settled(cluster)
    before = spec(cluster)
    began = time.time()
    cluster.machine(old).power_off()
    new, leader_after = live_leader_after(cluster, began, exclude=(old,))
    assert EPOCH(spec(cluster)["acquireTime"]) >= EPOCH(before["renewTime"]) + LEASE - 0.1
    alerts, why = leader_changes_alerted(cluster, old, new)
    # nothing stays open for the machine that is gone (a stale leader, no leader)
    cluster.watch.wait_closed(CONDITIONS, WAIT)
    report_fault("power_off", leader_after, cluster.watch, lost=lost(alerts, old, new))
    assert alerts == [(old, new)], why or alerts


def test_two_salt_masters_give_one_alert_per_incident(fault, alertmanager):
    """Salt's multi-master: every minion connected to both, both run the kcm_alert engine and the
    runner, each with its own store; Alertmanager merges their identical alerts into one.
    The second master stays until the lab goes."""
    cluster = fault
    second = cluster.add_master()
    cluster.recorders[second.id] = EventRecorder(second).start()
    old = settled(cluster)
    began = time.time()
    cluster.kill(old)
    new, leader_after = live_leader_after(cluster, began, exclude=(old,))
    sent = {}
    for master_id, recorder in cluster.recorders.items():

        def every_report(r=recorder):
            found = r.find("salt/beacon/*/kcm_leader/changed", began)
            return found if len(found) >= len(cluster.nodes) else None

        reports = wait_until(every_report, WAIT, f"{master_id}: a 'changed' report from every minion", interval=0.5)
        assert sorted(e[2]["id"] for e in reports) == sorted(cluster.nodes), (master_id, reports)
        sent[master_id] = wait_until(
            lambda r=recorder: r.find("kcm/alert/changed", began),
            WAIT,
            f"{master_id}'s runner sending KCMLeaderChanged",
            interval=0.5,
        )
    alerts, why = leader_changes_alerted(cluster, old, new)
    listed = alertmanager.active(alertname="KCMLeaderChanged", old_node=old, new_node=new)
    report_fault(
        "two_masters",
        leader_after,
        cluster.watch,
        lost=lost(alerts, old, new),
        sends=sum(len(found) for found in sent.values()),
    )
    assert {master_id: len(found) for master_id, found in sent.items()} == {m: 1 for m in cluster.recorders}
    assert alerts == [(old, new)] and len(listed) == 1, why or (alerts, listed)


# An upper bound for recovery after this test's outage, not a speed claim: with the apiserver
# gone, every KCM crash-loops (RestartSec=5) and one master is powered off for good, so at the
# shared clusters' 8s/6s/1s the new leader came 62 s and the resolve 90 s after the apiserver
# (measured alone on 2 cores; 24 s and 13 s at this module's 4s/3s/1s; bench/ measures speed).
RECOVERY_WAIT = 3 * WAIT


def test_a_master_that_dies_while_it_reports_unreachable_leaves_nothing_open(fault):
    """The apiserver goes away, every master reports unreachable, one of them is then
    powered off for good: the others' recovery, and what the masters answer, resolve it.
    Last in the module: it leaves one KCM master."""
    cluster = fault
    leader = settled(cluster)
    victim = next(n for n in cluster.nodes if n != leader)
    began = time.time()
    # Every KCM crash-loops while the apiserver is away (RestartSec=5, and each start waits for
    # it), so the new leader comes up to a minute after the apiserver: past the Lease log's
    # grace after "kube-apiserver down", which counted it as a transition no test caused (CI
    # rehearsals in sessions 8 to 10, "master-3 -> master-3"). The window lasts until a leader
    # renews again.
    recovery = "kube-apiserver down and a master powered off, until a leader renews"
    cluster.lease_log.open(recovery, recovery)
    cluster.cp.apiserver.stop()
    try:
        wait_events(
            cluster,
            "salt/beacon/*/kcm_leader/unreachable",
            began,
            len(cluster.nodes),
            "'unreachable' from every minion",
        )
        try:
            wait_until(
                lambda: cluster.watch.open("KCMApiserverUnreachable"), RECOVERY_WAIT, "KCMApiserverUnreachable open"
            )
        except TimeoutError as exc:
            # Seen four times, each on a loaded machine: every master reported, no alert opened.
            # What the runner said about those reports is the first thing to read.
            said = [
                (
                    round(at - began, 1),
                    tag,
                    {k: data.get(k) for k in ("kind", "minion", "reason", "why") if data.get(k)},
                )
                for at, tag, data in events(cluster, "kcm/alert/*", began)
            ]
            raise AssertionError(f"{exc}; the runner's events since the outage began: {said}") from None
        cluster.machine(victim).power_off()
    finally:
        cluster.cp.apiserver.start()
    wait_until(lambda: cluster.cp.request("GET", "/readyz", timeout=3).ok, WAIT, "kube-apiserver back")
    back = time.time()
    try:
        _, leader_after = live_leader_after(cluster, began, exclude=(victim,))
    finally:
        cluster.lease_log.close(recovery)
    closed = True
    try:
        cluster.watch.wait_closed(CONDITIONS, timeout=RECOVERY_WAIT)
    except TimeoutError:
        closed = False
    resolved_after = time.time() - back
    unreachable = cluster.watch.alerts("KCMApiserverUnreachable")
    report_fault(
        "dies_while_unreachable",
        leader_after,
        cluster.watch,
        lost=0,
        resolved_after=f"{resolved_after:.1f}" if closed else "never",
    )
    assert closed, [a for n in CONDITIONS for a in cluster.watch.open(n)]
    assert len(unreachable) == 1, unreachable
