"""The cluster the orchestration tests run against: a LabCluster (kcmlab.cluster) of three
systemd machines with their own real etcd + kube-apiserver and salt-master (not shared with
the other e2e tests, whose KCMs would compete for the same Lease). KCM is run by systemd,
through the formula's ``service.running``, as on a real master.

``deployed_cluster`` builds one, deployed with ``salt master-1,master-2,master-3 state.apply
kcm`` over the bus, from any release that ``built_release`` (``scripts/k8s-binaries VERSION``)
provides; the control plane always runs the pinned release.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kcmlab.cluster import NODES, SHORT_ELECTION, UNIT
from kcmlab.formula import runner_settings
from tests.e2e.conftest import start_lab_cluster, stop_lab_cluster

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Result:
    """What a Salt CLI run gave: its exit code, its parsed JSON and its raw output."""

    returncode: int
    data: object
    stdout: str


class MachineNode:
    """One master as the orchestration tests see it (reads go into its machine)."""

    def __init__(self, cluster, name: str):
        self.cluster = cluster
        self.name = name
        self.machine = cluster.machine(name)

    @property
    def kcm(self) -> dict:
        return self.cluster.pillars[self.name]["kcm"]

    def exec_start(self) -> str:
        """The unit file as it is on the master's disk."""
        return self.machine.read_file(f"/usr/lib/systemd/system/{UNIT}.service")

    def starts(self, since: float) -> int:
        return self.cluster.starts_since(self.name, since)

    def healthy(self) -> bool:
        return self.cluster.healthz(self.name, timeout=1)


class OrchCluster:
    """A LabCluster with the CLIs the orchestration tests use."""

    def __init__(self, lab_cluster):
        self.lab = lab_cluster
        self.cp = lab_cluster.cp
        self.master = lab_cluster.master
        self.nodes = {name: MachineNode(lab_cluster, name) for name in lab_cluster.nodes}

    def change_pillar(self, **kcm):
        """Change every master's pillar on the salt-master (what an operator edits)."""
        self.lab.change_pillar(**kcm)

    def salt(self, fun, *args, timeout=600, **kwargs) -> Result:
        flags = ["--out=json", "--static", f"--timeout={int(timeout)}", "-L", ",".join(self.nodes)]
        return self._run("salt", *flags, fun, *args, timeout=timeout, **kwargs)

    def salt_run(self, fun, *args, timeout=900, **kwargs) -> Result:
        return self._run("salt-run", "--out=json", fun, *args, timeout=timeout, **kwargs)

    def _run(self, tool, *args, timeout, **kwargs) -> Result:
        import json

        args = [*args, *(f"{key}={json.dumps(value)}" for key, value in kwargs.items())]
        proc = self.master.command(tool, *args, timeout=timeout)
        try:
            data = json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            data = None
        return Result(proc.returncode, data, proc.stdout + proc.stderr)

    def leader(self):
        return self.cp.leader()

    def ensure_running(self, timeout=90):
        """Every KCM active (started where not), healthy, and a live leader."""
        self.lab.ensure_running(timeout)


def built_release(request, version: str) -> Path:
    """The directory ``scripts/k8s-binaries VERSION`` prints (it builds the release when it is
    not cached; its progress is shown live). Fails the test, never skips, when the build
    fails or its directory lacks the binaries or the server tarball of that release."""
    script = REPO / "scripts" / "k8s-binaries"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        proc = subprocess.run([str(script), version], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"{script} {version} failed with exit code {proc.returncode} (its output is above); "
            f"the version upgrade test needs a real {version} build",
            pytrace=False,
        )
    out = Path(proc.stdout.strip())
    tarball = out / f"kubernetes-server-{version}-linux-amd64.tar.gz"
    missing = [str(p) for p in (out / "kube-controller-manager", tarball, Path(f"{tarball}.sha512")) if not p.is_file()]
    if missing:
        pytest.fail(f"{script} {version} printed {out}, which lacks {', '.join(missing)}", pytrace=False)
    return out


def release_of(bin_dir: Path) -> str:
    """``v1.37.2`` for the build directory of that release."""
    return Path(bin_dir).name


@contextlib.contextmanager
def deployed_cluster(request, tmp_path_factory, cp_bin: Path, version: str, suite: str):
    """A control plane from ``cp_bin`` and three machines deployed at ``version`` by
    ``state.apply kcm`` over the bus, KCM running under systemd with a leader."""
    begin = time.monotonic()
    # The orchestrations target the KCM masters the salt-master trusts: kcm.master's kcm_alert:masters.
    lab_cluster = start_lab_cluster(
        cp_bin,
        tmp_path_factory.mktemp(suite),
        f"orch {suite}",
        suite=suite,
        version=version,
        election=SHORT_ELECTION,
        master_config=runner_settings(masters=list(NODES)),
    )
    print(f"{suite}: deployed {version} on 3 machines in {time.monotonic() - begin:.1f}s")
    try:
        yield OrchCluster(lab_cluster)
    finally:
        stop_lab_cluster(lab_cluster, request)
