"""Fixtures for the orchestration tests (the cluster itself: cluster.py).

``orch_cluster`` (module scope: torn down right after the orchestration tests) is a cluster
at the pinned release; test_version_upgrade.py deploys its own at an older patch release.
``orch`` (per test) makes sure all three KCMs run, are healthy and one leads before each test.
"""

from __future__ import annotations

import pytest

from kcmlab.controlplane import tail
from tests.e2e.orch.cluster import OrchCluster, deployed_cluster, server_tarball


@pytest.fixture(scope="module")
def orch_cluster(k8s_bin, salt_factories, tmp_path_factory):
    with deployed_cluster(salt_factories, tmp_path_factory, k8s_bin, server_tarball(k8s_bin),
                          "kcm-orch-master") as cluster:
        yield cluster


@pytest.fixture
def orch(orch_cluster):
    """The cluster with every KCM running and healthy and a leader, before and after the test."""
    orch_cluster.ensure_running()
    yield orch_cluster
    orch_cluster.ensure_running()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    clusters = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, OrchCluster)]
    if report.failed and clusters:
        lines = []
        for node in clusters[0].nodes.values():
            for name in ("kcm.log", "supervisor.log"):
                lines += [f"--- {node.run_dir / name} (last lines)", tail(node.run_dir / name, 12)]
        report.sections.append(("kcm orchestration logs", "\n".join(lines)))
