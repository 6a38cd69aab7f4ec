"""A real salt-master with three real salt-minions (pytest-salt-factories), each minion
laying the formula down into its own temporary root."""

import json

import pytest

from tests.support import pki as testpki
from tests.support.pillar import REPO, sandbox_pillar
from tests.support.tarball import build_tarball

MINIONS = ("master-1", "master-2", "master-3")


@pytest.fixture(scope="package")
def formula_master(salt_factories, tmp_path_factory):
    pillar_dir = tmp_path_factory.mktemp("pillar")
    factory = salt_factories.salt_master_daemon(
        "kcm-salt-master",
        overrides={
            "file_roots": {"base": [str(REPO / "formula")]},
            "pillar_roots": {"base": [str(pillar_dir)]},
            "fileserver_list_cache_time": 0,
            "features": {"x509_v2": True},
        },
    )
    factory.pillar_dir = pillar_dir
    with factory.started(start_timeout=120):
        yield factory


@pytest.fixture(scope="package")
def formula_minions(formula_master, tmp_path_factory):
    """Three started minions; `pillars[id]` is each one's `kcm:` pillar (written to the master)."""
    version = "v1.34.3"
    tarball = build_tarball(tmp_path_factory.mktemp("dl"), version)
    pki = testpki.kcm_pki(MINIONS)
    top = ["base:"]
    pillars, factories = {}, {}
    for mid in MINIONS:
        root = tmp_path_factory.mktemp(mid)
        pillars[mid] = sandbox_pillar(root, tarball, version, pki)
        sls = mid.replace("-", "_")
        (formula_master.pillar_dir / f"{sls}.sls").write_text(json.dumps(pillars[mid]))
        top += [f"  '{mid}':", f"    - {sls}"]
        factories[mid] = formula_master.salt_minion_daemon(
            mid, overrides={"loop_interval": 1, "features": {"x509_v2": True}}
        )
    (formula_master.pillar_dir / "top.sls").write_text("\n".join(top) + "\n")
    started = []
    try:
        for factory in factories.values():
            factory.start(start_timeout=120)
            started.append(factory)
        yield {"pillars": pillars, "minions": factories}
    finally:
        for factory in started:
            factory.terminate()
