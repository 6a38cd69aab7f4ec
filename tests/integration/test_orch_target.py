"""
Which minions the orchestrations target, on a real salt-master: one owner, the KCM masters
the master trusts (``kcm_alert:masters`` over the accepted keys), asked by the kcm_orch
runner (``kcm_orch.settings``) and, through ``saltutil.runner`` while ``state.orchestrate``
renders on the master, by ``orch/kcm/settings.jinja`` for every step of ``orch.kcm.upgrade``
and ``orch.kcm.drill``. Before, the SLS defaulted to ``master*`` and the runner to ``*``.

The masters' keys are files in the master's key directory (accepted keys are that, for
``kcm_alert.masters`` and for the render); no minion needs to run for a render.
"""

import json
from pathlib import Path

import pytest

from kcmlab.formula import runner_settings
from tests.support.pillar import REPO

pytestmark = [pytest.mark.integration]

ACCEPTED = ("master-1", "master-2", "web-7")
STEPS = {
    "orch.kcm.upgrade": (
        "kcm-orch-upgrade-sync",
        "kcm-orch-upgrade-preflight",
        "kcm-orch-upgrade-rolling",
        "kcm-orch-upgrade-leader-elected",
    ),
    "orch.kcm.drill": ("kcm-orch-drill-sync", "kcm-orch-drill"),
}


def formula_master(salt_factories, name, config):
    """A started salt-master (``config``: its overrides) with the formula's runners synced
    and the keys of ``ACCEPTED`` accepted."""
    factory = salt_factories.salt_master_daemon(
        name, overrides={"file_roots": {"base": [str(REPO / "formula")]}, **config}
    )
    keys = Path(factory.config["pki_dir"]) / "minions"
    keys.mkdir(parents=True, exist_ok=True)
    for minion in ACCEPTED:
        (keys / minion).write_text("an accepted key\n")
    with factory.started(start_timeout=120):
        ret = factory.salt_run_cli(timeout=120).run("saltutil.sync_all")
        assert "runners.kcm_orch" in json.dumps(ret.data), ret
        yield factory


@pytest.fixture(scope="module")
def master(salt_factories):
    """What kcm.master writes for pillar ``kcm:master:masters: master-*``."""
    yield from formula_master(salt_factories, "kcm-orch-target", runner_settings(masters="master-*"))


@pytest.fixture(scope="module")
def unset_master(salt_factories):
    """A master kcm.master never configured."""
    yield from formula_master(salt_factories, "kcm-orch-unset", {})


def targets(master, sls, pillar=None):
    """{step id: (tgt, tgt_type)} of ``sls`` as state.orchestrate renders it on ``master``."""
    args = [f"pillar={json.dumps(pillar)}"] if pillar else []
    ret = master.salt_run_cli(timeout=120).run("state.orchestrate_show_sls", sls, *args)
    assert ret.returncode == 0 and isinstance(ret.data, dict), ret
    [high] = ret.data.values()
    assert isinstance(high, dict), high  # a list: the render failed
    out = {}
    for step in STEPS[sls]:
        [args] = [v for k, v in high[step].items() if not k.startswith("__")]
        kw = {k: v for item in args if isinstance(item, dict) for k, v in item.items()}
        out[step] = (kw["tgt"], kw["tgt_type"])
    return out


@pytest.mark.parametrize("sls", sorted(STEPS))
def test_every_step_targets_what_the_runner_targets_by_default(master, sls):
    answer = master.salt_run_cli(timeout=60).run("kcm_orch.settings")
    assert (answer.data["tgt"], answer.data["tgt_type"]) == (["master-1", "master-2"], "list"), answer

    assert targets(master, sls) == {step: (answer.data["tgt"], "list") for step in STEPS[sls]}


def test_an_explicit_kcm_orch_tgt_wins(master):
    found = targets(master, "orch.kcm.drill", {"kcm_orch": {"tgt": "web-7"}})

    assert found == {step: ("web-7", "glob") for step in STEPS["orch.kcm.drill"]}


def test_without_kcm_alert_masters_the_orchestrations_name_the_missing_key(unset_master):
    answer = unset_master.salt_run_cli(timeout=60).run("kcm_orch.settings")
    assert answer.returncode != 0 and "kcm:master:masters: required" in answer.stdout, answer

    ret = unset_master.salt_run_cli(timeout=120).run("state.orchestrate", "orch.kcm.upgrade")

    assert ret.returncode != 0, ret
    [[error]] = ret.data["data"].values()
    first = error.splitlines()[0]
    assert first.startswith("Rendering SLS 'base:orch.kcm.upgrade' failed: Jinja error: "), first
    assert "no tgt given and no KCM masters configured: kcm:master:masters: required" in first, first
    assert "kcm_alert:masters" in first, first
