"""A throwaway Kubernetes control plane.

``ControlPlane`` starts a real etcd and a real kube-apiserver (RBAC + Node authorization, a
client CA, a serving certificate for its address, service-account keys) on any address of
this host (loopback, or a lab bridge's, for masters on machines), all keys and certificates
from ``kcmlab.pki``. ``parse_exec_start`` reads a rendered unit's command line
with the formula's own systemd parser.

Shared by the e2e tests, the demo command and the benchmarks, so nothing here imports pytest.

    with ControlPlane(bin_dir, workdir, host="10.77.0.1") as cp:
        cp.kcm_pki(["master-1", "10.77.0.11"])   # PEMs for the formula's kcm:pki pillar
        cp.wait_for_leader(30)
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import requests

from kcmlab.formula import load
from kcmlab.pki import DAYS, CertificateAuthority, kcm_pillar_pki, kubeconfig, service_account_keypair

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager"
# KCM v1.14-v1.16 lock on Endpoints only: the record is this annotation's JSON.
ENDPOINTS_PATH = "/api/v1/namespaces/kube-system/endpoints/kube-controller-manager"
LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"


def leader_record(get) -> dict | None:
    """The Lease (``get(path)``: its JSON, None for a 404), or, where KCM locks on Endpoints
    alone (v1.14-v1.16), the Endpoints' leader annotation in a Lease's shape; None before
    the first election."""
    lease = get(LEASE_PATH)
    if lease:
        return lease
    raw = (((get(ENDPOINTS_PATH) or {}).get("metadata") or {}).get("annotations") or {}).get(LEADER_ANNOTATION)
    if not raw:
        return None
    record = json.loads(raw)
    keys = ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime")
    return {
        "kind": "Endpoints",
        "spec": dict({k: record.get(k) for k in keys}, leaseTransitions=record.get("leaderTransitions") or 0),
    }


DEFAULT_NODES = ("master-1", "master-2", "master-3")
# client-go waits a random [retry, retry * (1 + JitterFactor)] between attempts.
LEADER_ELECTION_JITTER = 1.2


# ---------------------------------------------------------------------------------------------
# Small utilities


_handed_out_ports: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """Return a loopback TCP port that is free now and not handed out before by this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        with _ports_lock:
            if port not in _handed_out_ports:
                _handed_out_ports.add(port)
                return port


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2, alive=None):
    """Poll ``predicate`` until it returns a truthy value and return that value.

    ``alive`` (optional) is called between polls; it raises when the process being waited
    for has died, so a crash is reported at once instead of after the whole timeout.
    """
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
        except (requests.RequestException, OSError, ValueError) as exc:
            value, last_error = None, exc
        if value:
            return value
        if alive is not None:
            alive()
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"{what}: not ready after {timeout:.0f}s{detail}")
        time.sleep(interval)


def https_session(ca_path, cert: tuple | None = None) -> requests.Session:
    """A requests session that verifies TLS against ``ca_path`` and ignores proxy variables.

    Everything here is on loopback; a proxy from the environment must never see it.
    """
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca_path)
    if cert is not None:
        session.cert = tuple(str(part) for part in cert)
    return session


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
    return path


def binary_minor(binary) -> int | None:
    """The minor of a Kubernetes binary, from its ``--version`` (``Kubernetes v1.14.2``); None
    when it does not say."""
    try:
        said = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"Kubernetes v1\.(\d+)\.", said.stdout + said.stderr)
    return int(match.group(1)) if match else None


def readiness_path(minor: int | None) -> str:
    """Where a kube-apiserver of ``minor`` says it serves: ``/readyz`` came with v1.16, before it
    only ``/healthz`` (which also checks etcd). Unknown: the current one."""
    return "/healthz" if minor is not None and minor < 16 else "/readyz"


def node_of(holder_identity: str | None) -> str | None:
    """Node name in a KCM ``holderIdentity`` (``<hostname>_<uuid>``); None for no holder."""
    if not holder_identity:
        return None
    node, sep, _ = holder_identity.rpartition("_")
    return node if sep else holder_identity


# ---------------------------------------------------------------------------------------------
# Processes


class Daemon:
    """One long-running child in its own process group, with its output appended to a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None):
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        # A LeaseLog (kcmlab.leasewatch) told when this daemon goes down and comes back.
        self.marks = None

    def start(self) -> Daemon:
        """Start the process (again); a running one is an error."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.proc.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            stamp = datetime.datetime.now().isoformat(timespec="milliseconds")
            out.write(f"\n===== {stamp} start {self.name}: {self.argv[0]}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        if self.marks is not None:
            self.marks.close(self.name)
        log.debug("%s started, pid %s", self.name, self.proc.pid)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise, with the end of the log, when the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.proc.returncode}; log {self.log_path}:\n{tail(self.log_path)}"
            )

    def _signal_group(self, sig: int) -> bool:
        """Signal the process group while its leader is unreaped (so its id cannot be reused)."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        if self.marks is not None:
            self.marks.open(self.name, f"{self.name} down")
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the whole process group and reap it."""
        if self._signal_group(signal.SIGKILL):
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group; SIGKILL it when it has not exited after ``timeout``."""
        if not self._signal_group(signal.SIGTERM):
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %.0fs; killing it", self.name, timeout)
            self.kill()


# ---------------------------------------------------------------------------------------------
# The control plane


class ControlPlane:
    """etcd + kube-apiserver on loopback, with free ports and everything under ``workdir``.

    ``bin_dir`` holds ``etcd`` and ``kube-apiserver`` (``scripts/k8s-binaries`` prints it).
    One CA is the cluster CA: it signs the apiserver's serving certificate, is the apiserver's
    ``--client-ca-file`` and is the CA the formula gets as ``kcm:pki:ca_cert``.
    """

    def __init__(
        self,
        bin_dir,
        workdir,
        *,
        service_cluster_ip_range: str = "10.254.0.0/22",
        nodes=DEFAULT_NODES,
        host: str = LOOPBACK,
        cert_days: int = DAYS,
    ):
        # ``host``: where etcd and kube-apiserver listen (a lab bridge's address for machines).
        self.host = host
        # How long the CAs and every certificate they issue are valid.
        self.cert_days = cert_days
        self.bin_dir = Path(bin_dir)
        self.workdir = Path(workdir)
        self.service_cluster_ip_range = service_cluster_ip_range
        self.nodes = tuple(nodes)
        self.pki_dir = self.workdir / "pki"
        self.log_dir = self.workdir / "logs"
        self.etcd: Daemon | None = None
        self.apiserver: Daemon | None = None
        self.etcd_port = self.etcd_peer_port = self.apiserver_port = None
        self.timings: dict[str, float] = {}
        # /readyz, or /healthz for an apiserver older than v1.16 (set from its --version at start).
        self.ready_path = "/readyz"
        self._session: requests.Session | None = None
        self._kcm_pki: dict | None = None
        for binary in ("etcd", "kube-apiserver"):
            if not os.access(self.bin_dir / binary, os.X_OK):
                raise FileNotFoundError(
                    f"{self.bin_dir / binary} is missing or not executable; run scripts/k8s-binaries"
                )

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> ControlPlane:
        """Make the PKI, start etcd then kube-apiserver, and wait until the apiserver is ready."""
        begin = time.monotonic()
        try:
            self._make_pki()
            self._start_etcd(timeout)
            self.timings["etcd_ready"] = time.monotonic() - begin
            self._start_apiserver(timeout)
            self.timings["apiserver_ready"] = time.monotonic() - begin
        except BaseException:
            self.stop()
            raise
        log.info("control plane up in %.1fs at %s", self.timings["apiserver_ready"], self.apiserver_url)
        return self

    def stop(self) -> None:
        """Stop the apiserver, then etcd (each by its process group)."""
        if self._session is not None:
            self._session.close()
            self._session = None
        for daemon in (self.apiserver, self.etcd):
            if daemon is not None:
                # A thrown-away test cluster: the apiserver's graceful drain of open watches
                # (about 10 s) buys nothing here.
                daemon.stop(timeout=3)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_paths(self) -> list[Path]:
        return [d.log_path for d in (self.etcd, self.apiserver) if d is not None]

    # -- PKI ----------------------------------------------------------------------------------

    def _make_pki(self) -> None:
        self.ca = CertificateAuthority("kcm-formula-test-ca", days=self.cert_days)
        self.ca_path = self._write("ca.pem", self.ca.cert_pem, private=False)
        self.sa_key_pem, sa_pub_pem = service_account_keypair()
        self.sa_key_path = self._write("sa.key", self.sa_key_pem)
        self.sa_pub_path = self._write("sa.pub", sa_pub_pem, private=False)
        first_service_ip = str(next(ipaddress.ip_network(self.service_cluster_ip_range).hosts()))
        cert, key = self.ca.issue(
            "kube-apiserver",
            server=True,
            names=[
                *dict.fromkeys([LOOPBACK, self.host]),
                "localhost",
                first_service_ip,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        self.apiserver_cert_path = self._write("apiserver.pem", cert, private=False)
        self.apiserver_key_path = self._write("apiserver-key.pem", key)
        # The aggregation layer's front proxy, as on a kubeadm cluster: KCM's delegated
        # authentication reads this CA from kube-system/extension-apiserver-authentication.
        front_proxy = CertificateAuthority("kcm-formula-test-front-proxy-ca", days=self.cert_days)
        self.front_proxy_ca_path = self._write("front-proxy-ca.pem", front_proxy.cert_pem, private=False)
        cert, key = front_proxy.issue("front-proxy-client", client=True)
        self.proxy_client_cert_path = self._write("front-proxy-client.pem", cert, private=False)
        self.proxy_client_key_path = self._write("front-proxy-client-key.pem", key)
        cert, key = self.issue_client_cert("admin", ["system:masters"])
        self.admin_cert_path = self._write("admin.pem", cert, private=False)
        self.admin_key_path = self._write("admin-key.pem", key)

    def _write(self, name: str, text: str, private: bool = True) -> Path:
        path = self.pki_dir / name
        if private:
            return write_private(path, text)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def issue_client_cert(self, cn: str, groups=()) -> tuple[str, str]:
        """A client certificate for user ``cn`` in ``groups``, signed by the client CA."""
        return self.ca.issue(cn, list(groups), client=True)

    def kcm_pki(self, nodes=None) -> dict:
        """PEMs for the formula's ``kcm:pki`` pillar (mode ``pillar``).

        ``ca_cert``/``ca_key`` are the cluster CA (also the apiserver's client CA); ``cert``/
        ``key`` are CN ``system:kube-controller-manager`` (no O: it must go through RBAC),
        serverAuth + clientAuth, SANs 127.0.0.1, localhost and the node names;
        ``service_account_key`` is the key whose public half the apiserver verifies tokens with.
        """
        names = tuple(nodes) if nodes is not None else self.nodes
        if self._kcm_pki is None or self._kcm_pki["_names"] != names:
            self._kcm_pki = dict(
                kcm_pillar_pki(self.ca, [LOOPBACK, "localhost", *names], self.sa_key_pem), _names=names
            )
        return {k: v for k, v in self._kcm_pki.items() if not k.startswith("_")}

    def write_kubeconfig(self, path, cn: str = "admin", groups=("system:masters",)) -> Path:
        """Write a kubeconfig (0600) for user ``cn`` in ``groups``; return its path."""
        if (cn, tuple(groups)) == ("admin", ("system:masters",)):
            cert, key = self.admin_cert_path.read_text(), self.admin_key_path.read_text()
        else:
            cert, key = self.issue_client_cert(cn, groups)
        config = kubeconfig(self.apiserver_url, self.ca.cert_pem, cert, key, user=cn)
        return write_private(Path(path), json.dumps(config, indent=2))

    @property
    def admin_kubeconfig(self) -> Path:
        """The admin kubeconfig (CN admin, O system:masters), written on first use."""
        path = self.workdir / "admin.kubeconfig"
        if not path.exists():
            self.write_kubeconfig(path)
        return path

    # -- etcd ---------------------------------------------------------------------------------

    def _start_etcd(self, timeout: float) -> None:
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        client = f"http://{self.host}:{self.etcd_port}"
        peer = f"http://{self.host}:{self.etcd_peer_port}"
        data_dir = self.workdir / "etcd-data"
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.etcd = Daemon(
            "etcd",
            [
                self.bin_dir / "etcd",
                "--name=test",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=test={peer}",
                "--initial-cluster-state=new",
                # A test cluster that is thrown away: durability buys nothing, fsync costs seconds.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            self.log_dir / "etcd.log",
            cwd=self.workdir,
        ).start()

        def healthy():
            with requests.Session() as session:
                session.trust_env = False
                reply = session.get(f"{client}/health", timeout=2)
            return reply.ok and reply.json().get("health") == "true"

        wait_until(healthy, timeout, "etcd /health", alive=self.etcd.check_alive)

    # -- kube-apiserver -----------------------------------------------------------------------

    @property
    def apiserver_url(self) -> str:
        return f"https://{self.host}:{self.apiserver_port}"

    def _start_apiserver(self, timeout: float) -> None:
        self.apiserver_port = free_port()
        cert_dir = self.workdir / "apiserver-certs"
        cert_dir.mkdir(parents=True, exist_ok=True)
        self.apiserver = Daemon(
            "kube-apiserver",
            [
                self.bin_dir / "kube-apiserver",
                f"--etcd-servers=http://{self.host}:{self.etcd_port}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={cert_dir}",
                f"--tls-cert-file={self.apiserver_cert_path}",
                f"--tls-private-key-file={self.apiserver_key_path}",
                f"--client-ca-file={self.ca_path}",
                f"--requestheader-client-ca-file={self.front_proxy_ca_path}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={self.proxy_client_cert_path}",
                f"--proxy-client-key-file={self.proxy_client_key_path}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={self.apiserver_url}",
                f"--service-account-key-file={self.sa_pub_path}",
                f"--service-account-signing-key-file={self.sa_key_path}",
                f"--service-cluster-ip-range={self.service_cluster_ip_range}",
                "--allow-privileged=true",
                # A loopback advertise address cannot go into the 'kubernetes' Endpoints; nothing
                # here needs that Service, and the reconciler would log an error every 10s.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
            self.log_dir / "kube-apiserver.log",
            cwd=self.workdir,
        ).start()

        self.ready_path = readiness_path(binary_minor(self.apiserver.argv[0]))

        def ready():
            reply = self.request("GET", self.ready_path, timeout=5)
            return reply.status_code == 200 and reply.text.strip() == "ok"

        wait_until(ready, timeout, f"kube-apiserver {self.ready_path}", interval=0.3, alive=self.apiserver.check_alive)

    # -- API access (admin identity, TLS verified against the cluster CA) ----------------------

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """An HTTP request to the apiserver as admin; TLS verified against the cluster CA."""
        if self._session is None:
            self._session = https_session(self.ca_path, (self.admin_cert_path, self.admin_key_path))
        kwargs.setdefault("timeout", 10)
        return self._session.request(method, self.apiserver_url + path, **kwargs)

    def lease_reader(self):
        """A function that reads the Lease (None when there is none) over an HTTP session of
        its own, for a thread (``read.close()`` ends the session): a requests session is
        not shared between threads."""
        session = https_session(self.ca_path, (self.admin_cert_path, self.admin_key_path))

        def get(path):
            reply = session.get(self.apiserver_url + path, timeout=5)
            if reply.status_code == 404:
                return None
            reply.raise_for_status()
            return reply.json()

        def read() -> dict | None:
            return leader_record(get)

        read.close = session.close
        return read

    def get_json(self, path: str) -> dict | None:
        """GET ``path`` as JSON; None when it does not exist (404); raises on other errors."""
        reply = self.request("GET", path)
        if reply.status_code == 404:
            return None
        reply.raise_for_status()
        return reply.json()

    # -- leader election ----------------------------------------------------------------------

    def lease(self) -> dict | None:
        """The Lease ``kube-system/kube-controller-manager`` (None before the first election);
        for KCM v1.14-v1.16, the Endpoints' leader record in a Lease's shape."""
        return leader_record(self.get_json)

    def leader(self) -> str | None:
        """Node name of the Lease holder, or None when there is no Lease or no holder."""
        lease = self.lease()
        if not lease:
            return None
        return node_of(lease.get("spec", {}).get("holderIdentity"))

    def wait_for_leader(self, timeout: float, exclude=(), interval: float = 0.1) -> str:
        """Wait until the Lease names a holder not in ``exclude``; return its node name."""
        excluded = set(exclude)

        def new_leader():
            node = self.leader()
            return node if node and node not in excluded else None

        return wait_until(new_leader, timeout, f"KCM leader (not one of {sorted(excluded)})", interval=interval)

    # -- faults -------------------------------------------------------------------------------

    def restart_etcd(self, down: float = 0.0, timeout: float = 60.0) -> float:
        """Stop etcd, keep it down ``down`` seconds, start it again on the same port and data;
        returns the seconds from the stop until the apiserver is ready again."""
        return self._restart(self.etcd, down, timeout)

    def restart_apiserver(self, down: float = 0.0, timeout: float = 60.0) -> float:
        """The same for kube-apiserver (same port, certificates and etcd)."""
        return self._restart(self.apiserver, down, timeout)

    def replace_apiserver(self, bin_dir, timeout: float = 60.0) -> float:
        """Restart kube-apiserver from ``bin_dir``'s binary with the same flags, port,
        certificates and etcd (an apiserver upgrade in place); returns the seconds it took."""
        binary = Path(bin_dir) / "kube-apiserver"
        if not os.access(binary, os.X_OK):
            raise FileNotFoundError(f"{binary} is missing or not executable; run scripts/k8s-binaries")
        self.apiserver.argv[0] = str(binary)
        self.ready_path = readiness_path(binary_minor(binary))
        return self.restart_apiserver(timeout=timeout)

    def _restart(self, daemon: Daemon, down: float, timeout: float) -> float:
        begin = time.monotonic()
        daemon.stop(timeout=3)
        time.sleep(down)
        daemon.start()
        # Readiness checks etcd too: either restart ends when the API serves again.
        wait_until(
            lambda: self.request("GET", self.ready_path, timeout=3).ok,
            timeout,
            f"kube-apiserver {self.ready_path} after {daemon.name} restarted",
            interval=0.3,
            alive=daemon.check_alive,
        )
        return time.monotonic() - begin


# ---------------------------------------------------------------------------------------------
# kube-controller-manager from a rendered unit

# The formula's own systemd parser (_utils/kcm_systemd.py): one reading of a unit line.
_SYSTEMD = load("_utils", "kcm_systemd")
_service_directives = _SYSTEMD.service_directives


def parse_exec_start(unit_text: str) -> list[str]:
    """The argv of the single ``ExecStart=`` of a systemd unit's ``[Service]`` section, read
    the way systemd reads it (the product's parser; what it cannot reproduce is an error)."""
    return _SYSTEMD.parse_exec_start(unit_text)


_METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")


def metric_values(text: str, name: str) -> list[tuple[dict, float]]:
    """(labels, value) of every sample of metric ``name`` in Prometheus text format."""
    samples = []
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if not match or match.group("name") != name:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group("labels") or ""))
        samples.append((labels, float(match.group("value"))))
    return samples


def failover_bound(lease_duration: float, retry_period: float, margin: float = 1.0) -> float:
    """Upper bound for a new leader to appear after the leader's KCM is SIGKILLed.

    lease duration + retry period, plus the jitter client-go adds twice (a candidate may
    observe the last renewal up to one jittered retry late, and tries again up to one jittered
    retry after expiry: 2 * retry * JitterFactor - retry more than lease + retry), plus
    ``margin`` for API latency and the caller's polling.
    """
    jitter = 2 * retry_period * (1 + LEADER_ELECTION_JITTER) - retry_period
    return lease_duration + retry_period + jitter + margin
