"""
The kcm_leader beacon: its state machine (`step`), its validate() messages,
and the state file that stops a refresh or restart from re-announcing.

The beacon and ``kcm_beacon`` (the execution functions it calls) get their dunders from
pytest-salt-factories' ``configure_loader_modules``.
"""

import base64
import datetime
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from kcmlab import formula
from tests.unit.conftest import MINION_KEY

kcm_leader = formula.load("_beacons", "kcm_leader")
KCM_BEACON = formula.load("_modules", "kcm_beacon")
UTILS = formula.utils()

SETTINGS = {
    "debounce": 2,
    "stale_after": 3,
    "retry_period": 1.0,
    "lease_duration": 4.0,
    "cluster": "prod",
    "healthy_for": 60,
}
T0 = 1_800_000_000.0


def iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease(node, renewed, transitions=1, acquired=None, duration=4):
    """A kcm.leader result as the execution module documents it, with the beacon's ``renewed_at``."""
    return {
        "renewed_at": float(renewed),
        "holder": f"{node}_0c9d3f0e-8a51-4b8e-9b55-{node[-1] * 12}" if node else None,
        "node": node,
        "minion": node,
        "acquire_time": iso(acquired if acquired is not None else T0),
        "renew_time": iso(renewed),
        "lease_duration_seconds": duration,
        "transitions": transitions,
        "expired": False,
        "source": "lease",
    }


@pytest.fixture
def deployed(beacon_deployed):
    return beacon_deployed


@pytest.fixture
def configure_loader_modules(beacon_opts, deployed):
    salt = {"kcm_config.deployed": lambda: deployed}
    salt.update({f"kcm_beacon.{name}": getattr(KCM_BEACON, name) for name in ("settings", "validate")})
    opts = beacon_opts
    # The beacons sign through a utils loader of their own (the formula's _utils here).
    context = {"kcm_trust.utils": UTILS}
    return {
        kcm_leader: {"__salt__": salt, "__opts__": opts, "__context__": context, "__grains__": {"host": "master-2"}},
        KCM_BEACON: {"__salt__": salt, "__opts__": opts, "__context__": context, "__utils__": UTILS},
    }


class Run:
    """Feeds observations through step() the way the beacon does, one poll at a time."""

    def __init__(self, me=("master-2",), settings=None, state=None):
        self.state = state
        self.me = me
        self.settings = dict(SETTINGS, **(settings or {}))

    def poll(self, observation, now, service=None):
        self.state, events = kcm_leader.step(self.state, observation, now, self.settings, self.me, service)
        return events

    def read(self, now, restarts, healthy=None, exit_status=1):
        """One poll of a renewing master-1 that also reads systemd (``kcm.restarts``, and
        ``kcm.health`` when the beacon would ask it) at ``now``."""
        reading = unit(restarts, exit_status)
        if kcm_leader.wants_health(self.state, reading):
            reading["healthy"] = bool(healthy)
        return self.poll(lease("master-1", renewed=now), now, reading)


def tags(events):
    return [event["tag"] for event in events]


def unit(restarts, exit_status=1):
    """What kcm.restarts answers: NRestarts and the last exit status of the KCM unit."""
    return {"unit": "kube-controller-manager", "active": "activating", "restarts": restarts, "exit_status": exit_status}


def healthy_run(node="master-1", until=T0 + 3, me=("master-2",)):
    """A beacon that has watched `node` renew every second up to `until`."""
    run = Run(me=me)
    t = T0
    while t <= until:
        assert run.poll(lease(node, renewed=t), t) == []
        t += 1
    return run


# --------------------------------------------------------------------------
# each tag
# --------------------------------------------------------------------------


def test_first_sight_of_a_healthy_leader_announces_nothing():
    assert Run().poll(lease("master-1", renewed=T0), T0) == []


def test_holder_moving_fires_one_changed_with_old_and_new_holder():
    run = healthy_run()
    events = run.poll(lease("master-3", renewed=T0 + 10, transitions=2, acquired=T0 + 10), T0 + 10)
    changed = [e for e in events if e["tag"] == "changed"]
    assert len(changed) == 1
    assert changed[0]["old_node"] == "master-1" and changed[0]["new_node"] == "master-3"
    assert changed[0]["old_minion"] == "master-1" and changed[0]["new_minion"] == "master-3"
    assert changed[0]["old_holder"].startswith("master-1_")
    assert changed[0]["transitions"] == 2 and changed[0]["cluster"] == "prod"
    # the same record again is not news
    assert run.poll(lease("master-3", renewed=T0 + 11, transitions=2, acquired=T0 + 10), T0 + 11) == []


def test_this_minion_acquiring_and_losing_the_lease():
    run = healthy_run(node="master-1", me=("master-2",))
    events = run.poll(lease("master-2", renewed=T0 + 5, transitions=2), T0 + 5)
    assert tags(events) == ["changed", "acquired"]
    events = run.poll(lease("master-3", renewed=T0 + 6, transitions=3), T0 + 6)
    assert tags(events) == ["changed", "lost"]
    assert events[1]["holder"].startswith("master-2_") and events[1]["new_holder"].startswith("master-3_")


def test_stale_comes_before_the_lease_expires():
    run = healthy_run(until=T0 + 3)  # last renewal seen at T0+3
    assert run.poll(lease("master-1", renewed=T0 + 3), T0 + 5) == []
    events = run.poll(lease("master-1", renewed=T0 + 3), T0 + 6.5)  # 3.5 s > 3 retry periods
    assert tags(events) == ["stale"]
    assert events[0]["basis"] == "observed" and events[0]["age_seconds"] == pytest.approx(3.5)
    assert events[0]["holder"].startswith("master-1_")
    # the lease itself (4 s) has not yet expired at that point
    assert 3.5 < SETTINGS["lease_duration"]
    assert run.poll(lease("master-1", renewed=T0 + 3), T0 + 7) == []


def test_stale_is_judged_by_local_observation_not_by_a_skewed_renew_time():
    # The holder's clock is 60 s behind ours: renew_time looks ancient, but the
    # record keeps changing, so the holder is alive.
    run = Run()
    for step_ in range(6):
        now = T0 + step_
        assert run.poll(lease("master-1", renewed=now - 60), now) == [], step_


def test_a_late_poll_does_not_delay_stale():
    # Polls land 0.05-0.9 s after each renewal (the poll phase drifts); the
    # last renewal is seen 0.9 s late, yet judged from when it happened.
    run = Run()
    for k, lag in enumerate((0.9, 0.5, 0.05, 0.9)):
        assert run.poll(lease("master-1", renewed=T0 + k), T0 + k + lag) == []
    events = run.poll(lease("master-1", renewed=T0 + 3), T0 + 6.5)
    assert tags(events) == ["stale"]
    assert events[0]["age_seconds"] == pytest.approx(3.45)


def test_a_step_back_of_the_holders_clock_does_not_fake_stale():
    run = Run()
    for k in range(4):
        run.poll(lease("master-1", renewed=T0 + k), T0 + k)
    # the holder's clock steps back 10 s; it keeps renewing every second
    for k in range(4, 8):
        assert run.poll(lease("master-1", renewed=T0 + k - 10), T0 + k) == [], k


def test_a_leader_found_dead_at_first_sight_is_reported_by_renew_time():
    events = Run().poll(lease("master-1", renewed=T0 - 5), T0)
    assert tags(events) == ["stale"]
    assert events[0]["basis"] == "renew_time"


def test_changed_after_stale_also_reports_recovered():
    run = healthy_run(until=T0 + 3)
    assert tags(run.poll(lease("master-1", renewed=T0 + 3), T0 + 7)) == ["stale"]
    events = run.poll(lease("master-3", renewed=T0 + 8, transitions=2, acquired=T0 + 8), T0 + 8)
    assert tags(events) == ["changed", "recovered"]
    assert events[1]["condition"] == "stale"


def test_no_leader_after_expiry_plus_grace_then_recovered_when_one_takes_over():
    run = healthy_run(until=T0 + 3)
    assert tags(run.poll(lease("master-1", renewed=T0 + 3), T0 + 7)) == ["stale"]
    # expired (4 s) but within the grace for a standby to take over (+3 s)
    assert run.poll(lease("master-1", renewed=T0 + 3), T0 + 9) == []
    # past the grace: debounce 2 -> announced on the second such poll
    assert run.poll(lease("master-1", renewed=T0 + 3), T0 + 11) == []
    events = run.poll(lease("master-1", renewed=T0 + 3), T0 + 12)
    assert tags(events) == ["no_leader"]
    assert events[0]["transitions"] == 1
    assert run.poll(lease("master-1", renewed=T0 + 3), T0 + 13) == []
    events = run.poll(lease("master-2", renewed=T0 + 20, transitions=2, acquired=T0 + 20), T0 + 20)
    assert tags(events) == ["changed", "acquired", "recovered"]
    assert events[-1]["condition"] == "no_leader"


def test_a_released_lease_taken_within_the_grace_announces_only_the_change():
    run = healthy_run(until=T0 + 3)
    released = dict(lease(None, renewed=T0 + 4), holder=None, lease_duration_seconds=1)
    # The grace of an expired lease: its 1 s plus stale_after retry periods (3 s here).
    assert run.poll(released, T0 + 4) == []
    assert run.poll(released, T0 + 5) == []
    assert run.poll(released, T0 + 6) == []
    events = run.poll(lease("master-3", renewed=T0 + 7, transitions=2), T0 + 7)
    assert tags(events) == ["changed"]
    # From the master that released it, not from nobody.
    assert (events[0]["old_node"], events[0]["new_node"]) == ("master-1", "master-3")


@pytest.mark.parametrize("me", [("master-1",), ("master-2",)])
def test_after_a_released_lease_the_change_is_from_the_last_holder(me):
    run = healthy_run(until=T0 + 3, me=me)
    released = dict(lease(None, renewed=T0 + 4), holder=None, lease_duration_seconds=1)
    assert run.poll(released, T0 + 4) == []
    events = run.poll(lease("master-3", renewed=T0 + 5, transitions=2), T0 + 5)
    changed = events[0]
    assert (changed["old_node"], changed["new_node"]) == ("master-1", "master-3")
    assert changed["old_holder"] == lease("master-1", renewed=T0)["holder"]
    # the old leader's own minion says it lost the lease; a bystander only sees the change
    assert tags(events) == (["changed", "lost"] if me == ("master-1",) else ["changed"])


def test_a_released_lease_nobody_takes_is_no_leader_after_the_grace_and_debounce():
    run = healthy_run(until=T0 + 3)
    released = dict(lease(None, renewed=T0 + 4), holder=None, lease_duration_seconds=1)
    for second in (4, 5, 6, 7, 8):
        assert run.poll(released, T0 + second) == [], second
    assert run.poll(released, T0 + 9) == []  # first poll past the grace: debounced
    assert tags(run.poll(released, T0 + 10)) == ["no_leader"]


def test_unreachable_is_debounced_and_carries_a_short_reason():
    run = healthy_run(until=T0 + 3)
    # what _observe makes of kcm.leader's CommandExecutionError: its one line "<reason>: <detail>"
    down = {"error": "unreachable: GET https://127.0.0.1:6443/apis/...: Connection refused " + "x" * 500}
    assert run.poll(down, T0 + 4) == []
    events = run.poll(down, T0 + 5)
    assert tags(events) == ["unreachable"]
    assert events[0]["reason"].startswith("unreachable: GET https://127.0.0.1:6443/apis/...: Connection refused")
    assert len(events[0]["reason"]) <= 200
    assert run.poll(down, T0 + 6) == []
    events = run.poll(lease("master-1", renewed=T0 + 7), T0 + 7)
    assert tags(events) == ["recovered"]
    assert events[0]["condition"] == "unreachable"


def test_a_single_failed_poll_announces_nothing():
    run = healthy_run(until=T0 + 3)
    assert run.poll({"error": "timeout"}, T0 + 4) == []
    assert run.poll(lease("master-1", renewed=T0 + 5), T0 + 5) == []
    assert run.poll({"error": "timeout"}, T0 + 6) == []  # the count started over


def test_debounce_one_announces_on_the_first_failure():
    run = Run(settings={"debounce": 1})
    run.poll(lease("master-1", renewed=T0), T0)
    assert tags(run.poll({"error": "timeout"}, T0 + 1)) == ["unreachable"]


def test_leader_moving_while_unreachable_is_reported_on_return():
    run = healthy_run(until=T0 + 3)
    run.poll({"error": "refused"}, T0 + 4)
    run.poll({"error": "refused"}, T0 + 5)
    events = run.poll(lease("master-3", renewed=T0 + 30, transitions=2, acquired=T0 + 25), T0 + 30)
    assert tags(events) == ["changed", "recovered"]


def test_events_carry_no_key_material():
    run = healthy_run(until=T0 + 3)
    events = run.poll(lease("master-3", renewed=T0 + 8, transitions=2), T0 + 8)
    text = json.dumps(events)
    assert "PRIVATE KEY" not in text and "client-key" not in text


# --------------------------------------------------------------------------
# persistence: refresh / restart do not re-announce
# --------------------------------------------------------------------------


def test_state_survives_a_restart_through_the_state_file(tmp_path):
    path = str(tmp_path / "kcm" / "beacon-kcm_leader.json")
    run = healthy_run(until=T0 + 3)
    run.poll(lease("master-3", renewed=T0 + 8, transitions=2), T0 + 8)
    UTILS["kcm_state_file.write_json"](path, run.state)  # as beacon() saves it

    restarted = Run(state=kcm_leader.load_state(path))
    # same leader, healthy: nothing to say after the restart
    assert restarted.poll(lease("master-3", renewed=T0 + 20, transitions=2), T0 + 20) == []
    # and a real change is still seen
    assert tags(restarted.poll(lease("master-1", renewed=T0 + 21, transitions=3), T0 + 21)) == ["changed"]


def test_an_announced_condition_is_not_announced_again_after_a_restart(tmp_path):
    path = str(tmp_path / "beacon.json")
    run = healthy_run(until=T0 + 3)
    run.poll({"error": "refused"}, T0 + 4)
    assert tags(run.poll({"error": "refused"}, T0 + 5)) == ["unreachable"]
    UTILS["kcm_state_file.write_json"](path, run.state)  # as beacon() saves it
    restarted = Run(state=kcm_leader.load_state(path))
    assert restarted.poll({"error": "refused"}, T0 + 9) == []
    assert restarted.poll({"error": "refused"}, T0 + 10) == []


def test_unreadable_state_files_are_ignored(tmp_path):
    path = tmp_path / "kcm" / "beacon-x.json"
    path.parent.mkdir()
    path.write_text("{half a fi")
    assert kcm_leader.load_state(str(path)) is None
    assert kcm_leader.load_state(str(tmp_path / "missing.json")) is None


@pytest.fixture
def loaded(configure_loader_modules):
    """The beacon with Salt's dunders, kcm.leader answering (or raising) from a list."""
    answers = []
    calls = {"leader": 0}

    def leader(**kwargs):
        assert set(kwargs) <= {"timeout"}
        calls["leader"] += 1
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    kcm_leader.__salt__["kcm.leader"] = leader
    return kcm_leader, answers, calls


def test_beacon_events_are_signed_with_the_minions_key(loaded, monkeypatch):
    module, answers, _ = loaded
    clock = iter([T0, T0 + 1])
    monkeypatch.setattr(module, "_now", lambda: next(clock))
    config = [{"debounce": 2}, {"_beacon_name": "kcm_leader"}]
    answers.append(lease("master-1", renewed=T0))
    module.beacon(config)
    answers.append(lease("master-3", renewed=T0 + 1, transitions=2))
    [event] = module.beacon(config)

    kind, data = event["tag"], {k: v for k, v in event.items() if k != "tag"}
    assert data["id"] == "master-2"
    signature = base64.b64decode(data["sig"])
    MINION_KEY.public_key().verify(
        signature, UTILS["kcm_trust.signed_message"](kind, data), padding.PKCS1v15(), hashes.SHA256()
    )
    forged = dict(data, new_holder="web-1_x")
    with pytest.raises(InvalidSignature):
        MINION_KEY.public_key().verify(
            signature, UTILS["kcm_trust.signed_message"](kind, forged), padding.PKCS1v15(), hashes.SHA256()
        )


def test_beacon_does_one_leader_call_per_poll_and_survives_a_refresh(loaded, tmp_path, monkeypatch):
    module, answers, calls = loaded
    clock = iter([T0, T0 + 1, T0 + 2, T0 + 3])
    monkeypatch.setattr(module, "_now", lambda: next(clock))
    config = [{"debounce": 2}, {"_beacon_name": "kcm_leader"}]

    answers.append(lease("master-1", renewed=T0))
    assert module.beacon(config) == []
    answers.append(lease("master-3", renewed=T0 + 1, transitions=2))
    assert tags(module.beacon(config)) == ["changed"]
    assert calls["leader"] == 2
    assert (tmp_path / "kcm" / "beacon-kcm_leader.json").exists()

    module.__context__.clear()  # what a beacons_refresh / pillar refresh does
    module.__context__["kcm_trust.utils"] = UTILS
    answers.append(lease("master-3", renewed=T0 + 2, transitions=2))
    assert module.beacon(config) == []


def test_beacon_writes_its_state_file_only_when_something_was_announced(loaded, tmp_path, monkeypatch):
    module, answers, _ = loaded
    clock = iter([T0, T0 + 1, T0 + 2])
    monkeypatch.setattr(module, "_now", lambda: next(clock))
    config = [{"_beacon_name": "kcm_leader"}]
    path = tmp_path / "kcm" / "beacon-kcm_leader.json"
    answers.append(lease("master-1", renewed=T0))
    module.beacon(config)
    path.unlink()
    answers.append(lease("master-1", renewed=T0 + 1))  # a renewal: nothing to announce
    module.beacon(config)
    assert not path.exists()
    answers.append(lease("master-2", renewed=T0 + 2, transitions=2))
    module.beacon(config)
    assert json.loads(path.read_text())["record"]["node"] == "master-2"


def test_beacon_state_is_kept_per_beacon_name(loaded, tmp_path, monkeypatch):
    module, answers, _ = loaded
    monkeypatch.setattr(module, "_now", lambda: T0)
    for name in ("kcm_leader", "kcm_leader_b"):
        answers.append(lease("master-1", renewed=T0))
        module.beacon([{"_beacon_name": name}])
    assert sorted(p.name for p in (tmp_path / "kcm").iterdir()) == [
        "beacon-kcm_leader.json",
        "beacon-kcm_leader_b.json",
    ]


def test_beacon_turns_a_raising_leader_call_into_unreachable(loaded, monkeypatch):
    module, _, _ = loaded
    monkeypatch.setattr(module, "_now", lambda: T0)

    def boom(**kwargs):
        raise ConnectionError("connection refused\nsecond line")

    module.__salt__["kcm.leader"] = boom
    config = [{"debounce": 1}, {"_beacon_name": "kcm_leader"}]
    events = module.beacon(config)
    assert tags(events) == ["unreachable"]
    assert events[0]["reason"] == "kcm.leader raised ConnectionError: connection refused"


def test_every_event_carries_the_cluster_id_also_while_the_apiserver_is_down(loaded, monkeypatch):
    module, answers, _ = loaded
    clock = iter([T0, T0 + 1, T0 + 2])
    monkeypatch.setattr(module, "_now", lambda: next(clock))
    asked = []

    def cluster_id(**kwargs):
        asked.append(kwargs)
        return "uid-of-prod-a"

    module.__salt__["kcm.cluster_id"] = cluster_id
    config = [{"debounce": 1}, {"timeout": 2}, {"_beacon_name": "kcm_leader"}]
    answers.append(lease("master-1", renewed=T0))
    module.beacon(config)
    answers.append(lease("master-3", renewed=T0 + 1, transitions=2))
    changed = module.beacon(config)
    answers.append(UTILS["kcm_error.failure"]("unreachable", "connection refused"))
    unreachable = module.beacon(config)

    assert [(e["tag"], e["cluster"], e["cluster_id"]) for e in changed + unreachable] == [
        ("changed", "prod", "uid-of-prod-a"),
        ("unreachable", "prod", "uid-of-prod-a"),
    ]
    # asked after good polls only: with the apiserver down it would be one more blocking GET
    assert asked == [{"timeout": 2}, {"timeout": 2}]


def test_a_failing_leader_call_is_unreachable_with_its_one_line_reason(loaded, monkeypatch):
    module, answers, _ = loaded
    monkeypatch.setattr(module, "_now", lambda: T0)
    answers.append(UTILS["kcm_error.failure"]("unreachable", "GET https://10.0.0.1:6443/apis/...: Connection refused"))
    [event] = module.beacon([{"debounce": 1}, {"_beacon_name": "kcm_leader"}])
    assert (event["tag"], event["reason"]) == (
        "unreachable",
        "unreachable: GET https://10.0.0.1:6443/apis/...: Connection refused",
    )


def test_a_key_left_out_of_the_config_comes_from_the_deployed_kcm_beacon(loaded, deployed, monkeypatch):
    module, answers, _ = loaded
    monkeypatch.setattr(module, "_now", lambda: T0)
    deployed["beacon"]["debounce"] = 1
    answers.append(UTILS["kcm_error.failure"]("unreachable", "connection refused"))
    assert tags(module.beacon([{"_beacon_name": "kcm_leader"}])) == ["unreachable"]
    deployed["beacon"]["debounce"] = 5  # the config wins over the deployed value
    module.__context__.clear()
    module.__context__["kcm_trust.utils"] = UTILS
    answers.append(UTILS["kcm_error.failure"]("unreachable", "connection refused"))
    assert module.beacon([{"_beacon_name": "kcm_other"}, {"debounce": 1}]) != []


def test_the_lease_timings_come_from_the_deployed_leader_election(loaded, deployed, monkeypatch):
    module, answers, _ = loaded
    deployed["leader_election"] = {"retry_period": "2s", "lease_duration": "1m"}
    clock = iter([T0, T0 + 1, T0 + 6, T0 + 8])
    monkeypatch.setattr(module, "_now", lambda: next(clock))
    answers.extend([lease("master-1", renewed=T0)] + [lease("master-1", renewed=T0 + 1)] * 3)
    config = [{"_beacon_name": "kcm_leader"}]
    assert module.beacon(config) == [] and module.beacon(config) == []
    # 5 s without a renewal: stale with a 1 s retry period, not yet with the deployed 2 s (3 x 2 s)
    assert module.beacon(config) == []
    assert tags(module.beacon(config)) == ["stale"]


def test_beacon_is_quiet_where_kcm_is_not_deployed(loaded):
    module, _, calls = loaded
    module.__salt__["kcm_config.deployed"] = lambda: {}
    assert module.beacon([{"_beacon_name": "kcm_leader"}]) == []
    assert calls["leader"] == 0


def test_beacon_is_quiet_and_says_why_when_the_deployed_timings_are_unusable(loaded, deployed, caplog):
    module, _, calls = loaded
    deployed["leader_election"] = {"retry_period": "soon"}
    assert module.beacon([{"_beacon_name": "kcm_leader"}]) == []
    assert calls["leader"] == 0
    assert "leader_election.retry_period is not a duration" in caplog.text


# --------------------------------------------------------------------------
# a crash loop: restarts by systemd with no healthy /healthz between them
# --------------------------------------------------------------------------


def looping_run(restarts=3):
    """A beacon that read 0 restarts at T0 and then one more, never healthy, every 10 s."""
    run = Run()
    events = run.read(T0, 0)
    for count in range(1, restarts + 1):
        events += run.read(T0 + 10 * count, count)
    return run, events


def test_a_kcm_that_exits_on_start_is_announced_once_with_its_exit_status():
    run, events = looping_run(restarts=2)
    assert events == []
    [event] = run.read(T0 + 30, 3, exit_status=1)

    assert event["tag"] == "restarting"
    assert (event["restarts"], event["window_seconds"], event["exit_status"]) == (3, 600, 1)
    assert (event["unit"], event["cluster"]) == ("kube-controller-manager", "prod")
    assert [run.read(T0 + 30 + 10 * n, 3 + n) for n in range(1, 20)] == [[]] * 19  # it keeps looping


def test_a_read_while_the_next_process_runs_keeps_the_last_exit_status():
    run, _ = looping_run(restarts=2)
    [event] = run.read(T0 + 30, 3, exit_status=None)  # kcm.restarts has none while a process runs
    assert event["exit_status"] == 1


def test_the_exit_on_a_lost_lease_is_no_crash_loop():
    """KCM exits by design when it loses the Lease and comes back healthy as a standby."""
    run = Run()
    run.read(T0, 0)
    for count in range(1, 11):  # ten lost Leases within 10 minutes
        assert run.read(T0 + 20 * count, count) == []  # down, between its exit and its start
        assert run.read(T0 + 20 * count + 10, count, healthy=True) == []
    # a restart and healthy again by the next read: as good
    assert [run.read(T0 + 300 + 10 * n, 10 + n, healthy=True) for n in range(1, 6)] == [[]] * 5


def test_restarts_further_apart_than_the_window_are_no_crash_loop():
    run = Run()
    run.read(T0, 0)
    assert run.read(T0 + 10, 1) == [] and run.read(T0 + 300, 2) == [] and run.read(T0 + 611, 3) == []
    assert tags(run.read(T0 + 620, 4)) == ["restarting"]  # T0+300, T0+611, T0+620: three within 600 s


def test_several_restarts_between_two_reads_all_count():
    run = Run()
    run.read(T0, 0)
    assert tags(run.read(T0 + 10, 3)) == ["restarting"]


def test_a_crash_loop_ends_after_healthy_for_and_a_new_one_is_announced_again():
    run, events = looping_run()
    assert tags(events) == ["restarting"]
    t = T0 + 40
    assert run.read(t, 3, healthy=True) == []
    assert run.read(t + 50, 3, healthy=True) == []
    assert run.read(t + 55, 4) == []  # it crashed again: the healthy time starts over
    assert run.read(t + 65, 4, healthy=True) == []
    assert run.read(t + 115, 4, healthy=True) == []
    events = run.read(t + 125, 4, healthy=True)  # healthy for 60 s
    assert tags(events) == ["recovered"] and events[0]["condition"] == "restarting"
    assert run.read(t + 135, 4, healthy=True) == []

    later = t + 1000
    assert [tags(run.read(later + 10 * n, 4 + n)) for n in range(1, 4)] == [[], [], ["restarting"]]


def test_a_loop_while_the_apiserver_is_unreachable_is_announced_only_if_it_outlasts_the_outage():
    """KCM exits at start when it cannot read the apiserver: KCMApiserverUnreachable says why."""
    run = Run(settings={"debounce": 1})
    run.read(T0, 0)
    down = {"error": "unreachable: connection refused"}
    assert tags(run.poll(down, T0 + 1)) == ["unreachable"]
    assert [run.poll(down, T0 + 10 * n, unit(n)) for n in range(1, 6)] == [[]] * 5
    assert tags(run.read(T0 + 60, 6)) == ["recovered", "restarting"]  # back, and still looping


def test_the_first_read_is_the_baseline_and_a_start_by_hand_resets_the_counter():
    run = Run()
    assert run.read(T0, 57) == [] and run.read(T0 + 10, 57) == []  # restarts from before the beacon
    # `systemctl restart` by hand puts NRestarts back to 0; what is above 0 are new restarts
    assert run.read(T0 + 20, 1) == [] and run.read(T0 + 30, 2) == []
    assert tags(run.read(T0 + 40, 3)) == ["restarting"]


def test_healthz_is_asked_only_while_restarts_are_counted_and_systemd_every_ten_seconds():
    run = Run()
    run.read(T0, 4)
    assert not kcm_leader.wants_health(run.state, unit(4))
    assert kcm_leader.wants_health(run.state, unit(5))
    run.read(T0 + 10, 5)
    assert kcm_leader.wants_health(run.state, unit(5))  # no healthy answer since that restart
    run.read(T0 + 20, 5, healthy=True)
    assert not kcm_leader.wants_health(run.state, unit(5))
    assert [kcm_leader.service_due(run.state, T0 + d) for d in (21, 29.9, 30, 45)] == [False, False, True, True]
    assert kcm_leader.service_due(run.state, T0 + 5)  # the clock went back: read rather than wait


def test_an_announced_crash_loop_survives_a_minion_restart_and_still_ends(tmp_path):
    path = str(tmp_path / "beacon.json")
    run, events = looping_run()
    UTILS["kcm_state_file.write_json"](path, run.state)  # as beacon() saves it
    restarted = Run(state=kcm_leader.load_state(path))

    assert [restarted.read(T0 + 100 + 10 * n, 4 + n) for n in range(5)] == [[]] * 5
    assert restarted.read(T0 + 200, 9, healthy=True) == []
    assert tags(restarted.read(T0 + 260, 9, healthy=True)) == ["recovered"]


LAST_ERROR = 'E1207 run.go:72] "command failed" err="open kubeconfig: permission denied"'


@pytest.fixture
def systemd(loaded):
    """The beacon with kcm.restarts (NRestarts from a list, one per read) and kcm.health answering."""
    module, answers, _ = loaded
    readings = {"restarts": [], "calls": [], "health": [], "healthy": False}

    def restarts(last_error=False):
        readings["calls"].append(last_error)
        reading = unit(readings["restarts"][0] if readings["restarts"] else 0)
        if last_error:
            return dict(reading, last_error=LAST_ERROR)
        readings["restarts"] = readings["restarts"][1:] or readings["restarts"]
        return reading

    def health(**kwargs):
        readings["health"].append(kwargs)
        if not readings["healthy"]:
            raise UTILS["kcm_error.failure"]("unreachable", "connection refused")
        return {"healthy": True}

    module.__salt__.update({"kcm.restarts": restarts, "kcm.health": health})
    return module, answers, readings


def test_the_beacon_reads_systemd_every_ten_seconds_and_healthz_only_after_a_restart(systemd, monkeypatch):
    module, answers, readings = systemd
    clock = iter(T0 + n for n in range(41))
    monkeypatch.setattr(module, "_now", lambda: next(clock))
    answers.extend(lease("master-1", renewed=T0 + n) for n in range(41))
    readings["restarts"] = [2, 2, 3, 3]
    for _ in range(21):
        assert module.beacon([{"_beacon_name": "kcm_leader"}]) == []

    assert readings["calls"] == [False, False, False]  # at T0, T0+10, T0+20: not every poll
    assert len(readings["health"]) == 1  # at T0+20, after the restart T0+10 did not see


def test_the_restarting_event_carries_the_journals_last_error_and_is_signed(systemd, monkeypatch):
    module, answers, readings = systemd
    clock = iter(T0 + 10 * n for n in range(5))
    monkeypatch.setattr(module, "_now", lambda: next(clock))
    answers.extend(lease("master-1", renewed=T0 + 10 * n) for n in range(5))
    readings["restarts"] = [0, 1, 2, 3]
    sent = [module.beacon([{"_beacon_name": "kcm_leader"}]) for _ in range(4)]

    assert [tags(events) for events in sent] == [[], [], [], ["restarting"]]
    event = sent[-1][0]
    assert event["last_error"] == LAST_ERROR
    assert readings["calls"] == [False, False, False, False, True]  # the journal once, for the event
    data = {k: v for k, v in event.items() if k != "tag"}
    MINION_KEY.public_key().verify(
        base64.b64decode(data["sig"]),
        UTILS["kcm_trust.signed_message"]("restarting", data),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


# --------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, message",
    [
        ({"interval": 2}, "configuration must be a list of one-key dicts"),
        ([{"debounce": 0}], "debounce must be an integer >= 1"),
        ([{"debounce": "2"}], "debounce must be an integer >= 1"),
        ([{"stale_after": -1}], "stale_after must be a number of retry periods > 0"),
        ([{"interval": "fast"}], "interval must be a number of seconds > 0"),
        ([{"state_file": "relative/path.json"}], "state_file must be an absolute path"),
        ([{"intervall": 2}], "unknown key 'intervall'"),
        ([{"enabled": "yes"}], "enabled must be true or false"),
        ([{"timeout": 30}], "timeout must be seconds in (0, 10]"),
        (None, "configuration must be a list"),
    ],
)
def test_validate_names_the_key_and_the_expected_form(config, message):
    valid, comment = kcm_leader.validate(config)
    assert valid is False
    assert message in comment


def test_validate_accepts_a_full_config_including_framework_keys():
    config = [
        {"interval": 2},
        {"debounce": 3},
        {"stale_after": 2.5},
        {"state_file": "/var/cache/salt/minion/kcm/b.json"},
        {"disable_during_state_run": True},
        {"beacon_module": "kcm_leader"},
        {"enabled": True},
    ]
    assert kcm_leader.validate(config) == (True, "Valid beacon configuration")


def test_validate_never_raises_on_garbage():
    class Weird(dict):
        def items(self):
            raise RuntimeError("nope")

    assert kcm_leader.validate([Weird(a=1)])[0] is False


def test_the_cert_keys_are_the_cert_beacons_not_the_leader_beacons():
    valid, comment = kcm_leader.validate([{"interval": 2}, {"cert_thresholds": [30, 7]}])
    assert valid is False and "unknown key 'cert_thresholds'" in comment
