"""
The kcm_orch runner as Salt's own loader runs it on a master (``_runners`` with the formula's
``_utils`` behind ``__utils__``), against a LocalClient stand-in whose Lease moves at once: the
drill and the rolling change finish with their reports. The unit tests drive the same runner
as a plain module; this one catches what only the loader does (a util's code runs without
``__utils__``, so nothing of the runner may be called back from inside one).
"""

import json

import pytest
import salt.client
import salt.config
import salt.loader
import salt.utils.minions
import yaml

from kcmlab.formula import runner_settings
from tests.support.pillar import REPO

MASTERS = ("master-1", "master-2", "master-3")


class InstantMasters:
    """Three masters; a stopped leader's Lease goes to the next running master at once."""

    def __init__(self):
        self.leader = "master-1"
        self.transitions = 0
        self.running = set(MASTERS)
        self.calls = []
        self.due = set()  # masters whose certificate is due for renewal

    def cmd(self, tgt, fun, arg=None, kwarg=None, tgt_type="glob", timeout=None):
        if isinstance(fun, list):  # the runner's compound poll
            return {m: self._poll(m) for m in tgt if m in self.running}
        self.calls.append((fun, tuple(tgt)))
        if fun == "kcm_orch.stop":
            self.running -= set(tgt)
            if self.leader not in self.running:
                self.leader = sorted(self.running)[0]
                self.transitions += 1
        elif fun == "kcm_orch.start":
            self.running |= set(tgt)
        elif fun == "kcm_pki.renewal_due":
            return {
                m: {"due": m in self.due, "cluster": "prod", "days_left": 20.0 if m in self.due else 300.0} for m in tgt
            }
        elif fun == "kcm.version":
            return {m: "v1.37.2" for m in tgt}
        elif fun == "kcm_skew.facts":
            return {
                m: {
                    "version": "v1.37.2",
                    "version_minor": 37,
                    "deployed": "v1.37.2",
                    "apiserver": "v1.37.2",
                    "apiserver_minor": 37,
                    "why": None,
                    "override_reason": "",
                }
                for m in tgt
            }
        return {m: {"result": True, "restarted": False, "version": "v1.37.2"} for m in tgt}

    def _poll(self, minion):
        holder = f"{self.leader}_{self.transitions}"
        return {
            "kcm.health": {"healthy": True},
            "kcm.is_leader": minion == self.leader,
            "kcm.leader": {"holder": holder, "expired": False, "transitions": self.transitions},
        }


class AllMinions:
    def __init__(self, opts):
        pass

    def check_minions(self, tgt, tgt_type):
        return {"minions": list(MASTERS)}


@pytest.fixture
def masters(monkeypatch):
    fake = InstantMasters()
    monkeypatch.setattr(salt.client, "get_local_client", lambda **kwargs: fake)
    monkeypatch.setattr(salt.utils.minions, "CkMinions", AllMinions)
    return fake


@pytest.fixture
def runners(tmp_path):
    opts = dict(
        salt.config.DEFAULT_MASTER_OPTS,
        cachedir=str(tmp_path / "cache"),
        **runner_settings(),
        extension_modules=str(tmp_path / "extmods"),
        runner_dirs=[str(REPO / "_runners")],
        utils_dirs=[str(REPO / "_utils")],
    )
    return salt.loader.runner(opts, utils=salt.loader.utils(opts))


def test_the_drill_stops_the_leader_and_reports_the_new_one(runners, masters):
    report = runners["kcm_orch.drill"](tgt="master*", interval=0.01, timeout=5)

    assert report["result"] is True, report["comment"]
    assert (report["leader_before"], report["stopped"], report["leader_after"]) == (
        "master-1",
        ["master-1"],
        "master-2",
    )
    assert report["summary"][0].split() == ["leader", "before", "master-1"]
    assert ("kcm_orch.start", ("master-1",)) in masters.calls


def test_the_rolling_change_goes_over_every_master_the_leader_last(runners, masters):
    report = runners["kcm_orch.upgrade"](tgt="master*", interval=0.01, timeout=5)

    assert report["result"] is True, report["comment"]
    assert report["order"] == ["master-2", "master-3", "master-1"]
    assert report["retcode"] == 0
    assert report["summary"][-1].startswith("leader master-1 -> master-1, 0 leader change(s)")


def test_the_drill_marks_the_leader_it_stops_in_the_alert_runners_store(runners, masters, tmp_path):
    # The runner loader gives kcm_orch the kcm_alert runner as __salt__: the mark is written.
    report = runners["kcm_orch.drill"](tgt="master*", interval=0.01, timeout=5)

    assert report["result"] is True, report["comment"]
    store = json.loads((tmp_path / "cache" / "kcm_alert" / "dedupe.json").read_text())
    # Ended with the step but for the stopped process, whose late report is still planned.
    assert {key: mark["by"] for key, mark in store["planned"].items()} == {"holder|master-1_0": "kcm_orch.drill"}


def test_renew_touches_nothing_while_no_certificate_is_due(runners, masters):
    report = runners["kcm_orch.renew"](tgt="master*", interval=0.01, timeout=5)

    assert (report["result"], report["clusters"]) == (True, {}), report
    assert report["comment"] == "no certificate due for renewal on 3 masters"
    assert [fun for fun, _ in masters.calls] == ["saltutil.refresh_pillar", "kcm_pki.renewal_due"]


def test_renew_rolls_the_whole_cluster_the_leader_last_when_one_certificate_is_due(runners, masters, tmp_path):
    masters.due = {"master-3"}

    report = runners["kcm_orch.renew"](tgt="master*", interval=0.01, timeout=5)

    assert report["result"] is True, report["comment"]
    assert report["due"] == {"master-3": 20.0}
    assert report["clusters"]["prod"]["order"] == ["master-2", "master-3", "master-1"]
    applied = [tgt for fun, tgt in masters.calls if fun == "kcm_orch.apply"]
    assert applied == [("master-2",), ("master-3",), ("master-1",)]
    # the leader's restart is marked planned by the renewal, not by an upgrade
    store = json.loads((tmp_path / "cache" / "kcm_alert" / "dedupe.json").read_text())
    assert {mark["by"] for mark in store["planned"].values()} == {"kcm_orch.renew"}


@pytest.mark.parametrize(
    ("master", "expected"),
    [
        ({}, {"function": "kcm_orch.renew", "seconds": 86400, "maxrunning": 1}),  # daily by default
        ({"renew_interval": 0}, None),
    ],
)
def test_kcm_master_schedules_the_renewal_on_the_salt_master_unless_turned_off(state, tmp_path, master, expected):
    pillar = {
        "kcm": {
            "master": dict(
                {"config_dir": str(tmp_path / "master.d"), "sync_runners": False, "masters": "master-*"}, **master
            )
        }
    }
    ret = state.apply("kcm.master", pillar=pillar)
    assert all(step["result"] for step in ret.raw.values()), ret.raw

    schedule = yaml.safe_load((tmp_path / "master.d" / "kcm.conf").read_text())["schedule"]
    assert schedule.get("kcm_orch_renew") == expected


# Audit L13: a pillar override is published to every minion and kept in the job cache.
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize("function", ["kcm_orch.upgrade", "kcm_orch.preflight"])
@pytest.mark.parametrize(
    "override, named",
    [
        ({"kcm": {"version": "v1.37.3", "pki": {"ca_key": KEY_PEM}}}, "pillar:kcm:pki:ca_key"),
        (
            {"kcm": {"pki": {"service_account_key": "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"}}},
            "pillar:kcm:pki:service_account_key",
        ),
        ({"kcm": {"extra_args": {"x": ["a", KEY_PEM]}}}, "pillar:kcm:extra_args:x:1"),
    ],
)
def test_a_pillar_override_carrying_a_private_key_is_refused_before_anything_is_published(
    runners, masters, function, override, named
):
    report = (
        runners[function](tgt="master*", pillar=override, interval=0.01, timeout=5)
        if function == "kcm_orch.upgrade"
        else runners[function](tgt="master*", pillar=override)
    )

    assert report["result"] is False and report["retcode"] == 1
    assert f"{named}: PEM or private-key material in a pillar override" in report["comment"]
    assert "BEGIN" not in report["comment"] and "MIIE" not in report["comment"]
    assert masters.calls == []
