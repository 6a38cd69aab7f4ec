"""
The ``kcm_alert`` runner's decisions, made on its store (see ``kcm_outbox``) with the lock
held: which report is new (once per dedupe key, whichever master or the reconcile saw it
first), which condition it opens or ends, and what the reconcile learns from the Lease the
KCM masters read. Pure functions of (store, report, config, now); nothing is sent here
but the reconcile's one question to the masters (:func:`ask_masters`).

Here too the alert itself: ``startsAt`` is a fact of the cluster where one exists (the
Lease's ``acquireTime`` for a new leader, its last renewal for a stale or lost one), else
the time the minion signed its report, never this master's clock, so two Salt masters post
the same ``startsAt`` for one report; ``endsAt`` bounds the alert by the master's clock.

Each decision returns ``(fire, resolve)``: the alerts to fire, and ``(alert, expires)``
pairs of resolutions (``expires``: when the alert they end would have ended by itself).

Called as ``__utils__["kcm_alert_decide.decide"](...)`` from the runner, which hands in
``kit``, ``{name: function}`` of the other utils' functions used here (its ``KIT``).
"""

import logging

__virtualname__ = "kcm_alert_decide"

log = logging.getLogger(__name__)

# A certificate alert's key is kept until notAfter, but never longer than this.
MAX_KEEP_SECONDS = 2 * 366 * 86400


def __virtual__():
    return __virtualname__


# --------------------------------------------------------------------------
# the alert itself: startsAt from the report's facts, endsAt from the master's clock
# --------------------------------------------------------------------------


def starts_at(kind, data, now, kit):
    """
    When the thing alerted on began, from the report's own facts (see the module
    docstring): equal on every master that handles the report.
    """
    began = None
    if kind == "changed":
        began = kit["epoch"](data.get("acquire_time"))
    elif kind == "no_leader":
        renewed = kit["epoch"](data.get("renew_time"))
        duration = kit["number"](data.get("lease_duration_seconds"))
        began = renewed + duration if renewed is not None and duration is not None else None
    elif kind == "stale":
        began = kit["epoch"](data.get("renew_time"))
    # Never after the report itself (a skewed clock); the time it was signed is the same
    # on every master, "now" is not.
    signed = kit["number"](data.get("signed_at"))
    latest = signed if signed is not None else now
    return min(began, latest) if began is not None else latest


# An open condition's endsAt is this many re-send intervals ahead: a re-send renews it long
# before it passes, and an alert whose Salt master stopped re-sending ends by itself.
RESEND_WINDOWS = 4


def ends_at(kind, data, cfg, now):
    """Epoch seconds the alert ends by itself unless re-sent or resolved earlier: an event
    (``KCMLeaderChanged``) after ``event_ttl``, a condition (re-sent while open, even a
    certificate that expired already) after RESEND_WINDOWS ``resend_interval`` s."""
    del data
    return now + (cfg["event_ttl"] if kind == "changed" else RESEND_WINDOWS * cfg["resend_interval"])


def build_alert(kind, data, reporter, cfg, now, kit):
    """One Alertmanager v2 alert (postableAlert) for a firing condition or event."""
    fmt = kit["format_rfc3339"]
    return {
        "labels": kit["alert_labels"](kind, data, cfg["labels"]),
        "annotations": kit["annotations"](kind, data, reporter, cfg["runbook_url"]),
        "startsAt": fmt(starts_at(kind, data, now, kit)),
        # Explicit endsAt: Alertmanager ends the alert then unless a re-send renews it.
        "endsAt": fmt(ends_at(kind, data, cfg, now)),
    }


def resolution(open_alert, now, kit):
    """The alert `open_alert` again, ended at `now`: what Alertmanager takes as resolved."""
    return {
        "labels": open_alert["labels"],
        "annotations": open_alert.get("annotations", {}),
        "startsAt": open_alert["startsAt"],
        "endsAt": kit["format_rfc3339"](max(now, kit["epoch"](open_alert["startsAt"]) or now)),
    }


def _open_alerts(store):
    """The alerts of ``store["open"]`` (a condition's alert, a certificate's alerts), as stored."""
    for entry in store["open"].values():
        yield from entry.get("alerts") or ([entry] if "labels" in entry else [])


def resends(store, cfg, now, kit):
    """
    The open alerts due for a re-send (Alertmanager keeps alerts in memory only, so what it
    lost in a restart comes back): those not sent for ``resend_interval`` s, each the same
    labels, annotations and ``startsAt`` with ``endsAt`` renewed to RESEND_WINDOWS intervals
    ahead. Their stored copy takes the new ``endsAt`` and ``sent_at`` (so a resolution lasts
    as long as the last re-send, and each alert goes once per interval). A resolution pops
    the open alert under the same lock: no re-send is decided after the resolution.
    """
    due = []
    for alert in _open_alerts(store):
        if now - (kit["number"](alert.get("sent_at")) or 0) < cfg["resend_interval"]:
            continue
        alert.update(sent_at=now, endsAt=kit["format_rfc3339"](ends_at("resend", {}, cfg, now)))
        due.append({key: alert[key] for key in ("labels", "annotations", "startsAt", "endsAt")})
    return due


# --------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------


def prune(store, oldest, caps, kit):
    """Forget keys older than ``oldest`` (a cert's key lives until notAfter) and keep at
    most ``caps[part]`` of each part, the newest (kcm:master:max_seen, max_open)."""
    store["seen"] = {
        key: entry
        for key, entry in store["seen"].items()
        if max(entry.get("at", 0), entry.get("keep_until") or 0) >= oldest
    }
    store["open"] = {
        slot: entry
        for slot, entry in store["open"].items()
        if not slot.startswith("cert|") or (entry.get("keep_until") or 0) >= oldest
    }
    for part, cap in caps.items():
        if len(store[part]) > cap:
            newest = sorted(store[part].items(), key=lambda item: kit["number"](item[1].get("at")) or 0)[-cap:]
            log.warning("kcm_alert: state over %s %s entries; the oldest are dropped", cap, part)
            store[part] = dict(newest)


def _claimable(entry):
    # "failed" is a key of a store written before the outbox: its alert was never kept.
    return entry is None or entry.get("status") == "failed"


def _ending(open_alert, now, kit):
    """The resolution of ``open_alert`` and when its outbox entry expires: when the last
    re-send ends, and never sooner than a re-send made now would (a schedule that did not
    run for a while must not drop the resolution a webhook waits for)."""
    ends = kit["epoch"](open_alert.get("endsAt")) or now
    window = ends - (kit["number"](open_alert.get("sent_at")) or ends)
    return resolution(open_alert, now, kit), max(ends, now + window)


def _cert_slot(data, kit):
    return f"cert|{kit['cluster_key'](data)}|{data.get('fingerprint')}"


def _used_by(users):
    return "; ".join(f"{minion} ({', '.join(files)})" for minion, files in sorted(users.items()))


def _cert_annotations(entry, cfg, kit):
    """The certificate's annotations as ``entry`` (its worst report, the masters using it) says now."""
    facts = dict(entry["report"], used_by=_used_by(entry["users"]))
    return kit["annotations"]("cert_expiring", facts, entry["reporter"], cfg["runbook_url"])


def _reannotated(entry, cfg, now, kit):
    """The alerts of ``entry`` whose annotations change (a master joined or renewed), to post
    again at once: same labels, so the same alert, and a notification not yet sent names them all."""
    fresh = _cert_annotations(entry, cfg, kit)
    ends = kit["format_rfc3339"](ends_at("cert_expiring", {}, cfg, now))
    changed = []
    for alert in entry["alerts"]:
        if alert["annotations"] != fresh:
            alert.update(annotations=fresh, sent_at=now, endsAt=ends)
            changed.append({key: alert[key] for key in ("labels", "annotations", "startsAt", "endsAt")})
    return changed


# A certificate's alert is replaced (and the old one resolved) only when its severity rises.
_SEVERITY_RANK = {"warning": 0, "critical": 1}


def _cert_renewed(store, data, reporter, cfg, now, kit):
    """``reporter`` no longer uses the certificate: its alert ends when no master that
    reported it still does (until then its ``used_by`` names the rest)."""
    slot = _cert_slot(data, kit)
    current = store["open"].get(slot)
    if not current or reporter not in current["users"]:
        return [], []
    del current["users"][reporter]
    if current["users"]:
        return _reannotated(current, cfg, now, kit), []
    store["open"].pop(slot)
    return [], [_ending(alert, now, kit) for alert in current["alerts"]]


def _decide_cert(store, kind, data, reporter, cfg, now, kit):
    """
    One alert per certificate (fingerprint) and cluster, whichever masters and files use it:
    a master's first report of a threshold joins it (the alert is posted again with the
    master in its ``used_by``); a worse severity replaces it, the old one resolved in the
    same post.
    """
    if kind == "cert_renewed":
        return _cert_renewed(store, data, reporter, cfg, now, kit)
    key = kit["dedupe_key"](kind, data, reporter)
    if not _claimable(store["seen"].get(key)):
        return [], []
    expiry = min(kit["epoch"](data.get("not_after")) or now, now + MAX_KEEP_SECONDS)
    store["seen"][key] = {"at": now, "status": "queued", "reporter": reporter, "keep_until": expiry}
    current = store["open"].setdefault(_cert_slot(data, kit), {"users": {}, "alerts": [], "at": now})
    current["keep_until"] = expiry
    current["users"][reporter] = sorted(str(name) for name in data.get("files") or ())
    severity = kit["cert_severity"](data)
    if current.get("report") and _SEVERITY_RANK[severity] <= _SEVERITY_RANK[kit["cert_severity"](current["report"])]:
        store["seen"][key]["status"] = "joined"
        return _reannotated(current, cfg, now, kit), []
    current.update(report=kit["bounded"](data), reporter=reporter)
    alert = dict(build_alert(kind, data, reporter, cfg, now, kit), annotations=_cert_annotations(current, cfg, kit))
    resolve = [_ending(old, now, kit) for old in current["alerts"]]
    current["alerts"] = [dict(alert, sent_at=now)]
    return [alert], resolve


def _forget(store, kind, data, reporters, kit):
    """The condition ``kind`` of ``reporters`` (an outage, a crash loop) is over: their next
    one is a new incident, not a duplicate."""
    for reporter in reporters:
        store["seen"].pop(kit["dedupe_key"](kind, data, reporter), None)


def _slot(cluster, kind, reporter, kit):
    """Where an open condition is kept: one per cluster, or one per master for a master's own."""
    return f"{cluster}|{kind}|{reporter}" if kind in kit["per_master"]() else f"{cluster}|{kind}"


def _recovered(store, cluster, data, reporter, now, kit):
    condition = data.get("condition")
    slot = _slot(cluster, condition, reporter, kit)
    current = store["open"].get(slot)
    if condition == "unreachable" or condition in kit["per_master"]():
        _forget(store, condition, data, [reporter], kit)
    if current and condition == "unreachable":
        current["reporters"] = [r for r in current["reporters"] if r != reporter]
        if current["reporters"]:
            return [], []
    if current:
        return [], [_ending(store["open"].pop(slot), now, kit)]
    return [], []


def note_lease(store, data, now, kit):
    """Remember the newest Lease holder of the cluster ``data`` names (the reconcile compares with it)."""
    try:
        transitions = int(data.get("transitions"))
    except (TypeError, ValueError):
        return
    cluster = kit["cluster_key"](data)
    known = store["leases"].get(cluster)
    if known is None or transitions >= known.get("transitions", -1):
        store["leases"][cluster] = {
            "transitions": transitions,
            "at": now,
            **{field: data.get(f"new_{field}", data.get(field)) for field in ("holder", "node", "minion")},
        }


# --------------------------------------------------------------------------
# planned restarts: marks that only this Salt master's own commands write (kcm_alert.plan)
# --------------------------------------------------------------------------


def mark_planned(store, minion, holder, until, by, now, kit, transitions=None):
    """
    Mark the restart of ``minion``'s KCM that a command on this Salt master makes now, until
    ``until`` (epoch): a leader change away from ``minion``, or from ``holder`` (the Lease
    identity of its running KCM when it leads), is then planned. ``transitions``: the Lease's
    ``leaseTransitions`` the command read before it began; a change counted at or below it
    happened before the command and is not its doing. Returns the mark.
    """
    store["planned"] = {
        key: mark for key, mark in store["planned"].items() if (kit["number"](mark.get("until")) or 0) > now
    }
    mark = {"minion": minion, "until": until, "by": by, "at": now, "transitions": kit["number"](transitions)}
    store["planned"][f"minion|{minion}"] = mark
    if holder:
        # A holder identity names one process: no later crash of that master can match it.
        store["planned"][f"holder|{holder}"] = dict(mark, holder=holder)
    return mark


def end_planned(store, minion):
    """The step restarting ``minion`` is over: a change away from that master pages again. The
    mark of the process it stopped stays until its deadline (a late report of that change)."""
    return store["planned"].pop(f"minion|{minion}", None)


def planned_mark(store, data, now, kit):
    """The unexpired mark a leader change ``data`` leaves (its ``old_holder`` or
    ``old_minion``), or None. A change whose ``transitions`` is at or below the count the mark
    was made over happened before the command (a crash reported late): not the mark's."""
    for part in ("holder", "minion"):
        value = data.get(f"old_{part}")
        mark = store["planned"].get(f"{part}|{value}") if value else None
        if not mark or (kit["number"](mark.get("until")) or 0) <= now:
            continue
        before, counted = kit["number"](mark.get("transitions")), kit["number"](data.get("transitions"))
        if before is not None and counted is not None and counted <= before:
            continue
        return mark
    return None


def _as_planned(alert, mark):
    """A planned change's alert: ``planned="true"``, severity info, and who planned it."""
    if mark:
        alert["labels"].update(planned="true", severity="info")
        alert["annotations"]["description"] += f" Planned: {mark.get('by')} restarted {mark.get('minion')}."
    return alert


def decide(store, kind, data, reporter, cfg, now, kit):
    """
    Update the store for one report; return ``(fire, resolve)`` (see the module docstring).

    The key is recorded as queued in the same locked write that puts the alert into the
    outbox, so a concurrent duplicate (another master's report, or the reconcile) finds
    it taken, and the alert is never dropped once decided.
    """
    if kind in ("cert_expiring", "cert_renewed"):
        return _decide_cert(store, kind, data, reporter, cfg, now, kit)
    cluster = kit["cluster_key"](data)
    if kind == "recovered":
        return _recovered(store, cluster, data, reporter, now, kit)
    fire, resolve = [], []
    key = kit["dedupe_key"](kind, data, reporter)
    if kind == "changed":
        note_lease(store, data, now, kit)
        for condition in kit["cleared_by_change"]():
            current = store["open"].pop(f"{cluster}|{condition}", None)
            if current:
                resolve.append(_ending(current, now, kit))
    if not _claimable(store["seen"].get(key)):
        return fire, resolve
    store["seen"][key] = {"at": now, "status": "queued", "reporter": reporter}
    slot = _slot(cluster, kind, reporter, kit)
    current = store["open"].get(slot)
    if kind == "unreachable" and current:
        # One cluster-wide alert, already in the outbox: remember who else sees it, for the resolve.
        if reporter not in current["reporters"]:
            current["reporters"].append(reporter)
        store["seen"][key]["status"] = "joined"
        return fire, resolve
    alert = build_alert(kind, data, reporter, cfg, now, kit)
    if kind == "changed":
        _as_planned(alert, planned_mark(store, data, now, kit))
    if kind in kit["conditions"]():
        store["open"][slot] = dict(
            alert,
            reporters=[reporter],
            at=now,
            sent_at=now,
            facts={"holder": data.get("holder"), "renew_time": data.get("renew_time")},
        )
    fire.append(alert)
    return fire, resolve


# --------------------------------------------------------------------------
# the reconcile: the Lease as the KCM masters read it, against the store
# --------------------------------------------------------------------------


def _live(lease):
    return bool(lease.get("holder")) and lease.get("expired") is False


def _missed_change(store, view, cfg, now, kit):
    """A KCMLeaderChanged for a Lease transition no report brought, under the event path's key."""
    lease, cluster = view["lease"], kit["cluster_key"](view["data"])
    known = store["leases"].get(cluster)
    try:
        transitions = int(lease.get("transitions"))
    except (TypeError, ValueError):
        return [], [], None
    if not lease.get("holder"):
        return [], [], None
    if known is None:
        # First sight: nothing to compare with, so this Lease is where counting starts.
        note_lease(store, dict(view["data"], **lease), now, kit)
        return [], [], "baseline"
    if transitions < known["transitions"] or (transitions, lease["holder"]) == (
        known["transitions"],
        known.get("holder"),
    ):
        return [], [], None  # what a report already brought, or an older read than it
    data = dict(
        view["data"],
        transitions=transitions,
        acquire_time=lease.get("acquire_time"),
        renew_time=lease.get("renew_time"),
        holder=lease["holder"],
        new_holder=lease["holder"],
        new_node=lease.get("node"),
        new_minion=lease.get("minion"),
        old_holder=known.get("holder"),
        old_node=known.get("node"),
        old_minion=known.get("minion"),
    )
    fire, resolve = decide(store, "changed", data, view["reporter"], cfg, now, kit)
    log.info(
        "kcm_alert: reconcile: %s leaseTransitions %s -> %s (%s)",
        cluster,
        known["transitions"],
        transitions,
        "raised" if fire else "already alerted",
    )
    return fire, resolve, "changed" if fire else None


def _gone_conditions(store, view, now, kit):
    """Resolutions of the conditions the masters' answers show over (a live Lease)."""
    cluster, lease = kit["cluster_key"](view["data"]), view["lease"]
    if not _live(lease):
        return []
    resolve = []
    for condition in kit["conditions"]():
        current = store["open"].get(f"{cluster}|{condition}")
        if not current:
            continue
        facts = current.get("facts") or {}
        if condition == "stale" and (facts.get("holder"), facts.get("renew_time")) == (
            lease.get("holder"),
            lease.get("renew_time"),
        ):
            continue  # the same unrenewed record: not over
        if condition == "unreachable":
            # Its reporters that answer now, or are gone (no answer at all) while the others
            # read a live Lease, no longer see it; those still failing keep it open.
            over = [r for r in current["reporters"] if r not in view["erroring"]]
            _forget(store, "unreachable", view["data"], over, kit)
            current["reporters"] = [r for r in current["reporters"] if r in view["erroring"]]
            if current["reporters"]:
                continue
        resolve.append(_ending(store["open"].pop(f"{cluster}|{condition}"), now, kit))
    return resolve


def reconcile_cluster(store, view, cfg, now, kit):
    """
    Compare one cluster's Lease, as its masters answered, with the store. ``view``:
    ``data`` (``cluster``, ``cluster_id``), ``lease`` (the newest ``kcm.leader`` record),
    ``erroring`` (masters that could not read it), ``reporter`` (for the annotations).
    Returns ``(fire, resolve, what)``; ``what`` is "changed", "baseline" or None.
    """
    fire, resolve, what = _missed_change(store, view, cfg, now, kit)
    resolve = resolve + _gone_conditions(store, view, now, kit)
    return fire, resolve, what


def ask_masters(opts, masters, timeout, trust, now, window, kit):
    """
    ``kcm.leader`` and ``kcm.status`` of the minions ``masters`` (a list target), in one
    publish of ``kcm_beacon.answer`` through the master's LocalClient;
    ``{minion: {function: answer}}`` of those whose answer within ``timeout`` seconds is
    their own, signed for this question: the master bus also carries job returns that any
    minion fires in another's name (Salt core, saltstack/salt#29273), so an unsigned or
    foreign answer is dropped.
    """
    import os
    import uuid

    import salt.client

    if not masters:
        return {}
    nonce = uuid.uuid4().hex
    client = salt.client.get_local_client(mopts=opts)
    answers = client.cmd(list(masters), "kcm_beacon.answer", [nonce], timeout=timeout, tgt_type="list") or {}
    found = {}
    for minion in masters:
        answer = answers.get(minion)
        if minion not in answers:
            continue
        why = kit["answer_problem"](os.path.join(trust.pki_dir, "minions", minion), minion, answer, nonce, now, window)
        if why:
            log.warning("kcm_alert: reconcile: the answer of %s is dropped: %s", minion, why)
            continue
        found[minion] = {"kcm.leader": answer.get("leader"), "kcm.status": answer.get("status")}
    return found


def _row(status):
    if isinstance(status, list) and status and isinstance(status[0], dict):
        return status[0]
    return status if isinstance(status, dict) else {}


def views(answers, reporter, trust, pins, kit):
    """
    One view per cluster (see :func:`reconcile_cluster`) from the masters' answers,
    ``{minion: {"kcm.leader": record, "kcm.status": [row]}}``: the newest Lease they read
    (by leaseTransitions, then renewal), and which of them could not read it. Only the
    answers of KCM masters (``trust``) about a cluster they may speak for and its pinned
    ``cluster_id`` (``pins``, read only: the reports pin) count.
    """
    bounded = kit["bounded"]
    found = {}
    for minion, answer in sorted(answers.items()):
        if not isinstance(answer, dict) or not trust.is_master(minion):
            continue  # kcm not synced there (a string), or no KCM master at all
        row = _row(answer.get("kcm.status"))
        if not row.get("cluster") or not row.get("cluster_id"):
            continue  # not deployed, or a cluster it cannot name as its reports do
        data = bounded({"cluster": row["cluster"], "cluster_id": row["cluster_id"]})
        if kit["pin_problem"](dict(pins), trust, data) or not trust.may_report(minion, data["cluster"]):
            log.warning(
                "kcm_alert: reconcile: %s speaks for a cluster it may not (%s)",
                minion,
                kit["printable"](kit["cluster_key"](data)),
            )
            continue
        view = found.setdefault(
            kit["cluster_key"](data),
            {"data": data, "lease": None, "erroring": set(), "answered": [], "reporter": reporter},
        )
        view["answered"].append(minion)
        leader = answer.get("kcm.leader")
        if not isinstance(leader, dict) or "error" in leader:
            view["erroring"].add(minion)
            continue
        lease = bounded(leader)
        order = (kit["number"](lease.get("transitions")) or -1, kit["epoch"](lease.get("renew_time")) or 0)
        if view["lease"] is None or order > view["order"]:
            view["lease"], view["order"] = lease, order
    return found
