"""
The ``kcm_alert`` runner's durable state, one JSON file in the master's cachedir (default
``<cachedir>/kcm_alert/dedupe.json``): what was alerted (``seen``), what is open
(``open``), the last Lease seen per cluster (``leases``), and the outbox (``outbox``), the
alerts and resolutions not yet accepted by every receiver.

Every alert goes into the outbox in the same locked write that records its decision, so a
decision is never kept without its alert, nor the other way round. An entry leaves only when
each receiver it is pending for answered 2xx, or when the alert's own ``endsAt`` has passed
(Alertmanager would end it by itself by then: the entry is dropped and reported as expired).

Concurrency: the reactor runs runner jobs in threads, the engine in its own process, the
schedule in another. ``flock()`` on ``<file>.lock`` serializes every read-modify-write of the
file; a sender *claims* entries under the lock (in the write that adds its own), posts
without it, and records the answers in a file of their own beside the store
(:func:`record`), which the next read-modify-write, whoever makes it, settles before
anything else: a batch costs one round of the store, not three. A claimed entry is skipped
by other senders until its claim runs out (a sender that died), so two flushes never post
one entry at once, and an entry is removed only by the settle of a sender that saw it
accepted, so none is lost. Entries are posted in the order they were decided, and an entry
whose labels are held by another sender waits: a resolution never overtakes the firing it
ends (Alertmanager would take the later firing as a re-open).
The re-sends of open alerts (:func:`add_resends`) are firings like any other: a re-send is
queued only while its alert is open, so it always precedes the resolution that ends it.

Called as ``__utils__["kcm_outbox.locked_store"](...)`` and so on from the runner, which
hands in the ``kcm_state_file`` and ``kcm_time`` functions it uses (Salt packs no
``__utils__`` into a utils module).
"""

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os

__virtualname__ = "kcm_outbox"

log = logging.getLogger(__name__)

# senders: the newest (epoch, counter) accepted from each KCM master (replays are refused);
# pins: the cluster_id of each cluster name of kcm_alert:clusters; planned: the restarts this
# Salt master's own commands mark (kcm_alert.plan), never anything a minion sent.
PARTS = ("seen", "open", "leases", "outbox", "senders", "pins", "planned")
# More pending entries than this are a receiver gone for good: the oldest are dropped.
MAX_OUTBOX = 1000
# <file><ANSWERS><token>: what the receivers answered the sender of that claim (:func:`record`).
ANSWERS = ".answers-"


def __virtual__():
    return __virtualname__


# --------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------


def well_formed(store, path):
    """The store with only what the runner can use; a wrong shape is reset with a warning."""
    if not isinstance(store, dict):
        log.warning("kcm_alert: state file %s holds %s, not a mapping; starting a new one", path, type(store).__name__)
        store = {}
    for part in PARTS:
        value = store.get(part, {})
        if not isinstance(value, dict):
            log.warning("kcm_alert: state file %s: '%s' is %s, not a mapping; reset", path, part, type(value).__name__)
            value = {}
        store[part] = {k: v for k, v in value.items() if isinstance(v, dict)}
    if not isinstance(store.get("seq"), int):
        store["seq"] = max([e.get("seq", 0) for e in store["outbox"].values()] + [0])
    return store


@contextlib.contextmanager
def locked_store(path, read_json, write_json):
    """
    Yield the store dict under an exclusive lock and write it back atomically on exit,
    through ``read_json`` / ``write_json`` (the caller's ``kcm_state_file`` functions), with
    the answers recorded beside it settled first; their records go once the store holding
    them is written.

    flock() on a separate lock file serializes reactor threads (each opens its own file
    description) and several processes alike. A write that fails (a full disk) is logged
    and leaves the old file and the records; what the caller decided is still sent, from
    memory.
    """
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path + ".lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            store = well_formed(read_json(path, {}), path)
            records = sorted(glob.glob(glob.escape(path + ANSWERS) + "*"))
            for name in records:
                _settle_record(store, read_json(name, {}))
            yield store
            try:
                write_json(path, store)
            except OSError as exc:
                log.error("kcm_alert: cannot write state file %s (%s); alerts are still sent", path, exc)
                return
            for name in records:
                with contextlib.suppress(OSError):
                    os.unlink(name)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record(path, token, outcomes, write_json):
    """
    Keep what the receivers answered the sender of claim ``token`` (``outcomes``, as
    :func:`deliver` returns them) beside the store at ``path``, fsynced, for the next round
    to settle. One that cannot be written is logged: its entries stay claimed and are posted
    again once the claim runs out, as when the store itself cannot be written.
    """
    try:
        write_json(path + ANSWERS + token, {"token": token, "outcomes": outcomes})
    except OSError as exc:
        log.error("kcm_alert: cannot record the receivers' answers beside %s (%s)", path, exc)


def _settle_record(store, found):
    outcomes = found.get("outcomes") if isinstance(found, dict) else None
    if isinstance(outcomes, dict) and isinstance(found.get("token"), str) and found["token"]:
        settle(
            store,
            found["token"],
            [
                store["outbox"][key]
                for key, answers in outcomes.items()
                if key in store["outbox"] and isinstance(answers, dict)
            ],
            outcomes,
        )


# --------------------------------------------------------------------------
# the outbox
# --------------------------------------------------------------------------


def items(kind, reporter, group, fire, resolve, epoch):
    """Outbox items for one decision, resolutions first: firings last until their endsAt
    (read with ``epoch``, the caller's ``kcm_time.epoch``), resolutions (``(alert,
    expires)`` pairs) until the endsAt of the firing they end."""
    made = [
        {"alert": alert, "action": "resolve", "kind": kind, "reporter": reporter, "group": group, "expires": expires}
        for alert, expires in resolve
    ]
    return made + [
        {
            "alert": alert,
            "action": "fire",
            "kind": kind,
            "reporter": reporter,
            "group": group,
            "expires": epoch(alert["endsAt"]),
        }
        for alert in fire
    ]


def entry_id(action, alert):
    """The same alert decided twice is one entry: the id is a digest of what is posted."""
    text = json.dumps([action, alert], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def add(store, items, receivers, now):
    """
    Put ``items`` into the outbox: dicts with ``alert``, ``action``, ``kind``, ``reporter``,
    ``group`` (the entries one report made, reported together) and ``expires`` (epoch
    seconds, the alert's own end). Returns the entries, as stored.
    """
    added = []
    for item in items:
        key = entry_id(item["action"], item["alert"])
        if key not in store["outbox"]:
            store["seq"] += 1
            store["outbox"][key] = dict(
                item,
                id=key,
                seq=store["seq"],
                created=now,
                pending=list(receivers),
                errors={},
                attempts=0,
                claimed_by=None,
                claimed_until=0,
            )
        added.append(store["outbox"][key])
    if len(store["outbox"]) > MAX_OUTBOX:
        oldest = sorted(store["outbox"].values(), key=lambda e: e["seq"])[: len(store["outbox"]) - MAX_OUTBOX]
        for entry in oldest:
            log.error(
                "kcm_alert: outbox over %s entries; dropped %s %s",
                MAX_OUTBOX,
                entry["action"],
                entry["alert"]["labels"].get("alertname"),
            )
            store["outbox"].pop(entry["id"])
    return added


def add_resends(store, alerts, cfg, now, epoch):
    """
    Queue the re-sends of open alerts (``kcm_alert_decide.resends``) for the Alertmanagers
    only (a webhook gets each change once): each replaces its alert's earlier re-send still
    waiting unclaimed, so a receiver that is down costs one entry per open alert. They are
    ordinary firings in the outbox's order, silent in the follow-ups. Returns the entries.
    """
    fresh = {json.dumps(alert["labels"], sort_keys=True) for alert in alerts}
    for entry in list(store["outbox"].values()):
        if entry.get("resend") and entry["claimed_until"] <= now and _fingerprint(entry) in fresh:
            store["outbox"].pop(entry["id"])
    made = [
        {
            "alert": alert,
            "action": "fire",
            "kind": "resend",
            "reporter": "",
            "group": "resend",
            "expires": epoch(alert["endsAt"]),
            "resend": True,
        }
        for alert in alerts
    ]
    return add(store, made, [am_endpoint(url) for url in cfg["alertmanager_urls"]], now)


def _fingerprint(entry):
    return json.dumps(entry["alert"]["labels"], sort_keys=True)


def claim(store, receivers, token, now, hold):
    """
    Claim the entries this sender may post now, for ``hold`` seconds, oldest first.
    Returns ``(claimed, expired, done)``: copies of the claimed entries, the entries dropped
    because their alert ended, and those with no configured receiver left to wait for.
    """
    claimed, expired, done, held = [], [], [], set()
    for entry in sorted(store["outbox"].values(), key=lambda e: e["seq"]):
        entry["pending"] = [url for url in entry["pending"] if url in receivers]
        if not entry["pending"]:
            done.append(store["outbox"].pop(entry["id"]))
        elif entry["expires"] <= now:
            expired.append(store["outbox"].pop(entry["id"]))
        elif entry["claimed_until"] > now or _fingerprint(entry) in held:
            held.add(_fingerprint(entry))
        else:
            entry.update(claimed_by=token, claimed_until=now + hold)
            claimed.append(dict(entry))
    return claimed, expired, done


def settle(store, token, claimed, outcomes):
    """
    Record what the receivers answered, ``{entry id: {url: error or None}}``, for the
    entries ``claimed``. Returns each as ``(entry, first, delivered)``: ``first`` when this
    was its first attempt, ``delivered`` when no receiver is left pending.
    """
    settled = []
    for copy in claimed:
        answers = outcomes.get(copy["id"], {})
        entry = store["outbox"].get(copy["id"])
        mine = entry is not None and entry.get("claimed_by") == token
        target = entry if mine else dict(copy)
        first = target["attempts"] == 0
        target["attempts"] += 1
        target["pending"] = [url for url in target["pending"] if answers.get(url, "not attempted") is not None]
        target["errors"] = {url: answers[url] for url in target["pending"] if answers.get(url)}
        target.update(claimed_by=None, claimed_until=0)
        if mine and not target["pending"]:
            store["outbox"].pop(copy["id"])
        settled.append((dict(target, answers=answers), first, not target["pending"]))
    return settled


def follow_ups(settled, expired):
    """
    The events to fire for what a flush did, ``[(tag, data)]``: for first attempts, one
    ``kcm/alert/<kind>`` (or ``kcm/alert/resolved``) per report and action with what was
    sent and each receiver's answer, preceded by ``kcm/alert/send_failed`` when one
    refused; ``kcm/alert/delivered`` for what got through on a later attempt;
    ``kcm/alert/expired`` for each entry dropped undelivered.
    """
    events, groups = [], {}
    # A re-send is news to nobody: what it carries was reported when it was decided.
    settled = [item for item in settled if not item[0].get("resend")]
    expired = [entry for entry in expired if not entry.get("resend")]
    for entry, first, _ in settled:
        if first:
            groups.setdefault((entry["group"], entry["action"]), []).append(entry)
    for (_, action), entries in groups.items():
        answers = {}
        for entry in entries:
            for url, error in entry["answers"].items():
                answers[url] = answers.get(url) or error
        data = {
            "action": action,
            "kind": entries[0]["kind"],
            "reporter": entries[0]["reporter"],
            "alerts": [entry["alert"] for entry in entries],
            "receivers": answers,
        }
        failed = {url: error for url, error in answers.items() if error}
        if failed:
            log.error(
                "kcm_alert: %s %s not delivered to %s yet; kept in the outbox",
                action,
                data["kind"],
                ", ".join(sorted(failed)),
            )
            events.append(("kcm/alert/send_failed", dict(data, failed=failed)))
        events.append((f"kcm/alert/{'resolved' if action == 'resolve' else data['kind']}", data))
    late = [entry for entry, first, delivered in settled if delivered and not first]
    if late:
        events.append(
            (
                "kcm/alert/delivered",
                {
                    "alerts": [entry["alert"] for entry in late],
                    "entries": [{key: entry[key] for key in ("kind", "action", "attempts")} for entry in late],
                },
            )
        )
    for entry in expired:
        log.error(
            "kcm_alert: %s %s expired undelivered (endsAt %s passed; pending %s)",
            entry["action"],
            entry["alert"]["labels"].get("alertname"),
            entry["alert"]["endsAt"],
            ", ".join(entry["pending"]),
        )
        events.append(
            (
                "kcm/alert/expired",
                {key: entry[key] for key in ("kind", "action", "alert", "pending", "errors", "attempts")},
            )
        )
    return events


# --------------------------------------------------------------------------
# sending
# --------------------------------------------------------------------------


def am_endpoint(url):
    """Alertmanager's v2 alerts endpoint under the base ``url``."""
    url = url.rstrip("/")
    return url if url.endswith("/api/v2/alerts") else url + "/api/v2/alerts"


def send_with_retry(url, payload, cfg, post, sleep):
    """Post with exponential backoff; return None on success or the last error text."""
    delay = cfg["receiver_backoff"]
    error = None
    attempts = max(1, int(cfg["receiver_retries"]))
    for attempt in range(1, attempts + 1):
        try:
            post(url, payload, cfg)
            return None
        except Exception as exc:  # pylint: disable=broad-except
            error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("kcm_alert: POST %s failed (attempt %s of %s): %s", url, attempt, attempts, error)
        if attempt < attempts:
            sleep(delay)
            delay *= 2
    return error


def receivers(cfg):
    """Every URL an entry waits for: the Alertmanager endpoints, then the webhooks."""
    return [am_endpoint(url) for url in cfg["alertmanager_urls"]] + list(cfg["webhook_urls"])


def deliver(entries, cfg, post, sleep):
    """
    Post ``entries`` (oldest first): one POST per Alertmanager with all the alerts pending
    for it, one per webhook and (action, kind), whose payload names them. Returns
    ``{entry id: {url: error or None}}``.
    """
    outcomes = {entry["id"]: {} for entry in entries}
    for endpoint in (am_endpoint(url) for url in cfg["alertmanager_urls"]):
        batch = [entry for entry in entries if endpoint in entry["pending"]]
        if batch:
            error = send_with_retry(endpoint, [entry["alert"] for entry in batch], cfg, post, sleep)
            for entry in batch:
                outcomes[entry["id"]][endpoint] = error
    for url in cfg["webhook_urls"]:
        groups = {}
        for entry in entries:
            if url in entry["pending"]:
                groups.setdefault((entry["action"], entry["kind"]), []).append(entry)
        for (action, kind), batch in groups.items():
            payload = {"kind": kind, "action": action, "alerts": [entry["alert"] for entry in batch]}
            error = send_with_retry(url, payload, cfg, post, sleep)
            for entry in batch:
                outcomes[entry["id"]][url] = error
    return outcomes
