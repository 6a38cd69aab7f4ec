"""A Lease watcher: polls the KCM Lease in a thread while a change runs and records every
poll (holder, live or not, how many KCMs answer /healthz). The orchestration tests and
bench/rolling.py measure leader changes and leaderless windows with it."""

from __future__ import annotations

import datetime
import threading
import time

from kcmlab.controlplane import node_of


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
                    self.healthy_counts.append(sum(node.healthy() for node in self.nodes))
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
