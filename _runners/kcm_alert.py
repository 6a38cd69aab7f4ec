"""
Runner ``kcm_alert``: turns ``kcm_leader`` beacon events into Alertmanager
alerts, once per change although every KCM master reports it.

The ``kcm_alert`` engine (``_engines/kcm_alert.py``) calls :func:`handle_batch`
with the ``salt/beacon/*/kcm_leader/*`` events of a short window; with
``kcm:master:alert_engine: false`` the reactor (``salt://reactor/kcm/leader.sls``)
calls :func:`handle` for each. The runner

* deduplicates: the key is cluster (name + ``cluster_id``, the kube-system UID)
  + kind + the Lease's ``leaseTransitions``
  (+ the last renew time for ``stale`` / ``no_leader``, + the reporting minion
  for ``unreachable``), kept in a JSON file under the master cachedir and
  guarded by ``fcntl`` locking, so concurrent reactor threads agree;
* posts to Alertmanager v2 (``POST /api/v2/alerts``) and to optional webhooks;
* resolves ``KCMNoLeader`` / ``KCMLeaderStale`` on ``changed`` or ``recovered``,
  and ``KCMApiserverUnreachable`` when every reporter has recovered, by posting
  the same labels with ``endsAt``;
* turns ``cert_expiring`` into ``KCMCertExpiring`` (labels cert, minion,
  threshold; severity critical at the smallest configured threshold or under
  7 days left), once per cluster + minion + cert + serial + threshold, with
  ``endsAt`` = the certificate's notAfter; ``cert_renewed`` (or a
  ``cert_expiring`` for a new serial) resolves the old serial's alerts;
* fires ``kcm/alert/<kind>`` on the master bus with what it sent
  (``kcm/alert/resolved``, ``kcm/alert/duplicate``, ``kcm/alert/send_failed``).

Master configuration (``/etc/salt/master.d/kcm.conf``, written by ``kcm.master``):

.. code-block:: yaml

    kcm_alert:
      alertmanager_urls: [http://127.0.0.1:9093]
      webhook_urls: []
      labels: {team: platform}        # added to every alert
      ca_bundle: ''                   # CA file for https receivers ('' = system CAs)
      dedupe_file: ''                 # '' = <cachedir>/kcm_alert/dedupe.json
      retries: 3                      # attempts per receiver
      backoff: 0.5                    # seconds before the 2nd attempt, doubling
      timeout: 5                      # seconds per HTTP request
      condition_ttl: 86400            # endsAt of a condition alert until it is resolved
      event_ttl: 3600                 # endsAt of a KCMLeaderChanged alert
"""

import contextlib
import datetime
import fcntl
import json
import logging
import os
import re
import tempfile
import threading
import time

import requests
import salt.utils.event

log = logging.getLogger(__name__)

__virtualname__ = "kcm_alert"

DEFAULTS = {
    "alertmanager_urls": [],
    "webhook_urls": [],
    "labels": {},
    "ca_bundle": "",
    "dedupe_file": "",
    "retries": 3,
    "backoff": 0.5,
    "timeout": 5,
    "condition_ttl": 86400,
    "event_ttl": 3600,
    "dedupe_ttl": 86400,
    # Who may report: the KCM masters (salt.utils.minions target, matched without greed:
    # a minion with no cached grains does not match a grain target).
    "reporters": {"tgt": "role:k8s-master", "tgt_type": "grain"},
    "signature_window": 300,
}

MINION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
# What one report may make the runner keep: strings are cut, nested values dropped, and
# the store holds at most this many keys, the oldest evicted first.
MAX_TEXT = 256
MAX_FIELDS = 40
MAX_SEEN = 1000
MAX_OPEN = 200
# A certificate alert's key is kept until notAfter, but never longer than this.
MAX_KEEP_SECONDS = 2 * 366 * 86400

ALERTS = {
    "cert_expiring": ("KCMCertExpiring", "warning"),
    "changed": ("KCMLeaderChanged", "warning"),
    "no_leader": ("KCMNoLeader", "critical"),
    "stale": ("KCMLeaderStale", "warning"),
    "unreachable": ("KCMApiserverUnreachable", "critical"),
}
CONDITIONS = ("no_leader", "stale", "unreachable")
# A new leader ends these conditions; unreachable is about the reporter's own path.
CLEARED_BY_CHANGE = ("no_leader", "stale")
# A claim older than this is a sender that died mid-send: let a duplicate retry.
IN_FLIGHT_SECONDS = 120
# Fewer days left than this make any KCMCertExpiring critical.
CERT_CRITICAL_DAYS = 7


def __virtual__():
    return __virtualname__


# --------------------------------------------------------------------------
# configuration and time
# --------------------------------------------------------------------------


def _config():
    cfg = dict(DEFAULTS)
    cfg.update(__opts__.get("kcm_alert") or {})
    if not cfg["dedupe_file"]:
        cfg["dedupe_file"] = os.path.join(__opts__["cachedir"], "kcm_alert", "dedupe.json")
    return cfg


def _now():
    return time.time()


def _sleep(seconds):
    time.sleep(seconds)


def _rfc3339(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


# --------------------------------------------------------------------------
# the dedupe store: JSON file + fcntl lock
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _locked_store(path, ttl):
    """
    Yield the store dict under an exclusive lock and write it back atomically.

    flock() on a separate lock file serializes reactor threads (each opens
    its own file description) and several runner processes alike.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(path + ".lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            store = _read_store(path)
            _prune(store, _now() - ttl)
            yield store
            _write_store(path, store)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_store(path):
    try:
        with open(path, encoding="utf-8") as handle:
            store = json.load(handle)
    except FileNotFoundError:
        store = {}
    except (OSError, ValueError) as exc:
        log.error("kcm_alert: dedupe file %s unreadable (%s); starting a new one", path, exc)
        store = {}
    return _well_formed(store, path)


def _well_formed(store, path):
    """The store with only what the runner can use; a wrong shape is reset with a warning."""
    if not isinstance(store, dict):
        log.warning("kcm_alert: dedupe file %s holds %s, not a mapping; starting a new one",
                    path, type(store).__name__)
        store = {}
    for part in ("seen", "open"):
        value = store.get(part, {})
        if not isinstance(value, dict):
            log.warning("kcm_alert: dedupe file %s: '%s' is %s, not a mapping; reset", path, part,
                        type(value).__name__)
            value = {}
        store[part] = {k: v for k, v in value.items() if isinstance(v, dict)}
    return store


def _write_store(path, store):
    """Write atomically; on failure (a full disk) log, leave no temp file and go on:
    losing dedupe state risks a duplicate alert, losing the alert is worse."""
    fd, tmp = tempfile.mkstemp(prefix=".dedupe-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(store, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.error("kcm_alert: cannot write dedupe file %s (%s); alerts are still sent", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _prune(store, oldest):
    # A cert alert's key lives until its certificate expires (keep_until), so a
    # repeated report of the same cert + serial + threshold stays a duplicate.
    store["seen"] = {
        key: entry for key, entry in store["seen"].items()
        if max(entry.get("at", 0), entry.get("keep_until") or 0) >= oldest
    }
    store["open"] = {
        slot: entry for slot, entry in store["open"].items()
        if not slot.startswith("cert|") or (entry.get("keep_until") or 0) >= oldest
    }
    for part, cap in (("seen", MAX_SEEN), ("open", MAX_OPEN)):
        if len(store[part]) > cap:
            newest = sorted(store[part].items(), key=lambda item: _number(item[1].get("at")) or 0)[-cap:]
            log.warning("kcm_alert: dedupe store over %s %s entries; the oldest are dropped", cap, part)
            store[part] = dict(newest)


# --------------------------------------------------------------------------
# what to send (pure)
# --------------------------------------------------------------------------


def _cert_minion(data, reporter):
    return str(data.get("minion") or reporter)


def _cluster_key(data):
    """
    Which cluster an event is about: its name plus its ``cluster_id`` (the kube-system
    namespace UID), so two clusters that share a name never dedupe or resolve each
    other's alerts. Events without an id (beacons before it) fall back to the name.
    """
    name = data.get("cluster") or "unknown"
    return f"{name}#{data['cluster_id']}" if data.get("cluster_id") else name


def dedupe_key(kind, data, reporter):
    """The identity of one change: every master that saw it computes the same key."""
    cluster = _cluster_key(data)
    if kind in ("cert_expiring", "cert_renewed"):
        minion = _cert_minion(data, reporter)
        return f"{cluster}|{kind}|{minion}|{data.get('cert')}|{data.get('serial')}|{data.get('threshold')}"
    if kind == "changed":
        return f"{cluster}|changed|{data.get('transitions')}|{data.get('new_holder')}"
    if kind == "unreachable":
        return f"{cluster}|unreachable|{reporter}"
    return f"{cluster}|{kind}|{data.get('transitions')}|{data.get('renew_time')}"


def alert_labels(kind, data, extra):
    """Labels of the alert for `kind`; resolving re-sends exactly these."""
    name, severity = ALERTS[kind]
    labels = {str(k): str(v) for k, v in (extra or {}).items()}
    labels.update(alertname=name, cluster=str(data.get("cluster") or "unknown"), severity=severity)
    if data.get("cluster_id"):
        # Alertmanager merges alerts with equal labels: same-named clusters must differ.
        labels["cluster_id"] = str(data["cluster_id"])
    if kind == "changed":
        labels["old_node"] = str(data.get("old_node") or "none")
        labels["new_node"] = str(data.get("new_node") or "none")
    elif kind == "stale":
        labels["node"] = str(data.get("node") or "none")
    elif kind == "cert_expiring":
        labels.update(
            severity=cert_severity(data),
            minion=_cert_minion(data, data.get("id")),
            cert=str(data.get("cert")),
            threshold=str(data.get("threshold")),
        )
    return labels


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def cert_severity(data):
    """critical at the smallest configured threshold or under CERT_CRITICAL_DAYS left, else warning."""
    threshold = _number(data.get("threshold"))
    days_left = _number(data.get("days_left"))
    configured = [days for days in map(_number, data.get("thresholds") or ()) if days is not None]
    smallest = min(configured) if configured else threshold
    if days_left is not None and days_left < CERT_CRITICAL_DAYS:
        return "critical"
    if threshold is not None and smallest is not None and threshold <= smallest:
        return "critical"
    return "warning"


def _epoch(text):
    """Epoch seconds of an RFC3339 time ('2027-01-15T08:00:00Z'), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def _annotations(kind, data, reporter):
    cluster = data.get("cluster") or "unknown"
    if kind == "changed":
        summary = (
            f"KCM leader of {cluster} moved from {data.get('old_node') or 'nobody'} "
            f"to {data.get('new_node')}"
        )
        description = (
            f"Lease holder {data.get('old_holder')} -> {data.get('new_holder')} "
            f"(minion {data.get('old_minion')} -> {data.get('new_minion')}), "
            f"leaseTransitions {data.get('transitions')}; first reported by {reporter}."
        )
    elif kind == "no_leader":
        summary = f"KCM of {cluster} has no leader"
        description = (
            f"The lease is expired or released (last holder {data.get('holder')}, "
            f"last renewal {data.get('renew_time')}); first reported by {reporter}."
        )
    elif kind == "cert_expiring":
        minion = _cert_minion(data, reporter)
        summary = (
            f"{data.get('cert')} certificate of KCM on {minion} ({cluster}) expires in "
            f"{data.get('days_left')} days"
        )
        description = (
            f"Subject {data.get('subject')}, serial {data.get('serial')}, notAfter {data.get('not_after')}: "
            f"{data.get('days_left')} days left, below the {data.get('threshold')}-day threshold."
        )
    elif kind == "stale":
        summary = f"KCM leader {data.get('node')} of {cluster} stopped renewing its lease"
        description = (
            f"No renewal for {data.get('age_seconds')} s (judged by {data.get('basis')}); "
            f"last renewal {data.get('renew_time')}; first reported by {reporter}."
        )
    else:
        summary = f"{reporter} cannot read the KCM leader lease of {cluster}"
        description = f"{reporter}: {data.get('reason')}"
    return {"summary": summary, "description": description}


def _ends_at(kind, data, cfg, now):
    if kind == "cert_expiring":
        # Until the cert expires; an already expired one (or an unreadable
        # notAfter) must not arrive resolved, so it gets the condition TTL.
        expiry = _epoch(data.get("not_after"))
        return expiry if expiry is not None and expiry > now else now + cfg["condition_ttl"]
    return now + (cfg["event_ttl"] if kind == "changed" else cfg["condition_ttl"])


def build_alert(kind, data, reporter, cfg, now):
    """One Alertmanager v2 alert (postableAlert) for a firing condition or event."""
    return {
        "labels": alert_labels(kind, data, cfg["labels"]),
        "annotations": _annotations(kind, data, reporter),
        "startsAt": _rfc3339(now),
        # Explicit endsAt: without it Alertmanager resolves an alert that is
        # not re-sent after resolve_timeout (5 min), and we send only once.
        "endsAt": _rfc3339(_ends_at(kind, data, cfg, now)),
    }


def _resolution(open_alert, now):
    return {
        "labels": open_alert["labels"],
        "annotations": open_alert.get("annotations", {}),
        "startsAt": open_alert["startsAt"],
        "endsAt": _rfc3339(now),
    }


# --------------------------------------------------------------------------
# decisions under the lock
# --------------------------------------------------------------------------


def _claimable(entry, now):
    if entry is None or entry.get("status") == "failed":
        return True
    return entry.get("status") == "sending" and now - entry.get("at", 0) > IN_FLIGHT_SECONDS


def _cert_slot(data, reporter):
    cluster = _cluster_key(data)
    return f"cert|{cluster}|{_cert_minion(data, reporter)}|{data.get('cert')}"


def _resolve_old_serial(store, data, reporter, now, keep_labels=None):
    """Resolutions for the open alerts of this cert's previous serial (a renewal ended them)."""
    slot = _cert_slot(data, reporter)
    current = store["open"].get(slot)
    if not current or current.get("serial") == str(data.get("serial")):
        return []
    store["open"].pop(slot)
    # An alert with the very labels about to fire again is replaced by that
    # firing, not resolved first.
    return [_resolution(alert, now) for alert in current["alerts"] if alert["labels"] != keep_labels]


def _decide_cert(store, kind, data, reporter, cfg, now):
    """_decide for cert_expiring / cert_renewed."""
    if kind == "cert_renewed":
        return [], _resolve_old_serial(store, data, reporter, now), None
    alert = build_alert(kind, data, reporter, cfg, now)
    resolve = _resolve_old_serial(store, data, reporter, now, keep_labels=alert["labels"])
    key = dedupe_key(kind, data, reporter)
    if not _claimable(store["seen"].get(key), now):
        return [], resolve, None
    expiry = min(_epoch(data.get("not_after")) or now, now + MAX_KEEP_SECONDS)
    store["seen"][key] = {"at": now, "status": "sending", "reporter": reporter, "keep_until": expiry}
    slot = _cert_slot(data, reporter)
    current = store["open"].setdefault(slot, {"serial": str(data.get("serial")), "alerts": [], "at": now})
    current["keep_until"] = expiry
    current["alerts"] = [a for a in current["alerts"] if a["labels"] != alert["labels"]] + [alert]
    return [alert], resolve, (key, None)


def _decide(store, kind, data, reporter, cfg, now):
    """
    Update the store for one event; return (alerts to fire, alerts to resolve,
    claim), claim being (dedupe key, open-condition slot) when something fires.

    Called with the lock held. The key is marked `sending` before the lock is
    released, so a concurrent duplicate sees it claimed.
    """
    cluster = _cluster_key(data)
    fire, resolve = [], []
    if kind in ("cert_expiring", "cert_renewed"):
        return _decide_cert(store, kind, data, reporter, cfg, now)
    if kind == "recovered":
        condition = data.get("condition")
        slot = f"{cluster}|{condition}"
        current = store["open"].get(slot)
        if current and condition == "unreachable":
            current["reporters"] = [r for r in current["reporters"] if r != reporter]
            if current["reporters"]:
                return fire, resolve, None
        if current:
            resolve.append(_resolution(store["open"].pop(slot), now))
        return fire, resolve, None

    key = dedupe_key(kind, data, reporter)
    if kind == "changed":
        for condition in CLEARED_BY_CHANGE:
            current = store["open"].pop(f"{cluster}|{condition}", None)
            if current:
                resolve.append(_resolution(current, now))
    if not _claimable(store["seen"].get(key), now):
        return fire, resolve, None
    store["seen"][key] = {"at": now, "status": "sending", "reporter": reporter}
    alert = build_alert(kind, data, reporter, cfg, now)
    slot = f"{cluster}|{kind}"
    current = store["open"].get(slot)
    if kind == "unreachable" and current:
        # One cluster-wide alert; remember who else sees it for the resolve,
        # and send it again only if no earlier attempt got through and none is
        # on its way: the reports of one outage arrive together (in one batch of
        # the engine, or in concurrent reactor jobs) while the first send is out.
        if reporter not in current["reporters"]:
            current["reporters"].append(reporter)
        if current.get("delivered") or current.get("in_flight_until", 0) > now:
            store["seen"][key]["status"] = "sent" if current.get("delivered") else "joined"
            return fire, resolve, None
        alert = {name: current[name] for name in ("labels", "annotations", "startsAt", "endsAt")}
        current["in_flight_until"] = now + IN_FLIGHT_SECONDS
    elif kind in CONDITIONS:
        store["open"][slot] = dict(alert, reporters=[reporter], delivered=False, at=now,
                                   in_flight_until=now + IN_FLIGHT_SECONDS)
    fire.append(alert)
    return fire, resolve, (key, slot)


def _finish(cfg, outcomes):
    """Record the outcome of sends, [(claim, ok)]: a failed key may be claimed again by a duplicate."""
    with _locked_store(cfg["dedupe_file"], cfg["dedupe_ttl"]) as store:
        for (key, slot), ok in outcomes:
            entry = store["seen"].get(key)
            if entry is not None:
                entry["status"] = "sent" if ok else "failed"
            if slot is not None and slot in store["open"]:
                store["open"][slot]["delivered"] = store["open"][slot].get("delivered") or ok
                store["open"][slot]["in_flight_until"] = 0  # a failed send may be tried again


# --------------------------------------------------------------------------
# sending
# --------------------------------------------------------------------------


def _am_endpoint(url):
    url = url.rstrip("/")
    return url if url.endswith("/api/v2/alerts") else url + "/api/v2/alerts"


def _post(url, payload, cfg):
    """One POST; raises on a transport error or a non-2xx answer."""
    verify = cfg["ca_bundle"] or True
    response = requests.post(url, json=payload, timeout=cfg["timeout"], verify=verify)
    if response.status_code // 100 != 2:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")


def _send_with_retry(url, payload, cfg):
    """Post with exponential backoff; return None on success or the last error text."""
    delay = cfg["backoff"]
    error = None
    for attempt in range(1, max(1, int(cfg["retries"])) + 1):
        try:
            _post(url, payload, cfg)
            return None
        except Exception as exc:  # pylint: disable=broad-except
            error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("kcm_alert: POST %s failed (attempt %s of %s): %s", url, attempt, cfg["retries"], error)
        if attempt < cfg["retries"]:
            _sleep(delay)
            delay *= 2
    return error


# The follow-up events of one batch share one connection to the master bus.
_BUS = threading.local()


@contextlib.contextmanager
def _bus_scope():
    _BUS.scope = {}
    try:
        yield
    finally:
        event = _BUS.scope.pop("event", None)
        _BUS.scope = None
        if event is not None:
            event.destroy()


def _fire(tag, data):
    scope = getattr(_BUS, "scope", None)
    if scope is None:
        with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as event:
            event.fire_event(data, tag)
        return
    if scope.get("event") is None:
        scope["event"] = salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False)
    scope["event"].fire_event(data, tag)


def _report(kind, action, alerts, results, reporter):
    """Follow-up event(s) on the master bus; a failure is never silent."""
    failed = {url: err for url, err in results.items() if err}
    data = {"action": action, "kind": kind, "reporter": reporter, "alerts": alerts, "receivers": results}
    if failed:
        log.error("kcm_alert: %s %s not delivered to %s", action, kind, ", ".join(sorted(failed)))
        _fire("kcm/alert/send_failed", dict(data, failed=failed))
    _fire(f"kcm/alert/{'resolved' if action == 'resolve' else kind}", data)
    return not failed


# --------------------------------------------------------------------------
# trust: is this a report from a KCM master?
# --------------------------------------------------------------------------


def _reporter_of(tag):
    parts = str(tag or "").split("/")
    if len(parts) == 5 and parts[:2] == ["salt", "beacon"] and parts[3] == "kcm_leader":
        return parts[2]
    return None


def _accepted_key(minion_id):
    return os.path.join(__opts__["pki_dir"], "minions", minion_id)


# Within one batch the KCM masters are matched once, not once per report: a storm of 900
# reports would otherwise read every minion's cached grains 900 times.
_BATCH = threading.local()


def _is_kcm_master(minion_id, cfg):
    import salt.utils.minions

    target = cfg["reporters"] or {}
    key = (target.get("tgt", ""), target.get("tgt_type", "glob"))
    memo = getattr(_BATCH, "masters", None)
    if memo is None or key not in memo:
        found = salt.utils.minions.CkMinions(__opts__).check_minions(key[0], tgt_type=key[1], greedy=False)
        masters = set(found.get("minions") or [])
        if memo is None:
            return minion_id in masters
        memo[key] = masters
    return minion_id in memo[key]


def _signature_problem(key_path, kind, data, now, window):
    """Why ``data['sig']`` is not the reporter's signature of this event, or None."""
    import base64

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    signed_at = _number(data.get("signed_at"))
    if not isinstance(data.get("sig"), str) or signed_at is None:
        return "unsigned"
    if abs(now - signed_at) > window:
        return f"signed {int(now - signed_at)} s ago (window {window} s)"
    try:
        with open(key_path, "rb") as handle:
            public = serialization.load_pem_public_key(handle.read())
        public.verify(base64.b64decode(data["sig"]), signed_message(kind, data), padding.PKCS1v15(),
                      hashes.SHA256())
    except (OSError, ValueError, TypeError, InvalidSignature):
        return "the signature is not the reporter's"
    return None


def signed_message(kind, data):
    """
    Return the bytes the kcm_leader beacon signs (its own ``signed_message``): the kind and
    every field but ``sig`` and the bus's ``_``-prefixed ones, as canonical JSON.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_alert.signed_message changed '{"id": "master-1", "transitions": 4}'
    """
    fields = {k: v for k, v in data.items() if k != "sig" and not str(k).startswith("_")}
    return json.dumps({"kind": kind, "data": fields}, sort_keys=True, separators=(",", ":")).encode()


def refusal(tag, data, cfg=None, now=None):
    """
    Say why the event ``tag``/``data`` is not a report the runner may act on, or return
    ``None``. A report must come from the minion its tag names (a well-formed id with an
    accepted key, the same ``id`` in the data), that minion must be a KCM master
    (``kcm_alert:reporters``, default grain ``role:k8s-master``), and the event must carry
    that minion's signature made within ``signature_window`` seconds: the master relays
    batched beacon events with the data the minion sent, so only the signature, checked
    against the key the master accepted, ties a report to its sender.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_alert.refusal tag=salt/beacon/web-1/kcm_leader/changed data='{"id": "web-1"}'
    """
    cfg = cfg or _config()
    now = _now() if now is None else now
    data = data if isinstance(data, dict) else {}
    reporter = _reporter_of(tag)
    if reporter is None or not MINION_ID_RE.match(reporter):
        return f"the tag {str(tag)[:80]!r} names no minion"
    if data.get("id") != reporter:
        return f"the tag names {reporter} but the event comes from {str(data.get('id'))[:80]!r}"
    key_path = _accepted_key(reporter)
    if not os.path.isfile(key_path):
        return f"{reporter} has no accepted key"
    if not _is_kcm_master(reporter, cfg):
        return f"{reporter} is not a KCM master (kcm_alert:reporters {cfg['reporters']})"
    return _signature_problem(key_path, _kind_of(tag), data, now, float(cfg["signature_window"]))


def _bounded(data):
    """What of a report the runner keeps: scalars and short lists, strings cut to MAX_TEXT."""
    def cut(value):
        return value[:MAX_TEXT] if isinstance(value, str) else value

    out = {}
    for key, value in list(data.items())[:MAX_FIELDS]:
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[str(key)[:64]] = cut(value)
        elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value[:10]):
            out[str(key)[:64]] = [cut(v) for v in value[:10]]
    return out


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------


def _kind_of(tag):
    return str(tag or "").rstrip("/").rsplit("/", 1)[-1]


def _new_result(tag, data):
    kind = _kind_of(tag)
    reporter = str(data.get("id") or "unknown")[:MAX_TEXT]
    result = {"kind": kind, "reporter": reporter, "fired": [], "resolved": [], "duplicate": False, "failed": False}
    if kind not in ALERTS and kind not in ("recovered", "cert_renewed"):
        # acquired / lost ride along with changed; nothing to alert on its own.
        result["ignored"] = True
    return result


def _admit(events, results, cfg, now):
    """
    The events the runner may act on, bounded (see :func:`refusal`); a refused one is
    logged, reported as ``kcm/alert/refused`` and marked in its result.
    """
    admitted = []
    _BATCH.masters = {}
    try:
        for (tag, data), result in zip(events, results):
            why = None if result.get("ignored") else refusal(tag, data, cfg, now)
            if why:
                log.warning("kcm_alert: refused %s: %s", str(tag)[:120], why)
                _fire("kcm/alert/refused", {"tag": str(tag)[:MAX_TEXT], "reporter": result["reporter"], "reason": why})
                result["refused"] = why
            admitted.append((tag, _bounded(data) if not why else data))
    finally:
        _BATCH.masters = None
    return admitted


def _acted_on(result):
    return not result.get("ignored") and not result.get("refused")


def _decide_all(cfg, events, results, now):
    """[(fire, resolve, claim)] for every event acted on, decided under one lock in order."""
    decisions = []
    with _locked_store(cfg["dedupe_file"], cfg["dedupe_ttl"]) as store:
        for (_, data), result in zip(events, results):
            if not _acted_on(result):
                decisions.append(([], [], None))
            else:
                decisions.append(_decide(store, result["kind"], data, result["reporter"], cfg, now))
    return decisions


def _deliver_grouped(action, items, cfg):
    """
    Deliver [(kind, alerts)] for one action: one POST per Alertmanager for all of them,
    one per webhook and kind (its payload names the kind). Returns {kind: {url: error}}.
    """
    items = [(kind, alerts) for kind, alerts in items if alerts]
    if not items:
        return {}
    results = {kind: {} for kind, _ in items}
    every = [alert for _, alerts in items for alert in alerts]
    for url in cfg["alertmanager_urls"]:
        endpoint = _am_endpoint(url)
        error = _send_with_retry(endpoint, every, cfg)
        for kind in results:
            results[kind][endpoint] = error
    for kind in results:
        alerts = [alert for k, batch in items if k == kind for alert in batch]
        for url in cfg["webhook_urls"]:
            results[kind][url] = _send_with_retry(url, {"kind": kind, "action": action, "alerts": alerts}, cfg)
    return results


def handle_batch(events):
    """
    Handle many ``kcm_leader`` beacon events at once, in order: dedupe all of them under
    one lock, send every resolution and every new alert in one POST per Alertmanager,
    record the outcomes under one more lock, then report each event as :func:`handle` does.

    The ``kcm_alert`` engine calls this with what arrived on the bus within its
    ``batch_wait``; a storm of failovers then costs two lock rounds and two POSTs per
    batch instead of per event, while each event is still decided exactly once.

    events
        a list of ``[tag, data]`` pairs (or ``{"tag": ..., "data": ...}`` dicts)

    Returns the list of per-event results of :func:`handle`.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_alert.handle_batch \
            events='[["salt/beacon/master-1/kcm_leader/changed", {"id": "master-1", "cluster": "prod"}]]'
    """
    events = [(e.get("tag"), e.get("data")) if isinstance(e, dict) else tuple(e) for e in events or ()]
    events = [(tag, dict(data) if isinstance(data, dict) else {}) for tag, data in events]
    results = [_new_result(tag, data) for tag, data in events]
    if all(result.get("ignored") for result in results):
        return results
    cfg = _config()
    now = _now()
    events = _admit(events, results, cfg, now)
    if not any(_acted_on(result) for result in results):
        return results
    decisions = _decide_all(cfg, events, results, now)

    resolved = _deliver_grouped("resolve", [(r["kind"], d[1]) for r, d in zip(results, decisions)], cfg)
    fired = _deliver_grouped("fire", [(r["kind"], d[0]) for r, d in zip(results, decisions)], cfg)
    with _bus_scope():
        outcomes = _report_all(events, results, decisions, resolved, fired)
    if outcomes:
        _finish(cfg, outcomes)
    return results


def _report_all(events, results, decisions, resolved, fired):
    """Fill each event's result and fire its follow-ups; return [(claim, delivered)]."""
    outcomes = []
    for (_, data), result, (fire, resolve, claim) in zip(events, results, decisions):
        kind, reporter = result["kind"], result["reporter"]
        if not _acted_on(result):
            continue
        if resolve:
            result["failed"] |= not _report(kind, "resolve", resolve, resolved[kind], reporter)
            result["resolved"] = [alert["labels"] for alert in resolve]
        if fire:
            ok = _report(kind, "fire", fire, fired[kind], reporter)
            outcomes.append((claim, ok))
            result["failed"] |= not ok
            result["fired"] = [alert["labels"] for alert in fire]
        if not fire and not resolve:
            result["duplicate"] = True
            _fire("kcm/alert/duplicate", {"kind": kind, "reporter": reporter, "key": dedupe_key(kind, data, reporter)})
    return outcomes


def handle(tag, data):
    """
    Handle one ``kcm_leader`` beacon event: dedupe, alert, resolve, report.

    tag
        the beacon event tag, ``salt/beacon/<minion>/kcm_leader/<kind>``
    data
        the beacon event data (``id`` is the reporting minion)

    Returns what was done: ``{"kind", "fired", "resolved", "duplicate", "failed"}``.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_alert.handle tag=salt/beacon/master-1/kcm_leader/changed \\
            data='{"id": "master-1", "cluster": "prod", "transitions": 4, "new_node": "master-2"}'
    """
    return handle_batch([(tag, data)])[0]
