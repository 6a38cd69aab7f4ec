"""e2e fixtures: real etcd + kube-apiserver on a lab bridge, three systemd machines running a
real salt-minion each, a real salt-master on the host, and the formula applied over the bus
(``salt master-1,master-2,master-3 state.apply kcm``) with the default paths and
``service:manage: true``: systemd starts, restarts and stops every KCM (see ``kcmlab``).

``kcm_cluster`` (package scope, short leader election ``SHORT_ELECTION`` from pillar) is
running and healthy with a renewing leader when each test starts and ends. ``kcm_cluster_default_timings``
is a second lab at the defaults (15s/10s/2s) for the one test that needs them.

Every machine, cgroup, veth and the bridge are removed at the end, failed or not; logs (the
control plane's, the salt-master's, the machines' consoles and KCM journals) are copied to
``$KCM_CACHE/e2e-logs/`` (the last ten runs) and listed when anything failed or a lab's
leader moved with no test causing it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from kcmlab.cluster import NODES, SHORT_ELECTION, LabCluster
from kcmlab.keptlogs import keep_logs

REPO = Path(__file__).resolve().parents[2]

TIMINGS: dict[str, float] = {}
LOG_FILES: list[Path] = []
CLUSTERS: list[LabCluster] = []


@pytest.fixture(scope="session")
def k8s_bin(request) -> Path:
    """Directory with etcd, kube-apiserver, kube-controller-manager and the server tarball.

    Runs scripts/k8s-binaries (a no-op when cached); its progress is shown live, because a
    cold build takes many minutes.
    """
    script = REPO / "scripts" / "k8s-binaries"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    begin = time.monotonic()
    with capture.global_and_fixture_disabled():
        proc = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"{script} failed with exit code {proc.returncode} (its output is above); "
            "the e2e tier needs the real binaries",
            pytrace=False,
        )
    out = Path(proc.stdout.strip())
    missing = [name for name in ("etcd", "kube-apiserver", "kube-controller-manager") if not (out / name).is_file()]
    if missing:
        pytest.fail(f"{script} printed {out!r}, which lacks {missing}", pytrace=False)
    TIMINGS["k8s-binaries (build or cache check)"] = time.monotonic() - begin
    return out


def start_lab_cluster(k8s_bin, workdir: Path, label: str, **kwargs) -> LabCluster:
    """A LabCluster started, the formula applied over the bus, its first leader awaited."""
    cluster = LabCluster(k8s_bin, workdir, **kwargs)
    cluster.label = label
    CLUSTERS.append(cluster)
    try:
        cluster.start()
        LOG_FILES.extend(cluster.log_paths())
        cluster.deploy()
        for name, value in cluster.timings.items():
            TIMINGS[f"{label}: {name}"] = value
    except BaseException:
        _keep_journals(cluster)
        cluster.close()
        raise
    return cluster


def _keep_journals(cluster: LabCluster) -> None:
    """Copy each machine's KCM and salt-minion journal next to the other logs."""
    for name, machine in list(cluster.lab.machines.items()):
        if not machine.running or machine.init_pid is None:
            continue
        for unit in ("kube-controller-manager", "salt-minion"):
            try:
                text = machine.journal(unit, lines=3000)
            except Exception:  # noqa: BLE001 - best effort, the teardown must go on
                continue
            path = cluster.workdir / "machines" / f"{name}-{unit}.journal"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            LOG_FILES.append(path)


def stop_lab_cluster(cluster: LabCluster, request) -> None:
    # A Lease transition no test caused is kept for reading too: its KCM journals say why it
    # lost the Lease (a renewal past its deadline, an exit) while the lab ran.
    if request.session.testsfailed or (cluster.lease_log is not None and cluster.lease_log.spontaneous()):
        _keep_journals(cluster)
    cluster.close()


@pytest.fixture(scope="package")
def _kcm_cluster_package(k8s_bin, tmp_path_factory, request):
    cluster = start_lab_cluster(
        k8s_bin, tmp_path_factory.mktemp("lab-short"), "short timings", suite="e2e", election=SHORT_ELECTION
    )
    try:
        yield cluster
    finally:
        stop_lab_cluster(cluster, request)


@pytest.fixture
def kcm_cluster(_kcm_cluster_package):
    """Three KCMs under systemd at short timings, all active and healthy with a live leader
    when each test starts and ends."""
    _kcm_cluster_package.ensure_running()
    yield _kcm_cluster_package
    _kcm_cluster_package.ensure_running()


@pytest.fixture
def kcm_cluster_default_timings(k8s_bin, tmp_path_factory, request):
    """A separate lab (own bridge, control plane, master) at the default timings (15s/10s/2s)."""
    cluster = start_lab_cluster(k8s_bin, tmp_path_factory.mktemp("lab-default"), "default timings", suite="e2e-dflt")
    try:
        yield cluster
    finally:
        stop_lab_cluster(cluster, request)


@pytest.fixture
def record_timing():
    """``record_timing(name, seconds)``: print a measured duration and list it in the summary."""

    def record(name: str, value: float) -> None:
        TIMINGS[name] = value
        print(f"{name}: {value:.2f}s")

    return record


def spontaneous_transitions() -> dict[str, dict]:
    """Per lab cluster of this session: its Lease transitions, and those no test caused."""
    out = {}
    for cluster in CLUSTERS:
        if cluster.lease_log is None:
            continue
        found = cluster.lease_log.classified()
        seconds = cluster.election_seconds
        election = "/".join(f"{seconds[k]:g}s" for k in ("lease_duration", "renew_deadline", "retry_period"))
        out[cluster.label] = {
            "election": election,
            "transitions": sum(t.count for t in found),
            "spontaneous": sum(t.count for t in found if t.cause is None),
            "which": [str(t) for t in found if t.cause is None],
        }
    return out


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("kcm e2e timings")
        for name, value in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {value:.2f}s")
    counts = spontaneous_transitions()
    if counts:
        terminalreporter.section("kcm e2e Lease transitions no test caused (lab: its leader election)")
        for label, count in counts.items():
            terminalreporter.write_line(
                f"{label} ({count['election']}): {count['spontaneous']} spontaneous"
                f" of {count['transitions']}" + (f": {', '.join(count['which'])}" if count["which"] else "")
            )
        terminalreporter.write_line(f"total spontaneous: {sum(c['spontaneous'] for c in counts.values())}")
        # scripts/flake-hunt reads the counts of each run from here.
        if os.environ.get("KCM_LEASE_REPORT"):
            Path(os.environ["KCM_LEASE_REPORT"]).write_text(json.dumps(counts, indent=1))
    unexplained = any(count["spontaneous"] for count in counts.values())
    if LOG_FILES and (terminalreporter.stats.get("failed") or terminalreporter.stats.get("error") or unexplained):
        terminalreporter.section("kcm e2e logs (kept)")
        for path in keep_logs(dict.fromkeys(LOG_FILES)):
            terminalreporter.write_line(str(path))


__all__ = ["NODES", "SHORT_ELECTION", "start_lab_cluster", "stop_lab_cluster"]
