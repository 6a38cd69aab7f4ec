#!/usr/bin/env python3
"""
Hand KCM's leader Lease over at once when this host's KCM process is gone.

    kcm-release-lease --kubeconfig FILE [--identity NAME] [--namespace NS] [--name NAME] [--budget SECONDS]

The unit runs it as ``ExecStopPost=-`` (kcm-formula, issue 15): systemd starts it only once
KCM's main process has exited and its cgroup is empty, after a stop, a restart, a crash or
an OOM kill. A process that is gone cannot lead, so releasing on its behalf cannot make two
leaders. It reads the Lease with KCM's own kubeconfig (current context) and, only when the
holder is this host's KCM (``<identity>_<uuid>``, identity = this host name unless given),
writes it back released the way client-go's ``release()`` does: empty holder,
``leaseDurationSeconds: 1``, ``acquireTime``/``renewTime`` now, ``leaseTransitions`` kept,
as a PUT carrying the ``resourceVersion`` it read, so a standby that took the Lease in
between wins (409) and is left alone.

It prints one line (the journal) and always exits 0, within ``--budget`` seconds (2)
including connect: a stop or restart must never wait on it or fail because of it.

Standalone on purpose: it runs after KCM, as the KCM user, under the unit's sandboxing,
outside any Salt process, so it cannot use the ``kcm_api`` execution module (loader
dunders, ``salt.exceptions``, ``requests``, and root's minion cache it may not read); it
needs the Python that runs the salt-minion and nothing from it but the stdlib (and PyYAML,
a Salt dependency, for a kubeconfig that is not JSON). TLS is always verified against the
kubeconfig's CA; an embedded client key is handed to ``ssl`` through an anonymous in-memory
file (``memfd``), never written to a file system.
"""

import argparse
import base64
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from urllib.parse import urlsplit

LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
PROG = "kcm-release-lease"


class Skip(Exception):
    """Why the Lease is not released: the text of the one line."""


def _load_document(path):
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise Skip(f"cannot read kubeconfig {path} ({exc.strerror})") from None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        import yaml  # a Salt dependency: present in the interpreter that runs the minion
    except ImportError:
        raise Skip(f"kubeconfig {path} is not JSON and PyYAML is missing") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise Skip(f"kubeconfig {path} is not valid YAML") from None


def _entry(doc, section, name):
    for item in doc.get(section) or []:
        if isinstance(item, dict) and item.get("name") == name and isinstance(item.get(section[:-1]), dict):
            return item[section[:-1]]
    raise Skip(f"kubeconfig has no {section[:-1]} named {name!r}")


def kubeconfig_target(path):
    """(server URL, cluster, user) of the kubeconfig's current context."""
    doc = _load_document(path)
    if not isinstance(doc, dict):
        raise Skip(f"kubeconfig {path} is not a mapping")
    name = doc.get("current-context")
    if not name:
        contexts = doc.get("contexts") or []
        if len(contexts) != 1:
            raise Skip("kubeconfig has no current-context and not exactly one context")
        name = contexts[0].get("name")
    context = _entry(doc, "contexts", name)
    cluster = _entry(doc, "clusters", context.get("cluster"))
    user = _entry(doc, "users", context.get("user")) if context.get("user") else {}
    server = str(cluster.get("server") or "")
    if not server.startswith("https://"):
        raise Skip(f"kubeconfig server {server!r} is not https://")
    return server, cluster, user


def _file_or_data(base, entry, key):
    """The bytes of ``<key>-data`` (base64) or of the file ``<key>``, or None."""
    if entry.get(f"{key}-data"):
        try:
            return base64.b64decode(entry[f"{key}-data"], validate=True)
        except ValueError:
            raise Skip(f"kubeconfig {key}-data is not base64") from None
    if entry.get(key):
        path = entry[key] if os.path.isabs(entry[key]) else os.path.join(base, entry[key])
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise Skip(f"cannot read {key} {path} ({exc.strerror})") from None
    return None


def _load_pair(context, cert, key):
    """Load a client certificate and key into ``context`` without putting the key on a disk."""
    fds = []
    try:
        fds.append(os.memfd_create("kcm-client-cert"))
        fds.append(os.memfd_create("kcm-client-key"))
    except (AttributeError, OSError):
        for fd in fds:
            os.close(fd)
        fds = None  # not Linux, or a syscall filter without memfd_create
    if fds:
        try:
            for fd, data in zip(fds, (cert, key)):
                os.write(fd, data)
            context.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    # A 0600 file in a private 0700 directory (the unit's PrivateTmp), removed at once.
    tmpdir = tempfile.mkdtemp(prefix="kcm-release-")
    try:
        paths = []
        for name, data in (("cert", cert), ("key", key)):
            fd = os.open(os.path.join(tmpdir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            paths.append(os.path.join(tmpdir, name))
        context.load_cert_chain(*paths)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def tls_context(kubeconfig, cluster, user):
    """A context that verifies the server against the kubeconfig's CA, with its client cert."""
    if cluster.get("insecure-skip-tls-verify"):
        raise Skip("kubeconfig sets insecure-skip-tls-verify; TLS is always verified here")
    base = os.path.dirname(os.path.abspath(kubeconfig))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    ca = _file_or_data(base, cluster, "certificate-authority")
    try:
        if ca:
            context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        cert = _file_or_data(base, user, "client-certificate")
        key = _file_or_data(base, user, "client-key")
        if cert and key:
            _load_pair(context, cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        # The text of these errors names files, never key bytes.
        raise Skip(f"cannot load the kubeconfig's TLS material ({exc.__class__.__name__})") from None
    return context


def _token(kubeconfig, user):
    if user.get("token"):
        return str(user["token"])
    data = _file_or_data(os.path.dirname(os.path.abspath(kubeconfig)), {"t": user.get("tokenFile")}, "t")
    return data.decode().strip() if data else None


class Api:
    """One HTTPS connection to the apiserver; every call bounded by the shared deadline."""

    def __init__(self, server, context, token, deadline):
        url = urlsplit(server)
        self.host, self.port = url.hostname, url.port or 443
        self.prefix = url.path.rstrip("/")
        self.context, self.token, self.deadline = context, token, deadline
        self.conn = None

    def _remaining(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Skip("no answer from the apiserver within the time budget")
        return left

    def call(self, method, path, body=None):
        """(status, parsed JSON object or None)."""
        if self.conn is None:
            self.conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=self._remaining(), context=self.context
            )
        # The apiserver names field managers after the User-Agent up to its first "/".
        headers = {"Accept": "application/json", "User-Agent": f"{PROG}/kcm-formula"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        where = f"https://{self.host}:{self.port}"
        try:
            if self.conn.sock is not None:
                self.conn.sock.settimeout(self._remaining())
            self.conn.request(method, self.prefix + path, body=data, headers=headers)
            self.conn.sock.settimeout(self._remaining())
            reply = self.conn.getresponse()
            raw = reply.read()
        except ssl.SSLCertVerificationError as exc:
            raise Skip(f"TLS verification of {where} failed ({exc.verify_message})") from None
        except TimeoutError:
            raise Skip(f"{where} did not answer within the time budget") from None
        except ConnectionRefusedError:
            raise Skip(f"{where} refused the connection (apiserver down?)") from None
        except (OSError, http.client.HTTPException) as exc:
            raise Skip(f"{where} unreachable ({exc.__class__.__name__})") from None
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return reply.status, doc if isinstance(doc, dict) else None

    def close(self):
        if self.conn is not None:
            self.conn.close()


def micro_time(now):
    """Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_of(holder):
    """The host part of a KCM holderIdentity ``<hostname>_<uuid>``."""
    node, sep, _ = holder.rpartition("_")
    return node if sep else holder


def release(api, namespace, name, identity, now=None):
    """Release the Lease when this host holds it; return the line to print."""
    path = LEASE_PATH.format(namespace=namespace, name=name)
    where = f"Lease {namespace}/{name}"
    status, lease = api.call("GET", path)
    if status == 404:
        return f"{where} does not exist: nothing to release"
    if status != 200 or lease is None:
        raise Skip(f"reading {where} failed: HTTP {status}")
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if not holder:
        return f"{where} has no holder: nothing to release"
    if node_of(holder) != identity:
        return f"{where} is held by {holder}, not by {identity}: left alone"
    stamp = micro_time(now or datetime.datetime.now(datetime.timezone.utc))
    transitions = spec.get("leaseTransitions") or 0
    # client-go release(): an empty record but for the transitions, a 1 s duration, now.
    # The object keeps the metadata read, resourceVersion included: a conditional update.
    lease["spec"] = {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": stamp,
        "renewTime": stamp,
        "leaseTransitions": transitions,
    }
    status, _ = api.call("PUT", path, lease)
    if status == 200:
        return f"released {where} held by {holder} (leaseTransitions {transitions})"
    if status == 409:
        return f"{where} changed since it was read (a standby took it): left as is"
    raise Skip(f"releasing {where} failed: HTTP {status}")


def _why_stopped():
    # systemd passes these to ExecStopPost=; they make the journal line self-explaining.
    result, code, status = (os.environ.get(k) for k in ("SERVICE_RESULT", "EXIT_CODE", "EXIT_STATUS"))
    return f" [{result or '?'}, {code}={status}]" if code else ""


def _parse(argv):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.strip().splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--identity", default="", help="KCM's host name in the Lease (default: this host name)")
    parser.add_argument("--namespace", default="kube-system")
    parser.add_argument("--name", default="kube-controller-manager")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds, connect included")
    return parser.parse_args(argv)


class _OutOfTime(BaseException):
    pass


def _alarm(signum, frame):  # pylint: disable=unused-argument
    raise _OutOfTime()


def main(argv=None):
    """Release when due; print one line; return 0 whatever happened."""
    start = time.monotonic()
    try:
        args = _parse(argv)
    except SystemExit:
        print(f"{PROG}: bad arguments: Lease not released", flush=True)
        return 0
    identity = args.identity or socket.gethostname()
    # A last resort above the per-call timeouts (DNS, a stuck TLS handshake...).
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, args.budget + 0.5)
    api = None
    try:
        server, cluster, user = kubeconfig_target(args.kubeconfig)
        api = Api(
            server, tls_context(args.kubeconfig, cluster, user), _token(args.kubeconfig, user), start + args.budget
        )
        line = release(api, args.namespace, args.name, identity)
    except Skip as exc:
        line = f"Lease {args.namespace}/{args.name} not released: {exc}"
    except _OutOfTime:
        line = f"Lease {args.namespace}/{args.name} not released: out of time ({args.budget:g} s)"
    except Exception as exc:  # pylint: disable=broad-except  # never fail the stop
        line = f"Lease {args.namespace}/{args.name} not released: unexpected {exc.__class__.__name__}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if api is not None:
            api.close()
    print(f"{PROG}: {line} in {time.monotonic() - start:.2f} s{_why_stopped()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
