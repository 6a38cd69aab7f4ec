"""The cluster the orchestration tests run against: a real salt-master with three real
salt-minions (pytest-salt-factories), their own real etcd + kube-apiserver (not shared with
the other e2e tests, whose KCMs would compete for the same Lease), and three real KCMs run by
kcmctl.py (``kcm:service:control_cmd``) from the units the formula rendered on each minion.

``deployed_cluster`` builds one: deployed with ``salt 'master-*' state.apply kcm`` over the bus
and started with ``kcm_orch.start``, from the server tarball of any release that
``built_release`` (``scripts/k8s-binaries VERSION``) provides.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from kcmlab.controlplane import ControlPlane, tail
from tests.e2e.orch.harness import NODES, make_nodes
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


def built_release(request, version: str) -> Path:
    """The directory ``scripts/k8s-binaries VERSION`` prints (it builds the release when it is
    not cached; its progress is shown live). Fails the test, never skips, when the build
    fails or its directory lacks the binaries or the server tarball of that release."""
    script = REPO / "scripts" / "k8s-binaries"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        proc = subprocess.run([str(script), version], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{script} {version} failed with exit code {proc.returncode} (its output is above); "
                    f"the version upgrade test needs a real {version} build", pytrace=False)
    out = Path(proc.stdout.strip())
    tarball = out / f"kubernetes-server-{version}-linux-amd64.tar.gz"
    missing = [str(p) for p in (out / "etcd", out / "kube-apiserver", out / "kube-controller-manager",
                                tarball, Path(f"{tarball}.sha512")) if not p.is_file()]
    if missing:
        pytest.fail(f"{script} {version} printed {out}, which lacks {', '.join(missing)}", pytrace=False)
    return out


def release_of(tarball: Path) -> str:
    """``v1.37.2`` from ``kubernetes-server-v1.37.2-linux-amd64.tar.gz``."""
    return tarball.name[len("kubernetes-server-"):-len("-linux-amd64.tar.gz")]


def server_tarball(bin_dir: Path) -> Path:
    return next(Path(bin_dir).glob("kubernetes-server-*-linux-amd64.tar.gz"))


@contextlib.contextmanager
def deployed_cluster(salt_factories, tmp_path_factory, cp_bin: Path, tarball: Path, master_id: str):
    """A control plane from ``cp_bin`` and three masters deployed from ``tarball`` by
    ``salt 'master-*' state.apply kcm``, their KCMs started and healthy under a leader;
    everything is stopped on exit."""
    workdir = tmp_path_factory.mktemp(f"{master_id}-cp")
    cp = ControlPlane(cp_bin, workdir, nodes=NODES).start()
    pillar_dir = tmp_path_factory.mktemp(f"{master_id}-pillar")
    nodes = make_nodes(cp, tmp_path_factory.mktemp(f"{master_id}-nodes"), tarball, release_of(tarball))
    master = salt_factories.salt_master_daemon(
        master_id,
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
