"""Lease watchers.

``LeaseWatch`` polls the KCM Lease in a thread while a change runs and records every poll
(holder, live or not) and, in a second thread, how many KCMs answer /healthz. The
orchestration tests and bench/rolling.py measure leader changes and leaderless windows with
it; a failed poll is counted (``errors``) and counts as a poll without a live leader, and
``assert_sound`` fails a test whose watch missed polls or polled too rarely to see a gap.

``LeaseLog`` runs for a lab cluster's whole life: it records every Lease transition and the
windows in which the lab itself disturbed the leader (it killed, stopped, restarted or cut
off a KCM, took etcd or the apiserver away, ran a state that restarts KCM). A transition
outside every window is *spontaneous*: nobody caused it, so the election timings left too
little room on this machine; the e2e summary prints the count per cluster.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kcmlab.controlplane import node_of


def _parse_time(text):
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def is_live(spec: dict, now: datetime.datetime | None = None) -> bool:
    """The Lease names a holder whose last renewal is not older than its lease duration (the
    rule ``kcm.leader`` calls ``expired``)."""
    holder = spec.get("holderIdentity")
    renew = _parse_time(spec.get("renewTime"))
    duration = spec.get("leaseDurationSeconds") or 0
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return bool(holder and renew and now <= renew + datetime.timedelta(seconds=duration))


class LeaseWatch:
    """Poll the Lease every ``interval`` seconds in a thread while a change runs.

    A poll sees a *live leader* when the Lease names a holder whose last renewal is not older
    than its lease duration. ``nodes`` (name -> object with ``healthy()``) are probed at
    once, in a thread of their own, so a slow probe never delays a Lease poll.
    """

    def __init__(self, cp, interval: float = 0.2, nodes=None):
        self.cp = cp
        self.interval = interval
        self.nodes = list((nodes or {}).values())
        # (monotonic time, holder, live); a failed poll is (time, None, False).
        self.polls: list[tuple[float, str | None, bool]] = []
        self.healthy_counts: list[int] = []
        self.errors = 0
        self.error_log: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True)]
        if self.nodes:
            self._threads.append(threading.Thread(target=self._probe, daemon=True))
        self.first = self.last = None
        self.started = self.stopped = None

    def _poll(self, read):
        spec = (read() or {}).get("spec") or {}
        return spec.get("holderIdentity") or None, is_live(spec), spec.get("leaseTransitions") or 0

    def _run(self):
        read = self.cp.lease_reader()
        try:
            while not self._stop.is_set():
                try:
                    holder, live, transitions = self._poll(read)
                except Exception as exc:  # noqa: BLE001 - a missed poll, counted and shown
                    self.errors += 1
                    self.error_log.append(f"{type(exc).__name__}: {exc}"[:300])
                    self.polls.append((time.monotonic(), None, False))
                else:
                    self.polls.append((time.monotonic(), holder, live))
                    self.last = transitions
                    if self.first is None:
                        self.first = transitions
                self._stop.wait(self.interval)
        finally:
            read.close()

    def _probe(self):
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            while not self._stop.is_set():
                self.healthy_counts.append(sum(pool.map(lambda node: bool(node.healthy()), self.nodes)))
                self._stop.wait(self.interval)

    def __enter__(self):
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self.stopped = time.monotonic()

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
    def poll_rate(self) -> float:
        """Successful Lease polls per second over the watch."""
        end = self.stopped or time.monotonic()
        return (len(self.polls) - self.errors) / max(end - (self.started or end), 1e-9)

    @property
    def max_poll_interval(self) -> float:
        """The longest stretch between two polls (what a gap measured here may miss)."""
        stamps = [stamp for stamp, _, _ in self.polls]
        return max((b - a for a, b in zip(stamps, stamps[1:])), default=float("inf"))

    def assert_sound(self, min_rate: float = 1.0, max_interval: float = 2.0) -> None:
        """Fail unless every poll answered and they came often enough for the gaps to mean
        something (``min_rate`` polls a second, none more than ``max_interval`` s apart)."""
        assert self.errors == 0, f"{self.errors} Lease polls failed: {self.error_log[:5]}"
        assert self.poll_rate >= min_rate, f"{self.poll_rate:.1f} Lease polls/s, fewer than {min_rate}"
        assert self.max_poll_interval <= max_interval, f"{self.max_poll_interval:.1f}s between two Lease polls"

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
        """The fewest KCMs answering /healthz ok at any probe (None without ``nodes``)."""
        return min(self.healthy_counts, default=None)

    @property
    def polls_without_leader(self) -> int:
        return sum(1 for _, _, live in self.polls if not live)


@dataclass
class Transition:
    """One move of the Lease to another process (``leaseTransitions`` went up by ``count``)."""

    at: float  # epoch seconds: the new holder's acquireTime (the poll's time without one)
    old: str | None
    new: str | None
    count: int
    cause: str | None = None  # the lab's action whose window it fell in, None: spontaneous
    total: int | None = None  # leaseTransitions after it

    def __str__(self) -> str:
        stamp = datetime.datetime.fromtimestamp(self.at).strftime("%H:%M:%S.%f")[:-3]
        return f"{stamp} {node_of(self.old)} -> {node_of(self.new)}" + (f" (x{self.count})" if self.count > 1 else "")


@dataclass
class Window:
    what: str
    begin: float  # epoch seconds
    end: float | None = None  # None: still open


class LeaseLog:
    """Every Lease transition of one cluster, polled every ``interval`` s in a thread, and the
    windows in which the lab disturbed the leader. A transition is *caused* when its
    acquisition falls in a window (from its beginning to ``grace`` s after its end: a new
    leader after a kill, a stop, a cut, an outage or a restart, KCM's RestartSec included);
    every other transition is *spontaneous*.

    The lab's parts call ``mark`` (an instant: a kill, a ``systemctl stop``), ``open``/``close``
    (a link cut, a daemon down) and ``during`` (a state run) on the log they are given.
    """

    def __init__(self, cp, grace: float, interval: float = 1.0):
        self.cp = cp
        self.grace = grace
        self.interval = interval
        self.transitions: list[Transition] = []
        self.windows: list[Window] = []
        self.errors = 0
        self._open: dict[str, Window] = {}
        self._last_count: int | None = None
        self._last_holder: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the lab did --------------------------------------------------------------------

    def mark(self, what: str) -> None:
        now = time.time()
        with self._lock:
            self.windows.append(Window(what, now, now))

    def open(self, key: str, what: str) -> None:
        with self._lock:
            if key not in self._open:
                self._open[key] = window = Window(what, time.time())
                self.windows.append(window)

    def close(self, key: str) -> None:
        with self._lock:
            window = self._open.pop(key, None)
            if window is not None:
                window.end = time.time()

    @contextlib.contextmanager
    def during(self, what: str):
        window = Window(what, time.time())
        with self._lock:
            self.windows.append(window)
        try:
            yield
        finally:
            window.end = time.time()

    # -- what the Lease did ------------------------------------------------------------------

    def start(self) -> LeaseLog:
        self._thread = threading.Thread(target=self._run, name="lease-log", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        read = self.cp.lease_reader()
        try:
            while True:
                self._poll(read)
                # One last poll after the stop: a transition right before a cluster closes counts.
                if self._stop.wait(self.interval):
                    self._poll(read)
                    break
        finally:
            read.close()

    def _poll(self, read) -> None:
        try:
            spec = (read() or {}).get("spec") or {}
        except Exception:  # noqa: BLE001 - an outage the lab caused; the counter catches up
            self.errors += 1
            return
        count = spec.get("leaseTransitions") or 0
        holder = spec.get("holderIdentity") or None
        if self._last_count is not None and count > self._last_count:
            acquired = _parse_time(spec.get("acquireTime"))
            at = acquired.timestamp() if acquired else time.time()
            with self._lock:
                self.transitions.append(
                    Transition(at, self._last_holder, holder, count - self._last_count, total=count)
                )
        if spec:
            self._last_count = count
        if holder:
            self._last_holder = holder

    def cause_of(self, transition: Transition) -> str | None:
        with self._lock:
            for window in self.windows:
                end = window.end if window.end is not None else float("inf")
                if window.begin - 1.0 <= transition.at <= end + self.grace:
                    return window.what
        return None

    def classified(self) -> list[Transition]:
        with self._lock:
            found = list(self.transitions)
        for transition in found:
            transition.cause = self.cause_of(transition)
        return found

    def spontaneous(self, since: float = 0.0) -> list[Transition]:
        """The transitions since ``since`` (epoch) that no action of the lab explains."""
        return [t for t in self.classified() if t.cause is None and t.at >= since]

    def summary(self) -> str:
        found = self.classified()
        lonely = [t for t in found if t.cause is None]
        line = f"{sum(t.count for t in lonely)} spontaneous of {sum(t.count for t in found)} Lease transitions"
        return line + (": " + ", ".join(map(str, lonely)) if lonely else "")
