"""
What an alert of the ``kcm_alert`` runner says, decided from a report alone (pure: no store,
no clock, no network): its dedupe key, labels, annotations and severity; and :data:`KINDS`,
the one list of the kinds of report, which the runner and kcm_trust (through its caller) ask.

Every Salt master that sees a report computes the same labels from it (nothing here depends
on the master that computes it), so two masters of one multi-master setup post identical
label sets, which Alertmanager holds as one alert.

Called as ``__utils__["kcm_alert_rules.dedupe_key"](...)`` from the runner, which also hands
``kcm_alert_decide`` the rules it uses.
"""

import re

__virtualname__ = "kcm_alert_rules"

# Every kind of report the runner acts on: kind -> (the beacon that sends it, the alert it
# raises and its severity, or None: it only ends alerts). The runner ignores any other kind
# (acquired / lost ride along with changed) and kcm_trust refuses one under another beacon.
KINDS = {
    "changed": ("kcm_leader", "KCMLeaderChanged", "warning"),
    "no_leader": ("kcm_leader", "KCMNoLeader", "critical"),
    "stale": ("kcm_leader", "KCMLeaderStale", "warning"),
    "unreachable": ("kcm_leader", "KCMApiserverUnreachable", "critical"),
    "recovered": ("kcm_leader", None, None),
    "restarting": ("kcm_leader", "KCMRestarting", "warning"),
    "cert_expiring": ("kcm_cert", "KCMCertExpiring", "warning"),
    "cert_renewed": ("kcm_cert", None, None),
}
CONDITIONS = ("no_leader", "stale", "unreachable", "restarting")
# Conditions of one master, not of its cluster: one alert per master (its `minion` label),
# opened and ended by that master's own reports.
PER_MASTER = ("restarting",)
# A new leader ends these conditions; unreachable is about the reporter's own path.
CLEARED_BY_CHANGE = ("no_leader", "stale")
# Fewer days left than this make any KCMCertExpiring critical.
CERT_CRITICAL_DAYS = 7
# What an annotation never shows: credentials in a URL, a bearer token, a token= or password= value.
_SECRET_RE = re.compile(r"(?i)(//)[^/\s@]+@|(bearer\s+|(?:token|password|secret)[=:]\s*)[^\s,;&]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What one report may make the runner keep: strings are cut, nested values dropped.
MAX_TEXT = 256
MAX_FIELDS = 40


def __virtual__():
    return __virtualname__


def beacons():
    """``{kind: the beacon that sends it}``: the kinds the runner acts on (callers hand it to kcm_trust)."""
    return {kind: row[0] for kind, row in KINDS.items()}


def conditions():
    """The kinds that open a condition (alive until resolved), not a one-off event."""
    return CONDITIONS


def cleared_by_change():
    """The conditions a new leader ends."""
    return CLEARED_BY_CHANGE


def per_master():
    """The conditions of one master (alerted and kept per reporter), not of its cluster."""
    return PER_MASTER


def number(value):
    """``value`` as a float, or None when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def cluster_key(data):
    """
    Which cluster an event is about: its name plus its ``cluster_id`` (the kube-system
    namespace UID), so two clusters that share a name never dedupe or resolve each
    other's alerts. Events without an id (beacons before it) fall back to the name.
    """
    name = data.get("cluster") or "unknown"
    return f"{name}#{data['cluster_id']}" if data.get("cluster_id") else name


def dedupe_key(kind, data, reporter):
    """The identity of one change: every master that saw it, and the reconcile, compute the same key."""
    cluster = cluster_key(data)
    if kind == "cert_expiring":
        # Each master's report of each threshold once; the alert itself is the certificate's.
        return f"{cluster}|cert_expiring|{data.get('fingerprint')}|{reporter}|{data.get('threshold')}"
    if kind == "cert_renewed":
        return f"{cluster}|cert_renewed|{data.get('fingerprint')}|{reporter}"
    if kind == "changed":
        return f"{cluster}|changed|{data.get('transitions')}|{data.get('new_holder')}"
    if kind == "unreachable":
        return f"{cluster}|unreachable|{reporter}"
    if kind in PER_MASTER:
        return f"{cluster}|{kind}|{reporter}"
    return f"{cluster}|{kind}|{data.get('transitions')}|{data.get('renew_time')}"


def cert_severity(data):
    """critical at the smallest configured threshold or under CERT_CRITICAL_DAYS left, else warning."""
    threshold = number(data.get("threshold"))
    days_left = number(data.get("days_left"))
    configured = [days for days in map(number, data.get("thresholds") or ()) if days is not None]
    smallest = min(configured) if configured else threshold
    if days_left is not None and days_left < CERT_CRITICAL_DAYS:
        return "critical"
    if threshold is not None and smallest is not None and threshold <= smallest:
        return "critical"
    return "warning"


def alert_labels(kind, data, extra):
    """Labels of the alert for `kind`; resolving re-sends exactly these."""
    _, name, severity = KINDS[kind]
    labels = {str(k): str(v) for k, v in (extra or {}).items()}
    labels.update(alertname=name, cluster=str(data.get("cluster") or "unknown"), severity=severity)
    if data.get("cluster_id"):
        # Alertmanager merges alerts with equal labels: same-named clusters must differ.
        labels["cluster_id"] = str(data["cluster_id"])
    if kind == "changed":
        labels["old_node"] = str(data.get("old_node") or "none")
        labels["new_node"] = str(data.get("new_node") or "none")
        # Each failover is its own alert: A->B twice within the alert's lifetime would
        # otherwise merge in Alertmanager into one, and the second would notify nobody.
        if data.get("transitions") is not None:
            labels["transitions"] = str(data["transitions"])
    elif kind in PER_MASTER:
        labels["minion"] = str(data.get("id") or "unknown")  # the verified sender (kcm_trust)
    elif kind == "stale":
        labels["node"] = str(data.get("node") or "none")
    elif kind == "cert_expiring":
        # One alert per certificate and cluster: where it is used is an annotation (used_by),
        # so a master joining or renewing does not make it another alert.
        labels.update(severity=cert_severity(data), fingerprint=str(data.get("fingerprint")))
    return labels


def _summary_and_description(kind, data, reporter):
    cluster = data.get("cluster") or "unknown"
    if kind == "changed":
        return (
            f"KCM leader of {cluster} moved from {data.get('old_node') or 'nobody'} to {data.get('new_node')}",
            f"Lease holder {data.get('old_holder')} -> {data.get('new_holder')} "
            f"(minion {data.get('old_minion')} -> {data.get('new_minion')}), "
            f"leaseTransitions {data.get('transitions')}; first reported by {reporter}.",
        )
    if kind == "restarting":
        return (
            f"KCM on {reporter} ({cluster}) keeps restarting: {data.get('restarts')} restarts "
            f"in {data.get('window_seconds')} s, never healthy",
            f"systemd restarted {data.get('unit')} {data.get('restarts')} times within "
            f"{data.get('window_seconds')} s with no healthy /healthz between; last exit status "
            f"{data.get('exit_status')}; last error: {data.get('last_error') or 'none in its journal'}",
        )
    if kind == "no_leader":
        return (
            f"KCM of {cluster} has no leader",
            f"The lease is expired or released (last holder {data.get('holder')}, "
            f"last renewal {data.get('renew_time')}); first reported by {reporter}.",
        )
    if kind == "cert_expiring":
        return (
            f"KCM certificate {data.get('subject')} of {cluster} expires in {data.get('days_left')} days",
            f"Serial {data.get('serial')}, notAfter {data.get('not_after')}, SHA-256 {data.get('fingerprint')}: "
            f"{data.get('days_left')} days left, below the {data.get('threshold')}-day threshold; "
            f"renewal did not replace it. Used by {data.get('used_by') or reporter}.",
        )
    if kind == "stale":
        return (
            f"KCM leader {data.get('node')} of {cluster} stopped renewing its lease",
            f"No renewal for {data.get('age_seconds')} s (judged by {data.get('basis')}); "
            f"last renewal {data.get('renew_time')}; first reported by {reporter}.",
        )
    return f"{reporter} cannot read the KCM leader lease of {cluster}", f"{reporter}: {data.get('reason')}"


def runbook_anchor(alertname):
    """The anchor of ``alertname``'s section in docs/runbook.md (its ``## <name>`` heading)."""
    return str(alertname).lower()


def one_line(text, limit=MAX_TEXT):
    """``text`` as an annotation shows it (:func:`_clean`), cut to ``limit`` characters after
    the secrets are filtered (a cut first could leave half a secret the filter misses)."""
    return _clean(str(text))[:limit]


def _clean(text):
    """One line a person may read anywhere: secrets filtered, control characters escaped."""
    text = _SECRET_RE.sub(lambda m: (m.group(1) or m.group(2)) + "[filtered]" + ("@" if m.group(1) else ""), text)
    return _CONTROL_RE.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )


def annotations(kind, data, reporter, runbook_url):
    """summary, description and runbook_url (``runbook_url``, the master's
    ``kcm_alert:runbook_url``, plus the alert's anchor: docs/runbook.md has one section per
    alert name) of the alert for `kind`; a certificate's also ``used_by`` (its masters and
    files, ``data["used_by"]``)."""
    summary, description = _summary_and_description(kind, data, reporter)
    out = {
        "summary": _clean(summary),
        "description": _clean(description),
        "runbook_url": f"{runbook_url}#{runbook_anchor(KINDS[kind][1])}",
    }
    if data.get("used_by"):
        out["used_by"] = _clean(str(data["used_by"]))
    return out


def bounded(data):
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
