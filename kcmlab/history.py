"""The history checker of a fault campaign (issue #30), apart from the code under test.

It reads what happened, not what the formula says happened:

- each machine's journal (``journalctl -o short-unix``; the machines share the host's
  kernel clock, so their times compare to the microsecond): when a KCM process logged
  ``Successfully acquired lease`` it believes it leads, until it logs ``Failed to renew
  lease``, its main process exits (systemd's line) or its machine is powered off;
- the faults the campaign injected (what, where, from when to when), freezes included: a
  frozen KCM (SIGSTOP) believes but cannot act, so its frozen time is no overlap;
- the Lease's transitions (``kcmlab.leasewatch.LeaseLog``) and the ``KCMLeaderChanged``
  alerts fired (their ``transitions``).

and it computes overlaps (two KCMs not frozen both believing they lead), gaps (no KCM
believing), each against its physical bound, and the alert accounting: exactly one alert per
Lease transition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# klog's line of a KCM that won / gave up the Lease (client-go leaderelection).
ACQUIRED = '"Successfully acquired lease"'
LOST = ('"Failed to renew lease"', '"leaderelection lost"', "leaderelection lost")
# systemd's lines about the unit: its main process is gone.
EXITED = ("Main process exited", "Failed with result", "Deactivated successfully")
LINE = re.compile(r"^(?P<at>\d+\.\d+) (?P<host>\S+) (?P<ident>[^\[:]+)(?:\[(?P<pid>\d+)\])?: (?P<message>.*)$")
# Faults after which the Lease has to expire before another KCM takes it.
EXPIRING = ("kill", "cut", "power_off", "freeze", "apiserver_down", "etcd_down")
# Faults that touch no KCM nor its Lease: no gap is theirs.
BESIDE_LEADERSHIP = ("salt_master_restart", "alertmanager_restart")


@dataclass
class Leadership:
    """One KCM process believing it leads, from ``begin`` to ``end`` (None: to the end)."""

    node: str
    pid: int | None
    begin: float
    end: float | None = None


@dataclass
class Fault:
    """What the campaign did: ``kind`` on ``node`` (None: the whole cluster), ``begin``-``end``."""

    kind: str
    node: str | None
    begin: float
    end: float


@dataclass
class Finding:
    kind: str  # overlap, gap, alert_missing, alert_doubled, alert_unexplained
    begin: float
    seconds: float
    bound: float | None
    what: str

    @property
    def violation(self) -> bool:
        return self.bound is None or self.seconds > self.bound


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    gaps: list[Finding] = field(default_factory=list)
    overlaps: list[Finding] = field(default_factory=list)
    alerts: dict = field(default_factory=dict)
    # What the campaign made (kcmlab.campaign fills these in).
    faults: list[Fault] = field(default_factory=list)
    skipped: list = field(default_factory=list)
    seed: int | None = None

    @property
    def violations(self) -> list[Finding]:
        return [f for f in self.findings if f.violation]


def leaderships(node: str, lines, faults=()) -> list[Leadership]:
    """The leaderships of ``node``'s KCM processes in its journal lines (oldest first)."""
    found: list[Leadership] = []
    current: Leadership | None = None
    for line in lines:
        match = LINE.match(line.strip())
        if not match:
            continue
        at, message = float(match["at"]), match["message"]
        pid = int(match["pid"]) if match["pid"] else None
        if match["ident"].startswith("systemd"):
            if current and any(text in message for text in EXITED):
                current.end = at
                current = None
        elif ACQUIRED in message:
            if current is None or current.pid != pid:
                current = Leadership(node, pid, at)
                found.append(current)
        elif current and current.pid == pid and any(text in message for text in LOST):
            current.end = at
            current = None
    for fault in faults:
        # A machine powered off logs nothing more: its KCM is gone when the power is.
        if fault.kind == "power_off" and fault.node == node:
            for leadership in found:
                if leadership.begin <= fault.begin and (leadership.end is None or leadership.end > fault.begin):
                    leadership.end = fault.begin
    return found


def _frozen(node, begin, end, faults):
    return sum(max(0.0, min(end, f.end) - max(begin, f.begin)) for f in faults
               if f.kind == "freeze" and f.node == node)


def overlaps(found: list[Leadership], faults, until: float, retry_period: float) -> list[Finding]:
    """Every time two processes on different machines both believed they led, less the time
    either was frozen; bounded by one retry period (a thawed or cut-off old leader must stop
    within it)."""
    out = []
    for i, one in enumerate(found):
        for other in found[i + 1:]:
            if one.node == other.node:
                continue
            begin = max(one.begin, other.begin)
            end = min(one.end if one.end is not None else until, other.end if other.end is not None else until)
            if end <= begin:
                continue
            seconds = end - begin - max(_frozen(one.node, begin, end, faults), _frozen(other.node, begin, end, faults))
            if seconds > 0:
                out.append(Finding("overlap", begin, seconds, retry_period, f"{one.node} and {other.node}"))
    return out


def _gap_bound(begin, faults, election):
    """The physical bound of a gap starting at ``begin``: a retry period for a released
    Lease, the lease duration more for an expiring one, counted from the fault on one
    machine (the others take over meanwhile) or from the end of a cluster-wide outage
    (nobody can lead before the apiserver answers again); the latest such fault counts."""
    lease, retry = election["lease_duration"], election["retry_period"]
    causes = [f for f in faults if f.kind not in BESIDE_LEADERSHIP and f.begin - 1.0 <= begin <= f.end + lease + retry]
    if not causes:
        return None, "no fault"
    cause = max(causes, key=lambda f: f.end if f.node is None else f.begin)
    since = cause.end if cause.node is None else cause.begin
    extra = lease + retry if cause.kind in EXPIRING else retry
    return max(0.0, since - begin) + extra, cause.kind


def gaps(found: list[Leadership], begin: float, end: float, faults, election) -> list[Finding]:
    """Every stretch in [begin, end] with no KCM believing it leads, against its bound."""
    intervals = sorted((max(begin, lead.begin), min(end, lead.end if lead.end is not None else end))
                       for lead in found)
    out, cursor = [], begin
    for start, stop in intervals:
        if start > cursor:
            bound, why = _gap_bound(cursor, faults, election)
            out.append(Finding("gap", cursor, start - cursor, bound, f"no leader (after {why})"))
        cursor = max(cursor, stop)
    if end > cursor:
        bound, why = _gap_bound(cursor, faults, election)
        out.append(Finding("gap", cursor, end - cursor, bound, f"no leader at the end (after {why})"))
    return out


def alert_accounting(transitions, alerts) -> tuple[dict, list[Finding]]:
    """Each Lease transition (``at``, ``count``: its leaseTransitions, ``jump``: how many it
    went up at once) wants one ``KCMLeaderChanged`` with ``transitions`` in its jump; every
    alert wants a transition."""
    findings, matched = [], set()
    for move in transitions:
        mine = [i for i, alert in enumerate(alerts)
                if move["count"] - move.get("jump", 1) < int(alert["transitions"]) <= move["count"]]
        matched.update(mine)
        if not mine:
            findings.append(Finding("alert_missing", move["at"], 0.0, None, f"transition {move['count']}"))
        elif len(mine) > 1:
            findings.append(Finding("alert_doubled", move["at"], 0.0, None,
                                    f"transition {move['count']}: {len(mine)} alerts"))
    for i, alert in enumerate(alerts):
        if i not in matched:
            findings.append(Finding("alert_unexplained", alert.get("at", 0.0), 0.0, None,
                                    f"alert for transition {alert['transitions']}"))
    counts = {"expected": len(transitions), "fired": len(alerts),
              "missing": sum(f.kind == "alert_missing" for f in findings),
              "doubled": sum(f.kind == "alert_doubled" for f in findings),
              "unexplained": sum(f.kind == "alert_unexplained" for f in findings)}
    return counts, findings


def check(journals: dict, faults, transitions, alerts, election, begin: float, end: float) -> Report:
    """The whole check: ``journals`` {node: lines}; ``election`` {lease_duration, retry_period}."""
    found = [leadership for node, lines in journals.items() for leadership in leaderships(node, lines, faults)]
    report = Report()
    report.overlaps = overlaps(found, faults, end, election["retry_period"])
    report.gaps = gaps(found, begin, end, faults, election)
    report.alerts, alert_findings = alert_accounting(transitions, alerts)
    report.findings = report.overlaps + [g for g in report.gaps if g.violation] + alert_findings
    return report
