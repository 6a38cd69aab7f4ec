"""
The kcm_leader beacon: its state machine (`step`), its validate() messages,
and the state file that stops a refresh or restart from re-announcing.
"""

import base64
import datetime
import importlib.util
import json
import pathlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kcm_leader = _load("kcm_leader", ROOT / "_beacons" / "kcm_leader.py")

SETTINGS = {"debounce": 2, "stale_after": 3, "retry_period": 1.0, "lease_duration": 4.0, "cluster": "prod"}
T0 = 1_800_000_000.0
MINION_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease(node, renewed, transitions=1, acquired=None, duration=4):
    """A kcm.leader result as the execution module documents it."""
    return {
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


class Run:
    """Feeds observations through step() the way the beacon does, one poll at a time."""

    def __init__(self, me=("master-2",), settings=None, state=None):
        self.state = state
        self.me = me
        self.settings = dict(SETTINGS, **(settings or {}))

    def poll(self, observation, now):
        self.state, events = kcm_leader.step(self.state, observation, now, self.settings, self.me)
        return events


def tags(events):
    return [event["tag"] for event in events]


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
    down = {"error": "unreachable", "detail": "GET https://127.0.0.1:6443/apis/...: Connection refused " + "x" * 500}
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
    kcm_leader.save_state(path, run.state)

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
    kcm_leader.save_state(path, run.state)
    restarted = Run(state=kcm_leader.load_state(path))
    assert restarted.poll({"error": "refused"}, T0 + 9) == []
    assert restarted.poll({"error": "refused"}, T0 + 10) == []


def test_state_file_write_is_atomic_and_unreadable_files_are_ignored(tmp_path):
    path = tmp_path / "kcm" / "beacon-x.json"
    kcm_leader.save_state(str(path), kcm_leader.initial_state())
    assert [p.name for p in path.parent.iterdir()] == ["beacon-x.json"]
    path.write_text("{half a fi")
    assert kcm_leader.load_state(str(path)) is None
    assert kcm_leader.load_state(str(tmp_path / "missing.json")) is None


@pytest.fixture
def loaded(tmp_path):
    """The beacon module with Salt's dunders, kcm.leader answering from a list."""
    answers = []
    deployed = {"cluster": "prod", "leader_election": {"retry_period": "1s", "lease_duration": "4s"}}
    calls = {"leader": 0}

    def leader(**kwargs):
        assert kwargs.get("map_minion") is False  # no mine round trip from the minion loop
        calls["leader"] += 1
        return answers.pop(0)

    module = _load("kcm_leader_io", ROOT / "_beacons" / "kcm_leader.py")
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    (pki_dir / "minion.pem").write_bytes(MINION_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    module.__opts__ = {"id": "master-2", "cachedir": str(tmp_path), "pki_dir": str(pki_dir)}
    module.__salt__ = {"kcm.leader": leader, "kcm_config.deployed": lambda: deployed}
    module.__context__ = {}
    module.__grains__ = {"host": "master-2"}
    return module, answers, calls


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
    MINION_KEY.public_key().verify(signature, module.signed_message(kind, data), padding.PKCS1v15(), hashes.SHA256())
    forged = dict(data, new_holder="web-1_x")
    with pytest.raises(InvalidSignature):
        MINION_KEY.public_key().verify(signature, module.signed_message(kind, forged), padding.PKCS1v15(),
                                       hashes.SHA256())


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
    answers.append({"error": "unreachable", "detail": "connection refused"})
    unreachable = module.beacon(config)

    assert [(e["tag"], e["cluster"], e["cluster_id"]) for e in changed + unreachable] == [
        ("changed", "prod", "uid-of-prod-a"),
        ("unreachable", "prod", "uid-of-prod-a"),
    ]
    # asked after good polls only: with the apiserver down it would be one more blocking GET
    assert asked == [{"timeout": 2}, {"timeout": 2}]


def test_beacon_is_quiet_where_kcm_is_not_deployed(loaded):
    module, _, calls = loaded
    module.__salt__["kcm_config.deployed"] = lambda: {}
    assert module.beacon([{"_beacon_name": "kcm_leader"}]) == []
    assert calls["leader"] == 0


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


@pytest.mark.parametrize(
    "text, seconds",
    [("2s", 2.0), ("1m30s", 90.0), ("500ms", 0.5), ("15s", 15.0), (3, 3.0), ("bogus", 7.0), ("", 7.0)],
)
def test_parse_duration(text, seconds):
    assert kcm_leader.parse_duration(text, 7.0) == seconds


# --------------------------------------------------------------------------
# certificate expiry: cert_step, cert_check_due, and the beacon's I/O
# --------------------------------------------------------------------------

CERTS = {"cert_thresholds": [30, 7], "minion": "master-2", "cluster": "prod"}


def status(days, serial="5eed01", name="cert", **more):
    """A kcm_pki.cert_status result with one certificate (plus `more` entries)."""
    entry = {"source": "/etc/k8s/ssl/kube-controller-manager.pem", "subject": "system:kube-controller-manager",
             "not_after": "2027-01-15T08:00:00Z", "days_left": days, "serial": serial}
    return dict({name: entry}, **more)


class CertRun:
    """Feeds cert_status results through cert_step() one read at a time."""

    def __init__(self, settings=None, state=None):
        self.state = state
        self.settings = dict(CERTS, **(settings or {}))

    def read(self, result, now=T0):
        self.state, events = kcm_leader.cert_step(self.state, result, now, self.settings)
        return events


def crossed(events):
    return [(e["tag"], e["cert"], e.get("threshold")) for e in events]


def test_each_threshold_is_announced_once_as_the_days_run_out():
    run = CertRun()
    assert run.read(status(45)) == []
    events = run.read(status(29.5))
    assert crossed(events) == [("cert_expiring", "cert", 30)]
    assert {k: events[0][k] for k in ("subject", "serial", "not_after", "days_left", "minion", "cluster")} == {
        "subject": "system:kube-controller-manager", "serial": "5eed01", "not_after": "2027-01-15T08:00:00Z",
        "days_left": 29.5, "minion": "master-2", "cluster": "prod"}
    assert events[0]["thresholds"] == [30, 7]
    assert run.read(status(20)) == [] and run.read(status(7.0)) == []  # 7.0 is not below 7
    assert crossed(run.read(status(6.9))) == [("cert_expiring", "cert", 7)]
    assert run.read(status(1)) == [] and run.read(status(-2)) == []


def test_a_cert_already_past_several_thresholds_is_one_event_for_the_smallest():
    run = CertRun()
    assert crossed(run.read(status(3))) == [("cert_expiring", "cert", 7)]
    assert run.read(status(2.5)) == []  # 30 counts as announced with it


def test_each_cert_is_judged_on_its_own():
    run = CertRun()
    both = status(29, **status(6, name="kubeconfig:client", serial="c11e47"))
    assert sorted(crossed(run.read(both))) == [("cert_expiring", "cert", 30), ("cert_expiring", "kubeconfig:client", 7)]


def test_announced_thresholds_survive_a_restart_through_the_state_file(tmp_path):
    path = str(tmp_path / "beacon.json")
    run = CertRun()
    run.read(status(29))
    kcm_leader.save_state(path, run.state)
    restarted = CertRun(state=kcm_leader.load_state(path))
    assert kcm_leader.cert_check_due(restarted.state, T0 + 1, 3600)  # re-read at once after a restart ...
    assert restarted.read(status(28.9), T0 + 1) == []  # ... without announcing 30 again
    assert crossed(restarted.read(status(6), T0 + 2)) == [("cert_expiring", "cert", 7)]


def test_a_renewed_cert_starts_over_and_says_so():
    run = CertRun()
    run.read(status(29, serial="01d"))
    events = run.read(status(365, serial="2e3"))
    assert [(e["tag"], e["old_serial"], e["serial"]) for e in events] == [("cert_renewed", "01d", "2e3")]
    assert crossed(run.read(status(29, serial="2e3"))) == [("cert_expiring", "cert", 30)]


def test_a_new_serial_that_was_never_announced_is_not_news():
    run = CertRun()
    run.read(status(200, serial="01d"))
    assert run.read(status(365, serial="2e3")) == []


def test_an_unreadable_cert_keeps_what_was_announced_for_it():
    run = CertRun()
    run.read(status(29))
    assert run.read({"cert": {"source": "/etc/k8s/ssl/kcm.pem", "error": "unreadable: OSError"}}) == []
    assert run.read(None) == [] and run.read({"error": "kcm is not deployed here"}) == []
    assert run.read(status(28)) == []


def test_cert_check_due_honours_the_interval():
    state = kcm_leader.initial_state()
    assert kcm_leader.cert_check_due(state, T0, 3600)
    state, _ = kcm_leader.cert_step(state, status(100), T0, CERTS)
    assert not kcm_leader.cert_check_due(state, T0 + 3599, 3600)
    assert kcm_leader.cert_check_due(state, T0 + 3600, 3600)
    assert kcm_leader.cert_check_due(state, T0 - 60, 3600)  # the clock stepped back


@pytest.fixture
def pki_files(tmp_path):
    """Real PEM files as the formula lays them down: a 20-day KCM cert, its key, a 300-day CA, a kubeconfig."""
    import base64

    import yaml

    from tests.support import pki as testpki

    ca_cert, ca_key = testpki.make_ca(days=300)
    cert, key = testpki.issue(ca_cert, ca_key, days=20)
    ssl = tmp_path / "ssl"
    ssl.mkdir()
    files = {"ca_cert": ssl / "ca.pem", "ca_key": ssl / "ca-key.pem", "cert": ssl / "kcm.pem",
             "key": ssl / "kcm-key.pem", "kubeconfig": tmp_path / "kcm.kubeconfig"}
    files["ca_cert"].write_text(testpki.cert_pem(ca_cert))
    files["ca_key"].write_text(testpki.key_pem(ca_key))
    files["cert"].write_text(testpki.cert_pem(cert))
    files["key"].write_text(testpki.key_pem(key))
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    files["kubeconfig"].write_text(yaml.safe_dump({
        "clusters": [{"name": "k", "cluster": {"certificate-authority-data": b64(testpki.cert_pem(ca_cert))}}],
        "users": [{"name": "u", "user": {"client-certificate-data": b64(testpki.cert_pem(cert)),
                                         "client-key-data": b64(testpki.key_pem(key))}}],
    }))
    return {name: str(path) for name, path in files.items()}


def test_beacon_reads_certs_once_per_interval_and_sends_no_pem(loaded, pki_files, monkeypatch):
    module, answers, _ = loaded
    kcm_pki = _load("kcm_pki_for_beacon", ROOT / "_modules" / "kcm_pki.py")
    deployed = {"cluster": "prod", "files": pki_files}
    reads = []

    def cert_status():
        reads.append(1)
        return kcm_pki.cert_status(deployed)

    module.__salt__["kcm_pki.cert_status"] = cert_status
    now = {"t": T0}
    monkeypatch.setattr(module, "_now", lambda: now["t"])
    config = [{"_beacon_name": "kcm_leader"}, {"cert_thresholds": [30, 7]}, {"cert_check_interval": 10}]
    all_events = []
    for second in range(25):
        now["t"] = T0 + second
        answers.append(lease("master-1", renewed=now["t"]))
        all_events += module.beacon(config)
    assert len(reads) == 3  # at T0, T0+10, T0+20
    expiring = [e for e in all_events if e["tag"] == "cert_expiring"]
    assert sorted((e["cert"], e["threshold"]) for e in expiring) == [("cert", 30), ("kubeconfig:client", 30)]
    assert all(e["minion"] == "master-2" and e["cluster"] == "prod" and 19.9 <= e["days_left"] <= 20 for e in expiring)
    text = json.dumps(all_events)
    assert "BEGIN" not in text and "PRIVATE KEY" not in text and "MII" not in text

    # a refresh reloads the state file: it re-reads, and announces nothing again
    module.__context__.clear()
    answers.append(lease("master-1", renewed=T0 + 30))
    now["t"] = T0 + 30
    assert module.beacon(config) == [] and len(reads) == 4


def test_beacon_without_thresholds_never_reads_certs(loaded, monkeypatch):
    module, answers, _ = loaded
    module.__salt__["kcm_pki.cert_status"] = lambda: pytest.fail("cert_status called with cert_thresholds: []")
    monkeypatch.setattr(module, "_now", lambda: T0)
    answers.append(lease("master-1", renewed=T0))
    assert module.beacon([{"_beacon_name": "kcm_leader"}, {"cert_thresholds": []}]) == []


def test_beacon_survives_a_raising_cert_status(loaded, monkeypatch):
    module, answers, _ = loaded

    def boom():
        raise OSError("disk on fire")

    module.__salt__["kcm_pki.cert_status"] = boom
    monkeypatch.setattr(module, "_now", lambda: T0)
    answers.append(lease("master-1", renewed=T0))
    assert module.beacon([{"_beacon_name": "kcm_leader"}]) == []


@pytest.mark.parametrize(
    "config, message",
    [
        ([{"cert_thresholds": 30}], "cert_thresholds must be a list of days > 0, e.g. [30, 7]"),
        ([{"cert_thresholds": [30, "7"]}], "cert_thresholds must be a list of days > 0"),
        ([{"cert_thresholds": [0]}], "cert_thresholds must be a list of days > 0"),
        ([{"cert_check_interval": 0}], "cert_check_interval must be a number of seconds > 0"),
        ([{"cert_check_interval": "1h"}], "cert_check_interval must be a number of seconds > 0"),
    ],
)
def test_validate_cert_keys(config, message):
    valid, comment = kcm_leader.validate(config)
    assert valid is False and message in comment


def test_validate_accepts_cert_keys():
    assert kcm_leader.validate([{"cert_thresholds": [30, 7]}, {"cert_check_interval": 3600}])[0] is True
    assert kcm_leader.validate([{"cert_thresholds": []}, {"cert_check_interval": 0.5}])[0] is True
