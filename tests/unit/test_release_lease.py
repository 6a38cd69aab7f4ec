"""
The Lease release step (formula/kcm/files/kcm-release-lease.py) against a local HTTPS
apiserver stand-in on 127.0.0.1 that keeps one Lease with resourceVersion semantics and
requires a client certificate signed by the cluster CA; and the kcm_release module that
builds its command line for the unit.
"""

import copy
import datetime
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from kcmlab.controlplane import free_port
from kcmlab.pki import CertificateAuthority, kubeconfig, server_context
from tests.unit.conftest import load

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "formula" / "kcm" / "files" / "kcm-release-lease.py"
KCM_RELEASE = load("_modules", "kcm_release")
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager"
KCM_CN = "system:kube-controller-manager"
# Above any budget here: a bound for "it stopped", not for how fast (bench/release_budget.py).
SLACK = 5.0


def lease(holder, rv="7", transitions=3, duration=15):
    stamp = "2026-12-01T10:00:00.000000Z"
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "kube-controller-manager",
            "namespace": "kube-system",
            "resourceVersion": rv,
            "uid": "d2c9c6a4-0000-4000-8000-000000000001",
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        },
    }


class FakeApiserver:
    """One Lease behind HTTPS with client-certificate authentication and optimistic concurrency."""

    def __init__(self, tmp_path, ca, server_ca=None):
        self.lease = None
        self.requests = []
        # Called between the client's GET and its PUT: a standby acquiring meanwhile.
        self.before_put = None
        context = server_context(tmp_path, server_ca or ca, client_ca=ca, require_client=True)
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status, doc):
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _record(self, body=None):
                subject = dict(x[0] for x in self.connection.getpeercert()["subject"])
                fake.requests.append((self.command, self.path, copy.deepcopy(body), subject.get("commonName")))

            def do_GET(self):  # noqa: N802
                self._record()
                if self.path != LEASE_PATH or fake.lease is None:
                    return self._reply(404, {"kind": "Status", "code": 404})
                return self._reply(200, fake.lease)

            def do_PUT(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._record(body)
                if fake.before_put:
                    fake.before_put()
                if body["metadata"].get("resourceVersion") != fake.lease["metadata"]["resourceVersion"]:
                    return self._reply(409, {"kind": "Status", "code": 409, "reason": "Conflict"})
                body["metadata"]["resourceVersion"] = str(int(fake.lease["metadata"]["resourceVersion"]) + 1)
                fake.lease = body
                return self._reply(200, body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def puts(self):
        return [r for r in self.requests if r[0] == "PUT"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def apiserver(tmp_path, ca):
    server = FakeApiserver(tmp_path, ca)
    yield server
    server.close()


def write_kubeconfig(path, server, ca, pair, as_json=False):
    doc = kubeconfig(server, ca.cert_pem, pair[0], pair[1], user="system:kube-controller-manager")
    path.write_text(json.dumps(doc) if as_json else yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


@pytest.fixture
def kcfg(tmp_path, apiserver, ca, client_pem):
    return write_kubeconfig(tmp_path / "kcm.kubeconfig", apiserver.url, ca, client_pem)


@pytest.fixture
def program():
    return load("formula/kcm/files", "kcm-release-lease")


def run(program, capsys, kcfg, *extra, identity="master-1"):
    begin = time.monotonic()
    code = program.main(["--kubeconfig", str(kcfg), "--identity", identity, *extra])
    took = time.monotonic() - begin
    out = capsys.readouterr()
    lines = (out.out + out.err).splitlines()
    return code, lines, took


def parse_micro(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)


def test_a_lease_this_host_holds_is_released_like_client_go(program, capsys, kcfg, apiserver):
    apiserver.lease = lease("master-1_0b6c1f0e-1111-4b7e-9d7e-5a0c7a2f0001", rv="7", transitions=3)
    before = datetime.datetime.now(datetime.timezone.utc)

    code, lines, _ = run(program, capsys, kcfg)

    spec = apiserver.lease["spec"]
    assert code == 0
    assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1
    assert spec["leaseTransitions"] == 3
    assert spec["acquireTime"] == spec["renewTime"]
    assert (
        before - datetime.timedelta(seconds=1)
        <= parse_micro(spec["renewTime"])
        <= before + datetime.timedelta(seconds=5)
    )
    [(_, _, body, cn)] = apiserver.puts()
    assert body["metadata"]["resourceVersion"] == "7", "the update must be conditional on what was read"
    assert cn == KCM_CN, "KCM's own client certificate authenticates the write"
    assert len(lines) == 1 and "released Lease kube-system/kube-controller-manager" in lines[0]
    assert "master-1_0b6c1f0e" in lines[0]


@pytest.mark.parametrize("holder", ["master-2_5f1b", "master-10_5f1b", "master-1-old_5f1b", "master"])
def test_a_lease_held_by_another_host_is_never_written(program, capsys, kcfg, apiserver, holder):
    apiserver.lease = lease(holder, rv="41")

    code, lines, _ = run(program, capsys, kcfg)

    assert code == 0 and apiserver.puts() == []
    assert apiserver.lease["metadata"]["resourceVersion"] == "41"
    assert apiserver.lease["spec"]["holderIdentity"] == holder
    assert len(lines) == 1 and f"held by {holder}, not by master-1: left alone" in lines[0]


def test_the_identity_is_this_host_name_unless_given(program, capsys, kcfg, apiserver, monkeypatch):
    apiserver.lease = lease("k8s_01_7d0e", rv="3")
    monkeypatch.setattr(program.socket, "gethostname", lambda: "k8s_01")

    code = program.main(["--kubeconfig", str(kcfg)])

    assert code == 0 and apiserver.lease["spec"]["holderIdentity"] == ""


def test_a_standby_that_acquired_between_read_and_write_keeps_the_lease(program, capsys, kcfg, apiserver):
    apiserver.lease = lease("master-1_aaaa", rv="7", transitions=3)

    def standby_acquires():
        apiserver.lease = lease("master-2_bbbb", rv="8", transitions=4, duration=15)

    apiserver.before_put = standby_acquires

    code, lines, _ = run(program, capsys, kcfg)

    assert code == 0
    assert apiserver.lease["spec"]["holderIdentity"] == "master-2_bbbb"
    assert apiserver.lease["metadata"]["resourceVersion"] == "8"
    assert len(lines) == 1 and "a standby took it" in lines[0]


def test_no_lease_and_no_holder_are_nothing_to_do(program, capsys, kcfg, apiserver):
    code, lines, _ = run(program, capsys, kcfg)
    assert code == 0 and "does not exist" in lines[0]

    apiserver.lease = lease("", rv="9")
    code, lines, _ = run(program, capsys, kcfg)
    assert code == 0 and "has no holder" in lines[0] and apiserver.puts() == []


def test_apiserver_down_exits_0_at_once_with_one_line_saying_why(program, capsys, tmp_path, ca, client_pem):
    kcfg = write_kubeconfig(tmp_path / "k", f"https://127.0.0.1:{free_port()}", ca, client_pem)

    code, lines, took = run(program, capsys, kcfg)

    # A refused connection ends the step before its budget (2 s by default) would; how fast
    # it is: bench/release_budget.py.
    assert code == 0 and took < 2.0 + SLACK
    assert len(lines) == 1 and "not released" in lines[0] and "refused the connection" in lines[0]


def test_an_apiserver_that_never_answers_costs_the_budget_not_more(program, capsys, tmp_path, ca, client_pem):
    # Accepts TCP connections (the kernel completes them from the backlog) but never speaks TLS.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        kcfg = write_kubeconfig(tmp_path / "k", f"https://127.0.0.1:{silent.getsockname()[1]}", ca, client_pem)

        code, lines, took = run(program, capsys, kcfg, "--budget", "1")

    # It waited its budget (order: not given up early), and then stopped (a generous bound
    # for "it did not wait for the socket's own timeout"; the budget's precision:
    # bench/release_budget.py).
    assert code == 0 and 0.9 <= took < 1 + SLACK
    assert len(lines) == 1 and "not released" in lines[0] and "time budget" in lines[0]


def test_the_server_certificate_is_verified_against_the_kubeconfig_ca(program, capsys, tmp_path, ca, client_pem):
    server = FakeApiserver(tmp_path, ca, server_ca=CertificateAuthority("someone-else"))
    try:
        server.lease = lease("master-1_aaaa")
        kcfg = write_kubeconfig(tmp_path / "k", server.url, ca, client_pem)

        code, lines, _ = run(program, capsys, kcfg)
    finally:
        server.close()

    assert code == 0 and server.requests == []
    assert "not released" in lines[0] and "TLS verification" in lines[0]


def test_the_current_context_is_the_one_used(program, capsys, tmp_path, apiserver, ca, client_pem):
    doc = kubeconfig(apiserver.url, ca.cert_pem, *client_pem, user="kcm")
    doc["clusters"].insert(
        0,
        {
            "name": "decoy",
            "cluster": {
                "server": f"https://127.0.0.1:{free_port()}",
                "certificate-authority-data": doc["clusters"][0]["cluster"]["certificate-authority-data"],
            },
        },
    )
    doc["contexts"].insert(0, {"name": "decoy", "context": {"cluster": "decoy", "user": "kcm"}})
    kcfg = tmp_path / "two-contexts.kubeconfig"
    kcfg.write_text(json.dumps(doc))
    apiserver.lease = lease("master-1_aaaa")

    code, lines, _ = run(program, capsys, kcfg)

    assert code == 0 and apiserver.lease["spec"]["holderIdentity"] == "", lines


def test_the_client_key_is_never_written_to_a_file(program, capsys, kcfg, apiserver, monkeypatch, tmp_path):
    apiserver.lease = lease("master-1_aaaa")

    def no_files(*args, **kwargs):
        raise AssertionError("the client key went to a temporary file")

    monkeypatch.setattr(program.tempfile, "mkdtemp", no_files)
    opened = []
    real_open = program.os.open
    monkeypatch.setattr(program.os, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))

    code, lines, _ = run(program, capsys, kcfg)

    assert code == 0 and apiserver.lease["spec"]["holderIdentity"] == "", lines
    assert opened == []


def test_without_memfd_the_key_lives_in_a_private_temp_dir_only_while_ssl_loads_it(
    program, capsys, kcfg, apiserver, monkeypatch, tmp_path
):
    apiserver.lease = lease("master-1_aaaa")
    seen = []

    def no_memfd(name):
        raise PermissionError(1, "Operation not permitted")  # what a seccomp filter answers

    def load_cert_chain(self, certfile, keyfile):
        seen.append(
            (
                oct(os.stat(keyfile).st_mode & 0o777),
                oct(os.stat(os.path.dirname(keyfile)).st_mode & 0o777),
                os.path.dirname(keyfile),
            )
        )
        real_load(self, certfile, keyfile)

    real_load = program.ssl.SSLContext.load_cert_chain
    monkeypatch.setattr(program.os, "memfd_create", no_memfd)
    monkeypatch.setattr(program.ssl.SSLContext, "load_cert_chain", load_cert_chain)
    monkeypatch.setattr(program.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    code, lines, _ = run(program, capsys, kcfg)

    assert code == 0 and apiserver.lease["spec"]["holderIdentity"] == "", lines
    [(key_mode, dir_mode, directory)] = seen
    assert (key_mode, dir_mode) == ("0o600", "0o700")
    assert not os.path.exists(directory) and list((tmp_path / "tmp").iterdir()) == []


def test_as_the_unit_runs_it_exit_0_and_one_line(tmp_path, kcfg, apiserver, kcm_release_module):
    apiserver.lease = lease("master-1_aaaa", rv="5")
    config = release_config(kcm_release_module, identity="master-1")
    config["files"].update(release_program=str(PROGRAM), kubeconfig=str(kcfg))
    argv = release_argv(kcm_release_module, config, python=sys.executable)

    proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)

    assert proc.returncode == 0 and proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 1 and "released" in proc.stdout
    assert apiserver.lease["spec"]["holderIdentity"] == ""

    bad = subprocess.run(
        [sys.executable, "-I", str(PROGRAM), "--no-such-flag"], capture_output=True, text=True, timeout=10, check=False
    )
    assert bad.returncode == 0 and bad.stdout.splitlines()[-1] == "kcm-release-lease: bad arguments: Lease not released"


# ---------------------------------------------------------------------------------------------
# kcm_release: which command, and when none


@pytest.fixture
def configure_loader_modules(kcm_flags):
    return {
        KCM_RELEASE: {
            "__salt__": {"kcm_flags.minor": kcm_flags.minor},
            "__utils__": kcm_flags.__utils__,
            "__grains__": {"pythonexecutable": "/opt/saltstack/salt/bin/python3.10"},
        }
    }


@pytest.fixture
def kcm_release_module():
    return KCM_RELEASE


def release_config(module, version="v1.37.2", **over):
    defaults = yaml.safe_load((REPO / "formula/kcm/defaults.yaml").read_text())["kcm"]
    config = dict(defaults, version=version, bind_address="127.0.0.1")
    for key, value in over.items():
        config[key] = dict(config[key], **value) if isinstance(config.get(key), dict) else value
    config["files"] = {
        "release_program": "/data/apps/k8s/kubernetes/libexec/kcm-release-lease",
        "kubeconfig": "/etc/k8s/kubeconfig/kube-controller-manager.kubeconfig",
        "cert": "c",
        "key": "k",
        "ca_cert": "ca",
        "signer_cert": "s",
        "signer_key": "sk",
        "service_account_key": "sa",
    }
    return config


def release_argv(module, config, python=None):
    """The release step's argv as systemd splits the unit's ``ExecStopPost=`` line."""
    line = module.exec_line(config, python=python)
    return module.__utils__["kcm_systemd.split_command"](line) if line else []


def test_the_command_uses_the_minions_python_and_kcms_kubeconfig(kcm_release_module):
    argv = release_argv(kcm_release_module, release_config(kcm_release_module))

    assert argv == [
        "/opt/saltstack/salt/bin/python3.10",
        "-I",
        "/data/apps/k8s/kubernetes/libexec/kcm-release-lease",
        "--kubeconfig",
        "/etc/k8s/kubeconfig/kube-controller-manager.kubeconfig",
        "--namespace",
        "kube-system",
        "--name",
        "kube-controller-manager",
        "--budget",
        "2",
    ]


def test_identity_and_a_renamed_lock_reach_the_command(kcm_release_module):
    config = release_config(
        kcm_release_module,
        identity="k8s-01.example",
        extra_args={"leader-elect-resource-name": "kcm-ha", "leader-elect-resource-namespace": "ha"},
    )

    argv = release_argv(kcm_release_module, config)

    assert argv[argv.index("--name") + 1] == "kcm-ha" and argv[argv.index("--namespace") + 1] == "ha"
    assert argv[-2:] == ["--identity", "k8s-01.example"]


@pytest.mark.parametrize(
    "version, over",
    [
        ("v1.37.2", {"leader_election": {"release_on_exit": False}}),
        ("v1.37.2", {"extra_args": {"leader-elect": False}}),
        ("v1.14.2", {}),  # Endpoints lock
        ("v1.19.16", {}),  # Endpoints + Lease (MultiLock)
        ("v1.24.0", {"extra_args": {"leader-elect-resource-lock": "endpointsleases"}}),
    ],
)
def test_no_release_step_when_off_or_the_lock_is_not_a_lease(kcm_release_module, version, over):
    config = release_config(kcm_release_module, version=version, **over)

    assert release_argv(kcm_release_module, config) == []
    assert kcm_release_module.exec_line(config) == ""


def test_leases_from_v1_20_get_the_step(kcm_release_module):
    assert release_argv(kcm_release_module, release_config(kcm_release_module, version="v1.20.0"))


def test_the_exec_line_is_quoted_for_systemd(kcm_release_module):
    config = release_config(kcm_release_module, identity="host 1")
    config["files"]["kubeconfig"] = "/etc/k8s/100%/$HOME/kcm.kubeconfig"

    line = kcm_release_module.exec_line(config, python="/usr/bin/python3")

    assert line.startswith("/usr/bin/python3 -I /data/apps/k8s/kubernetes/libexec/kcm-release-lease --kubeconfig ")
    assert "/etc/k8s/100%%/$$HOME/kcm.kubeconfig" in line
    assert line.endswith('--identity "host 1"')
