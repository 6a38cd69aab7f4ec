"""
Planned changes do not page (issue #27, item 2): a leader change away from a master that a
command on this Salt master restarts at that step (``kcm_alert.plan``: the orchestrations
``kcm_orch.upgrade`` and ``kcm_orch.drill``, or a person's maintenance) is a
``KCMLeaderChanged`` with ``planned="true"`` and severity info; a change away from any
other master, a mark past its deadline or a report claiming to be planned pages as always.

The orchestration runner runs against the simulated cluster of test_kcm_orch.py and calls
the real ``kcm_alert`` runner (its store on disk), as the runner loader wires them.
"""

import pytest

from tests.unit.test_kcm_alert import CHANGE, CID, T0, Harness, Masters, lease
from tests.unit.test_kcm_orch import ORCH, RUNNER, FakeCluster
from tests.unit.test_kcm_orch import runner as runner  # the fixture, over the cluster fixture below


@pytest.fixture
def configure_loader_modules():
    return {RUNNER: {"__opts__": {"kcm_orch": dict(ORCH)}, "__context__": {}}}


@pytest.fixture
def h(tmp_path, monkeypatch):
    return Harness(tmp_path, monkeypatch)


def changed(h, old, new, transitions=4, reporter="master-3", **extra):
    """``reporter``'s signed report of the Lease moving from holder ``old`` to ``new`` (``<minion>_<uuid>``)."""
    minion = {"old": old.rsplit("_", 1)[0], "new": new.rsplit("_", 1)[0]}
    return h.handle(
        reporter,
        "changed",
        transitions=transitions,
        holder=new,
        old_holder=old,
        new_holder=new,
        old_node=minion["old"],
        old_minion=minion["old"],
        new_node=minion["new"],
        new_minion=minion["new"],
        **extra,
    )


def labels(result):
    (alert,) = result["fired"]
    return alert


def test_a_change_away_from_the_master_being_restarted_is_planned_and_info(h):
    h.module.plan("master-1", 300, holder="master-1_aaaa", by="kcm_orch.drill")

    alert = labels(h.handle("master-3", "changed", **CHANGE))

    assert alert["planned"] == "true" and alert["severity"] == "info"
    (posted,) = h.alerts()
    assert posted["labels"] == alert
    assert "Planned: kcm_orch.drill restarted master-1." in posted["annotations"]["description"]


def test_a_change_away_from_another_master_during_the_window_still_pages(h):
    h.module.plan("master-3", 300, holder="master-3_cccc", by="kcm_orch.upgrade")

    alert = labels(h.handle("master-2", "changed", **CHANGE))  # master-1 crashed meanwhile

    assert alert["severity"] == "warning" and "planned" not in alert


def test_a_mark_ends_at_its_deadline(h):
    h.module.plan("master-1", 300, by="kernel update")
    h.now = T0 + 301

    assert labels(h.handle("master-3", "changed", **CHANGE))["severity"] == "warning"


@pytest.mark.parametrize("counted, severity", [(3, "warning"), (4, "warning"), (5, "info")])
def test_a_change_counted_before_the_mark_was_made_is_not_the_marks(h, counted, severity):
    # The mark is made over leaseTransitions 4: the change counted 4 (or less) happened
    # before the restart began (a crash decided late); only a later count is the restart's.
    h.module.plan("master-1", 300, holder="master-1_aaaa", by="kcm_orch.upgrade", transitions=4)

    assert labels(h.handle("master-3", "changed", **dict(CHANGE, transitions=counted)))["severity"] == severity


def test_after_the_step_only_the_stopped_process_is_planned_not_the_master(h):
    h.module.plan("master-1", 300, holder="master-1_aaaa", by="kcm_orch.upgrade")
    assert h.module.unplan("master-1")["by"] == "kcm_orch.upgrade"

    # The change the step made, reported late: its old holder is the process the step stopped.
    assert labels(h.handle("master-3", "changed", **CHANGE))["severity"] == "info"
    # master-1's new process crashes after the step: another holder, a page.
    crash = dict(
        CHANGE,
        transitions=5,
        old_holder="master-1_dddd",
        new_holder="master-3_cccc",
        new_node="master-3",
        new_minion="master-3",
        holder="master-3_cccc",
    )
    assert labels(h.handle("master-2", "changed", **crash))["severity"] == "warning"


def test_a_report_cannot_call_itself_planned(h):
    claims = dict(CHANGE, planned="true", severity="info", by="kcm_orch.drill", until=T0 + 600)

    alert = labels(h.handle("master-1", "changed", **claims))

    assert alert["severity"] == "warning" and "planned" not in alert
    assert h.store()["planned"] == {}


def test_the_reconcile_raises_a_missed_planned_change_as_planned(h, monkeypatch):
    masters = Masters(h, monkeypatch)
    masters.record = lease("master-1", 4)
    h.module.reconcile()
    h.module.plan("master-1", 300, holder="master-1_aaaa", by="kcm_orch.drill")
    masters.record = lease("master-2", 5, renewed=T0 + 20)  # its report never came

    assert h.module.reconcile()["clusters"] == {f"prod#{CID}": "changed"}
    ((_, (alert,)),) = h.posts
    assert alert["labels"]["planned"] == "true" and alert["labels"]["severity"] == "info"


# ---------------------------------------------------------------------------------------
# the orchestrations mark what they restart


class ReportingCluster(FakeCluster):
    """The simulated cluster whose leader changes are reported to the alert runner when
    they happen (during the step), and which records the marks each restart or stop found."""

    def __init__(self, h):
        super().__init__()
        self.h = h
        self.reported = 1
        self.marks_at = []
        self.results = []

    def advance(self, seconds):
        super().advance(seconds)
        while self.reported < len(self.holders):
            old, new = self.holders[self.reported - 1], self.holders[self.reported]
            self.reported += 1
            self.results.append(changed(self.h, old, new, transitions=self.reported - 1))

    def call(self, minion, fun, kwarg):
        if fun in ("kcm_orch.apply", "kcm_orch.stop"):
            self.marks_at.append((minion, planned_keys(self.h)))
        return super().call(minion, fun, kwarg)


@pytest.fixture
def cluster(h):
    return ReportingCluster(h)


@pytest.fixture
def orch(runner, cluster, h, monkeypatch):
    """The cluster, under the orchestration runner whose runner loader holds the kcm_alert runner."""
    monkeypatch.setattr(
        runner, "__salt__", {"kcm_alert.plan": h.module.plan, "kcm_alert.unplan": h.module.unplan}, raising=False
    )
    return cluster


def planned_keys(h):
    """The marks in the alert runner's store now (none before its first write)."""
    return sorted(h.store()["planned"]) if (h.cachedir / "kcm_alert" / "dedupe.json").exists() else []


def severities(cluster):
    return [(a["severity"], a.get("planned")) for result in cluster.results for a in result["fired"]]


def test_an_upgrade_marks_each_master_for_its_own_step_and_its_leader_change_is_info(h, orch):
    orch.target["config"] = 2

    report = RUNNER.upgrade(tgt="master*")

    assert report["result"] is True, report["comment"]
    # Each master marked before its restart, and only it; the leader also by its Lease identity.
    assert orch.marks_at == [
        ("master-1", ["minion|master-1"]),
        ("master-3", ["minion|master-3"]),
        ("master-2", ["holder|master-2_2", "minion|master-2"]),
    ]
    assert severities(orch) == [("info", "true")]
    until = h.store()["planned"]["holder|master-2_2"]["until"]
    assert until == T0 + ORCH["apply_timeout"] + ORCH["timeout"]
    # Over: no master is marked any more, only the process the upgrade stopped.
    assert planned_keys(h) == ["holder|master-2_2"]


def test_a_crash_of_another_master_during_an_upgrade_step_pages(h, orch, monkeypatch):
    orch.target["config"] = 2
    crashes = []

    def apply_while_the_leader_crashes(minion):
        if minion == "master-1":  # a follower's step; master-2 leads and crashes meanwhile
            crashes.append(changed(h, "master-2_2", "master-3_3", transitions=7, reporter="master-1"))
        return FakeCluster._apply(orch, minion)

    monkeypatch.setattr(orch, "_apply", apply_while_the_leader_crashes)

    assert RUNNER.upgrade(tgt="master*")["result"] is True
    assert [(a["severity"], a.get("planned")) for a in labels_of(crashes)] == [("warning", None)]


def test_a_follower_that_took_the_lease_during_its_step_stays_marked_for_the_late_report(h, orch, monkeypatch):
    orch.target["config"] = 2

    def apply_while_the_leader_crashes(minion):
        if minion == "master-1":  # master-2 crashes; master-1's old process takes the Lease at once
            orch.holder, orch.renew = orch.proc["master-1"]["identity"], orch.now
            orch.transitions += 1
            orch.holders.append(orch.holder)
            orch.proc["master-2"] = None
        return FakeCluster._apply(orch, minion)  # ... which this step's restart then moves on

    monkeypatch.setattr(orch, "_apply", apply_while_the_leader_crashes)

    assert RUNNER.upgrade(tgt="master*")["result"] is True
    assert "minion|master-1" in planned_keys(h)  # unknown at the start, its process's change is planned
    late = changed(h, "master-1_1", "master-3_3", transitions=9, reporter="master-3")
    assert [(a["severity"], a.get("planned")) for a in labels_of([late])] == [("info", "true")]


class LateReportingCluster(ReportingCluster):
    """The cluster whose beacons' reports reach the alert runner only once ``late_until``'s
    step has begun (its mark written): a loaded Salt master deciding a change late."""

    def __init__(self, h, late_until):
        super().__init__(h)
        self.late_until = late_until
        self.held = True

    def advance(self, seconds):
        if self.held:
            super(ReportingCluster, self).advance(seconds)
        else:
            super().advance(seconds)

    def call(self, minion, fun, kwarg):
        answer = super().call(minion, fun, kwarg)
        if fun == "kcm_orch.apply" and minion == self.late_until:
            self.held = False
        return answer


def test_a_crash_of_the_leader_reported_after_the_next_step_marked_it_still_pages(h, runner, monkeypatch):
    # master-1's step: the leader master-2 crashes and master-1 takes the Lease; the change is
    # decided only when master-2's own step (now a follower's) has marked master-2.
    late = LateReportingCluster(h, late_until="master-2")
    late.crash_while_applying["master-1"] = ["master-2"]
    late.target["config"] = 2
    for name, value in (("_local_client", lambda: late), ("_now", lambda: late.now), ("_sleep", late.advance)):
        monkeypatch.setattr(runner, name, value)
    monkeypatch.setattr(
        runner, "__salt__", {"kcm_alert.plan": h.module.plan, "kcm_alert.unplan": h.module.unplan}, raising=False
    )

    report = RUNNER.upgrade(tgt="master*")

    assert report["result"] is True, report["comment"]
    assert report["order"] == ["master-1", "master-2", "master-3"]
    assert "minion|master-2" in dict(late.marks_at)["master-2"]
    crash = late.results[0]["fired"]
    assert [(a["old_node"], a["severity"], a.get("planned")) for a in crash] == [("master-2", "warning", None)]


def labels_of(results):
    return [alert for result in results for alert in result["fired"]]


def test_a_drill_marks_what_it_stops_and_its_failover_is_info(h, orch):
    report = RUNNER.drill(tgt="master*")

    assert report["result"] is True, report["comment"]
    assert orch.marks_at == [("master-2", ["holder|master-2_2", "minion|master-2"])]
    assert severities(orch) == [("info", "true")]
    assert planned_keys(h) == ["holder|master-2_2"]


def test_a_mark_that_cannot_be_written_stops_no_drill_and_the_change_pages(h, orch, monkeypatch):
    monkeypatch.setattr(RUNNER, "__salt__", {}, raising=False)  # the kcm_alert runner is not synced

    report = RUNNER.drill(tgt="master*")

    assert report["result"] is True, report["comment"]
    assert severities(orch) == [("warning", None)]
