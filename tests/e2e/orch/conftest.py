"""Fixtures for the orchestration tests: a real salt-master with three real salt-minions
(pytest-salt-factories), their own real etcd + kube-apiserver (not shared with the other e2e
tests, whose KCMs would compete for the same Lease), and three real KCMs run by kcmctl.py
(``kcm:service:control_cmd``) from the units the formula rendered on each minion.

``orch_cluster`` (module scope: torn down right after the orchestration tests) is deployed
with ``salt 'master-*' state.apply kcm`` over the bus and started with ``kcm_orch.start``;
``orch`` (per test) makes sure all three KCMs run, are healthy and one leads before each test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.orch.harness import NODES, make_nodes
from tests.support.controlplane import ControlPlane, tail
from tests.support.pillar import REPO, merge

TGT = "master-*"


class OrchCluster:
    """The master, its minions, the control plane and the nodes, with the CLIs the tests use."""

    def __init__(self, master, minions, cp, nodes, pillar_dir: Path):
        self.master = master
        self.minions = minions
        self.cp = cp
        self.nodes = nodes
        self.pillar_dir = pillar_dir

    def write_pillar(self):
        top = ["base:"]
        for name, node in self.nodes.items():
            sls = name.replace("-", "_")
            path = self.pillar_dir / f"{sls}.sls"
            path.write_text(json.dumps(node.pillar))
            path.chmod(0o600)
            top += [f"  '{name}':", f"    - {sls}"]
        (self.pillar_dir / "top.sls").write_text("\n".join(top) + "\n")

    def change_pillar(self, **kcm):
        """Change every master's pillar on the master (what an operator edits)."""
        for node in self.nodes.values():
            node.pillar = merge(node.pillar, {"kcm": kcm})
        self.write_pillar()

    def salt(self, fun, *args, timeout=600, **kwargs):
        return self.master.salt_cli(timeout=timeout).run(fun, *args, minion_tgt=TGT, **kwargs)

    def salt_run(self, fun, *args, timeout=900, **kwargs):
        return self.master.salt_run_cli(timeout=timeout).run(fun, *args, **kwargs)

    def leader(self):
        return self.cp.leader()

    def ensure_running(self, timeout=90):
        """Every KCM started (idempotent), healthy, and a live leader."""
        for node in self.nodes.values():
            proc = node.kcmctl("start")
            assert proc.returncode == 0, f"kcmctl start {node.name}: {proc.stderr}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ret = self.salt("kcm.health", timeout=30)
            healthy = [m for m, r in (ret.data or {}).items() if isinstance(r, dict) and r.get("healthy")]
            if sorted(healthy) == sorted(self.nodes) and self.leader():
                return
            time.sleep(1)
        logs = "\n".join(f"--- {n.name}\n{tail(n.run_dir / 'kcm.log', 15)}" for n in self.nodes.values())
        raise AssertionError(f"KCMs not all healthy with a leader after {timeout}s: {ret.data}\n{logs}")


def _failed_states(ret):
    if not isinstance(ret, dict) or not ret:
        return [f"no state results: {ret!r}"[:2000]]
    return [f"{k}: {v.get('comment')}" for k, v in ret.items()
            if not isinstance(v, dict) or v.get("result") is not True]


@pytest.fixture(scope="module")
def orch_cluster(k8s_bin, salt_factories, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("orch-cp")
    cp = ControlPlane(k8s_bin, workdir, nodes=NODES).start()
    pillar_dir = tmp_path_factory.mktemp("orch-pillar")
    tarball = next(k8s_bin.glob("kubernetes-server-*-linux-amd64.tar.gz"))
    version = tarball.name[len("kubernetes-server-"):-len("-linux-amd64.tar.gz")]
    nodes = make_nodes(cp, tmp_path_factory.mktemp("orch-nodes"), tarball, version)
    master = salt_factories.salt_master_daemon(
        "kcm-orch-master",
        overrides={
            "file_roots": {"base": [str(REPO / "formula")]},
            "pillar_roots": {"base": [str(pillar_dir)]},
            "fileserver_list_cache_time": 0,
            "features": {"x509_v2": True},
        },
    )
    cluster = OrchCluster(master, {}, cp, nodes, pillar_dir)
    cluster.write_pillar()
    started = []
    try:
        master.start(start_timeout=120)
        started.append(master)
        for name in NODES:
            minion = master.salt_minion_daemon(name, overrides={"features": {"x509_v2": True}})
            minion.start(start_timeout=120)
            started.append(minion)
            cluster.minions[name] = minion
        assert cluster.salt_run("saltutil.sync_all").returncode == 0
        assert cluster.salt("saltutil.sync_all").returncode == 0
        applied = cluster.salt("state.apply", "kcm", timeout=900)
        for name in NODES:
            failed = _failed_states((applied.data or {}).get(name))
            assert not failed, f"state.apply kcm on {name}:\n" + "\n".join(failed)
        started_kcm = cluster.salt("kcm_orch.start", timeout=120)
        assert started_kcm.returncode == 0, started_kcm.stdout
        cluster.ensure_running()
        yield cluster
    finally:
        for node in nodes.values():
            node.kcmctl("stop")
        for daemon in reversed(started):
            daemon.terminate()
        cp.stop()


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
    cluster = getattr(item, "funcargs", {}).get("orch")
    if report.failed and cluster is not None:
        lines = []
        for node in cluster.nodes.values():
            for name in ("kcm.log", "supervisor.log"):
                lines += [f"--- {node.run_dir / name} (last lines)", tail(node.run_dir / name, 12)]
        report.sections.append(("kcm orchestration logs", "\n".join(lines)))
