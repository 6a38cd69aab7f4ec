"""What an operator sees when a kcm.* call cannot answer: one line and a non-zero exit, from
salt-call on the minion and from salt on the master."""

import pytest

pytestmark = pytest.mark.integration

KUBECONFIG = "/nonexistent/kcm.kubeconfig"
LINE = f"kubeconfig: {KUBECONFIG}: cannot read it (No such file or directory)"


def test_salt_call_prints_one_error_line_and_exits_non_zero(formula_master, formula_minions):
    assert formula_master.salt_cli(timeout=120).run("saltutil.sync_all", minion_tgt="master-1").returncode == 0
    ret = formula_minions["minions"]["master-1"].salt_call_cli(timeout=60).run("kcm.leader", f"kubeconfig={KUBECONFIG}")
    assert ret.returncode == 1
    assert f"Error running 'kcm.leader': {LINE}" in ret.stderr.splitlines(), ret.stderr
    assert "Traceback" not in ret.stderr and "Additional info" not in ret.stderr


def test_salt_returns_the_line_and_a_non_zero_exit(formula_master, formula_minions):
    cli = formula_master.salt_cli(timeout=120)
    assert cli.run("saltutil.sync_all", minion_tgt="master-2").returncode == 0
    ret = cli.run("kcm.leader", f"kubeconfig={KUBECONFIG}", minion_tgt="master-2")
    assert ret.returncode != 0
    assert ret.data == f"ERROR: {LINE}", ret.stdout
