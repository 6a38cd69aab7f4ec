"""A randomized fault campaign on a lab cluster (issue #30): faults at random moments from a
seed, overlapping, and the history they leave checked by ``kcmlab.history``.

``Campaign(cluster, alertmanager, seed).run(count)`` injects ``count`` faults, one starting
every ``spacing`` seconds (drawn), each on the current leader or a random master or the
whole cluster, each lasting a drawn time and then undone, so that faults overlap; then it
puts everything back, waits for the alerts to settle and returns the checker's report. The
same seed draws the same faults (the moments they meet the cluster differ: a replay
reproduces the plan, not the machine's timing).

The faults (``KINDS``): SIGKILL of KCM, ``systemctl stop`` and start, ``systemctl
restart``, the machine's link cut and restored, KCM frozen past its lease (SIGSTOP) and
thawed, kube-apiserver or etcd down and back, the salt-master restarted, Alertmanager
restarted. Not yet: power-off and boot (a machine would need a persistent overlay to come
back as itself), ``service:manage: false``.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from kcmlab.cluster import RESTART_SEC
from kcmlab.controlplane import wait_until
from kcmlab.history import Fault, check

UNIT = "kube-controller-manager"


@dataclass
class Plan:
    """One fault as drawn: start offset, kind, target (``leader``, ``any`` or ``cluster``), seconds."""

    offset: float
    kind: str
    target: str
    seconds: float


def kinds(lease: float) -> dict:
    """{kind: (target, (shortest, longest) seconds)}: how long each fault lasts, by the lease."""
    return {
        "kill": ("leader", (0.0, 0.0)),
        "stop": ("leader", (1.0, 5.0)),
        "restart": ("any", (0.0, 0.0)),
        "cut": ("leader", (lease + 1, lease + 6)),
        "freeze": ("leader", (lease + 1, lease + 4)),
        "apiserver_down": ("cluster", (1.0, lease + 2)),
        "etcd_down": ("cluster", (1.0, lease + 2)),
        "salt_master_restart": ("cluster", (0.0, 0.0)),
        "alertmanager_restart": ("cluster", (0.0, 0.0)),
    }


def plan(seed: int, count: int, lease: float, spacing=(2.0, 10.0), only=None) -> list[Plan]:
    """The faults a seed draws: the same seed, the same plan."""
    rng = random.Random(seed)
    table = kinds(lease)
    names = sorted(only or table)
    out, offset = [], 0.0
    for _ in range(count):
        kind = rng.choice(names)
        target, (low, high) = table[kind]
        out.append(Plan(round(offset, 2), kind, target, round(rng.uniform(low, high), 2)))
        offset += rng.uniform(*spacing)
    return out


class Campaign:
    def __init__(self, cluster, alertmanager, seed: int, watch=None):
        self.cluster = cluster
        self.alertmanager = alertmanager
        self.seed = seed
        self.watch = watch
        self.election = cluster.election_seconds
        self.faults: list[Fault] = []
        # Drawn but not made: its target was already in a fault (skipped), or making it failed.
        self.skipped: list[tuple[Plan, str]] = []
        self.failed: list[tuple[Plan, str]] = []
        self.start_count: int | None = None
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self.rng = random.Random(seed + 1)

    # -- injecting ---------------------------------------------------------------------------

    def _target(self, step: Plan) -> str | None:
        if step.target == "cluster":
            return None
        if step.target == "leader":
            try:
                leader = self.cluster.leader()
            except Exception:  # noqa: BLE001 - the apiserver may be down: any master then
                leader = None
            if leader in self.cluster.nodes:
                return leader
        return self.rng.choice(sorted(self.cluster.nodes))

    def _claim(self, key: str) -> bool:
        with self._lock:
            if key in self._busy:
                return False
            self._busy.add(key)
            return True

    def _release(self, key: str) -> None:
        with self._lock:
            self._busy.discard(key)

    def _do(self, step: Plan) -> None:
        node = self._target(step)
        key = node or step.kind
        if not self._claim(key):
            self.skipped.append((step, f"{key} is already in a fault"))
            return
        log = self.cluster.lease_log
        window = f"campaign {step.kind} {node or ''}".strip()
        if log is not None:
            log.open(window, window)
        begin = time.time()
        try:
            getattr(self, f"_{step.kind}")(node, step.seconds)
        except Exception as exc:  # noqa: BLE001 - a fault that could not be made is reported, not fatal
            self.failed.append((step, f"{type(exc).__name__}: {exc}"))
        finally:
            end = time.time()
            if log is not None:
                log.close(window)
            self._release(key)
        self.faults.append(Fault(step.kind, node, begin, end))

    def _running(self, node) -> int:
        """KCM's main PID on ``node``, waiting out a restart already under way.

        A KCM that lost its Lease exits and systemd starts it again ``RestartSec=`` later; the
        Lease goes on naming it until another master takes it, so "the leader" may have no
        process for a few seconds. The fault waits for it rather than failing (CI, stop 36).
        """
        return wait_until(
            lambda: self.cluster.main_pid(node), RESTART_SEC + 10, f"{node}: {UNIT} running again", interval=0.2
        )

    def _kill(self, node, seconds):
        self._running(node)
        self.cluster.kill(node)

    def _stop(self, node, seconds):
        self.cluster.stop(node)
        time.sleep(seconds)
        self.cluster.start_unit(node)

    def _restart(self, node, seconds):
        self.cluster.machine(node).systemctl("restart", UNIT)

    def _cut(self, node, seconds):
        machine = self.cluster.machine(node)
        machine.cut_link()
        try:
            time.sleep(seconds)
        finally:
            machine.restore_link()

    def _freeze(self, node, seconds):
        machine = self.cluster.machine(node)
        pid = self._running(node)
        machine.run(["kill", "-STOP", str(pid)])
        try:
            time.sleep(seconds)
        finally:
            machine.run(["kill", "-CONT", str(pid)], check=False)

    def _apiserver_down(self, node, seconds):
        self.cluster.cp.restart_apiserver(down=seconds)

    def _etcd_down(self, node, seconds):
        self.cluster.cp.restart_etcd(down=seconds)

    def _salt_master_restart(self, node, seconds):
        self.cluster.master.restart()
        # A restart ends every connection to the master's bus: the lab's recorders listen again.
        for recorder in getattr(self.cluster, "recorders", {}).values():
            recorder.stop()
            recorder.start()

    def _alertmanager_restart(self, node, seconds):
        # What Alertmanager holds is lost with it: read it once more first (an event alert is not re-sent).
        if self.watch is not None:
            self.watch.poll()
        self.alertmanager.stop()
        self.alertmanager.start()

    # -- the run -----------------------------------------------------------------------------

    def run(self, count: int, only=None, spacing=(2.0, 10.0), settle: float = 120.0):
        """Inject the plan of ``count`` faults and check the history; returns the report."""
        steps = plan(self.seed, count, self.election["lease_duration"], spacing, only)
        self.start_count = (self.cluster.lease_spec() or {}).get("leaseTransitions") or 0
        begin = time.time()
        threads = []
        for step in steps:
            delay = begin + step.offset - time.time()
            if delay > 0:
                time.sleep(delay)
            thread = threading.Thread(target=self._do, args=(step,), name=f"fault-{step.kind}", daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(300)
        self.cluster.ensure_running(timeout=settle)
        self._settled(begin, settle)
        end = time.time()
        return self.report(begin, end)

    def transitions(self, begin: float) -> list[dict]:
        log = self.cluster.lease_log
        return [
            {"at": t.at, "count": t.total, "jump": t.count}
            for t in log.classified()
            if t.at >= begin and t.total is not None
        ]

    def alerts(self, begin: float) -> list[dict]:
        found = self.watch.alerts("KCMLeaderChanged", window=(begin, float("inf")))
        # A change from before the campaign alerted during it is not the campaign's.
        return [
            {"at": a["first"], "transitions": int(a["labels"].get("transitions", -1))}
            for a in found
            if int(a["labels"].get("transitions", -1)) > (self.start_count or 0)
        ]

    def _settled(self, begin: float, timeout: float) -> None:
        """Until every transition since ``begin`` has had the time to be alerted: the
        count of leader-change alerts stays the same for a lease duration and a flush."""
        # The reconcile (kcm:master:reconcile_interval) raises what a restarted salt-master missed.
        quiet = 30.0
        last = {"count": -1, "since": time.time()}

        def steady():
            count = len(self.alerts(begin))
            if count != last["count"]:
                last.update(count=count, since=time.time())
            return len(self.transitions(begin)) <= count or time.time() - last["since"] > quiet

        wait_until(steady, timeout, "the leader-change alerts of the campaign", interval=1.0)

    def journals(self, begin: float) -> dict[str, list[str]]:
        out = {}
        for name in self.cluster.nodes:
            text = (
                self.cluster.machine(name)
                .run(
                    ["journalctl", "--no-pager", "-o", "short-unix", "-u", UNIT, "--since", f"@{int(begin) - 60}"],
                    check=False,
                )
                .stdout
            )
            out[name] = text.splitlines()
        return out

    def report(self, begin: float, end: float):
        result = check(
            self.journals(begin), self.faults, self.transitions(begin), self.alerts(begin), self.election, begin, end
        )
        result.faults = list(self.faults)
        result.skipped = list(self.skipped) + list(self.failed)
        result.seed = self.seed
        return result


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) + f".{int(epoch * 10) % 10}"


def summary(report) -> list[str]:
    """The lines a person reads: the seed, the faults, overlaps, gaps against bounds, alerts."""
    kinds_done: dict[str, int] = {}
    for fault in report.faults:
        kinds_done[fault.kind] = kinds_done.get(fault.kind, 0) + 1
    gaps = sorted(g.seconds for g in report.gaps)
    longest = max((o.seconds for o in report.overlaps), default=0.0)
    lines = [
        f"seed {report.seed}: {len(report.faults)} faults "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds_done.items()))
        + (f"; {len(report.skipped)} not made" if report.skipped else ""),
        f"overlaps: {len(report.overlaps)} (longest {longest:.3f} s)",
        f"gaps: {len(gaps)} (median {gaps[len(gaps) // 2]:.2f} s, worst {gaps[-1]:.2f} s)" if gaps else "gaps: 0",
        "alerts: " + ", ".join(f"{k} {v}" for k, v in report.alerts.items()),
        f"violations: {len(report.violations)}",
    ]
    lines += [
        f"  fault {fault.kind} {fault.node or 'cluster'} {_clock(fault.begin)} - {_clock(fault.end)}"
        for fault in sorted(report.faults, key=lambda f: f.begin)
    ]
    lines += [f"  not made: {step.kind} at +{step.offset:g} s: {why}" for step, why in report.skipped]
    lines += [
        f"  {f.kind} at {_clock(f.begin)}: {f.seconds:.3f} s"
        f" (bound {'none' if f.bound is None else f'{f.bound:.2f} s'}) {f.what}"
        for f in report.violations
    ]
    return lines
