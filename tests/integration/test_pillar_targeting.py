"""
Who gets the cluster's keys (audit H2, L13), on a real salt-master with real minions.

The pillar top is the one pillar.example documents, parsed out of its header, and the
pillar is pillar.example itself: so this checks what the docs tell an operator to do. A
minion that claims every grain the docs mention (``role: k8s-master``, set in its own
config, as any minion with an accepted key can) must get no ``kcm:pki`` secret; the minion
whose id the top names gets them. The same master then runs the upgrade orchestration with
a private key in its pillar override: it is refused before anything is published.
"""

import json
import textwrap
import time

import pytest
import yaml

from kcmlab.formula import runner_settings
from tests.support.pillar import REPO

pytestmark = [pytest.mark.integration]

SECRETS = ("ca_key", "key", "service_account_key")
# Every grain the README and pillar.example mention for a KCM master.
CLAIMED_GRAINS = {"role": "k8s-master"}
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"


def documented_pillar_top(example):
    """The ``/srv/pillar/top.sls`` block of pillar.example's header (its column, when the
    state top stands beside it), as YAML."""
    lines = example.splitlines()
    start = next(i for i, line in enumerate(lines) if "# /srv/pillar/top.sls" in line)
    col = lines[start].index("# /srv/pillar/top.sls")
    end = lines[start].find("# /srv/salt/top.sls")
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("#"):
            break
        part = line[col : end if end > 0 else None].rstrip()
        if not part.strip():
            break
        block.append(part)
    return yaml.safe_load(textwrap.dedent("\n".join(block)))


def documented_ids(top):
    """The minion ids a list/glob target of the documented top names (for the test's minion)."""
    [target] = top["base"]
    return [t for t in target.replace(",", " ").split() if "*" not in t and ":" not in t]


@pytest.fixture(scope="module")
def top():
    return documented_pillar_top((REPO / "pillar.example").read_text())


@pytest.fixture(scope="module")
def master(salt_factories, tmp_path_factory, top):
    pillar_dir = tmp_path_factory.mktemp("targeting-pillar")
    (pillar_dir / "top.sls").write_text(yaml.safe_dump(top))
    (pillar_dir / "kcm.sls").write_text((REPO / "pillar.example").read_text())
    factory = salt_factories.salt_master_daemon(
        "kcm-targeting-master",
        # kcm_alert, kcm_orch: what kcm.master writes for the runners (their settings' one home).
        overrides={
            "file_roots": {"base": [str(REPO / "formula")]},
            "pillar_roots": {"base": [str(pillar_dir)]},
            **runner_settings(),
        },
    )
    with factory.started(start_timeout=120):
        ret = factory.salt_run_cli(timeout=120).run("saltutil.sync_all")
        assert "runners.kcm_orch" in json.dumps(ret.data), ret
        yield factory


@pytest.fixture(scope="module")
def minions(master, top):
    # A grain top (the docs before the fix) names no id: the master is then master-1.
    ids = documented_ids(top) or ["master-1"]
    factories = {
        "kcm-master": master.salt_minion_daemon(ids[0]),
        "claimer": master.salt_minion_daemon("web-7", overrides={"grains": dict(CLAIMED_GRAINS)}),
    }
    started = []
    try:
        for factory in factories.values():
            factory.start(start_timeout=120)
            started.append(factory)
        yield factories
    finally:
        for factory in started:
            factory.terminate()


def pki_of(master, minion):
    """``kcm:pki`` as the master compiles it for ``minion``."""
    ret = master.salt_cli(timeout=120).run("pillar.get", "kcm:pki", minion_tgt=minion.id)
    assert ret.returncode == 0, ret
    return ret.data


def test_a_minion_claiming_the_masters_grains_gets_no_key(master, minions):
    claimer = minions["claimer"]
    grains = master.salt_cli(timeout=60).run("grains.item", *CLAIMED_GRAINS, minion_tgt=claimer.id)
    assert grains.data == CLAIMED_GRAINS, grains  # the claim is made
    pki = pki_of(master, claimer) or {}
    assert [key for key in SECRETS if key in pki] == []


def test_the_minion_the_top_names_gets_its_keys(master, minions):
    pki = pki_of(master, minions["kcm-master"]) or {}
    # Salt 3008 masks pillar values in job returns ('**********'); the keys and a value show.
    assert [key for key in SECRETS if pki.get(key)] == list(SECRETS), pki


def test_the_upgrade_orchestration_refuses_a_private_key_in_its_override(master, minions, event_listener):
    since = time.time()
    override = {
        "kcm": {"version": "v1.37.3", "pki": {"ca_key": KEY_PEM}},
        "kcm_orch": {"tgt": minions["kcm-master"].id, "tgt_type": "list"},
    }
    ret = master.salt_run_cli(timeout=180).run(
        "state.orchestrate", "orch.kcm.upgrade", f"pillar={json.dumps(override)}"
    )
    assert ret.returncode != 0, ret
    assert "pillar:kcm:pki:ca_key: PEM or private-key material in a pillar override" in ret.stdout, ret.stdout
    time.sleep(2)  # any publication would have been on the bus by now
    published = event_listener.get_events([(master.id, "salt/job/*/new")], after_time=since)
    assert "saltutil.sync_all" in [e.data.get("fun") for e in published]  # the orchestration did run
    # Its own steps (sync_all, find_job) publish; the change itself must not.
    assert [
        e.data.get("fun")
        for e in published
        if "PRIVATE KEY" in json.dumps(e.data) or str(e.data.get("fun")).startswith("kcm_orch.")
    ] == []
