"""kcm_api against a real HTTPS server on 127.0.0.1 made here: TLS verification, client
certificates and tokens, the error each failure maps to, connection reuse, and what is left
on disk of the key material.  Also ``kcm.leader``/``kcm.health`` wired to the real client."""

import base64
import http.server
import json
import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from salt.exceptions import CommandExecutionError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from kcmlab import formula  # noqa: E402
from kcmlab.pki import CertificateAuthority, server_context  # noqa: E402

LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager"
KCM_CN = "system:kube-controller-manager"
TOKEN = "s3cr3t-bearer-token-value"


UTILS = formula.utils()
KCM_API = formula.load("_modules", "kcm_api")
KCM = formula.load("_modules", "kcm")
KCM_LOCAL = formula.load("_modules", "kcm_local")
KCM_RELEASE = formula.load("_modules", "kcm_release")


@pytest.fixture
def deployed():
    """The deployed facts kcm.* reads; the ``kcm`` fixture fills in the files."""
    return {"identity": "", "secure_port": None, "bind_address": "0.0.0.0", "files": {}}


@pytest.fixture
def configure_loader_modules(deployed):
    salt = {
        "kcm_api.get": KCM_API.get,
        "kcm_api.probe": KCM_API.probe,
        "kcm_config.deployed": lambda: deployed,
        "kcm.leader": KCM.leader,
        "kcm.health": KCM_LOCAL.health,
        # These facts name no release: KCM's default lock, a Lease or the Endpoints of v1.14-v1.16.
        "kcm_release.lock": lambda config: KCM_RELEASE.lock({}),
    }
    dunders = {
        "__salt__": salt,
        "__opts__": {"id": "master-1", "file_client": "local"},
        "__grains__": {"id": "master-1"},
        "__pillar__": {},
        "__context__": {},
        "__utils__": UTILS,
    }
    return {KCM_API: {"__salt__": {}, "__utils__": UTILS}, KCM: dunders, KCM_LOCAL: dunders}


def _lease(holder="master-2_0b8e5c1a-6a1f-4d1e-9d55-3a3f3f0e2a11", renew=None):
    renew = renew or time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "kube-controller-manager", "namespace": "kube-system", "resourceVersion": "812"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-11-26T18:00:00.000000Z",
            "renewTime": renew,
            "leaseTransitions": 3,
        },
    }


def _status(code, reason):
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is observable

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        peer = self.connection.getpeercert() or {}
        cn = dict(x[0] for x in peer.get("subject", ())).get("commonName")
        server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "cn": cn})
        route = server.routes.get(self.path)
        if route is None:
            status, body = 404, json.dumps(_status(404, "NotFound"))
        else:
            status, body = route
        if status == "sleep":
            time.sleep(float(body))
            status, body = 200, "{}"
        if status in ("drip-head", "drip-body", "unsized"):
            return self._misbehave(status, body)
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _misbehave(self, how, body):
        """An answer no well-behaved apiserver gives: the status line and headers or the body
        a byte every 0.5 s (so that every single read finishes well inside any timeout), or a
        body with no length that only ends when the connection does."""
        data = body.encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        try:
            if how == "unsized":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
                self.wfile.write(data)
                self.close_connection = True
                return
            drip, rest = (head.encode() + data, b"") if how == "drip-head" else (data, head.encode())
            self.wfile.write(rest)
            self.wfile.flush()
            for byte in drip:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:  # the client gave up, as it should
            self.close_connection = True

    def log_message(self, *args):
        pass


class TLSServer(http.server.ThreadingHTTPServer):
    """An HTTPS server on 127.0.0.1 that counts accepted TLS connections."""

    daemon_threads = True

    def __init__(self, tmp_path, ca, names=("127.0.0.1",), client_ca=None):
        super().__init__(("127.0.0.1", 0), _Handler)
        context = server_context(tmp_path, ca, names, client_ca=client_ca)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.routes = {}
        self.seen = []
        self.connections = 0
        self.port = self.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"

    def get_request(self):
        request = super().get_request()
        self.connections += 1
        return request


@pytest.fixture
def server(tmp_path, ca):
    srv = TLSServer(tmp_path, ca, client_ca=ca)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def kcm_api():
    yield KCM_API
    KCM_API._close_all()


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def write_kubeconfig(path, server_url, ca_pem=None, cert_pem=None, key_pem=None, user=None, cluster=None):
    cluster = dict(cluster or {}, server=server_url)
    if ca_pem:
        cluster["certificate-authority-data"] = _b64(ca_pem)
    user = dict(user or {})
    if cert_pem:
        user["client-certificate-data"] = _b64(cert_pem)
        user["client-key-data"] = _b64(key_pem)
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubernetes", "cluster": cluster}],
        "users": [{"name": "kcm", "user": user}],
        "contexts": [{"name": "default", "context": {"cluster": "kubernetes", "user": "kcm"}}],
        "current-context": "default",
    }
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture
def kubeconfig(tmp_path, server, ca, client_pem):
    return write_kubeconfig(tmp_path / "kcm.kubeconfig", server.url, ca.cert_pem, *client_pem)


def _reason(excinfo):
    return excinfo.value.info["reason"]


# ---------------------------------------------------------------------------------------------
# Reading the Lease with each credential form


def test_get_returns_the_object_and_presents_the_embedded_client_cert(kcm_api, server, kubeconfig):
    server.routes[LEASE_PATH] = (200, json.dumps(_lease()))

    obj = kcm_api.get(LEASE_PATH, kubeconfig=kubeconfig)

    assert obj["spec"]["holderIdentity"].startswith("master-2_")
    assert server.seen[-1]["cn"] == KCM_CN


def test_file_path_forms_resolve_relative_to_the_kubeconfig(kcm_api, server, tmp_path, ca, client_pem):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "ca.pem").write_text(ca.cert_pem)
    (conf / "kcm.pem").write_text(client_pem[0])
    (conf / "kcm-key.pem").write_text(client_pem[1])
    path = write_kubeconfig(
        conf / "kubeconfig",
        server.url,
        cluster={"certificate-authority": "ca.pem"},
        user={"client-certificate": "kcm.pem", "client-key": str(conf / "kcm-key.pem")},
    )
    server.routes["/version"] = (200, '{"gitVersion": "v1.37.2"}')

    assert kcm_api.get("/version", kubeconfig=path) == {"gitVersion": "v1.37.2"}
    assert server.seen[-1]["cn"] == KCM_CN


def test_bearer_token_is_sent(kcm_api, server, tmp_path, ca):
    path = write_kubeconfig(tmp_path / "kc", server.url, ca.cert_pem, user={"token": TOKEN})
    server.routes["/version"] = (200, "{}")

    kcm_api.get("/version", kubeconfig=path)

    assert server.seen[-1]["auth"] == f"Bearer {TOKEN}"
    assert server.seen[-1]["cn"] is None


def test_a_token_file_is_never_read_nor_sent(kcm_api, server, tmp_path, ca):
    # H3 e: root read the tokenFile a kubeconfig named and sent it to the kubeconfig's server
    (tmp_path / "token").write_text(TOKEN + "\n")
    path = write_kubeconfig(tmp_path / "kc", server.url, ca.cert_pem, user={"tokenFile": str(tmp_path / "token")})
    server.routes["/version"] = (200, "{}")

    with pytest.raises(CommandExecutionError, match="tokenFile is not supported"):
        kcm_api.get("/version", kubeconfig=path)
    assert not any(seen.get("auth") for seen in server.seen)


def test_a_kubeconfig_someone_else_owns_or_a_fifo_is_refused_at_once(kcm_api, server, tmp_path, ca):
    # H3 e: a kubeconfig or a file it names that the KCM user can change is not root's to read;
    # a FIFO planted as a file must not hang the reader
    path = write_kubeconfig(tmp_path / "kc", server.url, ca.cert_pem)
    os.chown(path, 65534, 65534)
    with pytest.raises(CommandExecutionError, match="owned by uid 65534"):
        kcm_api.get("/version", kubeconfig=path)
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    named = write_kubeconfig(
        tmp_path / "kc2", server.url, ca.cert_pem, user={"client-certificate": str(fifo), "client-key": str(fifo)}
    )
    started = time.monotonic()
    with pytest.raises(CommandExecutionError, match="not a regular file"):
        kcm_api.get("/version", kubeconfig=named)
    assert time.monotonic() - started < 5
    assert not server.seen


# ---------------------------------------------------------------------------------------------
# Error mapping


@pytest.mark.parametrize(
    "status, body, reason",
    [
        (401, json.dumps(_status(401, "Unauthorized")), "unauthorized"),
        (403, json.dumps(_status(403, "Forbidden")), "forbidden"),
        (404, json.dumps(_status(404, "NotFound")), "not_found"),
        (500, json.dumps(_status(500, "InternalError")), "http"),
        (200, "<html>not json</html>", "malformed"),
        (200, "[1, 2]", "malformed"),
    ],
)
def test_http_failures_map_to_a_short_reason(kcm_api, server, tmp_path, ca, status, body, reason):
    path = write_kubeconfig(tmp_path / "kc", server.url, ca.cert_pem, user={"token": TOKEN})
    server.routes[LEASE_PATH] = (status, body)

    with pytest.raises(CommandExecutionError) as excinfo:
        kcm_api.get(LEASE_PATH, kubeconfig=path)

    assert _reason(excinfo) == reason
    assert str(excinfo.value).startswith(f"{reason}: GET https://127.0.0.1:")
    assert TOKEN not in str(excinfo.value)


def test_a_server_signed_by_another_ca_is_refused(kcm_api, server, tmp_path, client_pem):
    other = CertificateAuthority("someone-else")
    path = write_kubeconfig(tmp_path / "kc", server.url, other.cert_pem, *client_pem)

    with pytest.raises(CommandExecutionError) as excinfo:
        kcm_api.get("/version", kubeconfig=path)

    assert _reason(excinfo) == "tls"
    assert "certificate verify failed" in str(excinfo.value)
    assert server.seen == []


def test_a_certificate_for_another_host_is_refused(kcm_api, tmp_path, ca):
    srv = TLSServer(tmp_path, ca, names=("apiserver.example.org",))
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        path = write_kubeconfig(tmp_path / "kc", srv.url, ca.cert_pem, user={"token": TOKEN})
        with pytest.raises(CommandExecutionError) as excinfo:
            kcm_api.get("/version", kubeconfig=path)
    finally:
        srv.shutdown()
        srv.server_close()
    assert _reason(excinfo) == "tls"
    assert srv.seen == []


def test_public_cas_are_not_trusted_for_a_kubeconfig_with_its_own_ca(kcm_api, server, tmp_path, ca):
    # The context must hold exactly the kubeconfig's CA: a request through it lists one CA.
    path = write_kubeconfig(tmp_path / "kc", server.url, ca.cert_pem, user={"token": TOKEN})
    server.routes["/version"] = (200, "{}")
    kcm_api.get("/version", kubeconfig=path)

    adapter = kcm_api._CLIENTS[os.path.realpath(path)].session.get_adapter(server.url)
    assert len(adapter._ssl_context.get_ca_certs()) == 1


def test_a_closed_port_is_unreachable(kcm_api, tmp_path, ca):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write_kubeconfig(tmp_path / "kc", f"https://127.0.0.1:{port}", ca.cert_pem, user={"token": TOKEN})

    with pytest.raises(CommandExecutionError) as excinfo:
        kcm_api.get("/version", kubeconfig=path)

    assert _reason(excinfo) == "unreachable"


def test_a_server_that_does_not_answer_times_out(kcm_api, server, tmp_path, ca):
    path = write_kubeconfig(tmp_path / "kc", server.url, ca.cert_pem, user={"token": TOKEN})
    server.routes["/slow"] = ("sleep", "1.5")

    with pytest.raises(CommandExecutionError) as excinfo:
        kcm_api.get("/slow", kubeconfig=path, timeout=0.3)

    assert _reason(excinfo) == "timeout"


def test_a_listener_that_never_completes_tls_times_out(kcm_api, tmp_path, ca):
    with socket.socket() as sock:  # accepts into the backlog, never speaks TLS
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        path = write_kubeconfig(tmp_path / "kc", url, ca.cert_pem, user={"token": TOKEN})
        with pytest.raises(CommandExecutionError) as excinfo:
            kcm_api.get("/version", kubeconfig=path, timeout=0.3)

    assert _reason(excinfo) == "timeout"


# A server that answers a byte at a time (M4 of the second audit): every read returns within
# the timeout, so only a deadline for the whole request bounds it. Dripping the 64-byte body
# (or the ~90 bytes of head) takes 30 s or more; the bound below is a generous "it stopped".
DRIP = json.dumps({"kind": "Status", "padding": "x" * 32})


@pytest.mark.parametrize("how", ["drip-head", "drip-body"])
def test_a_dripping_server_cannot_hold_a_request_past_its_timeout(kcm_api, server, tmp_path, ca, how):
    path = write_kubeconfig(tmp_path / "kc", server.url, ca.cert_pem, user={"token": TOKEN})
    server.routes["/drip"] = (how, DRIP)

    started = time.monotonic()
    with pytest.raises(CommandExecutionError) as excinfo:
        kcm_api.get("/drip", kubeconfig=path, timeout=2)
    took = time.monotonic() - started

    assert _reason(excinfo) == "timeout"
    assert took < 6, f"a 2 s request took {took:.1f} s"


def test_a_dripping_apiserver_cannot_hold_kcm_leader(kcm, server):
    server.routes[LEASE_PATH] = ("drip-body", json.dumps(_lease()))

    started = time.monotonic()
    with pytest.raises(CommandExecutionError) as excinfo:
        kcm["kcm.leader"](timeout=2)

    assert _reason(excinfo) == "timeout"
    assert time.monotonic() - started < 6


@pytest.mark.parametrize("how", [200, "unsized"])
def test_a_body_over_the_cap_is_refused(kcm_api, server, tmp_path, ca, how):
    path = write_kubeconfig(tmp_path / "kc", server.url, ca.cert_pem, user={"token": TOKEN})
    big = json.dumps({"kind": "Lease", "padding": "x" * (kcm_api.MAX_BODY + 1)})
    server.routes["/big"] = (how, big)

    with pytest.raises(CommandExecutionError) as excinfo:
        kcm_api.get("/big", kubeconfig=path, timeout=10)

    assert _reason(excinfo) == "too_large"
    assert "x" * 64 not in str(excinfo.value)


def test_a_body_under_the_cap_is_read_whole(kcm_api, server, tmp_path, ca):
    path = write_kubeconfig(tmp_path / "kc", server.url, ca.cert_pem, user={"token": TOKEN})
    body = {"kind": "Lease", "padding": "x" * (kcm_api.MAX_BODY // 2)}
    server.routes["/unsized"] = ("unsized", json.dumps(body))

    assert kcm_api.get("/unsized", kubeconfig=path, timeout=10) == body


@pytest.mark.parametrize(
    "cluster, user, expected",
    [
        ({"insecure-skip-tls-verify": True}, {"token": TOKEN}, "insecure-skip-tls-verify"),
        ({"certificate-authority-data": "***not base64***"}, {"token": TOKEN}, "certificate-authority-data"),
        ({}, {"client-certificate-data": _b64("x")}, "both its certificate and its key"),
        ({}, {"exec": {"command": "aws"}}, "exec"),
    ],
)
def test_kubeconfig_problems_are_named(kcm_api, tmp_path, cluster, user, expected):
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", user=user, cluster=cluster)

    with pytest.raises(CommandExecutionError) as excinfo:
        kcm_api.get("/version", kubeconfig=path)

    assert _reason(excinfo) == "kubeconfig"
    assert expected in str(excinfo.value)


def test_plain_http_servers_are_refused(kcm_api, tmp_path):
    path = write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:8080", user={"token": TOKEN})

    with pytest.raises(CommandExecutionError, match="https://"):
        kcm_api.get("/version", kubeconfig=path)


def test_a_missing_kubeconfig_is_named(kcm_api, tmp_path):
    with pytest.raises(CommandExecutionError, match="nope.kubeconfig: cannot read it") as excinfo:
        kcm_api.get("/version", kubeconfig=str(tmp_path / "nope.kubeconfig"))
    assert _reason(excinfo) == "kubeconfig"


def test_a_bad_client_key_is_reported_without_its_bytes(kcm_api, tmp_path, ca, client_pem):
    bogus_key = "-----BEGIN PRIVATE KEY-----\nTUlJQkdPR1VTS0VZTUFURVJJQUw=\n-----END PRIVATE KEY-----\n"
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", ca.cert_pem, client_pem[0], bogus_key)

    with pytest.raises(CommandExecutionError) as excinfo:
        kcm_api.get("/version", kubeconfig=path)

    assert _reason(excinfo) == "kubeconfig"
    assert "TUlJQkdPR1VTS0VZTUFURVJJQUw" not in str(excinfo.value)
    assert _b64(bogus_key) not in str(excinfo.value)


# ---------------------------------------------------------------------------------------------
# One session per kubeconfig: connection reuse and key material on disk


def test_calls_in_one_process_share_one_tls_connection(kcm_api, server, kubeconfig):
    server.routes[LEASE_PATH] = (200, json.dumps(_lease()))

    for _ in range(5):
        kcm_api.get(LEASE_PATH, kubeconfig=kubeconfig)

    assert len(server.seen) == 5
    assert server.connections == 1


def test_a_rewritten_kubeconfig_gets_a_new_session(kcm_api, server, kubeconfig):
    server.routes[LEASE_PATH] = (200, json.dumps(_lease()))
    kcm_api.get(LEASE_PATH, kubeconfig=kubeconfig)
    first = kcm_api._CLIENTS[os.path.realpath(kubeconfig)]

    stamp = os.stat(kubeconfig).st_mtime_ns + 1_000_000_000
    os.utime(kubeconfig, ns=(stamp, stamp))
    kcm_api.get(LEASE_PATH, kubeconfig=kubeconfig)

    assert kcm_api._CLIENTS[os.path.realpath(kubeconfig)] is not first
    assert server.connections == 2


def test_embedded_key_is_0600_in_a_private_dir_and_removed(kcm_api, server, kubeconfig, client_pem, monkeypatch):
    seen = []
    real_load = kcm_api._load_cert_chain

    def spy(context, certfile, keyfile):
        seen.append(
            {
                "dir": os.path.dirname(keyfile),
                "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(keyfile)).st_mode),
                "key_mode": stat.S_IMODE(os.stat(keyfile).st_mode),
                "key_text": open(keyfile, encoding="ascii").read(),
            }
        )
        real_load(context, certfile, keyfile)

    monkeypatch.setattr(kcm_api, "_load_cert_chain", spy)
    server.routes["/version"] = (200, "{}")

    kcm_api.get("/version", kubeconfig=kubeconfig)
    kcm_api.get("/version", kubeconfig=kubeconfig)

    assert len(seen) == 1, "the key is loaded once per session"
    assert seen[0]["key_mode"] == 0o600
    assert seen[0]["dir_mode"] == 0o700
    assert seen[0]["key_text"] == client_pem[1]
    assert not os.path.exists(seen[0]["dir"]), "the key's temp dir must be gone once the session holds the key"
    assert server.seen[-1]["cn"] == KCM_CN  # and the session still authenticates with it


def test_no_key_dir_is_left_when_loading_fails(kcm_api, tmp_path, ca, client_pem, monkeypatch):
    dirs = []
    real_mkdtemp = kcm_api.tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        dirs.append(real_mkdtemp(*args, **kwargs))
        return dirs[-1]

    monkeypatch.setattr(kcm_api.tempfile, "mkdtemp", recording_mkdtemp)
    other_key = CertificateAuthority("x").issue("y", client=True)[1]  # does not match the cert
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", ca.cert_pem, client_pem[0], other_key)

    with pytest.raises(CommandExecutionError):
        kcm_api.get("/version", kubeconfig=path)

    assert dirs and not any(os.path.exists(d) for d in dirs)


# ---------------------------------------------------------------------------------------------
# probe (used by kcm.health)


def test_probe_returns_status_and_body_and_verifies_the_ca(kcm_api, server, tmp_path, ca):
    (tmp_path / "ca.pem").write_text(ca.cert_pem)
    server.routes["/healthz?verbose"] = (500, "[+]ping ok\n[-]leaderElection failed: reason withheld\n")

    reply = kcm_api.probe(f"{server.url}/healthz?verbose", ca_cert=str(tmp_path / "ca.pem"))

    assert reply["status"] == 500
    assert "[-]leaderElection failed" in reply["body"]
    (tmp_path / "other.pem").write_text(CertificateAuthority("other").cert_pem)
    with pytest.raises(CommandExecutionError) as excinfo:
        kcm_api.probe(f"{server.url}/healthz", ca_cert=str(tmp_path / "other.pem"))
    assert _reason(excinfo) == "tls"


# ---------------------------------------------------------------------------------------------
# kcm.* through the real client


@pytest.fixture
def kcm(kcm_api, tmp_path, kubeconfig, ca, deployed, configure_loader_modules):
    """``kcm.*`` (both files of the module) on the real client."""
    (tmp_path / "ca.pem").write_text(ca.cert_pem)
    deployed["files"].update(kubeconfig=kubeconfig, ca_cert=str(tmp_path / "ca.pem"))
    return configure_loader_modules[KCM]["__salt__"]


def test_kcm_leader_reads_the_lease_through_the_client(kcm, server):
    server.routes[LEASE_PATH] = (200, json.dumps(_lease()))

    result = kcm["kcm.leader"]()

    assert result["holder"].startswith("master-2_")
    assert result["node"] == "master-2"
    assert result["source"] == "lease"
    assert result["expired"] is False
    assert "retcode" not in KCM.__context__


def test_kcm_leader_falls_back_to_endpoints_over_the_wire(kcm, server):
    record = {
        "holderIdentity": "k8s-01_x",
        "leaseDurationSeconds": 15,
        "acquireTime": "2019-06-01T10:00:00Z",
        "renewTime": "2019-06-01T10:05:00Z",
        "leaderTransitions": 0,
    }
    endpoints = {
        "kind": "Endpoints",
        "metadata": {"annotations": {"control-plane.alpha.kubernetes.io/leader": json.dumps(record)}},
    }
    server.routes["/api/v1/namespaces/kube-system/endpoints/kube-controller-manager"] = (200, json.dumps(endpoints))

    result = kcm["kcm.leader"]()

    assert (result["source"], result["node"], result["expired"]) == ("endpoints", "k8s-01", True)
    assert [s["path"] for s in server.seen] == [
        LEASE_PATH,
        "/api/v1/namespaces/kube-system/endpoints/kube-controller-manager",
    ]


def test_kcm_leader_reports_an_unreachable_apiserver(kcm, tmp_path, ca):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write_kubeconfig(tmp_path / "dead", f"https://127.0.0.1:{port}", ca.cert_pem, user={"token": TOKEN})

    with pytest.raises(CommandExecutionError) as excinfo:
        kcm["kcm.leader"](kubeconfig=path)

    assert _reason(excinfo) == "unreachable"
    assert str(excinfo.value) == f"unreachable: GET https://127.0.0.1:{port}{LEASE_PATH}: Connection refused"


def test_kcm_health_parses_the_verbose_checks(kcm, server):
    server.routes["/healthz?verbose"] = (200, "[+]leaderElection ok\nhealthz check passed\n")

    result = kcm["kcm.health"](secure_port=server.port)

    assert result["healthy"] is True
    assert result["checks"] == {"leaderElection": "ok"}
    assert result["url"] == f"https://127.0.0.1:{server.port}/healthz?verbose"
