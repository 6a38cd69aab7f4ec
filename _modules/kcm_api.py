"""
A small, verified-TLS client for the Kubernetes API, driven by a kubeconfig.

It exists so that ``kcm.*`` and the leader beacon can read one object (the KCM Lease)
with what a Salt onedir already ships (``requests``, ``PyYAML``, stdlib ``ssl``), and
without a ``kubectl`` subprocess per question.

What it does:

- reads the kubeconfig's current context: ``certificate-authority-data`` or
  ``certificate-authority``; ``client-certificate-data``/``client-key-data`` or the
  file-path forms; a bearer ``token`` (never a ``tokenFile``: root would read a file the
  kubeconfig names and send it away). Root runs this, so the kubeconfig and every file it
  names are read only when they are regular files of root's in directories only root may
  write (``kcm_kubeconfig.read_trusted``: no symlink, no FIFO, bounded size);
- always verifies the server certificate (chain and host name) against the
  kubeconfig's CA (or the system store when it names none); a kubeconfig asking for
  ``insecure-skip-tls-verify`` is refused;
- keeps one ``requests.Session`` per (kubeconfig path, mtime) for the life of the
  process, so repeated calls reuse one kept-alive TLS connection; a rewritten
  kubeconfig gets a fresh session;
- embedded client keys are written to a 0600 file in a private 0700
  ``tempfile.mkdtemp()`` directory only for as long as ``ssl`` needs a path to load
  them into the session's TLS context, then the directory is removed (so a process
  killed later, or a minion job ending with ``os._exit``, leaves nothing behind);
- bounds every request as a whole: one deadline covers connect, TLS, the headers and the
  body (a watchdog shuts the socket down when it passes, so a server that drips its answer
  a byte at a time cannot hold the caller, the kcm_leader beacon in salt-minion's main loop
  included), and a body larger than ``MAX_BODY`` bytes is refused;
- raises ``CommandExecutionError`` for every failure, with ``info`` holding a short
  ``reason`` (and the HTTP ``status`` when there was one): ``unreachable``,
  ``timeout``, ``tls``, ``unauthorized`` (401), ``forbidden`` (403), ``not_found``
  (404), ``http`` (other statuses), ``too_large`` (body over ``MAX_BODY``),
  ``malformed`` (not a JSON object), ``kubeconfig``.
  Messages never contain key material or tokens.
"""

import atexit
import base64
import binascii
import json
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time

import requests
import requests.adapters
import urllib3

log = logging.getLogger(__name__)

__virtualname__ = "kcm_api"

# Seconds one request may take as a whole: the beacon runs in the minion's main loop, so a
# stuck or dripping apiserver must cost seconds, not minutes.
DEFAULT_TIMEOUT = 2.0
# Bytes of body read at most: a Lease, /version or /healthz?verbose is a few KiB; anything
# this large is not an answer this client asked for.
MAX_BODY = 4 * 1024 * 1024
_CHUNK = 16 * 1024

# The connections the requests of this thread use, so that the request's watchdog can shut
# them down when its deadline passes (a socket timeout alone applies to each read, which a
# server sending a byte at a time never trips).
_IN_FLIGHT = threading.local()

# path -> _Client; one live client per kubeconfig path (its mtime is part of the client).
_CLIENTS = {}
_CLIENTS_LOCK = threading.Lock()
# (CA file, mtime) -> session for plain HTTPS probes (the KCM's own /healthz).
_PROBES = {}


def __virtual__():
    return __virtualname__


class _WatchedPool(urllib3.HTTPSConnectionPool):
    """A pool that tells the current request's watchdog which connection it hands out."""

    def _get_conn(self, *args, **kwargs):
        conn = super()._get_conn(*args, **kwargs)
        watched = getattr(_IN_FLIGHT, "conns", None)
        if watched is not None:
            watched.append(conn)
        return conn


class _PinnedContextAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose every connection uses one prepared ``ssl.SSLContext``."""

    def __init__(self, ssl_context, **kwargs):
        self._ssl_context = ssl_context
        super().__init__(pool_connections=1, pool_maxsize=2, max_retries=0, **kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self.poolmanager.pool_classes_by_scheme, https=_WatchedPool)

    def cert_verify(self, conn, url, verify, cert):
        # requests would otherwise add its own CA bundle to our context and so
        # trust public CAs for a private cluster; the context alone decides.
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None


class _Client:
    """One session for one kubeconfig as it was at ``mtime``."""

    def __init__(self, path, mtime, server, session):
        self.path = path
        self.mtime = mtime
        self.server = server
        self.session = session

    def close(self):
        self.session.close()


def _failed(reason, detail, status=None):
    """The error of every failed call: reason and status in ``info`` (``_utils/kcm_error.py``)."""
    return __utils__["kcm_error.failure"](reason, detail, status=status)  # noqa: F821


def _kubeconfig_error(path, what):
    return _failed("kubeconfig", f"{path}: {what}")


def _decoded(path, key, value):
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise _kubeconfig_error(path, f"{key} is not valid base64") from None


def _relative(path, value):
    # kubectl resolves relative file references against the kubeconfig's directory.
    return value if os.path.isabs(value) else os.path.join(os.path.dirname(path), value)


def _write_private(directory, name, data):
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return os.path.join(directory, name)


def _load_cert_chain(context, certfile, keyfile):
    # A seam for the tests, which check the key file's mode at the moment ssl reads it.
    context.load_cert_chain(certfile, keyfile)


def _verifying_context():
    """Chain and host name checked; trusts nothing until a CA is loaded into it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _ssl_context(path, cluster, user):
    """A verifying TLS context with the kubeconfig's CA and client certificate."""
    if cluster.get("insecure-skip-tls-verify"):
        raise _kubeconfig_error(
            path, "insecure-skip-tls-verify is set; this client always verifies TLS (give certificate-authority-data)"
        )
    if cluster.get("tls-server-name"):
        raise _kubeconfig_error(path, "tls-server-name is not supported; use a server URL the certificate names")
    context = _verifying_context()
    try:
        if cluster.get("certificate-authority-data"):
            pem = _decoded(path, "certificate-authority-data", cluster["certificate-authority-data"])
            context.load_verify_locations(cadata=pem.decode("ascii", "replace"))
        elif cluster.get("certificate-authority"):
            pem = _trusted(path, cluster["certificate-authority"])
            context.load_verify_locations(cadata=pem.decode("ascii", "replace"))
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise _kubeconfig_error(path, f"cannot load the cluster CA ({exc.__class__.__name__})") from None
    _add_client_cert(context, path, user)
    return context


def _add_client_cert(context, path, user):
    cert_data, key_data = user.get("client-certificate-data"), user.get("client-key-data")
    cert_file, key_file = user.get("client-certificate"), user.get("client-key")
    if not (cert_data or cert_file or key_data or key_file):
        return
    if not (cert_data or cert_file) or not (key_data or key_file):
        raise _kubeconfig_error(path, "a client certificate needs both its certificate and its key")
    tmpdir = tempfile.mkdtemp(prefix="kcm-api-")
    try:
        certfile = _write_private(
            tmpdir,
            "client.crt",
            _decoded(path, "client-certificate-data", cert_data) if cert_data else _trusted(path, cert_file),
        )
        keyfile = _write_private(
            tmpdir, "client.key", _decoded(path, "client-key-data", key_data) if key_data else _trusted(path, key_file)
        )
        _load_cert_chain(context, certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        # The exception text can quote file names but never key bytes.
        raise _kubeconfig_error(path, f"cannot load the client certificate/key ({exc.__class__.__name__})") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _trusted(path, value):
    """The bytes of a file the kubeconfig at ``path`` names, if root may trust it."""
    try:
        return __utils__["kcm_kubeconfig.read_trusted"](_relative(path, value))  # noqa: F821
    except ValueError as exc:
        raise _kubeconfig_error(path, str(exc)) from None


def _bearer(path, user):
    if user.get("tokenFile"):
        raise _kubeconfig_error(path, "tokenFile is not supported (give token or a client certificate)")
    return user.get("token") or None


def _build_client(path, mtime):
    try:
        cluster, user = __utils__["kcm_kubeconfig.current"](path)  # noqa: F821
    except ValueError as exc:
        raise _failed("kubeconfig", str(exc)) from None
    if user.get("exec") or user.get("auth-provider"):
        raise _kubeconfig_error(path, "exec and auth-provider credentials are not supported")
    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith("https://"):
        raise _kubeconfig_error(path, f"cluster server must be an https:// URL, got {server!r}")
    session = requests.Session()
    # No proxies, netrc or REQUESTS_CA_BUNDLE from the environment: the kubeconfig decides.
    session.trust_env = False
    session.mount("https://", _PinnedContextAdapter(_ssl_context(path, cluster, user)))
    session.headers["Accept"] = "application/json"
    # MAX_BODY counts what arrives: no compressed body that inflates past it.
    session.headers["Accept-Encoding"] = "identity"
    session.headers["User-Agent"] = "kcm-formula/kcm_api"
    token = _bearer(path, user)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return _Client(path, mtime, server, session)


def _client(kubeconfig):
    """The cached client for ``kubeconfig``, rebuilt when the file changed."""
    path = os.path.realpath(kubeconfig)
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as exc:
        raise _kubeconfig_error(kubeconfig, f"cannot read it ({exc.strerror})") from None
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(path)
        if client is not None and client.mtime == mtime:
            return client
        if client is not None:
            client.close()
            del _CLIENTS[path]
        client = _build_client(path, mtime)
        _CLIENTS[path] = client
        return client


def _close_all():
    with _CLIENTS_LOCK:
        for client in _CLIENTS.values():
            client.close()
        _CLIENTS.clear()
        for session in _PROBES.values():
            session.close()
        _PROBES.clear()


atexit.register(_close_all)


def _timeout(timeout):
    """``(connect, total)`` seconds: one number bounds both; ``[connect, read]`` bounds the
    connect by the first and the whole request by their sum."""
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    if isinstance(timeout, (list, tuple)):
        connect, read = float(timeout[0]), float(timeout[1])
        return connect, connect + read
    return float(timeout), float(timeout)


class _Watchdog:
    """Shuts down the sockets of this thread's request when ``seconds`` have passed."""

    def __init__(self, seconds):
        self.fired = False
        self._conns = []
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self):
        _IN_FLIGHT.conns = self._conns
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
        _IN_FLIGHT.conns = None

    def _fire(self):
        self.fired = True
        for conn in list(self._conns):
            sock = getattr(conn, "sock", None)
            if sock is None:
                continue
            try:
                # The plain socket's shutdown, not SSLSocket's: it only wakes the blocked
                # read in the other thread and leaves the TLS object to that thread.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


class _Answer:
    """What :func:`_send` returns: the status and at most ``MAX_BODY`` bytes of body."""

    def __init__(self, status_code, content, encoding):
        self.status_code = status_code
        self.content = content
        self.encoding = encoding or "utf-8"

    @property
    def text(self):
        return self.content.decode(self.encoding, "replace")

    def json(self):
        return json.loads(self.content)


def _read_body(response, url, deadline):
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise _failed(
            "too_large", f"GET {url}: the body has {declared} bytes, more than {MAX_BODY}", status=response.status_code
        )
    body = bytearray()
    for chunk in response.iter_content(_CHUNK):
        body += chunk
        if len(body) > MAX_BODY:
            raise _failed(
                "too_large", f"GET {url}: the body is larger than {MAX_BODY} bytes", status=response.status_code
            )
        if time.monotonic() > deadline:
            raise requests.exceptions.ReadTimeout()
    return bytes(body)


def _send(session, url, timeout):
    """GET ``url`` within one deadline; transport failures raise, any HTTP status is returned."""
    connect, total = _timeout(timeout)
    deadline = time.monotonic() + total
    watchdog = _Watchdog(total)
    try:
        with watchdog:
            response = session.get(url, timeout=(connect, total), allow_redirects=False, stream=True)
            try:
                return _Answer(response.status_code, _read_body(response, url, deadline), response.encoding)
            finally:
                response.close()
    except requests.exceptions.SSLError as exc:
        if watchdog.fired:
            raise _timed_out(url, total) from None
        raise _failed("tls", f"GET {url}: {_ssl_reason(exc)}") from None
    except requests.exceptions.Timeout:
        raise _timed_out(url, total) from None
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        # The watchdog's shutdown surfaces as a reset, an EOF or a protocol error.
        if watchdog.fired:
            raise _timed_out(url, total) from None
        if isinstance(exc, requests.exceptions.ConnectionError):
            raise _failed("unreachable", f"GET {url}: {_connect_reason(exc)}") from None
        raise _failed("unreachable", f"GET {url}: {exc.__class__.__name__}") from None


def _timed_out(url, total):
    return _failed("timeout", f"GET {url}: no complete answer within {total:g} s")


def _ssl_reason(exc):
    text = str(exc)
    for marker in ("certificate verify failed", "Hostname mismatch", "IP address mismatch", "wrong version number"):
        at = text.find(marker)
        if at != -1:
            return text[at : at + 120].split(")")[0].split("'")[0]
    return "TLS handshake failed"


def _connect_reason(exc):
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "Connection reset"):
        if marker in text:
            return marker
    return "connection failed"


_STATUS_REASONS = {401: "unauthorized", 403: "forbidden", 404: "not_found"}


def _checked_json(response, url):
    if response.status_code != 200:
        reason = _STATUS_REASONS.get(response.status_code, "http")
        raise _failed(reason, f"GET {url}: HTTP {response.status_code}", status=response.status_code)
    try:
        data = response.json()
    except ValueError:
        raise _failed("malformed", f"GET {url}: the body is not JSON", status=200) from None
    if not isinstance(data, dict):
        raise _failed("malformed", f"GET {url}: expected a JSON object", status=200)
    return data


def _default_kubeconfig():
    deployed = __salt__["kcm_config.deployed"]()
    path = (deployed.get("files") or {}).get("kubeconfig")
    if not path:
        raise _failed("kubeconfig", "no kubeconfig= given and no deployed kcm (run state.apply kcm first)")
    return path


def get(path, kubeconfig=None, timeout=None):
    """
    GET an API path and return the parsed JSON object: what ``kcm.leader``, ``kcm.cluster_id``
    and ``kcm_skew`` read, and a way to see what they see.

    path
        API path, e.g. ``/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager``.
    kubeconfig
        Kubeconfig file; default: the KCM kubeconfig of the deployed formula
        (``files.kubeconfig`` in the deployed facts).
    timeout
        Seconds the whole request may take, connect included (one number), or
        ``[connect, read]`` (the connect within the first, the whole request within their
        sum). Default 2.

    On failure it raises ``CommandExecutionError`` whose text starts with the short reason
    (``unreachable``, ``timeout``, ``tls``, ``unauthorized``, ``forbidden``, ``not_found``,
    ``http``, ``too_large``, ``malformed``, ``kubeconfig``; also ``info["reason"]`` and
    ``info["status"]``) and the call exits non-zero.

    CLI Example:

    .. code-block:: bash

        salt-call kcm_api.get /apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager
        salt 'master1' kcm_api.get /version kubeconfig=/root/.kube/config
    """
    client = _client(kubeconfig or _default_kubeconfig())
    url = client.server + "/" + path.lstrip("/")
    return _checked_json(_send(client.session, url, timeout), url)


def _probe_session(ca_cert):
    if not ca_cert:
        raise _failed("tls", "no CA certificate given to verify the server with (ca_cert=)")
    path = os.path.realpath(ca_cert)
    try:
        key = (path, os.stat(path).st_mtime_ns)
    except OSError as exc:
        raise _failed("tls", f"cannot read CA certificate {ca_cert} ({exc.strerror})") from None
    with _CLIENTS_LOCK:
        session = _PROBES.get(key)
        if session is None:
            for old in [k for k in _PROBES if k[0] == path]:
                _PROBES.pop(old).close()
            context = _verifying_context()
            try:
                pem = __utils__["kcm_kubeconfig.read_trusted"](path)  # noqa: F821
            except ValueError as exc:
                raise _failed("tls", f"cannot read CA certificate: {exc}") from None
            try:
                context.load_verify_locations(cadata=pem.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError):
                raise _failed("tls", f"{ca_cert} is not a PEM CA certificate") from None
            session = requests.Session()
            session.trust_env = False
            session.headers["Accept-Encoding"] = "identity"
            session.mount("https://", _PinnedContextAdapter(context))
            _PROBES[key] = session
        return session


def probe(url, ca_cert, timeout=None):
    """
    GET an https ``url`` verified against ``ca_cert`` (no client credentials) and
    return ``{"status": <HTTP status>, "body": <text>}`` whatever the status.

    ``kcm.health`` uses it for the KCM's ``/healthz?verbose``; transport and TLS
    failures raise like :func:`get`.

    CLI Example:

    .. code-block:: bash

        salt-call kcm_api.probe 'https://127.0.0.1:10257/healthz?verbose' ca_cert=/etc/k8s/ssl/ca.pem
    """
    if not str(url).startswith("https://"):
        raise _failed("tls", f"url must be https://, got {url!r}")
    response = _send(_probe_session(ca_cert), url, timeout)
    return {"status": response.status_code, "body": response.text}
