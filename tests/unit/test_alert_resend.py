"""
Open conditions survive an Alertmanager restart (issue #27, item 4): Alertmanager keeps
alerts in memory only, so the master's scheduled flush re-sends every open condition once
per ``resend_interval``, with the same labels, annotations and ``startsAt`` and an ``endsAt``
renewed to four intervals ahead, through the outbox (a resolution is never overtaken by a
re-send of the alert it ends). KCMLeaderChanged, an event, is not re-sent.

Before: a condition was posted once with endsAt a day ahead and left the outbox once
accepted: an Alertmanager that restarted lost it until the condition changed.
"""

import datetime
import json
import threading

import pytest

from tests.unit.test_kcm_alert import AM, CHANGE, DEAD, EXPIRING, T0, Harness, _holding

INTERVAL = 60


def _epoch(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _names(alerts):
    return [a["labels"]["alertname"] for a in alerts]


@pytest.fixture
def h(tmp_path, monkeypatch):
    return Harness(tmp_path, monkeypatch, resend_interval=INTERVAL)


def test_an_open_condition_is_re_sent_once_per_interval_with_its_identity_and_a_renewed_end(h):
    h.handle("master-1", "no_leader", **DEAD)
    (fired,) = h.alerts()
    assert _epoch(fired["endsAt"]) == pytest.approx(T0 + 4 * INTERVAL)

    h.now = T0 + INTERVAL - 1
    h.module.flush()
    assert len(h.alerts()) == 1  # not due yet

    h.now = T0 + INTERVAL + 5
    assert h.module.flush() == {"delivered": 1, "pending": 0, "expired": 0}
    (again,) = h.alerts()[1:]
    assert {k: again[k] for k in ("labels", "annotations", "startsAt")} == {
        k: fired[k] for k in ("labels", "annotations", "startsAt")
    }
    assert _epoch(again["endsAt"]) == pytest.approx(h.now + 4 * INTERVAL)

    h.now += 10  # the schedule's next flush: at most one re-send per interval
    h.module.flush()
    assert len(h.alerts()) == 2
    h.now += INTERVAL
    h.module.flush()
    assert len(h.alerts()) == 3 and _epoch(h.alerts()[2]["endsAt"]) == pytest.approx(h.now + 4 * INTERVAL)
    # news to nobody: only the first firing was reported on the bus
    assert [t for t in h.tags() if t.startswith("kcm/alert/")] == ["kcm/alert/no_leader"]


@pytest.mark.parametrize(
    "kind, data",
    [
        ("stale", DEAD),
        ("restarting", {"restarts": 3, "window_seconds": 600, "exit_status": 1}),
        ("unreachable", {"reason": "connection refused"}),
        ("cert_expiring", EXPIRING),
    ],
)
def test_every_condition_kind_is_re_sent(h, kind, data):
    h.handle("master-2", kind, **data)
    h.now = T0 + INTERVAL
    h.module.flush()
    first, again = h.alerts()
    assert again["labels"] == first["labels"] and again["startsAt"] == first["startsAt"]
    assert again["endsAt"] > first["endsAt"]


def test_a_leader_change_is_an_event_and_not_re_sent(h):
    h.handle("master-1", "changed", **CHANGE)
    for step in range(1, 4):
        h.now = T0 + step * INTERVAL
        h.module.flush()
    assert _names(h.alerts()) == ["KCMLeaderChanged"]


def test_a_resolved_condition_is_not_re_sent(h):
    h.handle("master-1", "stale", **DEAD)
    h.now = T0 + 5
    h.handle("master-1", "recovered", condition="stale", **DEAD)
    h.now = T0 + 3 * INTERVAL
    h.module.flush()
    assert [(a["labels"]["alertname"], _epoch(a["endsAt"]) > T0 + 5) for a in h.alerts()] == [
        ("KCMLeaderStale", True),
        ("KCMLeaderStale", False),
    ]


def test_re_sends_happen_only_on_the_scheduled_flush_not_on_a_report(h):
    h.handle("master-1", "no_leader", **DEAD)
    h.now = T0 + 2 * INTERVAL
    h.handle("master-1", "changed", **dict(CHANGE, cluster="other"))  # the engine's flush
    assert _names(h.alerts()) == ["KCMNoLeader", "KCMLeaderChanged"]


def test_a_resolution_is_not_overtaken_by_a_re_send_still_waiting_in_the_outbox(h):
    h.handle("master-1", "no_leader", **DEAD)
    h.now = T0 + INTERVAL
    h.fail_next = 3  # Alertmanager down: the re-send waits in the outbox
    assert h.module.flush()["pending"] == 1
    h.now += 5
    h.fail_next = 3  # still down when the condition ends
    h.handle("master-2", "recovered", condition="no_leader", **DEAD)
    h.now += 5
    assert h.module.flush() == {"delivered": 2, "pending": 0, "expired": 0}
    ((url, (resent, resolved)),) = h.posts[1:]
    assert url == AM and resent["labels"] == resolved["labels"]
    assert _epoch(resent["endsAt"]) > h.now >= _epoch(resolved["endsAt"])  # the last word: resolved
    h.now += 2 * INTERVAL
    h.module.flush()
    assert len(h.alerts()) == 3  # and nothing re-sent after it


def test_a_resolution_waits_while_another_sender_posts_a_re_send(h, monkeypatch):
    h.handle("master-1", "no_leader", **DEAD)
    h.now = T0 + INTERVAL
    gate, started = _holding(h, monkeypatch)
    thread = threading.Thread(target=h.module.flush)  # the schedule, posting the re-send
    thread.start()
    assert started.wait(10)
    h.now += 1
    resolving = h.handle("master-2", "recovered", condition="no_leader", **DEAD)
    assert resolving["failed"] is True  # queued behind the re-send
    gate.set()
    thread.join(10)
    h.module.flush()
    assert [_epoch(a["endsAt"]) > T0 + INTERVAL + 1 for a in h.alerts()] == [True, True, False]


def test_a_receiver_that_is_down_holds_one_re_send_per_open_alert(h):
    h.handle("master-1", "no_leader", **DEAD)
    for step in range(1, 6):
        h.now = T0 + step * INTERVAL
        h.fail_next = 3
        h.module.flush()
    resends = [e for e in h.store()["outbox"].values() if e.get("resend")]
    assert len(resends) == 1 and _epoch(resends[0]["alert"]["endsAt"]) == pytest.approx(h.now + 4 * INTERVAL)
    h.now += 1
    assert h.module.flush()["delivered"] == 1
    assert len(h.alerts()) == 2


def test_a_resolution_outlasts_the_last_re_send(h):
    h.handle("master-1", "no_leader", **DEAD)
    h.now = T0 + INTERVAL
    h.module.flush()
    h.now += 1
    h.fail_next = 3
    h.handle("master-1", "recovered", condition="no_leader", **DEAD)
    (entry,) = h.store()["outbox"].values()
    assert entry["action"] == "resolve" and entry["expires"] == pytest.approx(T0 + INTERVAL + 4 * INTERVAL)


def test_a_resolution_after_a_stopped_schedule_is_still_delivered(h):
    h.handle("master-1", "stale", **DEAD)
    h.now = T0 + 3600  # no flush ran meanwhile: the alert's own endsAt passed
    result = h.handle("master-1", "recovered", condition="stale", **DEAD)
    assert result["resolved"] and not result["failed"]
    assert "kcm/alert/expired" not in h.tags()


def test_webhooks_get_each_change_once_and_no_re_sends(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch, resend_interval=INTERVAL, webhook_urls=["https://hooks.example/kcm"])
    h.handle("master-1", "no_leader", **DEAD)
    h.now = T0 + INTERVAL
    h.module.flush()
    assert [url for url, _ in h.posts] == [AM, "https://hooks.example/kcm", AM]


def test_a_store_written_before_re_sends_re_sends_its_open_alerts(h):
    h.handle("master-1", "no_leader", **DEAD)
    path = h.cachedir / "kcm_alert" / "dedupe.json"
    store = h.store()
    for entry in store["open"].values():
        entry.pop("sent_at")
    path.write_text(json.dumps(store))
    h.now = T0 + 1
    h.module.flush()
    assert len(h.alerts()) == 2


@pytest.mark.parametrize(
    "master, message",
    [
        ({"resend_interval": 0}, "kcm:master:resend_interval: 0 is not a positive number of seconds"),
        ({"resend_interval": "60"}, "kcm:master:resend_interval: '60' is not an integer"),
        (
            {"resend_interval": 5, "flush_interval": 10},
            "kcm:master:resend_interval: 5 is shorter than kcm:master:flush_interval (10)",
        ),
        ({"runbook_url": "ftp://wiki/runbook"}, "kcm:master:runbook_url: 'ftp://wiki/runbook' must start with"),
        ({"runbook_url": "https://wiki/runbook#top"}, "kcm:master:runbook_url: 'https://wiki/runbook#top' holds a #"),
    ],
)
def test_the_new_settings_are_validated_naming_the_key(kcm_config, master, message):
    settings = dict({"config_dir": "/etc/salt/master.d", "masters": "master-*"}, **master)
    problems = kcm_config.master_problems(settings)
    assert any(p.startswith(message) for p in problems), problems
