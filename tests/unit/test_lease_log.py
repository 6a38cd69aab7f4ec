"""kcmlab.leasewatch.LeaseLog, the e2e session's count of Lease transitions no test caused,
fed a scripted Lease (a stand-in for the apiserver: the lab's own bookkeeping is under test
here, the e2e tier runs it against the real one)."""

import datetime
import threading
import time

from kcmlab.leasewatch import LeaseLog


def micro(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ScriptedLease:
    """``lease_reader()`` as ControlPlane has it, answering what the test sets."""

    def __init__(self):
        self.spec = None
        self.reads = 0
        self.lock = threading.Lock()

    def set(self, holder, transitions, acquired):
        with self.lock:
            self.spec = {
                "holderIdentity": holder,
                "leaseTransitions": transitions,
                "acquireTime": micro(acquired),
                "renewTime": micro(acquired),
                "leaseDurationSeconds": 8,
            }
            self.set_at = self.reads

    def lease_reader(self):
        def read():
            with self.lock:
                self.reads += 1
                return {"spec": dict(self.spec)} if self.spec else None

        read.close = lambda: None
        return read

    def polled(self):
        """Until the log has read the last spec and read again (so it has handled the first)."""
        deadline = time.monotonic() + 5
        while self.reads < self.set_at + 2:
            assert time.monotonic() < deadline, "the log stopped polling"
            time.sleep(0.005)


def test_a_transition_in_no_window_is_spontaneous_one_after_a_kill_is_not():
    cp = ScriptedLease()
    log = LeaseLog(cp, grace=0.5, interval=0.01).start()
    try:
        now = time.time()
        cp.set("master-1_a", 0, now - 100)
        cp.polled()
        log.mark("master-1: kill -9 of KCM")
        cp.set("master-2_b", 1, time.time() + 0.3)  # within the kill's grace: caused
        cp.polled()
        cp.set("", 1, time.time())  # a released Lease is no transition
        cp.polled()
        cp.set("master-3_c", 3, time.time() + 60)  # two moves at once, far from any window
        cp.polled()
        time.sleep(0.6)  # the kill's grace is over
        with log.during("salt state.apply"):
            cp.set("master-1_d", 4, time.time())
            cp.polled()
    finally:
        log.stop()

    found = log.classified()
    assert [(t.old, t.new, t.count, t.cause) for t in found] == [
        ("master-1_a", "master-2_b", 1, "master-1: kill -9 of KCM"),
        ("master-2_b", "master-3_c", 2, None),
        ("master-3_c", "master-1_d", 1, "salt state.apply"),
    ]
    assert [t.count for t in log.spontaneous()] == [2]
    assert log.summary().startswith("2 spontaneous of 4 Lease transitions: ")


def test_an_open_window_covers_its_whole_outage_and_its_grace():
    cp = ScriptedLease()
    log = LeaseLog(cp, grace=5.0, interval=0.01).start()
    try:
        cp.set("master-1_a", 0, time.time() - 100)
        cp.polled()
        log.open("link master-1", "master-1: link cut")
        time.sleep(0.2)
        cp.set("master-2_b", 1, time.time() + 0.5)  # while the link is down
        cp.polled()
        time.sleep(1)
        log.close("link master-1")
        cp.set("master-3_c", 2, time.time() + 4)  # within the grace after the link came back
        cp.polled()
        cp.set("master-1_d", 3, time.time() + 20)  # after the grace
        cp.polled()
    finally:
        log.stop()

    assert [t.cause for t in log.classified()] == ["master-1: link cut", "master-1: link cut", None]
