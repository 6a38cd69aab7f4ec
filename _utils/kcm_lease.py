"""
The KCM leader record as the API server stores it, read without any I/O: the
``coordination.k8s.io/v1`` Lease (KCM v1.17 and later) and the
``control-plane.alpha.kubernetes.io/leader`` annotation of an Endpoints object (v1.14-v1.19),
both normalized to one record; expiry and age of that record; KCM's ``/healthz?verbose``.

Salt's loader gives ``_utils`` modules no ``__utils__``, so the functions that read a time
take the RFC 3339 parser as an argument: callers pass ``__utils__["kcm_time.parse_rfc3339"]``
(one parser for the formula). Called as ``__utils__["kcm_lease.parse_lease"](obj, parse)``.
"""

import datetime
import json
import re

__virtualname__ = "kcm_lease"

LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"

_CHECK = re.compile(r"^\[([+-])\](\S+)\s*(.*)$")


def __virtual__():
    return __virtualname__


def _integer(value, field):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: {value!r} is not an integer")
    return value


def _record(fields, source, prefix, parse_time):
    holder, duration, acquire, renew, transitions = fields
    if holder is not None and not isinstance(holder, str):
        raise ValueError(f"{prefix}holderIdentity: {holder!r} is not a string")
    parse_time(acquire, prefix + "acquireTime")
    parse_time(renew, prefix + "renewTime")
    return {
        "holder": holder or None,
        "acquire_time": acquire,
        "renew_time": renew,
        "lease_duration_seconds": _integer(duration, prefix + "leaseDurationSeconds"),
        "transitions": _integer(transitions, prefix + "transitions") or 0,
        "source": source,
    }


def parse_lease(obj, parse_time):
    """
    Return the leader record of a Lease object (parsed JSON): ``holder``, ``acquire_time``,
    ``renew_time``, ``lease_duration_seconds``, ``transitions``, ``source: lease``.
    Raises ``ValueError`` naming the field when the object is not a Lease as documented.

    Example:

    .. code-block:: python

        __utils__["kcm_lease.parse_lease"](obj, __utils__["kcm_time.parse_rfc3339"])
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("spec", {}), dict):
        raise ValueError("Lease: expected an object with a spec mapping")
    spec = obj.get("spec", {})
    keys = ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions")
    return _record([spec.get(key) for key in keys], "lease", "spec.", parse_time)


def parse_endpoints(obj, parse_time):
    """
    Return the leader record kept in the leader annotation of an Endpoints object, in the
    form of :func:`parse_lease` (``source: endpoints``). Raises ``LookupError`` when the
    annotation is absent, ``ValueError`` when it is not the documented JSON record.

    Example:

    .. code-block:: python

        __utils__["kcm_lease.parse_endpoints"](obj, __utils__["kcm_time.parse_rfc3339"])
    """
    if not isinstance(obj, dict):
        raise ValueError("Endpoints: expected an object")
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(LEADER_ANNOTATION)
    if raw is None:
        raise LookupError(f"no {LEADER_ANNOTATION} annotation")
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValueError(f"annotation {LEADER_ANNOTATION} is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError(f"annotation {LEADER_ANNOTATION} is not a JSON object")
    keys = ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaderTransitions")
    return _record([data.get(key) for key in keys], "endpoints", "annotation.", parse_time)


def node_of(holder):
    """
    Return the hostname part of a holder identity (``k8s-01_105bfb92-...`` -> ``k8s-01``;
    the hostname may itself contain ``_``), or None for no holder.

    Example:

    .. code-block:: python

        __utils__["kcm_lease.node_of"]("k8s-01_105bfb92-3c68")
    """
    if not holder:
        return None
    return holder.rsplit("_", 1)[0] if "_" in holder else holder


def is_expired(record, now, parse_time):
    """
    Return True when nobody holds the lock, or ``renew_time + lease_duration_seconds < now``.

    ``now`` is this minion's clock while ``renew_time`` is the leader's: with clock skew
    between masters the answer is off by that skew (client-go itself ignores these
    timestamps and times expiry from when it saw the record change). Keep the masters on
    NTP, or watch for changes over time (the beacon) rather than trusting one reading.

    Example:

    .. code-block:: python

        __utils__["kcm_lease.is_expired"](record, now, __utils__["kcm_time.parse_rfc3339"])
    """
    if not record.get("holder"):
        return True
    renew = parse_time(record.get("renew_time"), "renewTime")
    duration = record.get("lease_duration_seconds")
    if renew is None or duration is None:
        return True
    return renew + datetime.timedelta(seconds=duration) < now


def age_seconds(record, now, parse_time):
    """
    Return the seconds since the record's last renewal (one decimal), or None without one.

    Example:

    .. code-block:: python

        __utils__["kcm_lease.age_seconds"](record, now, __utils__["kcm_time.parse_rfc3339"])
    """
    renew = parse_time(record.get("renew_time"), "renewTime")
    return None if renew is None else round((now - renew).total_seconds(), 1)


def parse_healthz(status, body):
    """
    Return ``/healthz?verbose`` as ``{healthy, status, checks: {name: 'ok' | 'failed: ...'}}``:
    healthy when the status is 200 and every listed check passed.

    Example:

    .. code-block:: python

        __utils__["kcm_lease.parse_healthz"](200, "[+]ping ok\\nhealthz check passed")
    """
    checks = {}
    for line in str(body).splitlines():
        match = _CHECK.match(line.strip())
        if match:
            sign, name, text = match.groups()
            checks[name] = "ok" if sign == "+" else (text or "failed")
    healthy = status == 200 and all(value == "ok" for value in checks.values())
    return {"healthy": healthy, "status": status, "checks": checks}
