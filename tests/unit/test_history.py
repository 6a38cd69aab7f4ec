"""The fault campaign's history checker (issue #30) on hand-made histories: journals as
``journalctl -o short-unix`` prints them, faults, Lease transitions and alerts. Each case is
a history a campaign can produce, and what a person must be told about it."""

import pytest

from kcmlab.history import Fault, alert_accounting, check, leaderships

ELECTION = {"lease_duration": 4.0, "renew_deadline": 3.0, "retry_period": 1.0}


def acquired(at, node, pid):
    return (
        f"{at:.6f} {node} kube-controller-manager[{pid}]: I1207 12:00:00.000000 {pid} leaderelection.go:272]"
        ' "Successfully acquired lease" lock="kube-system/kube-controller-manager"'
    )


def gave_up(at, node, pid):
    return (
        f"{at:.6f} {node} kube-controller-manager[{pid}]: I1207 12:00:00.000000 {pid} leaderelection.go:304]"
        ' "Failed to renew lease" lock="kube-system/kube-controller-manager" err="context deadline exceeded"'
    )


def exited(at, node):
    return (
        f"{at:.6f} {node} systemd[1]: kube-controller-manager.service: Main process exited, code=killed, status=9/KILL"
    )


def run(journals, faults, transitions=(), alerts=()):
    return check(journals, faults, list(transitions), list(alerts), ELECTION, begin=100.0, end=200.0)


def kinds(report):
    return [(f.kind, round(f.seconds, 3), f.what) for f in report.violations]


def test_a_journal_gives_each_process_its_leadership_until_it_exits_or_gives_up():
    lines = [
        acquired(100, "m1", 11),
        "not a journal line",
        exited(110, "m1"),
        acquired(120, "m1", 12),
        gave_up(130.5, "m1", 12),
        acquired(140, "m1", 13),
    ]

    found = leaderships("m1", lines)

    assert [(lead.pid, lead.begin, lead.end) for lead in found] == [(11, 100, 110), (12, 120, 130.5), (13, 140, None)]


def test_a_stop_hands_over_within_a_retry_period_and_nothing_is_reported():
    journals = {"m1": [acquired(100, "m1", 11), exited(150, "m1")], "m2": [acquired(150.8, "m2", 21)]}

    report = run(journals, [Fault("stop", "m1", 150, 150)], [{"at": 150.8, "count": 2}], [{"transitions": 2}])

    assert report.violations == [] and report.overlaps == []
    # The release on exit (2 s at most) and one retry period with its jitter.
    assert [(round(g.seconds, 3), g.bound) for g in report.gaps] == [(0.8, 3.2)]


@pytest.mark.parametrize("taken_at, violated", [(164.0, False), (165.0, True)])
def test_when_every_other_master_is_in_a_fault_the_gap_waits_for_the_first_back(taken_at, violated):
    # m1 (leading) killed at 150; m2 stopped 148-153 (started again, then KCM's start: 163);
    # m3 frozen 149-158: thawed at 158 it can take the Lease, which must expire (6.4 s).
    journals = {"m1": [acquired(100, "m1", 11), exited(150, "m1")], "m2": [], "m3": [acquired(taken_at, "m3", 31)]}
    faults = [Fault("stop", "m2", 148, 153), Fault("freeze", "m3", 149, 158), Fault("kill", "m1", 150, 150)]

    report = check(journals, faults, [], [], ELECTION, begin=100.0, end=200.0)

    (gap,) = report.gaps
    assert (gap.bound, gap.what) == (pytest.approx(158 - 150 + 6.4), "no leader (after every other master in a fault)")
    assert bool(report.violations) is violated


@pytest.mark.parametrize("taken_at, violated", [(153.1, False), (153.5, True)])
def test_after_a_kill_the_released_lease_is_taken_within_a_release_and_a_retry(taken_at, violated):
    # ExecStopPost= releases the Lease after any exit: 2 s for it, a retry period with jitter.
    journals = {"m1": [acquired(100, "m1", 11), exited(150, "m1")], "m2": [acquired(taken_at, "m2", 21)]}

    report = run(journals, [Fault("kill", "m1", 150, 150)])

    assert bool(report.violations) is violated
    assert report.gaps[0].bound == pytest.approx(3.2)


@pytest.mark.parametrize("taken_at, violated", [(156.3, False), (157.0, True)])
def test_a_cut_off_leader_s_lease_has_to_expire(taken_at, violated):
    # The lease duration, and two retry periods with client-go's jitter (1.2): 6.4 s.
    journals = {"m1": [acquired(100, "m1", 11), gave_up(153, "m1", 11)], "m2": [acquired(taken_at, "m2", 21)]}

    report = run(journals, [Fault("cut", "m1", 150, 160)])

    assert bool(report.violations) is violated
    assert report.gaps[0].bound == pytest.approx(6.4 - 3)


def test_a_gap_no_fault_explains_is_a_violation():
    journals = {"m1": [acquired(100, "m1", 11), gave_up(150, "m1", 11)], "m2": [acquired(150.5, "m2", 21)]}

    assert kinds(run(journals, [])) == [("gap", 0.5, "no leader (after no fault)")]


@pytest.mark.parametrize("stopped_at, violated", [(151.5, False), (153.0, True)])
def test_a_cut_off_leader_still_believing_after_another_took_over_is_an_overlap(stopped_at, violated):
    journals = {"m1": [acquired(100, "m1", 11), gave_up(stopped_at, "m1", 11)], "m2": [acquired(151.0, "m2", 21)]}

    report = run(journals, [Fault("cut", "m1", 147, 160)])

    (overlap,) = report.overlaps
    assert (overlap.what, round(overlap.seconds, 3)) == ("m1 and m2", stopped_at - 151.0)
    assert (overlap in report.violations) is violated


@pytest.mark.parametrize("stopped_at, violated", [(160.5, False), (164.0, False), (164.5, True)])
def test_a_frozen_leader_is_no_overlap_until_it_is_thawed_then_client_go_renews_to_its_deadline(stopped_at, violated):
    # m1 frozen 150-160: m2 takes the expired Lease at 155. Thawed, m1 keeps trying to renew for
    # up to the renew deadline (3 s) after a retry period (1.2 s with jitter): 4.2 s, then stops.
    journals = {"m1": [acquired(100, "m1", 11), gave_up(stopped_at, "m1", 11)], "m2": [acquired(155.0, "m2", 21)]}

    report = run(journals, [Fault("freeze", "m1", 150, 160)])

    (overlap,) = report.overlaps
    assert (round(overlap.seconds, 3), overlap.bound) == (round(stopped_at - 160, 3), pytest.approx(4.2))
    assert overlap.what == "m1 and m2 (a frozen leader resumed)"
    assert bool([f for f in report.violations if f.kind == "overlap"]) is violated


def test_a_powered_off_leader_leads_no_more_from_the_power_off():
    journals = {"m1": [acquired(100, "m1", 11)], "m2": [acquired(154.0, "m2", 21)]}

    report = run(journals, [Fault("power_off", "m1", 150, 170)])

    assert report.overlaps == [] and report.violations == []
    # Counted from the power-off, not from the boot 20 s later: the others take over meanwhile.
    assert [(round(g.begin), round(g.seconds), round(g.bound, 1)) for g in report.gaps] == [(150, 4, 6.4)]


@pytest.mark.parametrize("taken_at, violated", [(176.3, False), (176.5, True)])
def test_a_cluster_wide_outage_bounds_the_gap_from_its_end(taken_at, violated):
    # The apiserver is down 150-170: nobody can lead; after it, the Lease has to expire.
    journals = {"m1": [acquired(100, "m1", 11), gave_up(153, "m1", 11), acquired(taken_at, "m1", 11)]}

    report = run(journals, [Fault("apiserver_down", None, 150, 170)])

    assert report.gaps[0].bound == pytest.approx(170 - 153 + 6.4)
    assert bool(report.violations) is violated


def test_each_transition_wants_exactly_one_alert_and_each_alert_a_transition():
    transitions = [
        {"at": 110, "count": 5},
        {"at": 120, "count": 7, "jump": 2},
        {"at": 130, "count": 8},
        {"at": 140, "count": 9},
    ]
    alerts = [{"transitions": 5}, {"transitions": 6}, {"transitions": 8}, {"transitions": 8}, {"transitions": 12}]

    counts, findings = alert_accounting(transitions, alerts)

    assert counts == {"expected": 4, "fired": 5, "missing": 1, "doubled": 1, "unexplained": 1}
    assert [(f.kind, f.what) for f in findings] == [
        ("alert_doubled", "transition 8: 2 alerts"),
        ("alert_missing", "transition 9"),
        ("alert_unexplained", "alert for transition 12"),
    ]


def test_a_jump_the_poll_saw_at_once_may_have_one_alert_per_move_it_holds():
    # The Lease went 5 -> 7 between two polls; the beacons saw both moves: two alerts, none doubled.
    counts, findings = alert_accounting([{"at": 120, "count": 7, "jump": 2}], [{"transitions": 6}, {"transitions": 7}])

    assert findings == [] and counts["fired"] == 2


def test_an_outage_that_begins_during_a_gap_extends_its_bound():
    # The apiserver went down 150-152 (the leader gave up at 153); etcd then down 155-163.
    journals = {"m1": [acquired(100, "m1", 11), gave_up(153, "m1", 11)], "m2": [acquired(168.0, "m2", 21)]}

    report = run(journals, [Fault("apiserver_down", None, 150, 152), Fault("etcd_down", None, 155, 163)])

    (gap,) = report.gaps
    assert (gap.bound, gap.what) == (pytest.approx(163 - 153 + 6.4), "no leader (after etcd_down)")
    assert report.violations == []
