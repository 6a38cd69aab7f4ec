"""Upgrading a master that the previous formula release (5f6804a) installed, under systemd
(issue 24): one `state.apply kcm` of this release takes every file and directory back for
root, and KCM restarts once, onto its credentials, and keeps running."""

from __future__ import annotations

import base64
import json
import subprocess
import time

from kcmlab.cluster import UNIT
from kcmlab.formula import REPO
from tests.e2e.test_systemd import _find

PREVIOUS = "5f6804a"
TREE = "/root/kcm-previous"


def previous_release() -> str:
    """The formula and its modules as 5f6804a shipped them, a base64 tar (git archive)."""
    parts = ["formula", "_modules", "_states", "_utils", "_beacons", "_engines", "_output", "_runners"]
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS, *parts], capture_output=True, check=True)
    return base64.b64encode(archive.stdout).decode()


def systemd_lines(machine, since: float) -> str:
    """What systemd itself logged about KCM since ``since``: each start, stop and exit."""
    return machine.run(
        ["journalctl", "--no-pager", "-o", "short-precise", "--since", f"@{since:.3f}", "-u", UNIT, "_PID=1"],
        check=False,
    ).stdout


def test_a_master_the_previous_release_installed_is_taken_back_for_root(kcm_cluster):
    name = next(n for n in kcm_cluster.nodes if n != kcm_cluster.leader())
    machine = kcm_cluster.machine(name)
    local = ["salt-call", "--local", "--retcode-passthrough", "--out=json", f"--file-root={TREE}/formula"]
    pillar = json.dumps(kcm_cluster.pillars[name])  # {"kcm": {...}}: salt-call reads it as YAML
    machine.run(
        ["sh", "-c", f"rm -rf {TREE} && mkdir -p {TREE} && base64 -d | tar -x -C {TREE}"], input=previous_release()
    )
    try:
        machine.run([*local, "saltutil.sync_all"], timeout=300)
        machine.run([*local, "state.apply", "kcm", f"pillar={pillar}"], timeout=600)
        # the previous release's layout: the KCM user owns the install root, the PKI and the kubeconfig
        owners = machine.run(
            ["stat", "-c", "%U", "/data/apps/k8s/kubernetes", "/etc/k8s/ssl", "/etc/k8s/kubeconfig"]
        ).stdout.split()
        assert owners == ["k8s"] * 3, owners
        kcm_cluster.wait_healthy([name], timeout=90)
        # to the millisecond: a whole second would also count the start the first apply made
        since = time.time()

        kcm_cluster.salt("saltutil.sync_all", target=[name], timeout=300)
        kcm_cluster.apply("kcm", target=[name])

        kcm_cluster.wait_healthy([name], timeout=90)
        assert kcm_cluster.active(name) == "active"
        assert kcm_cluster.starts_since(name, since) == 1, systemd_lines(machine, since)
        assert _find(machine, ["-user", "k8s"]) == []
        assert _find(machine, ["-writable"], user="k8s") == []
        assert any(a.startswith("--kubeconfig=/run/credentials/") for a in kcm_cluster.cmdline(name))
    finally:
        machine.run(["rm", "-rf", TREE], check=False)
        kcm_cluster.salt("saltutil.sync_all", target=[name], timeout=300)
        kcm_cluster.apply("kcm", target=[name])
