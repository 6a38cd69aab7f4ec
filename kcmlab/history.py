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
# Faults after which the Lease has to expire before another KCM takes it. A killed KCM's
# Lease is released: the unit's ExecStopPost= runs after any exit of the main process.
EXPIRING = ("cut", "power_off", "freeze", "apiserver_down", "etcd_down")
# Faults that touch no KCM nor its Lease: no gap is theirs.
BESIDE_LEADERSHIP = ("salt_master_restart", "alertmanager_restart")
# client-go waits up to JitterFactor (1.2) retry periods between two tries.
JITTER = 1.2
# The unit's ExecStopPost= releasing the Lease after KCM's exit (a Python program, apiserver call).
RELEASE = 2.0
# systemd's RestartSec= of the unit, and what a KCM takes from its start to its first try.
RESTART_SEC = 5.0
START = 10.0


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
    return sum(max(0.0, min(end, f.end) - max(begin, f.begin)) for f in faults if f.kind == "freeze" and f.node == node)


def overlaps(found: list[Leadership], faults, until: float, election) -> list[Finding]:
    """
    Every time two processes on different machines both believed they led, less the time
    either was frozen. Bound: one retry period; when one of them was frozen, the renew
    deadline and a retry more. That is client-go's own behaviour, which KCM runs as it is:
    ``LeaderElector.renew`` polls ``tryAcquireOrRenew`` every retry period for up to
    ``RenewDeadline`` before it gives up, and a try that finds another holder is no error,
    so a leader resumed after a pause past its lease keeps leading until that deadline
    (client-go tools/leaderelection/leaderelection.go, ``renew``; docs/failover.md).
    """
    retry = election["retry_period"]
    resumed = election.get("renew_deadline", retry) + retry * JITTER
    out = []
    for i, one in enumerate(found):
        for other in found[i + 1 :]:
            if one.node == other.node:
                continue
            begin = max(one.begin, other.begin)
            end = min(one.end if one.end is not None else until, other.end if other.end is not None else until)
            if end <= begin:
                continue
            frozen = max(_frozen(one.node, begin, end, faults), _frozen(other.node, begin, end, faults))
            seconds = end - begin - frozen
            if seconds > 0:
                what = f"{one.node} and {other.node}" + (" (a frozen leader resumed)" if frozen else "")
                out.append(Finding("overlap", begin, seconds, resumed if frozen else retry, what))
    return out


def _ready_at(fault: Fault) -> float:
    """When a fault on another machine stops keeping its KCM out of an election: at its end,
    plus systemd's restart and KCM's start for a KCM that was stopped or killed."""
    if fault.kind in ("kill", "stop", "restart"):
        return max(fault.end, fault.begin + RESTART_SEC) + START
    return fault.end


def _gap_bound(begin, end, prev_node, nodes, faults, election):
    """
    The physical bound of a gap starting at ``begin`` after ``prev_node``'s leadership, and
    the fault it is counted from (the loosest that applies):

    - a fault of the leader's machine: from its start, a release and a retry for a Lease
      released on exit (kill, stop, restart), the lease duration and two retries for one that
      has to expire (a follower notices the expiry within a retry of its own);
    - kube-apiserver or etcd down, before or during the gap: the same expiry, from the end of
      the outage;
    - every other machine in a fault too: the expiry, from when the first of them can run
      for the Lease again (systemd's restart and KCM's start for a stopped or killed one).
    """
    lease, retry = election["lease_duration"], election["retry_period"] * JITTER
    expiry = lease + 2 * retry
    live = [f for f in faults if f.kind not in BESIDE_LEADERSHIP and f.begin - 1.0 <= begin]
    candidates = [
        (f.end - begin + expiry, f.kind)
        for f in faults
        if f.node is None and f.kind not in BESIDE_LEADERSHIP and f.begin <= end and begin <= f.end + expiry
    ]
    for fault in live:
        if fault.node == prev_node and begin <= fault.end + expiry + RELEASE:
            extra = expiry if fault.kind in EXPIRING else RELEASE + retry
            candidates.append((fault.begin - begin + extra, fault.kind))
    others = [n for n in nodes if n != prev_node]
    held = {n: [f for f in live if f.node == n and begin <= _ready_at(f)] for n in others}
    if others and all(held.values()):
        first = min(max(_ready_at(f) for f in held[n]) for n in others)
        candidates.append((first - begin + expiry, "every other master in a fault"))
    if not candidates:
        return None, "no fault"
    bound, why = max(candidates)
    return max(0.0, bound), why


def gaps(found: list[Leadership], begin: float, end: float, faults, election, nodes=None) -> list[Finding]:
    """Every stretch in [begin, end] with no KCM believing it leads, against its bound
    (``nodes``: every master, those that never led included)."""
    nodes = sorted(nodes or {lead.node for lead in found})
    intervals = sorted(
        (max(begin, lead.begin), min(end, lead.end if lead.end is not None else end), lead.node) for lead in found
    )
    out, cursor, prev = [], begin, None
    for start, stop, node in intervals:
        if start > cursor:
            bound, why = _gap_bound(cursor, start, prev, nodes, faults, election)
            out.append(Finding("gap", cursor, start - cursor, bound, f"no leader (after {why})"))
        if stop >= cursor:
            cursor, prev = stop, node
    if end > cursor:
        bound, why = _gap_bound(cursor, end, prev, nodes, faults, election)
        out.append(Finding("gap", cursor, end - cursor, bound, f"no leader at the end (after {why})"))
    return out


def alert_accounting(transitions, alerts) -> tuple[dict, list[Finding]]:
    """Each Lease transition (``at``, ``count``: its leaseTransitions, ``jump``: how many it
    went up at once) wants one ``KCMLeaderChanged`` with ``transitions`` in its jump; every
    alert wants a transition."""
    findings, matched = [], set()
    for move in transitions:
        mine = [
            i
            for i, alert in enumerate(alerts)
            if move["count"] - move.get("jump", 1) < int(alert["transitions"]) <= move["count"]
        ]
        matched.update(mine)
        if not mine:
            findings.append(Finding("alert_missing", move["at"], 0.0, None, f"transition {move['count']}"))
        elif len(mine) > len({int(alerts[i]["transitions"]) for i in mine}):
            # An observer that polls may see one move of a jump or several: each once.
            findings.append(
                Finding("alert_doubled", move["at"], 0.0, None, f"transition {move['count']}: {len(mine)} alerts")
            )
    for i, alert in enumerate(alerts):
        if i not in matched:
            findings.append(
                Finding(
                    "alert_unexplained", alert.get("at", 0.0), 0.0, None, f"alert for transition {alert['transitions']}"
                )
            )
    counts = {
        "expected": len(transitions),
        "fired": len(alerts),
        "missing": sum(f.kind == "alert_missing" for f in findings),
        "doubled": sum(f.kind == "alert_doubled" for f in findings),
        "unexplained": sum(f.kind == "alert_unexplained" for f in findings),
    }
    return counts, findings


def check(journals: dict, faults, transitions, alerts, election, begin: float, end: float) -> Report:
    """The whole check: ``journals`` {node: lines}; ``election`` {lease_duration, retry_period}."""
    found = [leadership for node, lines in journals.items() for leadership in leaderships(node, lines, faults)]
    report = Report()
    report.overlaps = overlaps(found, faults, end, election)
    report.gaps = gaps(found, begin, end, faults, election, nodes=journals)
    report.alerts, alert_findings = alert_accounting(transitions, alerts)
    report.findings = report.overlaps + [g for g in report.gaps if g.violation] + alert_findings
    return report
