"""
Runner ``kcm_alert``: turns ``kcm_leader`` and ``kcm_cert`` beacon events into Alertmanager
alerts, once per change although every KCM master reports it, and delivers them through a durable outbox.

Callers: the ``kcm_alert`` engine (:func:`handle_batch`, the events of a short window; the
only path of the reports); the master's schedule (written by ``kcm.master``):
:func:`reconcile` at start and every ``reconcile_interval`` s, :func:`flush` every
``flush_interval`` s; the orchestrations (``kcm_orch``): :func:`plan` and :func:`unplan`
around each restart they make, so its leader change is alerted as planned. The parts, in
``_utils/``: ``kcm_trust`` (only signed, fresh reports of the KCM masters, by minion id,
count), ``kcm_alert_rules`` (dedupe key, labels, ``startsAt``), ``kcm_alert_decide`` (what opens,
ends or was missed) and ``kcm_outbox`` (the locked store and the outbox, one JSON file
under the master cachedir, read and written once per batch). Follow-ups on the master bus:
``kcm/alert/<kind>`` with what was sent (``resolved``, ``duplicate``, ``refused``),
``send_failed`` once when the first attempt of an alert fails, ``delivered`` when a later
one gets it through, ``expired`` when its ``endsAt`` passed first.

Exactly once: each change has one key, taken under the lock by whichever comes first, a
report (of any master) or the reconcile; the key and the alert enter the store in one
write; the outbox re-posts the identical alert (labels, ``startsAt``, ``endsAt``) until
every receiver accepted it, and Alertmanager keeps one alert per label set, so a re-post
after a lost answer changes nothing. A second Salt master computes the same labels and
``startsAt`` from the same report and Alertmanager merges its post with the first.

Master configuration: ``kcm_alert:`` in ``/etc/salt/master.d/kcm.conf``, written by
``kcm.master`` from pillar ``kcm:master`` (every key and its default: ``formula/kcm/defaults.yaml``,
docs/pillar.md). The runner keeps no default of its own: a key it reads that is not there
fails naming ``kcm_alert:<key>`` (apply kcm.master). ``dedupe_file: ''`` is
``<cachedir>/kcm_alert/dedupe.json``, beside the master's other caches.
"""

import contextlib
import functools
import logging
import os
import threading
import time
import uuid

import salt.utils.event

log = logging.getLogger(__name__)

__virtualname__ = "kcm_alert"

# A sender that holds entries longer than this died mid-send: another may post them.
CLAIM_SECONDS = 120
# How long a report waits for its alerts that another sender holds, before leaving them queued.
WAIT_FOR_HELD = 5.0
# What kcm_alert_decide uses of the other utils: a util calls no util, so the runner hands them in (its ``kit``).
KIT = {
    "kcm_alert_rules": (
        "number",
        "cluster_key",
        "dedupe_key",
        "bounded",
        "cert_severity",
        "alert_labels",
        "annotations",
        "per_master",
        "conditions",
        "cleared_by_change",
    ),
    "kcm_time": ("epoch", "format_rfc3339"),
    "kcm_trust": ("answer_problem", "pin_problem", "printable"),
}


def __virtual__():
    return __virtualname__


def _config():
    """The master's ``kcm_alert:``; a key read that it lacks raises, naming it."""
    cfg = _u("kcm_error.master_settings")(__opts__, "kcm_alert", "kcm:master")
    if not cfg["dedupe_file"]:
        cfg["dedupe_file"] = os.path.join(__opts__["cachedir"], "kcm_alert", "dedupe.json")
    return cfg


def _now():
    return time.time()


def _sleep(seconds):
    time.sleep(seconds)


def _u(name):
    return __utils__[name]


def _kit():
    return {name: _u(f"{util}.{name}") for util, names in KIT.items() for name in names}


@contextlib.contextmanager
def _store(cfg):
    with _u("kcm_outbox.locked_store")(
        cfg["dedupe_file"], _u("kcm_state_file.read_json"), _u("kcm_state_file.write_json")
    ) as store:
        caps = {"seen": int(cfg["max_seen"]), "open": int(cfg["max_open"]), "leases": int(cfg["max_seen"])}
        prune = functools.partial(_u("kcm_alert_decide.prune"), store, _now() - cfg["dedupe_ttl"], caps, _kit())
        prune()
        yield store
        # Decided on a pruned store, and written bounded.
        prune()


# The follow-up events of one call share one connection to the master bus.
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


# --------------------------------------------------------------------------
# the outbox: post what it holds, report what happened
# --------------------------------------------------------------------------


# kcm_outbox.deliver calls _post from inside a util, where Salt's loader gives no __utils__:
# _flush looks the sender up first, for its thread.
_SENDER = threading.local()


def _post(url, payload, cfg):
    """One POST (``_utils/kcm_receiver``: no redirect followed, no proxy from the environment,
    the whole request within ``timeout``); raises with one escaped line on any failure."""
    (getattr(_SENDER, "post", None) or _u("kcm_receiver.post"))(url, payload, cfg)


def _flush(cfg, resend=False, decide=None):
    """
    In one store round: ``decide(store)`` (a batch's or the reconcile's decisions: their
    alerts enter the outbox in the write that keeps them), with ``resend`` first the re-sends
    of the open alerts that are due, then claim what the outbox holds. Post it, and record
    the answers beside the store: the next round, whoever makes it, settles them. Returns the
    counts, the ids attempted and what ``decide`` returned.
    """
    now, token = _now(), uuid.uuid4().hex
    with _store(cfg) as store:
        decided = decide(store) if decide else None
        if resend:
            _u("kcm_outbox.add_resends")(
                store, _u("kcm_alert_decide.resends")(store, cfg, now, _kit()), cfg, now, _u("kcm_time.epoch")
            )
        claimed, expired, done = _u("kcm_outbox.claim")(
            store, _u("kcm_outbox.receivers")(cfg), token, now, CLAIM_SECONDS
        )
        pending = len(store["outbox"])
    _SENDER.post = _u("kcm_receiver.post")
    outcomes = _u("kcm_outbox.deliver")(claimed, cfg, _post, _sleep) if claimed else {}
    if claimed:
        _u("kcm_outbox.record")(cfg["dedupe_file"], token, outcomes, _u("kcm_state_file.write_json"))
    # What that settling does, on copies (an empty outbox): what this flush reports.
    settled = _u("kcm_outbox.settle")({"outbox": {}}, token, claimed, outcomes)
    pending -= sum(1 for _, _, delivered in settled if delivered)
    settled += [(dict(entry, answers={}), entry["attempts"] == 0, True) for entry in done]
    for tag, data in _u("kcm_outbox.follow_ups")(settled, expired):
        _fire(tag, data)
    return {
        "delivered": sum(1 for _, _, delivered in settled if delivered),
        "pending": pending,
        "expired": len(expired),
        "attempted": {e["id"]: delivered for e, _, delivered in settled},
        "decided": decided,
    }


def _deliver_now(cfg, decide):
    """Decide and flush in one store round; then wait a little for the new entries another
    sender holds (ordering). Returns what ``decide`` returned and the ids attempted."""
    result, deadline = _flush(cfg, decide=decide), time.monotonic() + WAIT_FOR_HELD
    decisions, attempted = result["decided"], dict(result["attempted"])
    new_ids = {entry["id"] for decision in decisions if decision for entry in decision[2]}
    for _ in range(int(WAIT_FOR_HELD / 0.2)):
        if not new_ids - set(attempted) or not result["pending"] or time.monotonic() > deadline:
            break
        _sleep(0.2)
        result = _flush(cfg)
        attempted.update(result["attempted"])
    return decisions, attempted


def flush():
    """
    Deliver what the outbox holds: every alert and resolution not yet accepted by each
    configured receiver, oldest first; drop (and report) those whose ``endsAt`` passed.
    First, re-send each open condition not sent for ``kcm:master:resend_interval`` seconds
    to the Alertmanagers (same labels and ``startsAt``, ``endsAt`` renewed): Alertmanager
    keeps alerts in memory only, so one that restarted has them back within an interval.
    The master's schedule calls it every ``kcm:master:flush_interval`` seconds; it is
    safe beside the engine and another flush (entries are claimed).

    Returns ``{"delivered": n, "pending": n, "expired": n}``.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_alert.flush
    """
    with _bus_scope():
        result = _flush(_config(), resend=True)
    return {key: result[key] for key in ("delivered", "pending", "expired")}


# --------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------


def _trust():
    return _u("kcm_trust.trust")(__opts__)


def masters():
    """
    Return who this Salt master takes for the KCM masters: ``kcm_alert:masters`` (and
    ``clusters``), the accepted minion ids that match it, and ``warnings``: a setting that
    lets a new minion pick such an id itself (``auto_accept``, autosign grains or file), or a
    target that is no id target. The engine logs the warnings when it starts.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_alert.masters
    """
    trust = _trust()
    return {
        "target": trust.target,
        "clusters": {name: list(globs) for name, globs in trust.clusters.items()},
        "masters": trust.accepted_masters(),
        "warnings": _u("kcm_trust.self_pick_warnings")(__opts__, trust),
    }


def _refusal(tag, data, cfg, now):
    """
    Why the event ``tag``/``data`` is not a report the runner may act on, or ``None``. A
    report must come from the minion its tag names (a well-formed id with an accepted key,
    the same ``id`` in the data), that minion's id must be one of the KCM masters
    (``kcm_alert:masters``; of its cluster with ``kcm_alert:clusters``), and the event must
    carry that minion's signature made within ``signature_window`` seconds. Replays and pins
    are judged with the store (:func:`_decide_all`).
    """
    return _u("kcm_trust.refusal")(tag, data, _trust(), now, cfg["signature_window"], _u("kcm_alert_rules.beacons")())


# When each sender's refusal was last logged: a refused minion cannot fill the log or the bus.
_REFUSED_LOGGED = {}
_REFUSED_LOCK = threading.Lock()


def _refused(tag, reporter, why, cfg):
    """Log and fire a refusal once per sender per ``refusal_log_interval``; the rest are counted."""
    sender = str(_u("kcm_trust.reporter_of")(tag, _u("kcm_alert_rules.beacons")()) or "?")[:256]
    now = time.monotonic()
    with _REFUSED_LOCK:
        last = _REFUSED_LOGGED.get(sender)
        if last is not None and now - last[0] < float(cfg["refusal_log_interval"]):
            last[1] += 1
            return
        if len(_REFUSED_LOGGED) > 10_000:
            _REFUSED_LOGGED.clear()
        _REFUSED_LOGGED[sender] = [now, 0]
        skipped = last[1] if last else 0
    printable = _u("kcm_trust.printable")
    log.warning(
        "kcm_alert: refused %s: %s%s",
        printable(tag, 120),
        printable(why),
        f" ({skipped} more refused since the last line)" if skipped else "",
    )
    _fire("kcm/alert/refused", {"tag": printable(tag), "reporter": printable(reporter), "reason": why})


def _new_result(tag, data):
    kind = _u("kcm_trust.kind_of")(tag)
    reporter = str(data.get("id") or "unknown")[:256]
    result = {"kind": kind, "reporter": reporter, "fired": [], "resolved": [], "duplicate": False, "failed": False}
    if kind not in _u("kcm_alert_rules.beacons")():
        # acquired / lost ride along with changed; nothing to alert on its own.
        result["ignored"] = True
    return result


def _admit(events, results, cfg, now):
    """The events the runner may act on, bounded; a refused one is logged, reported and marked."""
    admitted = []
    for (tag, data), result in zip(events, results):
        why = None if result.get("ignored") else _refusal(tag, data, cfg, now)
        if why:
            _refused(tag, result["reporter"], why, cfg)
            result["refused"] = why
        admitted.append((tag, _u("kcm_alert_rules.bounded")(data) if not why else data))
    return admitted


def _acted_on(result):
    return not result.get("ignored") and not result.get("refused")


def _decide_all(cfg, events, results, now, store):
    """Decide every event acted on, in order, on the locked ``store``; their alerts enter its outbox."""
    decisions = []
    receivers = _u("kcm_outbox.receivers")(cfg)
    for index, ((tag, data), result) in enumerate(zip(events, results)):
        why = None
        if _acted_on(result):
            # A replay, or a report for another cluster than the one pinned: judged on the store.
            why = _u("kcm_trust.replay_problem")(store.setdefault("senders", {}), result["reporter"], data) or _u(
                "kcm_trust.pin_problem"
            )(store.setdefault("pins", {}), _trust(), data)
            if why:
                result["refused"] = why
                _refused(tag, result["reporter"], why, cfg)
        if not _acted_on(result):
            decisions.append(None)
            continue
        fire, resolve = _u("kcm_alert_decide.decide")(store, result["kind"], data, result["reporter"], cfg, now, _kit())
        group = f"{now}:{index}:{uuid.uuid4().hex[:8]}"
        made = _u("kcm_outbox.items")(result["kind"], result["reporter"], group, fire, resolve, _u("kcm_time.epoch"))
        entries = _u("kcm_outbox.add")(store, made, receivers, now)
        decisions.append((fire, resolve, [dict(entry) for entry in entries]))
    return decisions


def handle_batch(events):
    """
    Handle ``kcm_leader`` and ``kcm_cert`` beacon events at once, in order: refuse what is
    no signed report of a KCM master, dedupe the rest under one lock (their alerts enter the
    outbox in the same write, which also claims what the outbox holds), then post it (one
    POST per Alertmanager).

    The ``kcm_alert`` engine calls this with what arrived within its ``batch_wait``: a
    storm of failovers costs one store round (read, decide, write) and one POST per
    Alertmanager per batch, not per event.

    events
        a list of ``[tag, data]`` pairs (or ``{"tag": ..., "data": ...}`` dicts)

    Returns one result per event: ``kind``, ``reporter``, ``fired`` and ``resolved`` (the
    alerts' labels), ``duplicate``, ``failed`` (not yet accepted by every receiver: kept in
    the outbox), and ``ignored`` or ``refused`` (why) when it was not acted on.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_alert.handle_batch \\
            events='[["salt/beacon/master-1/kcm_leader/changed", {"id": "master-1", "cluster": "prod"}]]'
    """
    events = [(e.get("tag"), e.get("data")) if isinstance(e, dict) else tuple(e) for e in events or ()]
    events = [(tag, dict(data) if isinstance(data, dict) else {}) for tag, data in events]
    results = [_new_result(tag, data) for tag, data in events]
    if all(result.get("ignored") for result in results):
        return results
    cfg = _config()
    now = _now()
    with _bus_scope():
        events = _admit(events, results, cfg, now)
        if not any(_acted_on(result) for result in results):
            return results
        decisions, attempted = _deliver_now(cfg, functools.partial(_decide_all, cfg, events, results, now))
        _fill_results(events, results, decisions, attempted)
    return results


def _fill_results(events, results, decisions, attempted):
    for (_, data), result, decision in zip(events, results, decisions):
        if decision is None:
            continue
        fire, resolve, entries = decision
        result["fired"] = [alert["labels"] for alert in fire]
        result["resolved"] = [alert["labels"] for alert, _ in resolve]
        # failed: not accepted by every receiver yet (kept in the outbox for the next flush).
        result["failed"] = any(attempted.get(entry["id"]) is not True for entry in entries)
        if not entries:
            result["duplicate"] = True
            key = _u("kcm_alert_rules.dedupe_key")(result["kind"], data, result["reporter"])
            _fire("kcm/alert/duplicate", {"kind": result["kind"], "reporter": result["reporter"], "key": key})


def unpin(cluster):
    """
    Forget the ``cluster_id`` pinned for the cluster named ``cluster`` (one of
    ``kcm_alert:clusters``; its first genuine report pinned it): the next genuine report
    pins the new one, after a cluster was rebuilt. Returns the forgotten ``cluster_id``.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_alert.unpin prod
    """
    with _store(_config()) as store:
        return (store.setdefault("pins", {}).pop(str(cluster), None) or {}).get("cluster_id")


# --------------------------------------------------------------------------
# planned restarts: this Salt master says which leader change it causes
# --------------------------------------------------------------------------


def plan(minion, seconds, holder=None, by="maintenance", transitions=None):
    """
    Mark the restart of ``minion``'s KCM that a command on this Salt master is about to make,
    for ``seconds``: a leader change away from ``minion`` (its report's ``old_minion``, or
    ``old_holder`` equal to ``holder``, the Lease identity of the KCM it stops) within that
    time is alerted as ``KCMLeaderChanged`` with ``planned="true"`` and severity ``info``. A
    change away from any other master still pages, and so does one counted at or below
    ``transitions`` (the Lease's ``leaseTransitions`` read before the restart, when given): it
    happened before the restart, as a crash reported late does. ``kcm_orch.upgrade`` and
    ``kcm_orch.drill`` mark each master before they restart or stop it and end the mark
    (:func:`unplan`) after the step; marks live in this runner's store on this Salt master
    only (a minion cannot write one). Returns the mark.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_alert.plan master-1 seconds=600 by='kernel update'
        salt-run kcm_alert.unplan master-1
    """
    printable, now = _u("kcm_trust.printable"), _now()
    with _store(_config()) as store:
        return _u("kcm_alert_decide.mark_planned")(
            store,
            printable(minion),
            holder and printable(holder),
            now + float(seconds),
            printable(by, 120),
            now,
            _kit(),
            transitions=transitions,
        )


def unplan(minion):
    """
    End the mark :func:`plan` made for ``minion``: a leader change away from it pages again.
    Returns the mark ended, or None.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_alert.unplan master-1
    """
    with _store(_config()) as store:
        return _u("kcm_alert_decide.end_planned")(store, _u("kcm_trust.printable")(minion))


# --------------------------------------------------------------------------
# reconcile: what the events did not bring
# --------------------------------------------------------------------------

RECONCILER = "kcm_alert.reconcile"


def reconcile():
    """
    Compare the Lease of every cluster, as its KCM masters read it now, with what was
    alerted, and raise what no event brought; then flush the outbox. The master's schedule
    calls it at start and every ``kcm:master:reconcile_interval`` seconds.

    * A ``leaseTransitions`` (or holder) other than the last one known for the cluster is a
      ``KCMLeaderChanged`` from the last known holder to the current one, under the event
      path's dedupe key: the beacon's event, if it arrives later, is a duplicate, and the
      other way round. A cluster's first reconcile only records its Lease.
    * With a live Lease, ``KCMNoLeader`` and ``KCMLeaderStale`` (of a holder that renewed
      since) are resolved; ``KCMApiserverUnreachable`` loses the reporters that read the
      Lease now or did not answer at all (gone), and is resolved when none is left.

    Returns ``{"asked", "answered", "clusters", "raised", "resolved", "delivered",
    "pending", "expired"}``.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_alert.reconcile
    """
    cfg, now = _config(), _now()
    # The KCM masters by id (kcm_alert:masters over the accepted keys), asked as a list;
    # only their signed answers to this very question are read.
    trust = _trust()
    masters = trust.accepted_masters()
    answers = _u("kcm_alert_decide.ask_masters")(
        __opts__, masters, cfg["reconcile_timeout"], trust, now, cfg["signature_window"], _kit()
    )
    summary = {"asked": masters, "answered": sorted(answers), "clusters": {}, "raised": [], "resolved": []}
    with _bus_scope():
        result = _flush(cfg, decide=functools.partial(_reconcile_all, answers, trust, cfg, now, summary))
    summary.update({key: result[key] for key in ("delivered", "pending", "expired")})
    return summary


def _reconcile_all(answers, trust, cfg, now, summary, store):
    """The reconcile's decisions on the locked ``store``, cluster by cluster, told in ``summary``."""
    views = _u("kcm_alert_decide.views")(answers, RECONCILER, trust, dict(store.get("pins") or {}), _kit())
    receivers, items, epoch = _u("kcm_outbox.receivers")(cfg), _u("kcm_outbox.items"), _u("kcm_time.epoch")
    for key, view in sorted(views.items()):
        if view["lease"] is None:
            summary["clusters"][key] = "no master could read the Lease"
            continue
        fire, resolve, what = _u("kcm_alert_decide.reconcile_cluster")(store, view, cfg, now, _kit())
        group = f"{now}:{key}:{uuid.uuid4().hex[:8]}"
        made = items("changed", RECONCILER, group, fire, [], epoch)
        made += items("recovered", RECONCILER, group + ":r", [], resolve, epoch)
        _u("kcm_outbox.add")(store, made, receivers, now)
        summary["clusters"][key] = what or "in step"
        summary["raised"] += [alert["labels"] for alert in fire]
        summary["resolved"] += [alert["labels"] for alert, _ in resolve]
