"""
The kcm_enroll runner trusts no start event: the id comes from the tag, must be a
well-formed id with an accepted key, agree with the sender and be a KCM master by id
(kcm_alert:masters); it is targeted as a list, once per key, and nothing is asked of any
minion (no lock is held while one answers).
"""

import contextlib

import pytest

from kcmlab.formula import alert_settings
from tests.unit.conftest import load, utils


class FakeClient:
    """LocalClient: records every call; the minions answer grains.get from `grains`."""

    def __init__(self, grains):
        self.grains, self.calls = grains, []

    def cmd(self, tgt, fun, arg=(), tgt_type="glob", timeout=None):
        self.calls.append((tgt, fun, list(arg), tgt_type))
        assert tgt_type == "list" and isinstance(tgt, list)
        return {m: self.grains[m].get(arg[0]) for m in tgt if m in self.grains}

    def cmd_async(self, tgt, fun, tgt_type="glob"):
        self.calls.append((tgt, fun, [], tgt_type))
        return "20261201000000000000"


class FakeCache:
    def __init__(self):
        self.banks = {}

    def fetch(self, bank, key):
        # as salt.cache's localfs: {} when there is no record
        return self.banks.get(bank, {}).get(key, {})

    def flush(self, bank, key):
        self.banks.get(bank, {}).pop(key, None)

    def store(self, bank, key, data):
        self.banks.setdefault(bank, {})[key] = data


@pytest.fixture
def enroll(tmp_path, monkeypatch):
    module = load("_runners", "kcm_enroll")
    (tmp_path / "pki" / "minions").mkdir(parents=True)
    for minion in ("master-4", "web-1"):
        (tmp_path / "pki" / "minions" / minion).write_text(f"-----BEGIN PUBLIC KEY----- {minion}\n")
    module.__opts__ = {
        "cachedir": str(tmp_path),
        "sock_dir": str(tmp_path),
        "pki_dir": str(tmp_path / "pki"),
        "id": "salt-master",
        "kcm_alert": alert_settings(masters="master-*"),
    }
    module.__utils__ = utils()
    # web-1 says it has the control-plane grain: it changes nothing (no grain is read).
    client = FakeClient({"master-4": {"role": "k8s-master"}, "web-1": {"role": "k8s-master"}})
    cache, events = FakeCache(), []

    class Bus:
        def fire_event(self, data, tag):
            events.append((tag, data))

    monkeypatch.setattr(module.salt.client, "LocalClient", lambda mopts=None: client)
    monkeypatch.setattr(module.salt.cache, "factory", lambda opts: cache)
    monkeypatch.setattr(module.salt.utils.event, "get_master_event", lambda *a, **k: contextlib.nullcontext(Bus()))
    module.client, module.cache, module.events = client, cache, events
    return module


def highstated(enroll):
    return [call for call in enroll.client.calls if call[1] == "state.highstate"]


@pytest.mark.parametrize(
    "tag, sender, reason",
    [
        ("salt/minion/nobody or */start", "nobody or *", "is not a well-formed minion id"),
        ("salt/minion/*/start", "*", "is not a well-formed minion id"),
        ("salt/minion/G@role:k8s-master/start", "G@role:k8s-master", "is not a well-formed minion id"),
        ("salt/minion/../../../tmp/x/start", "x", "is not a salt/minion/<id>/start tag"),
        ("salt/minion/master-9/start", "master-9", "master-9 has no accepted key"),
        ("salt/minion/master-4/start", "web-1", "the start of master-4 was sent by 'web-1'"),
    ],
)
def test_a_forged_start_highstates_nothing(enroll, tag, sender, reason):
    result = enroll.on_start(tag, sender=sender)

    assert result["result"] == "refused" and reason in result["reason"], result
    assert enroll.client.calls == [], "nothing may be targeted"
    assert not enroll.cache.banks.get("kcm/enroll")
    assert [tag for tag, _ in enroll.events] == ["kcm/enroll/refused"]


def test_a_real_master_is_targeted_as_a_list_and_enrolled_once(enroll):
    assert enroll.on_start("salt/minion/master-4/start", sender="master-4")["result"] == "enrolled"
    assert highstated(enroll) == [(["master-4"], "state.highstate", [], "list")]
    assert enroll.on_start("salt/minion/master-4/start", sender="master-4")["result"] == "already"
    assert len(highstated(enroll)) == 1


def test_a_minion_claiming_the_grain_is_refused_without_being_asked_and_remembered(enroll):
    # H1/M1: web-1's grain says k8s-master; its id is no KCM master. Nothing is asked of it
    # (no grains.get, so no lock held while it answers), and its next starts are refused quietly.
    first = enroll.on_start("salt/minion/web-1/start", sender="web-1")
    assert first["result"] == "refused" and "web-1 is not a KCM master" in first["reason"], first
    for _ in range(50):
        assert enroll.on_start("salt/minion/web-1/start", sender="web-1")["remembered"] is True
    assert enroll.client.calls == [], "no minion is asked anything"
    assert [tag for tag, _ in enroll.events] == ["kcm/enroll/refused"], "logged and fired once per interval"


def test_a_batched_start_in_a_masters_name_gains_nothing(enroll):
    # L1: web-1 fires salt/minion/master-4/start with data.id master-4 in a batch: the master
    # enrolls master-4 (a KCM master by id) once, as its own start would; nothing else.
    assert enroll.on_start("salt/minion/master-4/start", sender="master-4")["result"] == "enrolled"
    for _ in range(3):
        assert enroll.on_start("salt/minion/master-4/start", sender="master-4")["result"] == "already"
    assert len(highstated(enroll)) == 1


def test_a_reinstalled_master_with_a_new_key_is_enrolled_again(enroll, tmp_path):
    assert enroll.on_start("salt/minion/master-4/start", sender="master-4")["result"] == "enrolled"
    (tmp_path / "pki" / "minions" / "master-4").write_text("-----BEGIN PUBLIC KEY----- new\n")
    assert enroll.on_start("salt/minion/master-4/start", sender="master-4")["result"] == "enrolled"
    assert len(highstated(enroll)) == 2
