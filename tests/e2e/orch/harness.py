"""What the orchestration tests and bench/rolling.py share: the masters' pillar (with
``kcm:service:control_cmd`` pointing at kcmctl.py), restart counting, and a Lease watcher
that records every poll while an orchestration runs, and readers of an orchestration's
return. Nothing here imports pytest."""

from __future__ import annotations

import datetime
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from kcmlab.controlplane import failover_bound, free_port, https_session, node_of
from tests.support.pillar import sandbox_pillar

NODES = ("master-1", "master-2", "master-3")
SHORT_ELECTION = {"lease_duration": "4s", "renew_deadline": "3s", "retry_period": "1s"}
KCMCTL = Path(__file__).with_name("kcmctl.py")
BOUND = failover_bound(4.0, 1.0)


@dataclass
class Node:
    """One master: its sandbox, its pillar, where its KCM runs and logs."""

    name: str
    root: Path
    pillar: dict = field(repr=False)

    @property
    def kcm(self) -> dict:
        return self.pillar["kcm"]

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def unit_path(self) -> Path:
        return Path(self.kcm["paths"]["unit"]) / "kube-controller-manager.service"

    def kcmctl(self, action: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run this master's control command directly (fixture set-up and teardown)."""
        return subprocess.run(control_argv(self) + [action], capture_output=True, text=True, timeout=timeout,
                              check=False)

    def starts(self, since: float = 0.0) -> list[float]:
        """Times (epoch) at which kcmctl started this master's KCM, at or after ``since``."""
        try:
            lines = (self.run_dir / "starts.log").read_text().split("\n")
        except FileNotFoundError:
            return []
        return [float(line.split()[0]) for line in lines if line.strip() and float(line.split()[0]) >= since]

    def exec_start(self) -> str:
        return self.unit_path.read_text()


def control_argv(node: Node) -> list[str]:
    return [sys.executable, str(KCMCTL), "--unit", str(node.unit_path), "--node", node.name,
            "--run-dir", str(node.run_dir)]


def make_nodes(cp, root: Path, tarball: Path, version: str, nodes=NODES) -> dict[str, Node]:
    """A sandboxed pillar per master: the control plane's apiserver and PKI, short leader
    election, its own secure port, and the service run by kcmctl.py instead of systemd."""
    out = {}
    pki = cp.kcm_pki(nodes)
    for name in nodes:
        node_root = Path(root) / name
        node = Node(name, node_root, {})
        base = sandbox_pillar(node_root, tarball, version, pki, apiserver=cp.apiserver_url,
                              secure_port=free_port(), bind_address="127.0.0.1",
                              leader_election=dict(SHORT_ELECTION))
        node.pillar = base
        base["kcm"]["service"] = {"manage": False,
                                  "control_cmd": " ".join(_quote(a) for a in control_argv(node))}
        out[name] = node
    return out


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def steps(result):
    """State id -> state return of a `salt-run state.orchestrate` (parsed JSON)."""
    data = result.data
    assert isinstance(data, dict), result.stdout
    [states] = data.get("data", data).values()  # keyed by the master's id
    return {st["__id__"]: st for st in states.values()}


def runner_return(step):
    """What the runner of a ``salt.runner`` orchestration step returned."""
    return (step.get("changes") or {}).get("return")


def starts(cluster, since):
    """KCM starts per master at or after ``since`` (epoch)."""
    return {name: len(node.starts(since)) for name, node in cluster.nodes.items()}


def _healthz_ok(node: Node) -> bool:
    kcm = node.kcm
    try:
        with https_session(Path(kcm["paths"]["pki"]) / "ca.pem") as session:
            reply = session.get(f"https://127.0.0.1:{kcm['secure_port']}/healthz", timeout=1)
        return reply.status_code == 200
    except requests.RequestException:
        return False


def _parse_time(text):
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


class LeaseWatch:
    """Poll the Lease every ``interval`` seconds in a thread while a change runs.

    A poll sees a *live leader* when the Lease names a holder whose last renewal is not older
    than its lease duration (the rule ``kcm.leader`` calls ``expired``).
    """

    def __init__(self, cp, interval: float = 0.2, nodes=None):
        self.cp = cp
        self.interval = interval
        self.nodes = list((nodes or {}).values())
        self.polls: list[tuple[float, str | None, bool]] = []
        self.healthy_counts: list[int] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.first = self.last = None

    def _poll(self):
        lease = self.cp.lease() or {}
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        renew = _parse_time(spec.get("renewTime"))
        duration = spec.get("leaseDurationSeconds") or 0
        now = datetime.datetime.now(datetime.timezone.utc)
        live = bool(holder and renew and now <= renew + datetime.timedelta(seconds=duration))
        return holder, live, spec.get("leaseTransitions") or 0

    def _run(self):
        while not self._stop.is_set():
            try:
                holder, live, transitions = self._poll()
            except Exception:  # noqa: BLE001 - an apiserver hiccup is a missed poll, counted
                self.errors += 1
            else:
                self.polls.append((time.monotonic(), holder, live))
                if self.nodes:
                    self.healthy_counts.append(sum(_healthz_ok(node) for node in self.nodes))
                self.last = transitions
                if self.first is None:
                    self.first = transitions
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def wait_for_live_holder_other_than(self, holder: str | None, timeout: float) -> str:
        """Block until a poll shows a live leader that is not ``holder`` (e.g. once every KCM
        restarted, the old process's lock must have been taken over); return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.polls and self.polls[-1][2] and self.polls[-1][1] != holder:
                return self.polls[-1][1]
            time.sleep(self.interval)
        raise TimeoutError(f"no live leader other than {holder} within {timeout:.0f}s")

    @property
    def transitions(self) -> int:
        return (self.last or 0) - (self.first or 0)

    @property
    def holders(self) -> list[str]:
        """Distinct consecutive holders seen (the same process counted once)."""
        seen = []
        for _, holder, _ in self.polls:
            if holder and (not seen or seen[-1] != holder):
                seen.append(holder)
        return seen

    @property
    def leader_nodes(self) -> list[str]:
        return [node_of(h) for h in self.holders]

    def gaps(self) -> list[float]:
        """Lengths (s) of the stretches of consecutive polls without a live leader."""
        out, begin, previous = [], None, None
        for stamp, _, live in self.polls:
            if not live and begin is None:
                begin = previous if previous is not None else stamp
            elif live and begin is not None:
                out.append(stamp - begin)
                begin = None
            previous = stamp
        if begin is not None:
            out.append(self.polls[-1][0] - begin)
        return out

    @property
    def longest_gap(self) -> float:
        return max(self.gaps(), default=0.0)

    @property
    def min_healthy(self) -> int | None:
        """The fewest KCMs answering /healthz ok at any poll (None without ``nodes``)."""
        return min(self.healthy_counts, default=None)

    @property
    def polls_without_leader(self) -> int:
        return sum(1 for _, _, live in self.polls if not live)
