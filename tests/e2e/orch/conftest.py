"""Fixtures for the orchestration tests (the cluster itself: cluster.py).

``orch_cluster`` (module scope: torn down right after the orchestration tests) is a lab at the
pinned release; test_version_upgrade.py deploys its own at the previous minor release.
``orch`` (per test) makes sure all three KCMs run, are healthy and one leads before each test.
"""

from __future__ import annotations

import pytest

from tests.e2e.orch.cluster import deployed_cluster, release_of


@pytest.fixture(scope="module")
def orch_cluster(k8s_bin, request, tmp_path_factory):
    with deployed_cluster(request, tmp_path_factory, k8s_bin, release_of(k8s_bin), "e2e-orch") as cluster:
        yield cluster


@pytest.fixture
def orch(orch_cluster):
    """The cluster with every KCM running and healthy and a leader, before and after the test."""
    orch_cluster.ensure_running()
    yield orch_cluster
    orch_cluster.ensure_running()
