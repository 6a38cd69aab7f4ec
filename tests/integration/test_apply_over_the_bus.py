"""`salt 'master*' state.apply kcm` over a real master to three real minions."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def state_failures(ret):
    return [f"{k}: {v['comment']}" for k, v in ret.items() if not v["result"]]


def state_changes(ret):
    return [k for k, v in ret.items() if v["changes"]]


def test_state_apply_kcm_on_all_masters_then_nothing_changes(formula_master, formula_minions):
    cli = formula_master.salt_cli(timeout=300)
    assert cli.run("saltutil.sync_all", minion_tgt="master*").returncode == 0
    first = cli.run("state.apply", "kcm", minion_tgt="master*")
    assert set(first.data) == {"master-1", "master-2", "master-3"}, first.stdout
    for mid, ret in first.data.items():
        assert isinstance(ret, dict), f"{mid}: {ret}"
        assert not state_failures(ret), (mid, state_failures(ret))
        paths = formula_minions["pillars"][mid]["kcm"]["paths"]
        unit = Path(paths["unit"]) / "kube-controller-manager.service"
        assert "--secure-port=10257" in unit.read_text()

    second = cli.run("state.apply", "kcm", minion_tgt="master*")
    assert set(second.data) == {"master-1", "master-2", "master-3"}, second.stdout
    for mid, ret in second.data.items():
        assert not state_failures(ret), (mid, state_failures(ret))
        assert state_changes(ret) == [], (mid, state_changes(ret))

    args = cli.run("kcm.args", minion_tgt="master*")
    assert set(args.data) == {"master-1", "master-2", "master-3"}, args.stdout
    for mid, flags in args.data.items():
        assert "--leader-elect=true" in flags, (mid, flags)
