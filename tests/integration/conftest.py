"""A real salt-master with three real salt-minions (pytest-salt-factories), each minion
laying the formula down into its own temporary root from the real release tarball that
``scripts/k8s-binaries`` built (``KCM_K8S_BIN``, exported by ``scripts/test``)."""

import json
import os
from pathlib import Path

import pytest

from tests.support import pki as testpki
from tests.support.pillar import REPO, sandbox_pillar

MINIONS = ("master-1", "master-2", "master-3")


def real_release() -> tuple[Path, str]:
    """(server tarball, version) of the release scripts/k8s-binaries built; a missing one fails."""
    if not os.environ.get("KCM_K8S_BIN"):
        pytest.fail("KCM_K8S_BIN is not set: run the tier with scripts/test (it builds the release)", pytrace=False)
    directory = Path(os.environ["KCM_K8S_BIN"])
    version = directory.name
    tarball = directory / f"kubernetes-server-{version}-linux-amd64.tar.gz"
    missing = [str(p) for p in (tarball, Path(f"{tarball}.sha512")) if not p.is_file()]
    if missing:
        pytest.fail(f"{directory} lacks {missing}: run scripts/k8s-binaries", pytrace=False)
    return tarball, version


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
    tarball, version = real_release()
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
