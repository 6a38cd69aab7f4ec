"""
The kcm_orch runner against a simulated three-master cluster (a fake LocalClient with
client-go's lease rules on a fake clock), and the kcm_orch execution module's restart seam
and its reading of state returns. Both get their dunders from pytest-salt-factories'
``configure_loader_modules``.
"""

import pytest

from kcmlab import formula
from tests.unit.conftest import load, utils

RUNNER = load("_runners", "kcm_orch")
MODULE = load("_modules", "kcm_orch")

MASTERS = ("master-1", "master-2", "master-3")
MINOR = formula.kcm_flags().minor
# What kcm.master writes into the Salt master's configuration for the runner: the defaults.
ORCH = formula.orch_settings()
LEASE = 4.0
RETRY = 1.0
START_TO_HEALTHY = 1.5


class FakeCluster:
    """Three KCMs electing a leader through one lease, driven by the runner's own calls."""

    def __init__(self, leader="master-2", version="v1.37.2"):
        self.now = 0.0
        self.proc = {}
        self.config = {m: 1 for m in MASTERS}
        self.version = {m: version for m in MASTERS}
        self.starts = {m: 0 for m in MASTERS}
        self.calls = []
        self.fail_apply = {}
        self.preflight_error = {}
        self.silent = set()
        # {minion: [victims]}: KCMs that crash (and systemd restarts) while minion's step applies
        self.crash_while_applying = {}
        self.target = {"config": 1, "version": version}
        # What each master's kube-apiserver answers at /version (None: it cannot be read).
        self.apiserver = {m: "v1.37.3" for m in MASTERS}
        self.uuid = 0
        for m in MASTERS:
            self._start(m, healthy_now=True)
            self.starts[m] = 0
        self.holder = self.proc[leader]["identity"]
        self.renew = 0.0
        self.transitions = 0
        self.gaps = []
        self.holders = [self.holder]

    # -- the simulated world --------------------------------------------------------------

    def _start(self, minion, healthy_now=False):
        self.uuid += 1
        self.proc[minion] = {
            "identity": f"{minion}_{self.uuid}",
            "healthy_at": self.now if healthy_now else self.now + START_TO_HEALTHY,
        }
        self.starts[minion] += 1

    def _stop(self, minion):
        self.proc[minion] = None

    def holder_minion(self):
        return self.holder.rsplit("_", 1)[0] if self.holder else None

    def holder_running(self):
        proc = self.proc.get(self.holder_minion())
        return proc is not None and proc["identity"] == self.holder

    def live(self):
        return bool(self.holder) and self.now <= self.renew + LEASE

    def advance(self, seconds):
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + 0.1)
            if self.holder_running():
                self.renew = self.now
            elif not self.live() and round(self.now / RETRY, 1).is_integer():
                candidates = sorted(m for m, p in self.proc.items() if p and self.now >= p["healthy_at"])
                if candidates:
                    self.holder = self.proc[candidates[0]]["identity"]
                    self.renew = self.now
                    self.transitions += 1
                    self.holders.append(self.holder)
            if not self.live():
                self.gaps.append(self.now)

    # -- LocalClient.cmd ------------------------------------------------------------------

    def cmd(self, tgt, fun, arg=(), timeout=None, tgt_type="glob", kwarg=None, **_):
        assert tgt_type == "list"
        self.advance(0.1)
        out = {}
        for minion in tgt:
            if minion in self.silent:
                continue
            if isinstance(fun, list):
                out[minion] = {f: self.call(minion, f, {}) for f in fun}
            else:
                self.calls.append((minion, fun))
                out[minion] = self.call(minion, fun, kwarg or {})
        return out

    def call(self, minion, fun, kwarg):
        proc = self.proc[minion]
        if fun == "kcm.health":
            return {"healthy": bool(proc) and self.now >= proc["healthy_at"]}
        if fun == "kcm.is_leader":
            return self.holder_minion() == minion and self.live()
        if fun == "kcm.leader":
            return {"holder": self.holder, "expired": not self.live(), "transitions": self.transitions}
        if fun == "kcm.version":
            return self.version[minion]
        if fun == "kcm_skew.facts":
            return self._skew_facts(minion, kwarg)
        if fun == "kcm_orch.preflight":
            if minion in self.preflight_error:
                return {"result": False, "comment": self.preflight_error[minion]}
            return {"result": True, "version": self.target["version"]}
        if fun == "kcm_orch.apply":
            return self._apply(minion)
        if fun == "kcm_orch.stop":
            self._stop(minion)
            return {"result": True}
        if fun == "kcm_orch.start":
            self._start(minion)
            return {"result": True}
        raise AssertionError(f"unexpected call {fun}")

    def _skew_facts(self, minion, kwarg):
        """What ``kcm_skew.facts`` says on ``minion``: the versions, parsed by the formula's parser."""
        version = kwarg.get("version") or self.target["version"]
        served = self.apiserver[minion]
        return {
            "version": version,
            "version_minor": MINOR(version),
            "deployed": self.version[minion],
            "apiserver": served,
            "apiserver_minor": MINOR(served) if served else None,
            "why": None if served else "unreachable: GET https://10.0.0.1:6443/version: Connection refused",
            "override_reason": kwarg.get("override_reason", ""),
        }

    def _apply(self, minion):
        if minion in self.fail_apply:
            return {"result": False, "comment": self.fail_apply[minion]}
        self.advance(2.0)  # state.apply takes a while
        wanted = (self.target["config"], self.target["version"])
        if (self.config[minion], self.version[minion]) == wanted:
            return {"result": True, "restarted": False}
        self.config[minion], self.version[minion] = wanted
        self._stop(minion)
        self.advance(0.3)
        self._start(minion)
        if minion in self.crash_while_applying:
            self.advance(START_TO_HEALTHY)  # minion is healthy again; then the victims crash
            for victim in self.crash_while_applying.pop(minion):
                self._stop(victim)
                self.renew = self.now - LEASE - 1  # the unit's ExecStopPost= released the Lease
                self._start(victim)  # systemd starts it again
        return {"result": True, "restarted": True}


@pytest.fixture
def cluster():
    return FakeCluster()


@pytest.fixture
def configure_loader_modules():
    return {
        RUNNER: {"__opts__": {"kcm_orch": dict(ORCH)}, "__context__": {}},
        MODULE: {"__context__": {}, "__pillar__": {}, "__salt__": {}},
    }


@pytest.fixture
def runner(cluster, monkeypatch):
    module = RUNNER
    module.__utils__ = utils()
    monkeypatch.setattr(module, "_local_client", lambda: cluster)
    monkeypatch.setattr(module, "_expected_minions", lambda tgt, tgt_type: list(MASTERS))
    monkeypatch.setattr(module, "_now", lambda: cluster.now)
    monkeypatch.setattr(module, "_sleep", cluster.advance)
    return module


def applied(cluster):
    return [m for m, fun in cluster.calls if fun == "kcm_orch.apply"]


def test_rolling_change_restarts_followers_first_then_the_leader_once_each(runner, cluster):
    cluster.target["config"] = 2

    report = runner.upgrade(tgt="master*")

    assert report["result"] is True, report["comment"]
    assert report["order"] == ["master-1", "master-3", "master-2"]
    assert cluster.starts == {m: 1 for m in MASTERS}
    assert report["leader_before"] == "master-2"
    assert report["leader_changes"] == 1 == cluster.transitions
    assert report["leader_after"] == cluster.holder_minion() != "master-2"
    assert [report["masters"][m]["role"] for m in MASTERS] == ["follower", "leader", "follower"]
    assert all(report["masters"][m]["restarted"] for m in MASTERS)
    assert report["retcode"] == 0 and runner.__context__["retcode"] == 0
    assert any("master-2" in line and "leader" in line for line in report["summary"])


def test_rolling_version_change_reports_versions_before_and_after(runner, cluster):
    cluster.target["version"] = "v1.37.3"

    report = runner.upgrade(tgt="master*", pillar={"kcm": {"version": "v1.37.3"}})

    assert report["result"] is True, report["comment"]
    assert {m: (r["version_before"], r["version_after"]) for m, r in report["masters"].items()} == {
        m: ("v1.37.2", "v1.37.3") for m in MASTERS
    }


def test_followers_never_take_the_lead_and_only_the_leaders_step_has_no_live_leader(runner, cluster):
    cluster.target["config"] = 2

    report = runner.upgrade(tgt="master*")

    assert [h.rsplit("_", 1)[0] for h in cluster.holders][0] == "master-2"
    assert len(cluster.holders) == 2
    # The old leader's lock outlives its process by at most one lease duration (+ a retry).
    assert report["longest_no_leader_seconds"] <= LEASE + 2 * RETRY


def test_a_follower_that_takes_the_lease_after_a_crash_elsewhere_does_not_stop_the_rollout(runner, cluster):
    # The leader crashes once master-1's step has it healthy again: master-1 takes the Lease.
    cluster.target["config"] = 2
    cluster.crash_while_applying["master-1"] = ["master-2"]

    report = runner.upgrade(tgt="master*")

    assert report["result"] is True, report["comment"]
    assert [h.rsplit("_", 1)[0] for h in cluster.holders] == ["master-2", "master-1"]
    # master-1 already runs the change: the others follow, no leader step is left to do
    assert report["order"] == ["master-1", "master-2", "master-3"]
    assert cluster.config == {m: 2 for m in MASTERS}


def test_preflight_failure_restarts_nothing_and_quotes_the_binary(runner, cluster):
    cluster.target["config"] = 2
    cluster.preflight_error["master-3"] = "refuses the new flags: Error: unknown flag: --port"

    report = runner.upgrade(tgt="master*")

    assert report["result"] is False
    assert report["retcode"] == 1 and runner.__context__["retcode"] == 1
    assert "unknown flag: --port" in report["comment"]
    assert "master-3" in report["comment"]
    assert applied(cluster) == []
    assert cluster.starts == {m: 0 for m in MASTERS}


def test_preflight_runner_alone_reports_every_master(runner, cluster):
    cluster.preflight_error["master-1"] = "installing v9.9.9 failed: hash mismatch"

    report = runner.preflight(tgt="master*")

    assert report["result"] is False
    assert report["masters"]["master-1"]["result"] is False
    assert report["masters"]["master-2"]["result"] is True
    assert "hash mismatch" in report["comment"]


def test_a_master_that_does_not_answer_fails_the_preflight(runner, cluster):
    cluster.silent.add("master-3")

    report = runner.upgrade(tgt="master*")

    assert report["result"] is False
    assert "master-3 did not answer kcm_skew.facts" in report["comment"]
    assert applied(cluster) == []


def test_a_failure_midway_stops_with_the_rest_untouched_and_a_rerun_resumes(runner, cluster):
    cluster.target["config"] = 2
    cluster.fail_apply["master-3"] = "state.apply kcm failed: kcm-service-unit: disk full"

    first = runner.upgrade(tgt="master*")

    assert first["result"] is False
    assert "disk full" in first["comment"]
    assert "not touched: master-2, master-3" in first["comment"]
    assert cluster.starts == {"master-1": 1, "master-2": 0, "master-3": 0}
    assert cluster.holder_minion() == "master-2" and cluster.live()

    del cluster.fail_apply["master-3"]
    second = runner.upgrade(tgt="master*")

    assert second["result"] is True, second["comment"]
    assert cluster.starts == {m: 1 for m in MASTERS}
    assert second["masters"]["master-1"]["restarted"] is False
    assert second["order"][-1] == "master-2"


def test_no_live_leader_refuses_before_touching_anything(runner, cluster):
    cluster.target["config"] = 2
    for m in MASTERS:
        cluster._stop(m)
    cluster.advance(LEASE + 1)

    report = runner.upgrade(tgt="master*", timeout=3)

    assert report["result"] is False
    assert "a live KCM leader before the change" in report["comment"]
    assert applied(cluster) == []


def test_drill_stops_the_leader_times_the_failover_and_starts_it_again(runner, cluster):
    report = runner.drill(tgt="master*")

    assert report["result"] is True, report["comment"]
    assert report["stopped"] == ["master-2"]
    assert report["leader_after"] in ("master-1", "master-3")
    assert 0 < report["failover_seconds"] <= LEASE + 2 * RETRY + 0.5
    assert report["leader_changes"] == 1
    assert cluster.starts["master-2"] == 1 and cluster.proc["master-2"] is not None
    assert report["healthy_after"] == list(MASTERS)


def test_drill_refuses_when_too_few_healthy_masters_would_remain(runner, cluster):
    report = runner.drill(tgt="master*", count=2)

    assert report["result"] is False
    assert "would leave 1" in report["comment"] and "min_remaining=2" in report["comment"]
    assert [c for c in cluster.calls if c[1] == "kcm_orch.stop"] == []


def test_drill_of_two_when_allowed(runner, cluster):
    report = runner.drill(tgt="master*", count=2, min_remaining=1)

    assert report["result"] is True, report["comment"]
    assert report["stopped"] == ["master-2", "master-1"]
    assert report["leader_after"] == "master-3"


# ---------------------------------------------------------------------------------------
# the target: the KCM masters the Salt master trusts (issue #26: the SLS said master*, the runner *)


@pytest.fixture
def trusting(runner, monkeypatch, tmp_path):
    """The runner on a Salt master that accepted the three masters' keys and web-7's, with
    ``kcm_alert:masters: master-*`` (what kcm.master writes); records what it targets."""
    for minion in (*MASTERS, "web-7"):
        (tmp_path / "minions").mkdir(exist_ok=True)
        (tmp_path / "minions" / minion).write_text("an accepted key\n")
    monkeypatch.setattr(runner, "__opts__", {"pki_dir": str(tmp_path), **formula.master_conf(masters="master-*")})
    targeted = []

    def expected(tgt, tgt_type):
        targeted.append((tgt, tgt_type))
        return list(tgt) if tgt_type == "list" else list(MASTERS)

    monkeypatch.setattr(runner, "_expected_minions", expected)
    return targeted


@pytest.mark.parametrize("function", ["preflight", "upgrade", "drill"])
def test_without_tgt_the_runner_targets_exactly_the_kcm_masters_it_trusts(runner, trusting, function):
    report = getattr(runner, function)()

    assert report["result"] is True, report["comment"]
    assert trusting == [(list(MASTERS), "list")]


def test_an_explicit_tgt_wins(runner, trusting):
    report = runner.drill(tgt="master-[12]", tgt_type="glob", min_remaining=1)

    assert report["result"] is True, report["comment"]
    assert trusting == [("master-[12]", "glob")]


@pytest.mark.parametrize(
    "kcm_alert, named",
    [
        ({}, "no KCM masters configured: kcm:master:masters: required"),
        ({"masters": "*"}, "kcm:master:masters: '*' matches every minion"),
        ({"masters": "db-*"}, "kcm_alert:masters 'db-*' (pillar kcm:master:masters) matches no accepted minion key"),
    ],
)
def test_without_tgt_and_without_trusted_masters_nothing_is_touched_and_the_key_is_named(
    runner, trusting, cluster, monkeypatch, kcm_alert, named
):
    monkeypatch.setitem(runner.__opts__, "kcm_alert", kcm_alert)

    report = runner.upgrade()

    assert report["result"] is False and report["retcode"] == 1
    assert named in report["comment"]
    assert trusting == [] and cluster.calls == []


# ---------------------------------------------------------------------------------------
# the execution module


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, name, result):
        def fun(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return result(*args, **kwargs) if callable(result) else result

        return fun


@pytest.fixture
def module():
    return MODULE


def setup(module, service, state_ret=None, run_all=None, sls_id=None):
    rec = Recorder()
    deployed = {"service": service, "version": "v1.37.2"}

    def setting(key, default=None):
        section, _, name = key.partition(":")
        value = (deployed.get(section) or {}).get(name) if name else deployed.get(section)
        return default if value in (None, "") else value

    module.__salt__.update(
        {
            "kcm_config.deployed": rec("kcm_config.deployed", deployed),
            "kcm_config.setting": setting,
            "service.restart": rec("service.restart", True),
            "service.stop": rec("service.stop", True),
            "cmd.run_all": rec("cmd.run_all", run_all or {"retcode": 0, "stdout": "", "stderr": ""}),
            "state.apply": rec("state.apply", state_ret or {}),
            "state.sls_id": rec("state.sls_id", lambda sid, mods, **kw: (sls_id or {}).get(sid, [f"no {sid}"])),
            "kcm.version": rec("kcm.version", lambda binary: "v1.37.3"),
            "kcm_release.run": rec(
                "kcm_release.run", {"result": True, "released": True, "comment": "kcm-release-lease: released Lease"}
            ),
        }
    )
    return rec


def names(rec):
    return [c[0] for c in rec.calls if c[0] != "kcm_config.deployed"]


def test_restart_uses_systemd_when_the_service_is_managed(module):
    rec = setup(module, {"manage": True, "name": "kube-controller-manager"})

    assert module.restart()["how"] == "service"
    assert ("service.restart", ("kube-controller-manager",), {}) in rec.calls
    assert "cmd.run_all" not in names(rec)


def test_control_cmd_gets_the_action_appended_and_runs_without_a_shell(module):
    rec = setup(module, {"manage": False, "control_cmd": "/usr/local/bin/kcmctl --node 'master 1'"})

    result = module.stop()

    assert result["result"] is True and result["how"] == "control_cmd"
    [(_, (argv,), kwargs)] = [c for c in rec.calls if c[0] == "cmd.run_all"]
    assert argv == ["/usr/local/bin/kcmctl", "--node", "master 1", "stop"]
    assert kwargs["python_shell"] is False


def control_calls(rec):
    return [
        c[1][0][-1] if c[0] == "cmd.run_all" else c[0] for c in rec.calls if c[0] in ("cmd.run_all", "kcm_release.run")
    ]


def test_without_systemd_a_stop_is_followed_by_the_release_step(module):
    rec = setup(module, {"manage": False, "control_cmd": "kcmctl"})

    result = module.stop()

    assert control_calls(rec) == ["stop", "kcm_release.run"]
    assert result["result"] is True and result["released"] is True
    assert "released Lease" in result["comment"]


def test_without_systemd_a_restart_releases_between_the_stop_and_the_start(module):
    rec = setup(module, {"manage": False, "control_cmd": "kcmctl"})

    result = module.restart()

    assert control_calls(rec) == ["stop", "kcm_release.run", "start"]
    assert result["result"] is True and result["how"] == "control_cmd"


def test_a_failed_stop_releases_nothing_and_starts_nothing(module):
    rec = setup(
        module,
        {"manage": False, "control_cmd": "kcmctl"},
        run_all={"retcode": 1, "stdout": "", "stderr": "still running\n"},
    )

    result = module.restart()

    assert control_calls(rec) == ["stop"] and result["result"] is False


def test_with_systemd_the_unit_releases_by_itself(module):
    rec = setup(module, {"manage": True, "name": "kube-controller-manager"})

    module.stop()

    assert "kcm_release.run" not in names(rec)


def test_unmanaged_service_without_control_cmd_is_an_error_naming_the_keys(module):
    setup(module, {"manage": False})

    result = module.restart()

    assert result["result"] is False
    assert "kcm:service:control_cmd" in result["comment"] and "kcm:service:manage" in result["comment"]
    assert module.__context__["retcode"] == 1


def test_a_failing_control_cmd_fails_with_its_message(module):
    setup(
        module,
        {"manage": False, "control_cmd": "kcmctl"},
        run_all={"retcode": 3, "stdout": "", "stderr": "no unit file\n"},
    )

    result = module.restart()

    assert result["result"] is False and "exit 3: no unit file" in result["comment"]


def state(sid, changes=None, result=True, sls="kcm.service"):
    return {
        f"x_|-{sid}_|-n_|-f": {
            "__id__": sid,
            "__sls__": sls,
            "result": result,
            "changes": changes or {},
            "comment": "c",
        }
    }


def test_apply_reports_the_restart_kcm_service_restarted_did(module):
    ret = {
        **state("kcm-service-unit", {"diff": "..."}),
        **state("kcm-service-restarted", {"restart": "done", "released": True}),
    }
    rec = setup(module, {"manage": False, "control_cmd": "kcmctl"}, state_ret=ret)

    result = module.apply(pillar={"kcm": {"verbosity": 3}})

    assert result["result"] is True and result["restarted"] is True and result["how"] == "control_cmd"
    assert rec.calls[0] == ("state.apply", ("kcm",), {"pillar": {"kcm": {"verbosity": 3}}})
    # the restart happened inside the state run (mod_watch), not a second time here
    assert "cmd.run_all" not in names(rec)


def test_apply_restarts_nothing_when_nothing_the_service_watches_changed(module):
    ret = {**state("kcm-service-restarted"), **state("kcm-config-deployed-facts", {"x": 1})}
    rec = setup(module, {"manage": False, "control_cmd": "kcmctl"}, state_ret=ret)

    result = module.apply()

    assert result == {
        "result": True,
        "restarted": False,
        "how": None,
        "changed": ["kcm-config-deployed-facts"],
        "comment": "applied; nothing the service watches changed",
    }
    assert "cmd.run_all" not in names(rec)


def test_apply_fails_when_a_needed_restart_has_nobody_to_do_it(module):
    ret = {**state("kcm-service-unit", {"diff": "..."}), **state("kcm-service-restarted", {"restart": "needed"})}
    setup(module, {"manage": False}, state_ret=ret)

    result = module.apply()

    assert result["result"] is False and result["restarted"] is False
    assert "kcm:service:control_cmd is empty" in result["comment"]
    assert module.__context__["retcode"] == 1


def test_apply_leaves_the_restart_to_service_running_when_managed(module):
    ret = {**state("kcm-service-unit", {"diff": "..."}), **state("kcm-service-running", {"restarted": True})}
    rec = setup(module, {"manage": True}, state_ret=ret)

    result = module.apply()

    assert result["restarted"] is True and result["how"] == "service"
    assert "service.restart" not in names(rec)


def test_apply_that_fails_restarts_nothing(module):
    ret = {**state("kcm-service-unit", {"diff": "..."}), **state("kcm-service-unit-accepted", result=False)}
    rec = setup(module, {"manage": False, "control_cmd": "kcmctl"}, state_ret=ret)

    result = module.apply()

    assert result["result"] is False and result["failed"] == ["kcm-service-unit-accepted: c"]
    assert "cmd.run_all" not in names(rec)
    assert module.__context__["retcode"] == 1


BINARY = "/v/v1.37.3/kube-controller-manager"


def accepted(result=True, comment="accepts the ExecStart= of salt://kcm/files/default/x"):
    return {
        "kcm-service-unit-accepted": {
            "kcm_install_|-kcm-install-binary_|-b_|-binary_installed": {"__id__": "kcm-install-binary", "result": True},
            "kcm_service_|-kcm-service-unit-accepted_|-b_|-unit_accepted": {
                "__id__": "kcm-service-unit-accepted",
                "name": BINARY,
                "result": result,
                "comment": comment,
            },
        }
    }


def test_preflight_runs_the_formulas_own_check_of_the_unit(module):
    rec = setup(module, {"manage": False}, sls_id=accepted())

    result = module.preflight(pillar={"kcm": {"version": "v1.37.3"}})

    assert result["result"] is True
    assert (result["version"], result["deployed_version"], result["binary"]) == ("v1.37.3", "v1.37.2", BINARY)
    assert rec.calls[0] == (
        "state.sls_id",
        ("kcm-service-unit-accepted", "kcm"),
        {"pillar": {"kcm": {"version": "v1.37.3"}}},
    )
    assert "state.apply" not in names(rec)


def test_preflight_passes_the_binarys_refusal_through(module):
    refusal = f"{BINARY} refuses the ExecStart=: Error: unknown flag: --port"
    setup(module, {"manage": False}, sls_id=accepted(False, refusal))

    result = module.preflight()

    assert result["result"] is False
    assert "unknown flag: --port" in result["comment"]
    assert module.__context__["retcode"] == 1


def test_preflight_on_an_invalid_pillar_names_the_key_and_installs_nothing(module):
    invalid = {
        "kcm-config-validated": {
            "kcm_config_|-kcm-config-validated_|-kcm_|-validated": {
                "__id__": "kcm-config-validated",
                "result": False,
                "comment": "Invalid pillar, nothing was changed:\n- kcm:secure_port: 'x' is not a port",
            }
        }
    }
    rec = setup(module, {"manage": False}, sls_id=invalid)

    result = module.preflight()

    assert result["result"] is False and "kcm:secure_port" in result["comment"]
    assert [c[1][0] for c in rec.calls if c[0] == "state.sls_id"] == [
        "kcm-service-unit-accepted",
        "kcm-config-validated",
    ]


def test_a_preflight_that_cannot_run_says_why_and_exits_non_zero(module):
    rec = setup(module, {"manage": False}, sls_id=accepted())
    failure = load("_utils", "kcm_error").failure("binary", f"{BINARY} does not exist")

    def raising(**kwargs):
        raise failure

    module.__salt__["kcm.version"] = rec("kcm.version", raising)

    result = module.preflight()

    assert result["result"] is False
    assert result["comment"] == f"{BINARY} --version: binary: {BINARY} does not exist"
    assert module.__context__["retcode"] == 1


def test_the_exit_code_is_the_result_whatever_the_salt_functions_left_behind(module):
    rec = setup(module, {"manage": True, "name": "kube-controller-manager"})

    def apply_that_sets_a_retcode(*args, **kwargs):
        module.__context__["retcode"] = 2  # as state.apply's _set_retcode may
        return state("kcm-config-validated")

    module.__salt__["state.apply"] = rec("state.apply", apply_that_sets_a_retcode)

    assert module.apply()["result"] is True
    assert module.__context__["retcode"] == 0


def test_a_master_whose_kcm_calls_raise_is_observed_with_their_reasons():
    # In a compound job Salt returns a raising function's traceback as text.
    trace = (
        "The minion function caused an exception: Traceback (most recent call last):\n  ...\n"
        "salt.loaded.ext.utils.kcm_error.KcmCommandError: unreachable: GET https://10.0.0.1:6443/...: "
        "Connection refused\n"
    )
    answer = {"kcm.health": {"healthy": True, "checks": {}}, "kcm.is_leader": trace, "kcm.leader": trace}

    observed = load("_utils", "kcm_orch_poll").observation(answer)

    assert (observed["healthy"], observed["leader"], observed["live"]) == (True, False, False)
    assert observed["error"] == (
        "kcm.is_leader: unreachable: GET https://10.0.0.1:6443/...: Connection refused, "
        "kcm.leader: unreachable: GET https://10.0.0.1:6443/...: Connection refused"
    )


def skew_calls(cluster):
    return [m for m, fun in cluster.calls if fun in ("kcm_orch.preflight", "kcm_orch.apply")]


def test_upgrade_is_refused_against_the_oldest_apiserver_before_any_master_changes(runner, cluster):
    # master-3's apiserver is still v1.36 while the others run v1.37: v1.37.3 is newer than the oldest
    cluster.apiserver["master-3"] = "v1.36.3"
    cluster.target["version"] = "v1.37.3"

    report = runner.upgrade(tgt="master*", pillar={"kcm": {"version": "v1.37.3"}})

    assert report["result"] is False and report["retcode"] == 1
    newer = (
        "kcm:version: v1.37.3 is newer than the kube-apiserver (v1.36.3 on master-3); the skew policy allows"
        " KCM at most one minor older than the apiserver, never newer: upgrade the apiservers first"
        " (or set kcm:skew:override_reason to a reason to override)"
    )
    assert report["comment"] == (
        "preflight failed, nothing was restarted: " + "; ".join(f"{m}: {newer}" for m in MASTERS)
    )
    # no preflight (no download) and no apply anywhere
    assert skew_calls(cluster) == [] and cluster.starts == {m: 0 for m in MASTERS}


def test_preflight_runner_refuses_a_version_change_where_a_master_cannot_read_its_apiserver(runner, cluster):
    cluster.apiserver["master-1"] = None

    report = runner.preflight(tgt="master*", pillar={"kcm": {"version": "v1.37.3"}})

    assert report["result"] is False
    assert report["masters"]["master-1"]["comment"].startswith(
        "kcm:version: v1.37.3 cannot replace the deployed v1.37.2: the kube-apiserver's /version could not be read"
        " (unreachable: GET https://10.0.0.1:6443/version: Connection refused)"
    )
    assert set(report["masters"]) == {"master-1"} and skew_calls(cluster) == []


def test_a_stated_reason_lets_the_upgrade_go_over_the_skew(runner, cluster):
    cluster.apiserver["master-2"] = "v1.36.3"
    cluster.target["version"] = "v1.37.3"
    pillar = {"kcm": {"version": "v1.37.3", "skew": {"override_reason": "apiservers at v1.37 by CHG-1234"}}}

    report = runner.upgrade(tgt="master*", pillar=pillar)

    assert report["result"] is True, report["comment"]
    assert cluster.starts == {m: 1 for m in MASTERS}


def test_kcm_within_the_skew_of_the_oldest_apiserver_is_rolled(runner, cluster):
    # one minor older than the oldest apiserver (v1.37): allowed
    cluster.apiserver["master-1"] = "v1.38.0"
    cluster.target["version"] = "v1.36.3"

    report = runner.upgrade(tgt="master*", pillar={"kcm": {"version": "v1.36.3"}})

    assert report["result"] is True, report["comment"]
    assert {m: r["version_after"] for m, r in report["masters"].items()} == {m: "v1.36.3" for m in MASTERS}


# ---------------------------------------------------------------------------------------
# settings: one owner (defaults.yaml kcm:master:orch, through the master's kcm_orch:)


def test_settings_are_the_masters_kcm_orch_and_what_a_run_gives_wins(runner, trusting, monkeypatch):
    monkeypatch.setitem(runner.__opts__, "kcm_orch", dict(ORCH, timeout=77))

    got = runner.settings(count=2)

    assert got == {
        "tgt": list(MASTERS),
        "tgt_type": "list",
        "timeout": 77,
        "apply_timeout": ORCH["apply_timeout"],
        "count": 2,
        "min_remaining": ORCH["min_remaining"],
        "interval": ORCH["interval"],
        "drill_interval": ORCH["drill_interval"],
    }


def test_the_runner_keeps_no_default_of_its_own_and_names_the_missing_key(runner, cluster, monkeypatch):
    monkeypatch.setitem(runner.__opts__, "kcm_orch", {k: v for k, v in ORCH.items() if k != "min_remaining"})

    report = runner.drill(tgt="master*")

    assert report["result"] is False and cluster.calls == []
    assert "kcm_orch:min_remaining is not in the Salt master's configuration" in report["comment"]
    assert "kcm:master:orch:min_remaining" in report["comment"]


def test_no_default_is_written_in_the_runners_signatures():
    # The settings have one owner: a default in a signature would be a second, silent one.
    import inspect

    for name in ("preflight", "upgrade", "drill", "settings"):
        for param in inspect.signature(getattr(RUNNER, name)).parameters.values():
            if param.name in ORCH or param.name == "timeout":
                assert param.default is None, f"kcm_orch.{name}({param.name}={param.default!r})"
