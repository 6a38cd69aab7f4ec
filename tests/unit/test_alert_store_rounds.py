"""
A batch of beacon reports costs one round of the kcm_alert runner's store (issue #29): the
store is locked, read and written back once, with every report decided and what the outbox
holds claimed in that one write; what the receivers answered is recorded beside the store
and taken in by the next round, whoever makes it. Before: three rounds per batch (the
decisions, the outbox's claim, its settlement), each reading the whole JSON store and
writing it back, fsynced. What is decided, sent and kept is the same.
"""

import collections
import fcntl

import pytest

from tests.unit.test_kcm_alert import CHANGE, DEAD, REPORTERS, T0, Harness, kcm_alert, kcm_alert_other, signed


def count_rounds(h, monkeypatch):
    """Count the store's locks, reads and writes (and the other files written) of ``h``'s runner."""
    path, counts, found = str(h.cachedir / "kcm_alert" / "dedupe.json"), collections.Counter(), dict(h.module.__utils__)
    read, write, flock = found["kcm_state_file.read_json"], found["kcm_state_file.write_json"], fcntl.flock

    def counted_read(name, *args, **kwargs):
        counts["read" if name == path else "other read"] += 1
        return read(name, *args, **kwargs)

    def counted_write(name, *args, **kwargs):
        counts["write" if name == path else "other write"] += 1
        return write(name, *args, **kwargs)

    def counted_flock(handle, operation):
        counts["lock"] += operation == fcntl.LOCK_EX
        return flock(handle, operation)

    monkeypatch.setattr(
        h.module,
        "__utils__",
        dict(found, **{"kcm_state_file.read_json": counted_read, "kcm_state_file.write_json": counted_write}),
    )
    monkeypatch.setattr(fcntl, "flock", counted_flock)
    return counts


def storm(h, clusters):
    """Every KCM master of ``clusters`` clusters reports its cluster's failover, as the engine batches them."""
    return [
        (f"salt/beacon/{r}/kcm_leader/changed", signed(r, "changed", dict(CHANGE, cluster=f"c{c}"), h.now))
        for c in range(clusters)
        for r in REPORTERS
    ]


@pytest.mark.parametrize("clusters", [1, 10])
def test_a_batch_is_one_store_round_and_each_change_one_alert(tmp_path, monkeypatch, clusters):
    h = Harness(tmp_path, monkeypatch, module=kcm_alert)
    counts = count_rounds(h, monkeypatch)

    results = h.module.handle_batch(storm(h, clusters))

    rounds = {key: counts[key] for key in ("lock", "read", "write")}
    assert rounds == {"lock": 1, "read": 1, "write": 1}, f"{len(results)} reports: {rounds}"
    assert counts["other write"] == 1  # what Alertmanager answered, beside the store
    assert [r["duplicate"] for r in results] == [False, True, True] * clusters
    assert sorted(a["labels"]["cluster"] for a in h.alerts()) == sorted(f"c{c}" for c in range(clusters))
    assert len(h.posts) == 1
    # The next round takes the answers in: nothing is pending, nothing is posted again.
    assert h.module.flush() == {"delivered": 0, "pending": 0, "expired": 0}
    assert len(h.posts) == 1


def test_a_batch_of_one_report_is_one_store_round(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch, module=kcm_alert)
    counts = count_rounds(h, monkeypatch)

    assert h.handle("master-1", "no_leader", **DEAD)["fired"]

    assert {key: counts[key] for key in ("lock", "read", "write")} == {"lock": 1, "read": 1, "write": 1}


def test_what_was_accepted_is_not_posted_again_by_a_restarted_master(tmp_path, monkeypatch):
    before = Harness(tmp_path, monkeypatch, module=kcm_alert)
    before.module.handle_batch(storm(before, 3))
    assert len(before.alerts()) == 3

    # A new process over the same cachedir, once every claim of the first has run out.
    after = Harness(tmp_path, monkeypatch, module=kcm_alert_other)
    after.now = T0 + kcm_alert.CLAIM_SECONDS + 1
    assert after.module.flush() == {"delivered": 0, "pending": 0, "expired": 0}
    assert after.alerts() == []
    assert after.store()["outbox"] == {}


def test_an_alert_a_receiver_refused_in_a_batch_is_kept_and_sent_once_later(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch, module=kcm_alert)
    h.fail_next = 3  # every attempt of the batch's one POST

    results = h.module.handle_batch(storm(h, 2))

    assert [r["failed"] for r in results if r["fired"]] == [True, True] and h.alerts() == []
    after = Harness(tmp_path, monkeypatch, module=kcm_alert_other)  # restarted meanwhile
    assert after.module.flush() == {"delivered": 2, "pending": 0, "expired": 0}
    assert after.module.flush() == {"delivered": 0, "pending": 0, "expired": 0}
    assert sorted(a["labels"]["cluster"] for a in after.alerts()) == ["c0", "c1"]
    assert after.tags().count("kcm/alert/delivered") == 1
