"""
Alert receivers at arm's length (audit M3, M4's receiver half, L5's receiver part): the
kcm_alert runner's real HTTP client (``_post``, through ``_utils/kcm_receiver``) against
real HTTP servers on 127.0.0.1 that redirect, drip, flood, answer with forged log lines,
stand in as the environment's proxy, or serve TLS with a private CA.
"""

import http.server
import logging
import re
import ssl
import threading
import time

import pytest

from kcmlab.formula import alert_settings, load, utils
from tests.support import pki as testpki
from tests.unit.test_kcm_alert import CHANGE, Harness

TIMEOUT = 1.0
# A generous upper bound for "the request ended near its timeout" (2 shared cores).
ENDED_WITHIN = TIMEOUT + 4


def runner():
    """A fresh kcm_alert runner with its utils, as the master's loader gives them."""
    module = load("_runners", "kcm_alert")
    module.__utils__ = utils()
    return module


def post(url, **cfg):
    return runner()._post(
        url, [{"labels": {"alertname": "KCMNoLeader"}}], alert_settings(receiver_timeout=TIMEOUT, **cfg)
    )


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 whose handler is ``answer(handler)``; it records
    each request line (``handler.requestline``) and stops whatever it still writes at the end."""

    def __init__(self, answer, tls=None):
        self.requests, self.stop, self.finished = [], threading.Event(), threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                outer.requests.append((self.requestline, self.rfile.read(length)))
                try:
                    answer(self, outer)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass
                finally:
                    outer.finished.set()

            do_POST = do_GET = do_PUT = _any  # noqa: N815 - http.server's naming

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    started = []

    def start(answer, tls=None):
        started.append(Server(answer, tls))
        return started[-1]

    yield start
    for server in started:
        server.close()


def ok(handler, _server):
    handler.send_response(200)
    handler.send_header("Content-Length", "2")
    handler.end_headers()
    handler.wfile.write(b"{}")


# --------------------------------------------------------------------------
# redirects (M3)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [307, 302, 308, 301])
def test_a_redirecting_receiver_is_a_failed_delivery_and_its_target_receives_nothing(serve, status):
    target = serve(ok)
    where = f"{target.url}/internal/admin?via={status}"

    def redirect(handler, _server):
        handler.send_response(status)
        handler.send_header("Location", where)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    receiver = serve(redirect)
    with pytest.raises(Exception) as failed:
        post(receiver.url + "/api/v2/alerts")
    assert str(failed.value) == (
        f"HTTP {status} redirect to '{where}' not followed (a receiver must accept alerts at its own URL)"
    )
    assert len(receiver.requests) == 1
    assert target.requests == []


# --------------------------------------------------------------------------
# time bound (M4, the receiver side)
# --------------------------------------------------------------------------


def drip(text, every=0.3):
    """An answer written one byte every ``every`` s (each read returns before a read timeout)."""

    def answer(handler, server):
        handler.wfile.flush()
        for byte in text:
            if server.stop.wait(every):
                return
            handler.connection.sendall(bytes([byte]))
        handler.close_connection = True

    return answer


@pytest.mark.parametrize(
    "where, text",
    [
        ("status line", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"),
        ("error body", b"HTTP/1.1 500 Oops\r\nContent-Length: 40\r\n\r\n" + b"x" * 40),
    ],
)
def test_a_dripping_receiver_holds_a_post_no_longer_than_its_timeout(serve, where, text):
    receiver = serve(drip(text))
    begin = time.monotonic()
    with pytest.raises(Exception) as failed:
        post(receiver.url)
    took = time.monotonic() - begin
    assert took < ENDED_WITHIN, f"{where}: the post took {took:.1f} s (timeout {TIMEOUT} s)"
    assert str(failed.value) == f"no complete answer within {TIMEOUT:g} s"


# --------------------------------------------------------------------------
# size bound and escaping (L5, the receiver part)
# --------------------------------------------------------------------------

HUGE = 64 * 1024 * 1024


def flood(handler, server):
    handler.send_response(500)
    handler.send_header("Content-Length", str(HUGE))
    handler.end_headers()
    server.sent = 0
    chunk = b"A" * 65536
    while server.sent < HUGE and not server.stop.is_set():
        handler.wfile.write(chunk)
        server.sent += len(chunk)


def test_a_huge_error_body_is_read_only_in_part_and_quoted_in_256_characters(serve):
    receiver = serve(flood)
    with pytest.raises(Exception) as failed:
        post(receiver.url)
    assert receiver.finished.wait(30)
    # Only the kernel's socket buffers (a few MB on loopback) are filled before the client hangs up.
    assert receiver.sent < HUGE // 4, f"the client read {receiver.sent} bytes of a {HUGE}-byte answer"
    assert str(failed.value) == "HTTP 500: " + "A" * 256 + "..."


FORGED = (
    "oops\n2026-12-06 10:00:00,000 [salt.loaded.int.runner.kcm_alert][CRITICAL] kcm_alert: delivered"
    " KCMNoLeader\r\x1b]0;owned\x07\u2028end"
)


def forged_line(handler, _server):
    body = FORGED.encode()
    handler.send_response(500)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def test_an_error_body_with_newlines_reaches_logs_outbox_and_events_as_one_escaped_line(
    serve, tmp_path, monkeypatch, caplog
):
    receiver = serve(forged_line)
    module = load("_runners", "kcm_alert")
    real_post = module._post
    h = Harness(
        tmp_path,
        monkeypatch,
        module=module,
        alertmanager_urls=[receiver.url],
        receiver_retries=2,
        receiver_timeout=TIMEOUT,
    )
    monkeypatch.setattr(module, "_post", real_post)
    caplog.set_level(logging.DEBUG)
    assert h.handle("master-1", "changed", **CHANGE)["failed"] is True
    assert len(receiver.requests) == 2
    escaped = (
        "HTTP 500: oops\\x0a2026-12-06 10:00:00,000 [salt.loaded.int.runner.kcm_alert][CRITICAL]"
        " kcm_alert: delivered KCMNoLeader\\x0d\\x1b]0;owned\\x07\\u2028end"
    )
    failures = [r.getMessage() for r in caplog.records if "failed (attempt" in r.getMessage()]
    assert len(failures) == 2
    for line in failures:
        assert line.endswith(escaped) and line.isprintable(), repr(line)
    assert not [r for r in caplog.records if "[CRITICAL]" in r.getMessage() and "\n" in r.getMessage()]
    [failed] = [data for tag, data in h.events if tag == "kcm/alert/send_failed"]
    assert set(failed["failed"].values()) == {f"ReceiverError: {escaped}"}
    [entry] = h.store()["outbox"].values()
    assert set(entry["errors"].values()) == {f"ReceiverError: {escaped}"}


# --------------------------------------------------------------------------
# proxies: only the configured one
# --------------------------------------------------------------------------


@pytest.fixture
def proxy_env(monkeypatch):
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)

    def point(url):
        monkeypatch.setenv("HTTP_PROXY", url)
        monkeypatch.setenv("http_proxy", url)

    return point


def test_the_environment_proxy_is_not_used(serve, proxy_env):
    proxy, receiver = serve(ok), serve(ok)
    proxy_env(proxy.url)
    post(receiver.url + "/api/v2/alerts")
    assert [line for line, _ in receiver.requests] == ["POST /api/v2/alerts HTTP/1.1"]
    assert proxy.requests == []


def test_the_configured_proxy_is_used(serve, proxy_env):
    proxy, receiver, elsewhere = serve(ok), serve(ok), serve(ok)
    proxy_env(elsewhere.url)
    post(receiver.url + "/api/v2/alerts", proxy=proxy.url)
    assert [line for line, _ in proxy.requests] == [f"POST {receiver.url}/api/v2/alerts HTTP/1.1"]
    assert receiver.requests == [] and elsewhere.requests == []


# --------------------------------------------------------------------------
# TLS: always verified, against ca_bundle when set
# --------------------------------------------------------------------------


@pytest.fixture
def tls_receiver(serve, tmp_path):
    ca_cert, ca_key = testpki.make_ca("receiver-ca")
    cert, key = testpki.issue(ca_cert, ca_key, cn="receiver", dns=("localhost",), ips=("127.0.0.1",))
    (tmp_path / "ca.pem").write_text(testpki.cert_pem(ca_cert))
    (tmp_path / "tls.pem").write_text(testpki.cert_pem(cert) + testpki.key_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.pem")
    return serve(ok, tls=context), str(tmp_path / "ca.pem")


def test_tls_is_verified_against_the_ca_bundle(tls_receiver):
    receiver, ca_bundle = tls_receiver
    with pytest.raises(Exception) as failed:
        post(receiver.url)
    assert re.search(r"CERTIFICATE_VERIFY_FAILED", str(failed.value)), str(failed.value)
    assert str(failed.value).isprintable()
    post(receiver.url, ca_bundle=ca_bundle)
    assert [line for line, _ in receiver.requests] == ["POST / HTTP/1.1"]


@pytest.mark.parametrize(
    "proxy, problem",
    [
        ("http://127.0.0.1:3128", None),
        ("socks5://127.0.0.1:1080", "kcm:master:proxy: 'socks5://127.0.0.1:1080' must start with http:// or https://"),
        ("http://user:pw@proxy:3128", "kcm:master:proxy: 'http://user:pw@proxy:3128' carries credentials"),
    ],
)
def test_the_proxy_setting_is_checked_naming_its_key(proxy, problem):
    checks = load("_utils", "kcm_checks")
    found = [
        p
        for p in checks.master_problems(
            {"config_dir": "/etc/salt/master.d", "proxy": proxy, "reporters": {"tgt": "master-*"}}
        )
        if "proxy" in p
    ]
    assert [p[: len(problem)] for p in found] == ([problem] if problem else [])


def test_an_escaped_body_stays_within_256_characters_escapes_included(serve):
    def newlines(handler, _server):
        body = b"\n\x1b" * 2000
        handler.send_response(500)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    receiver = serve(newlines)
    with pytest.raises(Exception) as failed:
        post(receiver.url)
    assert str(failed.value) == "HTTP 500: " + "\\x0a\\x1b" * 32 + "..."
