"""e2e fixtures: a real etcd + kube-apiserver, and three KCMs run from the formula's units.

Session scope: ``k8s_bin`` (the built binaries), ``control_plane`` and the three-node
``kcm_cluster`` at short leader-election timings (lease 4s / renew 3s / retry 1s, from
pillar). ``kcm_cluster_default_timings`` builds a second, separate cluster at the defaults
(15s/10s/2s) for the one test that needs them.

Every process is stopped at the end, failed or not. When a test fails its report lists the
log files (kept in pytest's temp dir) with their last lines; the temp trees of a fully
passing session are removed (each minion holds a copy of the KCM binary).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kcmlab.controlplane import (
    ControlPlane,
    KcmProcess,
    failover_bound,
    free_port,
    tail,
)
from tests.support.masterless import MasterlessMinion
from tests.support.pillar import sandbox_pillar

REPO = Path(__file__).resolve().parents[2]
NODES = ("master-1", "master-2", "master-3")
SHORT_ELECTION = {"lease_duration": "4s", "renew_deadline": "3s", "retry_period": "1s"}

# Measured durations (seconds), printed in the terminal summary. Daemon logs (their ends go
# into a failed test's report) and the minions' Salt logs (listed when anything failed).
TIMINGS: dict[str, float] = {}
LOG_FILES: list[Path] = []
MINION_LOGS: list[Path] = []


def seconds(duration: str) -> float:
    """'4s' / '1m30s' / '500ms' -> seconds (the Go durations the pillar uses)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Go duration: {duration!r}")
    return sum(float(n) * units[u] for n, u in parts)


@dataclass
class KcmNode:
    """One master: its sandboxed minion, the KCM process run from its unit, and where it listens."""

    name: str
    minion: MasterlessMinion
    process: KcmProcess
    secure_port: int
    unit_path: Path
    deployed: dict = field(repr=False)

    @property
    def ca_path(self) -> Path:
        """The CA file the formula installed (verifies the KCM serving cert)."""
        return Path(self.deployed["files"]["ca_cert"])


class KcmCluster:
    """Three KCMs of one control plane; operations by node name."""

    def __init__(self, control_plane: ControlPlane, nodes: dict[str, KcmNode], election: dict):
        self.control_plane = control_plane
        self.nodes = nodes
        self.election = {key: seconds(value) for key, value in election.items()}
        self.failover_bound = failover_bound(self.election["lease_duration"], self.election["retry_period"])

    def leader(self) -> str | None:
        """Node named by the Lease holder, or None."""
        return self.control_plane.leader()

    def wait_for_leader(self, timeout: float, exclude=()) -> str:
        return self.control_plane.wait_for_leader(timeout, exclude=exclude)

    def kill(self, name: str) -> None:
        self.nodes[name].process.kill()

    def stop(self, name: str) -> None:
        self.nodes[name].process.stop()

    def start(self, name: str, timeout: float = 60.0) -> None:
        node = self.nodes[name]
        node.process.start()
        node.process.wait_healthy(node.ca_path, timeout)

    def running(self) -> list[str]:
        return [name for name, node in self.nodes.items() if node.process.running]

    def start_all(self, timeout: float = 60.0) -> None:
        """Start every KCM that is not running (e.g. one that exited on lost leadership)."""
        for node in self.nodes.values():
            if not node.process.running:
                node.process.start()
        for node in self.nodes.values():
            node.process.wait_healthy(node.ca_path, timeout)

    def stop_all(self) -> None:
        for node in self.nodes.values():
            node.process.stop()

    def log_paths(self) -> list[Path]:
        return [node.process.log_path for node in self.nodes.values()]


# ---------------------------------------------------------------------------------------------
# Building blocks


@pytest.fixture(scope="session")
def k8s_bin(request) -> Path:
    """Directory with etcd, kube-apiserver, kube-controller-manager and the server tarball.

    Runs scripts/k8s-binaries (a no-op when cached); its progress is shown live, because a
    cold build takes tens of minutes.
    """
    script = REPO / "scripts" / "k8s-binaries"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    begin = time.monotonic()
    with capture.global_and_fixture_disabled():
        proc = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{script} failed with exit code {proc.returncode} (its output is above); "
                    "the e2e tier needs the real binaries", pytrace=False)
    out = Path(proc.stdout.strip())
    missing = [name for name in ("etcd", "kube-apiserver", "kube-controller-manager")
               if not (out / name).is_file()]
    tarballs = list(out.glob("kubernetes-server-*-linux-amd64.tar.gz"))
    if missing or len(tarballs) != 1 or not Path(f"{tarballs[0]}.sha512").is_file():
        pytest.fail(f"{script} printed {out!r}, which lacks {missing or 'the server tarball + .sha512'}",
                    pytrace=False)
    TIMINGS["k8s-binaries (build or cache check)"] = time.monotonic() - begin
    return out


def _server_tarball(k8s_bin: Path) -> tuple[Path, str]:
    tarball = next(k8s_bin.glob("kubernetes-server-*-linux-amd64.tar.gz"))
    version = tarball.name[len("kubernetes-server-"):-len("-linux-amd64.tar.gz")]
    return tarball, version


def _start_control_plane(k8s_bin: Path, workdir: Path, label: str) -> ControlPlane:
    cp = ControlPlane(k8s_bin, workdir, nodes=NODES)
    LOG_FILES.extend([cp.log_dir / "etcd.log", cp.log_dir / "kube-apiserver.log"])
    cp.start()
    TIMINGS[f"{label}: control plane start (etcd + apiserver ready)"] = cp.timings["apiserver_ready"]
    return cp


def _failed_states(ret) -> list[str]:
    """'<state id>: <comment>' for each state that did not succeed ([] when all did)."""
    if not isinstance(ret, dict) or not ret:
        return [f"state.apply returned no state results: {ret!r}"[:2000]]
    return [f"{sid}: {(st or {}).get('comment')}" for sid, st in ret.items()
            if not isinstance(st, dict) or st.get("result") is not True]


def _prepare_node(cp: ControlPlane, root: Path, name: str, election: dict | None, pki: dict | None = None) -> KcmNode:
    """Apply the formula on a sandboxed minion and wrap its rendered unit in a KcmProcess.
    ``pki`` replaces the pillar-mode PEMs (e.g. ``{"mode": "local", ...}``)."""
    tarball, version = _server_tarball(cp.bin_dir)
    overrides = {"apiserver": cp.apiserver_url, "secure_port": free_port(), "bind_address": "127.0.0.1"}
    if election is not None:
        overrides["leader_election"] = election
    port = overrides["secure_port"]
    pems = pki if pki is not None else cp.kcm_pki(NODES)
    pillar = sandbox_pillar(root / name, tarball, version, pems, **overrides)
    if pki is not None:
        pillar["kcm"]["pki"] = dict(pki)
    minion = MasterlessMinion(root / name, name, pillar)
    MINION_LOGS.append(minion.log_path)
    ret = minion.apply("kcm")
    failed = _failed_states(ret)
    assert not failed, f"state.apply kcm on {name} failed:\n" + "\n".join(failed)
    deployed = minion.deployed
    unit_path = Path(deployed["files"]["unit"])
    process = KcmProcess(unit_path, name, cp.log_dir / f"kcm-{name}.log")
    LOG_FILES.append(process.log_path)
    return KcmNode(name, minion, process, port, unit_path, deployed)


def build_cluster(cp: ControlPlane, root: Path, election: dict | None, label: str,
                  pki: dict | None = None) -> KcmCluster:
    """Three minions applied in parallel, then their KCMs started and a first leader awaited."""
    begin = time.monotonic()
    cp.kcm_pki(NODES)  # made once, before the threads share it
    with ThreadPoolExecutor(len(NODES)) as pool:
        nodes = list(pool.map(lambda n: _prepare_node(cp, root, n, election, pki), NODES))
    TIMINGS[f"{label}: 3x state.apply kcm (parallel)"] = time.monotonic() - begin
    rendered = {key: nodes[0].process.flag(f"leader-elect-{key.replace('_', '-')}")
                for key in ("lease_duration", "renew_deadline", "retry_period")}
    cluster = KcmCluster(cp, {n.name: n for n in nodes}, rendered)
    begin = time.monotonic()
    try:
        cluster.start_all()
        cluster.wait_for_leader(cluster.failover_bound + 30)
    except BaseException:
        cluster.stop_all()
        raise
    TIMINGS[f"{label}: KCM start to first leader"] = time.monotonic() - begin
    return cluster


def _cleanup(request, paths) -> None:
    """Remove temp trees after a fully passing session; keep everything for a failed one."""
    if request.session.testsfailed:
        return
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Fixtures used by the tests


@pytest.fixture(scope="session")
def control_plane(k8s_bin, tmp_path_factory, request):
    """etcd + kube-apiserver on loopback (see tests/support/controlplane.py)."""
    workdir = tmp_path_factory.mktemp("controlplane")
    cp = _start_control_plane(k8s_bin, workdir, "short timings")
    try:
        yield cp
    finally:
        cp.stop()
        _cleanup(request, [workdir])


@pytest.fixture(scope="session")
def _kcm_cluster_session(control_plane, tmp_path_factory, request):
    root = tmp_path_factory.mktemp("kcm-short")
    # A failed build stops what it started and keeps its files (the session has not
    # counted the failure yet, so it must not reach _cleanup).
    cluster = build_cluster(control_plane, root, SHORT_ELECTION, "short timings")
    try:
        yield cluster
    finally:
        cluster.stop_all()
        _cleanup(request, [root])


@pytest.fixture
def kcm_cluster(_kcm_cluster_session):
    """Three KCMs at short timings, all running and healthy when each test starts and ends."""
    _kcm_cluster_session.start_all()
    yield _kcm_cluster_session
    _kcm_cluster_session.start_all()


@pytest.fixture
def kcm_cluster_default_timings(k8s_bin, tmp_path_factory, request):
    """A separate control plane and three KCMs at the default timings (15s/10s/2s)."""
    workdir = tmp_path_factory.mktemp("controlplane-default")
    root = tmp_path_factory.mktemp("kcm-default")
    cp = _start_control_plane(k8s_bin, workdir, "default timings")
    try:
        cluster = build_cluster(cp, root, None, "default timings")
    except BaseException:
        cp.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop_all()
        cp.stop()
        _cleanup(request, [workdir, root])


# ---------------------------------------------------------------------------------------------
# Reporting


@pytest.fixture
def record_timing():
    """``record_timing(name, seconds)``: print a measured duration and list it in the summary."""
    def record(name: str, value: float) -> None:
        TIMINGS[name] = value
        print(f"{name}: {value:.2f}s")

    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        lines = []
        for path in LOG_FILES:
            lines.append(f"--- {path} (last lines)")
            lines.append(tail(path, 15))
        report.sections.append(("kcm e2e logs", "\n".join(lines)))


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("kcm e2e timings")
        for name, value in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {value:.2f}s")
    if LOG_FILES and (terminalreporter.stats.get("failed") or terminalreporter.stats.get("error")):
        terminalreporter.section("kcm e2e logs (kept)")
        for path in LOG_FILES + MINION_LOGS:
            terminalreporter.write_line(str(path))
