"""
Beacon ``kcm_leader``: watches the kube-controller-manager leader record and
fires an event only when its state changes.

Event tags (``salt/beacon/<minion>/<beacon name>/<tail>``); every event carries
``cluster`` (pillar ``kcm:cluster``) and ``cluster_id`` (``kcm.cluster_id``, the
``kube-system`` namespace UID: two clusters of one name stay apart):

``changed``
    The holder moved (``old_*`` / ``new_*`` holder, node and minion, ``transitions``).
``acquired`` / ``lost``
    This minion gained / lost the lease (sent along with ``changed``).
``stale``
    The holder has not renewed for ``stale_after`` retry periods: an early
    warning that comes before the lease expires.
``no_leader``
    The lease expired or was released and nobody holds it.
``unreachable``
    ``kcm.leader`` failed (apiserver down, lock unreadable); ``reason`` says why.
``recovered``
    A condition above cleared; ``condition`` names it.
``cert_expiring``
    A certificate of ``kcm_pki.cert_status`` (``cert``, ``ca_cert``,
    ``signer_cert``, ``kubeconfig:client``, ``kubeconfig:ca``) has fewer days
    left than a threshold not yet announced for it: ``cert``, ``subject``,
    ``serial``, ``not_after``, ``days_left``, ``threshold`` (the smallest one
    newly crossed; the larger ones crossed with it count as announced),
    ``thresholds`` (all configured), ``minion``. Never PEM or key text.
``cert_renewed``
    A certificate announced above now has another serial (``old_serial``):
    its thresholds start over, and the runner resolves the old alerts.

Configuration (minion config or pillar ``beacons:``):

.. code-block:: yaml

    beacons:
      kcm_leader:
        - interval: 2            # seconds between polls (with loop_interval: 1)
        - debounce: 2            # polls in a row before unreachable / no_leader is announced
        - stale_after: 3         # retry periods without renewal before "stale"
        - timeout: 2             # seconds for the one GET (the poll runs in the minion's main loop)
        - cert_thresholds: [30, 7]   # days; [] = no certificate checks
        - cert_check_interval: 3600  # seconds between reads of the certificates
        - state_file: /var/cache/salt/minion/kcm/beacon-kcm_leader.json   # optional
        - disable_during_state_run: false

The last announced state (and the (cert, serial, threshold) set already
announced) is kept in ``state_file`` (default
``<cachedir>/kcm/beacon-<beacon name>.json``), so a beacon refresh, a pillar
refresh or a minion restart does not announce the same thing twice.

The decision logic is the pure functions :func:`step` and :func:`cert_step`;
:func:`beacon` only does the I/O around them (one ``kcm.leader`` call per
poll, one ``kcm_pki.cert_status`` call per ``cert_check_interval``, the state
file).
"""

import copy
import datetime
import json
import logging
import os
import re
import tempfile
import time

import salt.utils.beacons

log = logging.getLogger(__name__)

__virtualname__ = "kcm_leader"

STATE_VERSION = 1

DEFAULTS = {"debounce": 2, "stale_after": 3, "cert_thresholds": [30, 7], "cert_check_interval": 3600}

# The lease timings KCM uses when deployed facts do not say (kcm-facts 1.5).
DEFAULT_RETRY_PERIOD = 2.0
DEFAULT_LEASE_DURATION = 15.0

# Conditions that need `debounce` observations in a row before they are
# announced; one slow GET or one missed renewal must not page anybody.
DEBOUNCED = ("unreachable", "no_leader")
BAD_CONDITIONS = ("stale", "no_leader", "unreachable")

# Keys Salt's beacon framework itself understands; validate() sees them too.
FRAMEWORK_KEYS = ("interval", "disable_during_state_run", "beacon_module", "run_once", "enabled")
OWN_KEYS = ("debounce", "stale_after", "state_file", "timeout", "cert_thresholds", "cert_check_interval")

# Fields of a cert_status entry copied into cert events: names and dates only.
CERT_FIELDS = ("subject", "serial", "not_after", "days_left")

# Record fields that form the fingerprint: any change of them is a renewal or
# a takeover, which is what client-go's expiry rule watches.
FINGERPRINT_FIELDS = ("holder", "renew_time", "acquire_time", "transitions", "lease_duration_seconds")

# Fields copied from the leader record into every event (no secrets in there).
RECORD_FIELDS = (
    "holder",
    "node",
    "minion",
    "transitions",
    "acquire_time",
    "renew_time",
    "lease_duration_seconds",
    "source",
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def __virtual__():
    return __virtualname__


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_item(key, value):
    """Return a problem with one config item, or None."""
    if key == "interval" and not (_is_number(value) and value > 0):
        return f"kcm_leader: interval must be a number of seconds > 0, got {value!r}"
    if key == "debounce" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return f"kcm_leader: debounce must be an integer >= 1 (polls in a row), got {value!r}"
    if key == "stale_after" and not (_is_number(value) and value > 0):
        return f"kcm_leader: stale_after must be a number of retry periods > 0, got {value!r}"
    if key == "timeout" and not (_is_number(value) and 0 < value <= 10):
        return f"kcm_leader: timeout must be seconds in (0, 10] (the poll blocks the minion loop), got {value!r}"
    if key == "cert_thresholds" and not (
        isinstance(value, list) and all(_is_number(days) and days > 0 for days in value)
    ):
        return f"kcm_leader: cert_thresholds must be a list of days > 0, e.g. [30, 7] ([] = no checks), got {value!r}"
    if key == "cert_check_interval" and not (_is_number(value) and value > 0):
        return (
            "kcm_leader: cert_check_interval must be a number of seconds > 0 "
            f"(how often certificates are read), got {value!r}"
        )
    if key == "state_file" and not (isinstance(value, str) and os.path.isabs(value)):
        return f"kcm_leader: state_file must be an absolute path, got {value!r}"
    if key in ("disable_during_state_run", "run_once", "enabled") and not isinstance(value, bool):
        return f"kcm_leader: {key} must be true or false, got {value!r}"
    return None


def validate(config):
    """
    Check the beacon configuration; never raises.

    Returns ``(True, "Valid beacon configuration")`` or ``(False, message)``
    where the message names the key and the expected form.

    CLI Example:

    .. code-block:: bash

        salt '*' beacons.add kcm_leader '[{"interval": 2}, {"debounce": 2}]'
    """
    try:
        return _validate(config)
    except Exception as exc:  # pylint: disable=broad-except
        # A raising validate() drops every beacon's events for the cycle.
        return False, f"kcm_leader: configuration could not be checked: {exc}"


def _validate(config):
    if not isinstance(config, list) or not all(isinstance(item, dict) for item in config):
        return False, (
            "kcm_leader: configuration must be a list of one-key dicts, "
            "e.g. [{interval: 2}, {debounce: 2}, {stale_after: 3}]"
        )
    for item in config:
        for key, value in item.items():
            if key.startswith("_"):
                continue
            if key not in FRAMEWORK_KEYS + OWN_KEYS:
                known = ", ".join(FRAMEWORK_KEYS + OWN_KEYS)
                return False, f"kcm_leader: unknown key {key!r}; known keys: {known}"
            problem = _check_item(key, value)
            if problem:
                return False, problem
    return True, "Valid beacon configuration"


# --------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------


def parse_duration(value, default):
    """Seconds from a Go duration ('2s', '1m30s', '500ms') or a number."""
    if _is_number(value):
        return float(value)
    if not isinstance(value, str) or not value:
        return default
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return default
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def parse_time(value):
    """Epoch seconds from an RFC3339 timestamp (Lease MicroTime or Endpoints Time), or None."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        # fromisoformat() before Python 3.11 does not take 'Z'.
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def fingerprint(record):
    """A string that changes whenever the leader record changes."""
    return json.dumps([record.get(field) for field in FINGERPRINT_FIELDS], sort_keys=True, default=str)


def initial_state():
    """The state before anything was observed."""
    return {
        "version": STATE_VERSION,
        "seen": False,
        "record": {},
        "held": {},
        "fingerprint": None,
        "changed_at": None,
        "offset": None,
        "polled_at": None,
        "history": False,
        "condition": None,
        "reason": None,
        "pending": {"condition": None, "count": 0},
        "certs": {"checked_at": None, "announced": {}},
    }


def _record_of(observation):
    return {field: observation.get(field) for field in RECORD_FIELDS}


def _is_me(record, me):
    return bool(record.get("holder")) and bool(
        {record.get("minion"), record.get("node")} & set(filter(None, me))
    )


def _note_change(state, record, now):
    """
    Remember the local time at which the record changed.

    A poll sees a renewal up to one interval late, which would delay `stale`
    by that much. The holder's renew_time differences are exact, though, and
    the smallest (now - renew_time) seen at a change is this host's offset to
    the holder's clock plus the shortest poll lag. renew_time + offset is then
    the local time of the renewal, without trusting either clock; it is kept
    between the previous poll and now, where the change must have happened,
    so a step of the holder's clock cannot fake an old renewal.
    """
    renewed = parse_time(record.get("renew_time"))
    if record.get("holder") != (state["record"] or {}).get("holder"):
        state["offset"] = None  # another holder, another clock
    state["history"] = state["fingerprint"] is not None
    state["changed_at"] = now
    polled = state.get("polled_at")
    if renewed is None or polled is None:
        return
    lag = now - renewed
    offset = state.get("offset")
    state["offset"] = lag if offset is None else min(offset, lag)
    state["changed_at"] = max(polled, min(now, renewed + state["offset"]))


def _record_age(state, record, now):
    """
    Seconds since the holder last renewed, and how that was judged.

    client-go's rule: the local time at which this beacon saw the record
    change, so no clock sync is needed. Until this beacon has seen a change
    (first sight after install), fall back to renew_time, which does rely on
    the clocks agreeing.
    """
    local_age = now - state["changed_at"]
    if state["history"]:
        return local_age, "observed"
    renewed = parse_time(record.get("renew_time"))
    if renewed is None:
        return local_age, "observed"
    return max(local_age, now - renewed), "renew_time"


def _classify(state, record, now, settings):
    """Condition of a readable record: ok, stale or no_leader (plus age facts)."""
    age, basis = _record_age(state, record, now)
    duration = record.get("lease_duration_seconds")
    if not _is_number(duration) or duration <= 0:
        duration = settings["lease_duration"]
    stale_after = settings["stale_after"] * settings["retry_period"]
    facts = {"age_seconds": round(age, 3), "basis": basis}
    # An expired lease is normal for a moment: a standby takes it over within
    # a retry period or two. Only when none has after the same grace that
    # makes a holder stale is the cluster without a leader. A released lease
    # (empty holder, duration 1 s: the unit's stop hook) is the same handover,
    # only sooner; announcing it would raise KCMNoLeader on every planned stop.
    if age > duration + stale_after:
        return "no_leader", facts
    if not record.get("holder"):
        facts["released"] = True
        return "ok", facts
    if age > stale_after:
        facts["stale_after_seconds"] = stale_after
        return "stale", facts
    return "ok", facts


def _debounced(state, observed, settings):
    """The condition to act on after debounce; updates state['pending']."""
    announced = state["condition"]
    if observed not in DEBOUNCED or observed == announced:
        state["pending"] = {"condition": None, "count": 0}
        return observed
    pending = state["pending"]
    if pending["condition"] == observed:
        pending["count"] += 1
    else:
        state["pending"] = pending = {"condition": observed, "count": 1}
    if pending["count"] >= settings["debounce"]:
        state["pending"] = {"condition": None, "count": 0}
        return observed
    return announced


def _holder_events(old, new, me):
    """Events for a holder that moved from record `old` to record `new`."""
    data = {"tag": "changed", "transitions": new.get("transitions")}
    for side, record in (("old", old), ("new", new)):
        for field in ("holder", "node", "minion"):
            data[f"{side}_{field}"] = record.get(field)
    events = [data]
    if _is_me(new, me):
        events.append({"tag": "acquired", "holder": new.get("holder"), "transitions": new.get("transitions")})
    if _is_me(old, me):
        events.append({"tag": "lost", "holder": old.get("holder"), "new_holder": new.get("holder"),
                       "transitions": new.get("transitions")})
    return events


def _condition_events(previous, current, facts):
    """Events for the announced condition moving from `previous` to `current`."""
    if current == previous:
        return []
    events = []
    if previous in BAD_CONDITIONS and (current == "ok" or previous == "unreachable"):
        events.append({"tag": "recovered", "condition": previous})
    if current in BAD_CONDITIONS:
        events.append(dict(facts, tag=current))
    return events


def step(previous, observation, now, settings, me=()):
    """
    Advance the beacon's state by one observation; pure, no I/O.

    previous
        the state returned by the last call (or :func:`initial_state`)
    observation
        what ``kcm.leader`` returned: the record, or ``{"error": reason}``
    now
        local wall-clock seconds (``time.time()``)
    settings
        ``debounce``, ``stale_after``, ``retry_period``, ``lease_duration``, ``cluster``,
        ``cluster_id`` (carried in every event)
    me
        the names this minion goes by (minion id, node name)

    Returns ``(state, events)``; each event is a dict with a ``tag`` tail.
    The first sight of a healthy record announces nothing: a beacon that just
    started has no "before" to compare with.
    """
    state = copy.deepcopy(previous) if previous else initial_state()
    events = []
    facts = {}
    if "error" in observation:
        observed = "unreachable"
        reason = observation.get("error")
        if observation.get("detail"):
            reason = f"{reason}: {observation['detail']}"
        facts["reason"] = str(reason)[:200]
    else:
        record = _record_of(observation)
        current_print = fingerprint(record)
        if current_print != state["fingerprint"]:
            _note_change(state, record, now)
            state["fingerprint"] = current_print
        # A released Lease (no holder) between two holders is a handover from the last one
        # that held it, not from nobody.
        old = state.get("held") or state["record"]
        if state["seen"] and record.get("holder") and record.get("holder") != old.get("holder"):
            events.extend(_holder_events(old, record, me))
        if record.get("holder"):
            state["held"] = record
        state["record"] = record
        state["seen"] = True
        state["polled_at"] = now
        observed, facts = _classify(state, record, now, settings)

    current = _debounced(state, observed, settings)
    events.extend(_condition_events(state["condition"], current, facts))
    if current != state["condition"]:
        state["reason"] = facts.get("reason") if current == "unreachable" else None
    state["condition"] = current

    common = dict(state["record"], cluster=settings.get("cluster"), cluster_id=settings.get("cluster_id"))
    return state, [dict(common, **event) for event in events]


def announced_view(state):
    """What was announced: a change here is worth a write to the state file."""
    record = state.get("record") or {}
    return {
        "seen": state.get("seen"),
        "condition": state.get("condition"),
        "holder": [record.get(field) for field in ("holder", "node", "minion", "transitions")],
        "certs": (state.get("certs") or {}).get("announced"),
    }


def forget_clock(state):
    """
    The state as loaded after a restart: what was announced survives, the
    record clock does not (renewals went unseen while the minion was away, so
    the next observation is judged by renew_time, as at first sight).
    """
    state = dict(state, fingerprint=None, changed_at=None, offset=None, polled_at=None, history=False)
    state["pending"] = {"condition": None, "count": 0}
    # Check the certificates at the first poll after a restart: a renewal may
    # be what the restart was for. What was announced stays.
    certs = state.get("certs") if isinstance(state.get("certs"), dict) else {}
    announced = certs.get("announced") if isinstance(certs.get("announced"), dict) else {}
    state["certs"] = {"checked_at": None, "announced": announced}
    return state


# --------------------------------------------------------------------------
# certificate expiry (pure)
# --------------------------------------------------------------------------


def cert_check_due(state, now, interval):
    """True when the certificates were not read within the last `interval` seconds."""
    checked = ((state or {}).get("certs") or {}).get("checked_at")
    # now < checked: the wall clock stepped back; check rather than go quiet for long.
    return checked is None or now - checked >= interval or now < checked


def _readable_cert(info):
    return (
        isinstance(info, dict)
        and "error" not in info
        and _is_number(info.get("days_left"))
        and info.get("serial") is not None
    )


def _cert_event(tag, name, info, settings, **extra):
    event = {field: info.get(field) for field in CERT_FIELDS}
    event.update(tag=tag, cert=name, minion=settings.get("minion"), cluster=settings.get("cluster"),
                 cluster_id=settings.get("cluster_id"), **extra)
    return event


def cert_step(previous, status, now, settings):
    """
    Advance the certificate part of the beacon's state by one read; pure, no I/O.

    previous
        the beacon state (its ``certs`` part is used)
    status
        what ``kcm_pki.cert_status`` returned (cert name -> subject, serial,
        not_after, days_left), or None when it could not be read
    now
        local wall-clock seconds
    settings
        ``cert_thresholds`` (days), ``minion``, ``cluster``, ``cluster_id``

    Returns ``(state, events)``. For each cert, at most one ``cert_expiring``
    per read: the smallest threshold crossed and not yet announced for its
    serial; every threshold it has crossed is then announced. A new serial
    (a renewal) starts over, with ``cert_renewed`` when the old one had been
    announced. Unreadable certs keep what was announced for them, so a file
    caught mid-rewrite does not announce it all again.
    """
    state = copy.deepcopy(previous) if previous else initial_state()
    certs = state.setdefault("certs", {"checked_at": None, "announced": {}})
    certs["checked_at"] = now
    announced = certs.setdefault("announced", {})
    thresholds = sorted({float(days) for days in settings.get("cert_thresholds") or ()}, reverse=True)
    events = []
    if not isinstance(status, dict) or "error" in status:
        return state, events
    for name in sorted(status):
        info = status[name]
        if not _readable_cert(info):
            continue
        serial = str(info["serial"])
        entry = announced.get(name)
        if entry and entry.get("serial") != serial:
            if entry.get("thresholds"):
                events.append(_cert_event("cert_renewed", name, info, settings, old_serial=entry["serial"]))
            entry = None
        if entry is None:
            entry = announced[name] = {"serial": serial, "thresholds": []}
        crossed = [days for days in thresholds if info["days_left"] < days and days not in entry["thresholds"]]
        if not crossed:
            continue
        entry["thresholds"] = sorted(set(entry["thresholds"]) | set(crossed), reverse=True)
        events.append(
            _cert_event(
                "cert_expiring", name, info, settings,
                threshold=_plain(min(crossed)), thresholds=[_plain(days) for days in thresholds],
            )
        )
    return state, events


def _plain(days):
    """30.0 -> 30: thresholds read as they were configured, in events and alert labels."""
    return int(days) if float(days).is_integer() else days


# --------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------


def _config_dict(config):
    return salt.utils.beacons.list_to_dict(config) if isinstance(config, list) else dict(config or {})


def _state_path(cfg):
    if cfg.get("state_file"):
        return cfg["state_file"]
    name = cfg.get("_beacon_name", __virtualname__)
    return os.path.join(__opts__["cachedir"], "kcm", f"beacon-{name}.json")


def load_state(path):
    """The persisted state, or None when there is none (or it is unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("kcm_leader: ignoring unreadable state file %s: %s", path, exc)
        return None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        return None
    merged = initial_state()
    merged.update(state)
    return forget_clock(merged)


def save_state(path, state):
    """Write the state atomically (temp file + rename), so a crash never leaves half a file."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".beacon-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _settings(cfg, deployed):
    election = deployed.get("leader_election") or {}
    return {
        "cert_thresholds": cfg.get("cert_thresholds", DEFAULTS["cert_thresholds"]),
        "cert_check_interval": cfg.get("cert_check_interval", DEFAULTS["cert_check_interval"]),
        "minion": __opts__.get("id"),
        "debounce": cfg.get("debounce", DEFAULTS["debounce"]),
        "stale_after": cfg.get("stale_after", DEFAULTS["stale_after"]),
        "retry_period": parse_duration(election.get("retry_period"), DEFAULT_RETRY_PERIOD),
        "lease_duration": parse_duration(election.get("lease_duration"), DEFAULT_LEASE_DURATION),
        "cluster": deployed.get("cluster"),
    }


def _cluster_id(key, observation, cfg):
    """
    kcm.cluster_id (a memo hit after its first answer), asked only after a good poll: with
    the apiserver down it would be one more blocking GET in the minion's main loop, and the
    last answer is as good. None until it was ever had.
    """
    remembered = __context__.get(f"{key}.cluster_id")
    if "error" in observation:
        return remembered
    kwargs = {"timeout": cfg["timeout"]} if "timeout" in cfg else {}
    try:
        answer = __salt__["kcm.cluster_id"](**kwargs)
    except Exception:  # pylint: disable=broad-except
        log.debug("kcm_leader: kcm.cluster_id raised", exc_info=True)
        answer = None
    if isinstance(answer, str):
        __context__[f"{key}.cluster_id"] = answer
        return answer
    return remembered


def _my_names(deployed):
    names = {__opts__.get("id"), deployed.get("identity") or None}
    grains = globals().get("__grains__") or {}
    names.add(grains.get("host"))
    return tuple(sorted(name for name in names if name))


def _now():
    """Local wall-clock seconds; a function so tests can move time without touching `time`."""
    return time.time()


def _observe(cfg):
    """One kcm.leader call; any failure becomes {"error": reason}."""
    # map_minion=False: the mine lookup would be a second, blocking round trip
    # to the master inside the minion's main loop.
    kwargs = {"map_minion": False}
    if "timeout" in cfg:
        kwargs["timeout"] = cfg["timeout"]
    try:
        result = __salt__["kcm.leader"](**kwargs)
    except Exception as exc:  # pylint: disable=broad-except
        # Only the exception type and its first line: no stack, no secrets.
        first = str(exc).splitlines()[0][:120] if str(exc) else ""
        return {"error": f"kcm.leader raised {type(exc).__name__}: {first}".rstrip(": ")}
    if not isinstance(result, dict):
        return {"error": f"kcm.leader returned {type(result).__name__}, not a dict"}
    return result


def _cert_status():
    """One kcm_pki.cert_status call (file reads only); None when it failed."""
    try:
        status = __salt__["kcm_pki.cert_status"]()
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("kcm_leader: kcm_pki.cert_status raised %s; certificates not checked", type(exc).__name__)
        return None
    if not isinstance(status, dict) or "error" in status:
        reason = status.get("error") if isinstance(status, dict) else f"a {type(status).__name__}, not a dict"
        log.warning("kcm_leader: kcm_pki.cert_status gave no certificates: %s", reason)
        return None
    return status


def _check_certs(state, now, settings):
    """The cert part of a poll: read the certificates when due, else nothing."""
    if not settings["cert_thresholds"] or not cert_check_due(state, now, settings["cert_check_interval"]):
        return state, []
    return cert_step(state, _cert_status(), now, settings)


def _load_cached_state(key, path):
    state = __context__.get(key)
    if state is None:
        state = load_state(path) or initial_state()
    return state


def beacon(config):
    """
    Poll the leader record once and return the events for what changed.

    Always returns a list (empty when nothing changed, or when KCM is not
    deployed on this minion yet).

    CLI Example:

    .. code-block:: bash

        salt '*' beacons.add kcm_leader '[{"interval": 2}]'
        salt '*' beacons.list
    """
    cfg = _config_dict(config)
    deployed = __salt__["kcm_config.deployed"]() or {}
    if not deployed:
        log.debug("kcm_leader: KCM not deployed here (no deployed facts); nothing to watch")
        return []
    key = f"kcm_leader.{cfg.get('_beacon_name', __virtualname__)}"
    path = _state_path(cfg)
    previous = _load_cached_state(key, path)
    now = _now()
    settings = _settings(cfg, deployed)
    observation = _observe(cfg)
    settings["cluster_id"] = _cluster_id(key, observation, cfg)
    state, events = step(previous, observation, now, settings, _my_names(deployed))
    state, cert_events = _check_certs(state, now, settings)
    __context__[key] = state
    if announced_view(state) != announced_view(previous):
        _persist(path, state)
    for event in events:
        log.info("kcm_leader: %s (holder %s)", event["tag"], event.get("holder"))
    for event in cert_events:
        log.warning(
            "kcm_leader: %s: %s (serial %s) has %s days left (threshold %s)",
            event["tag"], event["cert"], event["serial"], event["days_left"], event.get("threshold"),
        )
    return _signed(events + cert_events)


def signed_message(kind, data):
    """
    Return the bytes an event signature covers: the kind (the tag's last part) and every
    field but ``sig`` and the bus's own ``_``-prefixed ones, as canonical JSON. The
    kcm_alert runner rebuilds the same bytes to verify.

    CLI Example:

    .. code-block:: bash

        salt-call kcm_leader.signed_message changed '{"id": "master-1"}'
    """
    fields = {k: v for k, v in data.items() if k != "sig" and not str(k).startswith("_")}
    return json.dumps({"kind": kind, "data": fields}, sort_keys=True, separators=(",", ":")).encode()


def _signed(events):
    """Sign each event with this minion's Salt key (pki_dir/minion.pem).

    The master fires batched beacon events with the data the minion sent, so any minion
    could send one naming another; the signature, checked by the runner against the
    accepted key of the minion the tag names, tells a real report from a forged one.
    """
    if not events:
        return events
    try:
        key = __context__.get("kcm_leader.signing_key") or _load_signing_key()
        __context__["kcm_leader.signing_key"] = key
    except (OSError, ValueError) as exc:
        log.warning("kcm_leader: cannot read this minion's key to sign events (%s); sending them unsigned", exc)
        return events
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    out = []
    for event in events:
        # Wall clock, not _now(): the runner compares it with its own clock.
        event = dict(event, id=__opts__["id"], signed_at=round(time.time(), 3))
        kind = event.pop("tag")
        signature = key.sign(signed_message(kind, event), padding.PKCS1v15(), hashes.SHA256())
        out.append(dict(event, tag=kind, sig=base64.b64encode(signature).decode()))
    return out


def _load_signing_key():
    from cryptography.hazmat.primitives import serialization

    with open(os.path.join(__opts__.get("pki_dir", ""), "minion.pem"), "rb") as fh:
        return serialization.load_pem_private_key(fh.read(), password=None)


def _persist(path, state):
    try:
        save_state(path, state)
    except OSError as exc:
        # Losing the file only risks one repeated announcement after a
        # restart; never let it stop the beacon.
        log.warning("kcm_leader: could not write state file %s: %s", path, exc)


def close(config):
    """
    Forget the in-memory state; the state file keeps what was announced.

    CLI Example:

    .. code-block:: bash

        salt '*' beacons.delete kcm_leader
    """
    cfg = _config_dict(config)
    key = f"kcm_leader.{cfg.get('_beacon_name', __virtualname__)}"
    __context__.pop(key, None)
    __context__.pop(f"{key}.cluster_id", None)
