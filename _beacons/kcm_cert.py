"""
Beacon ``kcm_cert``: watches the expiry of the certificates the formula manages on this
master (``kcm_pki.cert_status``: ``cert``, ``ca_cert``, ``signer_cert``,
``kubeconfig:client``, ``kubeconfig:ca``) and fires an event only when one crosses a
threshold or is renewed. The leader Lease is the ``kcm_leader`` beacon's.

One certificate is one report, wherever it is used: the certificates are grouped by their
SHA-256 fingerprint, so the CA in ``ca_cert`` and in the kubeconfig is one certificate.

Event tags (``salt/beacon/<minion>/kcm_cert/<tail>``); every event carries ``fingerprint``,
``files`` (the names above that hold it on this master), ``subject``, ``serial``,
``not_after``, ``days_left``, ``minion``, ``cluster`` and ``cluster_id``, never PEM or key
text:

``cert_expiring``
    A certificate has fewer days left than a threshold not yet announced for it:
    ``threshold`` (the smallest one newly crossed; the larger ones crossed with it count
    as announced) and ``thresholds`` (all configured).
``cert_renewed``
    A certificate announced above is in none of its files any more (each of them read):
    the runner resolves its alert once every master that reported it has renewed.

Configuration (minion config or pillar ``beacons:``); a key left out takes its value from
the deployed ``kcm:beacon`` (``defaults.yaml`` under the pillar):

.. code-block:: yaml

    beacons:
      kcm_cert:
        - interval: 10               # seconds between looks at the clock (with loop_interval: 1)
        - cert_thresholds: [21, 7]   # days; [] = no certificate checks
        - cert_check_interval: 3600  # seconds between reads of the certificates (file reads only)
        - state_file: /var/cache/salt/minion/kcm/beacon-kcm_cert.json   # optional

The (fingerprint, threshold) set already announced is kept in ``state_file`` (default
``<cachedir>/kcm/beacon-<beacon name>.json``), so a refresh or a restart does not announce
it again; the first poll after a restart reads the certificates (a renewal may be what the
restart was for).

The decision logic is the pure function :func:`cert_step`; :func:`beacon` does the I/O
(``kcm_pki.cert_status`` when due, the state file and the signature through a utils loader
of its own: beacons get no ``__utils__``).
"""

import copy
import logging
import os
import time

import salt.loader
import salt.utils.beacons
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "kcm_cert"

# Fields of a cert_status entry copied into cert events: names and dates only.
CERT_FIELDS = ("fingerprint", "subject", "serial", "not_after", "days_left")


def __virtual__():
    return __virtualname__


def validate(config):
    """
    Return ``(True, "Valid beacon configuration")``, or ``(False, message)`` naming the key
    and the form it needs; the rules are ``kcm_beacon.validate``'s.

    CLI Example:

    .. code-block:: bash

        salt '*' beacons.add kcm_cert '[{"interval": 10}, {"cert_thresholds": [21, 7]}]'
    """
    try:
        check = __salt__["kcm_beacon.validate"]
    except KeyError:
        return False, "kcm_cert: the kcm_beacon module is not available (run saltutil.sync_modules)"
    return check(__virtualname__, config)


# pure: the state machine


def initial_state():
    """The state before any certificate was read."""
    return {"checked_at": None, "announced": {}}


def cert_check_due(state, now, interval):
    """True when the certificates were not read within the last `interval` seconds."""
    checked = (state or {}).get("checked_at")
    # now < checked: the wall clock stepped back; check rather than go quiet for long.
    return checked is None or now - checked >= interval or now < checked


def _readable_cert(info):
    return (
        isinstance(info, dict)
        and "error" not in info
        and isinstance(info.get("days_left"), (int, float))
        and not isinstance(info.get("days_left"), bool)
        and isinstance(info.get("fingerprint"), str)
    )


def _by_fingerprint(status):
    """``{fingerprint: (facts, [names of the files holding it])}`` of the readable
    certificates, and the set of names that could not be read."""
    found, unreadable = {}, set()
    for name in sorted(status):
        if _readable_cert(status[name]):
            found.setdefault(status[name]["fingerprint"], (status[name], []))[1].append(name)
        else:
            unreadable.add(name)
    return found, unreadable


def _cert_event(tag, info, files, settings, **extra):
    event = {field: info.get(field) for field in CERT_FIELDS}
    event.update(
        tag=tag,
        files=list(files),
        minion=settings.get("minion"),
        cluster=settings.get("cluster"),
        cluster_id=settings.get("cluster_id"),
        **extra,
    )
    return event


def _plain(days):
    """30.0 -> 30: thresholds read as they were configured, in events and alert labels."""
    return int(days) if float(days).is_integer() else days


def cert_step(previous, status, now, settings):
    """
    Advance the beacon's state by one read of the certificates; pure, no I/O.

    previous
        the state returned by the last call (or :func:`initial_state`)
    status
        what ``kcm_pki.cert_status`` returned (file name -> subject, serial, not_after,
        days_left, fingerprint), or None when it could not be read
    now
        local wall-clock seconds
    settings
        ``cert_thresholds`` (days), ``minion``, ``cluster``, ``cluster_id``

    Returns ``(state, events)``. For each certificate (fingerprint), at most one
    ``cert_expiring`` per read: the smallest threshold crossed and not yet announced for
    it; every threshold it has crossed is then announced. An announced certificate that
    none of its files holds any more (a renewal) gives ``cert_renewed``; while one of
    those files cannot be read (caught mid-rewrite) it is kept, not announced again.
    """
    state = copy.deepcopy(previous) if previous else initial_state()
    state["checked_at"] = now
    announced = state.setdefault("announced", {})
    thresholds = sorted({float(days) for days in settings.get("cert_thresholds") or ()}, reverse=True)
    events = []
    if not isinstance(status, dict):
        return state, events
    found, unreadable = _by_fingerprint(status)
    for fingerprint, entry in sorted(announced.items()):
        if fingerprint in found or unreadable & set(entry.get("files") or ()):
            continue
        del announced[fingerprint]
        if entry.get("thresholds"):
            events.append(
                _cert_event(
                    "cert_renewed",
                    dict(entry, fingerprint=fingerprint, days_left=None),
                    entry.get("files") or (),
                    settings,
                )
            )
    for fingerprint, (info, files) in sorted(found.items()):
        entry = announced.setdefault(fingerprint, {"thresholds": []})
        entry.update({field: info.get(field) for field in ("subject", "serial", "not_after")}, files=files)
        crossed = [days for days in thresholds if info["days_left"] < days and days not in entry["thresholds"]]
        if not crossed:
            continue
        entry["thresholds"] = sorted(set(entry["thresholds"]) | set(crossed), reverse=True)
        events.append(
            _cert_event(
                "cert_expiring",
                info,
                files,
                settings,
                threshold=_plain(min(crossed)),
                thresholds=[_plain(days) for days in thresholds],
            )
        )
    return state, events


# I/O: kcm_pki.cert_status when due, the state file and the signature (through _utils)


def _now():
    """Local wall-clock seconds; a function so tests can move time without touching `time`."""
    return time.time()


def _cert_status():
    """One kcm_pki.cert_status call (file reads only); None when it failed."""
    try:
        status = __salt__["kcm_pki.cert_status"]()
    except Exception as exc:  # pylint: disable=broad-except
        # Its own one-line reason (not_deployed...) or the type of anything else: never a stack.
        why = exc if isinstance(exc, CommandExecutionError) else f"raised {type(exc).__name__}"
        log.warning("kcm_cert: kcm_pki.cert_status %s; certificates not checked", why)
        return None
    if not isinstance(status, dict):
        log.warning("kcm_cert: kcm_pki.cert_status gave a %s, not a dict", type(status).__name__)
        return None
    return status


def _cluster_id():
    """kcm.cluster_id (cached by kcm after its first answer), or None when it cannot say."""
    try:
        return __salt__["kcm.cluster_id"]()
    except Exception:  # pylint: disable=broad-except
        log.debug("kcm_cert: kcm.cluster_id raised", exc_info=True)
        return None


def _utils():
    # Beacons get no __utils__, and signing must be no execution function: a utils loader of its own.
    if "kcm_trust.utils" not in __context__:
        __context__["kcm_trust.utils"] = salt.loader.utils(__opts__)
    return __context__["kcm_trust.utils"]


def _announced(path):
    """The announced thresholds kept in the state file: a restart does not announce them again."""
    saved = _utils()["kcm_state_file.read_json"](path)
    return (saved.get("announced") if isinstance(saved, dict) else None) or {}


def _signed(events):
    utils = _utils()
    files = utils["kcm_state_file.read_json"], utils["kcm_state_file.write_json"]
    return utils["kcm_trust.sign_beacon_events"](__opts__, events, *files) if events else events


def beacon(config):
    """
    Read the certificates when ``cert_check_interval`` has passed and return the events for
    thresholds newly crossed and renewals. Always returns a list (empty when nothing
    changed, when nothing is due, or where KCM is not deployed).

    CLI Example:

    .. code-block:: bash

        salt '*' beacons.add kcm_cert '[{"interval": 10}]'
        salt '*' beacons.list
    """
    cfg = salt.utils.beacons.list_to_dict(config)
    name = cfg.get("_beacon_name", __virtualname__)
    key = f"kcm_cert.{name}"
    # Most polls only look at the clock: no need to read the deployed facts for that.
    if key in __context__ and not cert_check_due(__context__[key], _now(), cfg.get("cert_check_interval", 0)):
        return []
    settings = __salt__["kcm_beacon.settings"](__virtualname__, cfg)
    if not settings or not settings["cert_thresholds"]:
        return []
    path = cfg.get("state_file") or os.path.join(__opts__["cachedir"], "kcm", f"beacon-{name}.json")
    # After a restart the announced set comes back, the time of the last read does not.
    previous = __context__.get(key) or dict(initial_state(), announced=_announced(path))
    now = _now()
    if not cert_check_due(previous, now, settings["cert_check_interval"]):
        return []
    settings["cluster_id"] = _cluster_id()
    state, events = cert_step(previous, _cert_status(), now, settings)
    __context__[key] = state
    if state.get("announced") != previous.get("announced"):
        try:
            _utils()["kcm_state_file.write_json"](path, {"announced": state["announced"]})
        except OSError as exc:
            # Only risks announcing a threshold once more.
            log.warning("kcm_cert: could not write state file %s: %s", path, exc)
    for event in events:
        log.warning(
            "kcm_cert: %s: %s (%s, serial %s) has %s days left (threshold %s)",
            event["tag"],
            event["subject"],
            ", ".join(event["files"]),
            event["serial"],
            event["days_left"],
            event.get("threshold"),
        )
    return _signed(events)


def close(config):
    """
    Drop what this beacon holds in memory when it is deleted or reloaded; the announced
    thresholds stay in its state file.

    CLI Example:

    .. code-block:: bash

        salt '*' beacons.delete kcm_cert
    """
    name = salt.utils.beacons.list_to_dict(config).get("_beacon_name", __virtualname__)
    __context__.pop(f"kcm_cert.{name}", None)
