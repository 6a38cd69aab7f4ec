"""
One POST of alerts to a receiver (Alertmanager or a webhook), on the Salt master, with the
receiver kept at arm's length: a receiver is a remote party that may be down, slow, hostile
or taken over, and its answer must not be able to steer the master.

- No redirect is followed: a 3xx is a failed delivery that names where it pointed. A
  followed redirect would re-send the alerts (or a GET) to any URL the receiver chose,
  inside the master's network.
- The master's environment is not trusted: the session ignores ``HTTP(S)_PROXY``,
  ``NO_PROXY`` and ``~/.netrc`` (``trust_env = False``); a proxy is used only when the
  master configuration names one (``kcm_alert: {proxy: ...}``, pillar ``kcm:master:proxy``).
- TLS is always verified, against ``ca_bundle`` when one is set.
- The whole request, connection and answer included, ends within ``receiver_timeout`` seconds: a
  receiver that drips its answer a byte at a time cannot hold the runner (each socket read
  has its own timeout in requests, so a drip never trips it; a watchdog closes the sockets).
- At most ``MAX_BODY`` bytes of an answer are read, and at most ``SHOWN`` characters of it
  are quoted, escaped to one printable line (:func:`printable`), before it reaches a log
  line, the outbox or an event.

Called as ``__utils__["kcm_receiver.post"](url, payload, cfg)`` by the kcm_alert runner.
"""

import json
import socket
import threading
import time
import unicodedata

import requests
import requests.adapters

__virtualname__ = "kcm_receiver"

# Bytes of an answer read at most (only error answers are read; SHOWN of them are quoted).
MAX_BODY = 16 * 1024
SHOWN = 256


class ReceiverError(RuntimeError):
    """A delivery that failed; its text is one printable line."""


def __virtual__():
    return __virtualname__


def printable(text, limit=SHOWN):
    """
    ``text`` (str or bytes) as one printable line of at most ``limit`` characters, escapes
    included, then ``...`` when it was cut: control and format characters, line and
    paragraph separators are written as escapes (``\\x0a``, ``\\x1b``, ``\\u2028``), so a
    receiver's answer can neither start a forged log line nor drive a terminal.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    out, size = [], 0
    for char in str(text):
        if char == "\\":
            piece = "\\\\"
        elif unicodedata.category(char)[0] in "CZ" and char != " ":
            code = ord(char)
            piece = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
        else:
            piece = char
        if size + len(piece) > limit:
            out.append("...")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _tracking(pool_cls, opened):
    """``pool_cls`` that remembers every connection it makes, for the watchdog."""

    class Pool(pool_cls):  # pylint: disable=too-few-public-methods
        def _new_conn(self):
            conn = super()._new_conn()
            opened.append(conn)
            return conn

    return Pool


class _TrackingAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose sockets a deadline can close (proxied or not), with no retries."""

    def __init__(self):
        self.opened = []
        super().__init__(max_retries=0)

    def _track(self, manager):
        manager.pool_classes_by_scheme = {
            scheme: _tracking(cls, self.opened) for scheme, cls in manager.pool_classes_by_scheme.items()
        }
        return manager

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self._track(self.poolmanager)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        fresh = proxy not in self.proxy_manager
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        return self._track(manager) if fresh else manager

    def shut(self):
        """Unblock whatever reads or writes on this adapter's sockets now."""
        for conn in list(self.opened):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    # socket.socket's own shutdown, not SSLSocket's: no TLS close_notify
                    # exchange with a peer that stopped answering.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass


def session(proxy):
    """
    A ``requests.Session`` that ignores the environment (proxies, ``.netrc``) and uses
    ``proxy`` for http and https when it is set. Returns ``(session, adapter)``.
    """
    sess = requests.Session()
    sess.trust_env = False
    adapter = _TrackingAdapter()
    sess.mount("https://", adapter)
    sess.mount("http://", adapter)
    if proxy:
        sess.proxies = {"http": proxy, "https": proxy}
    return sess, adapter


def _watchdog(adapter, seconds):
    """Close the adapter's sockets once ``seconds`` passed, and keep closing any that a
    connection still in progress opens, until the returned event is set."""
    done = threading.Event()

    def watch():
        if done.wait(seconds):
            return
        while not done.is_set():
            adapter.shut()
            done.wait(0.1)

    threading.Thread(target=watch, name="kcm-receiver-deadline", daemon=True).start()
    return done


def _read_bounded(response, limit, deadline):
    """At most ``limit`` bytes of ``response``'s body, read before ``deadline``."""
    body = b""
    for chunk in response.iter_content(chunk_size=1024):
        body += chunk
        if len(body) >= limit or time.monotonic() > deadline:
            break
    return body[:limit]


def _answer_problem(response, deadline):
    """Why ``response`` is not an accepted delivery, or ``None``."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        where = printable(response.headers.get("Location", ""))
        return f"HTTP {status} redirect to '{where}' not followed (a receiver must accept alerts at its own URL)"
    body = _read_bounded(response, MAX_BODY, deadline)
    return f"HTTP {status}: {printable(body)}"


def post(url, payload, cfg):
    """
    POST ``payload`` as JSON to ``url``; return ``None`` when the receiver answered 2xx,
    raise :class:`ReceiverError` (one printable line) otherwise. ``cfg``: the kcm_alert
    settings ``receiver_timeout`` (seconds for the whole request), ``ca_bundle`` and ``proxy``
    (each required: kcm.master writes them).
    """
    timeout = float(cfg["receiver_timeout"])
    sess, adapter = session(cfg["proxy"])
    deadline = time.monotonic() + timeout
    done = _watchdog(adapter, timeout)
    try:
        response = sess.post(
            url,
            data=json.dumps(payload),
            timeout=timeout,
            verify=cfg["ca_bundle"] or True,
            allow_redirects=False,
            stream=True,
            headers={"Content-Type": "application/json", "Accept-Encoding": "identity"},
        )
        try:
            why = _answer_problem(response, deadline)
        finally:
            response.close()
    except (requests.RequestException, OSError, ValueError) as exc:
        if time.monotonic() >= deadline:
            raise ReceiverError(f"no complete answer within {timeout:g} s") from None
        raise ReceiverError(f"{type(exc).__name__}: {printable(exc)}") from None
    finally:
        done.set()
        sess.close()
    if why:
        raise ReceiverError(why)
