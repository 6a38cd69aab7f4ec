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
``restarting``
    KCM on this master is in a crash loop: systemd restarted it (``NRestarts``)
    ``restarts`` times within ``window_seconds`` with no healthy ``/healthz`` between, as a
    KCM that exits on start does (KCM also exits when it loses the Lease, and comes back
    healthy: that is no crash loop; nor is it announced while this master is ``unreachable``).
    With ``exit_status`` and ``last_error`` (its journal's last error line, secrets
    filtered, ``kcm.restarts``).
``recovered``
    A condition above cleared; ``condition`` names it (``restarting``: /healthz stayed
    healthy for ``healthy_for`` seconds).
Certificate expiry is the ``kcm_cert`` beacon's (``salt/beacon/<minion>/kcm_cert/...``).

Configuration (minion config or pillar ``beacons:``):

.. code-block:: yaml

    beacons:
      kcm_leader:
        - interval: 2            # seconds between polls (with loop_interval: 1)
        - debounce: 2            # polls in a row before unreachable / no_leader is announced
        - stale_after: 3         # retry periods without renewal before "stale"
        - timeout: 2             # seconds for the one GET (the poll runs in the minion's main loop)
        - healthy_for: 60        # seconds of healthy /healthz that end a crash loop
        - state_file: /var/cache/salt/minion/kcm/beacon-kcm_leader.json   # optional
        - disable_during_state_run: false

A key left out takes its value from the deployed ``kcm:beacon`` (``defaults.yaml`` under the
pillar), and the lease timings come from the deployed ``kcm:leader_election``, both through
``kcm_beacon.settings``: one copy of every default, in ``defaults.yaml``.

The last announced state is kept in ``state_file`` (default
``<cachedir>/kcm/beacon-<beacon name>.json``), so a beacon refresh, a pillar
refresh or a minion restart does not announce the same thing twice.

The decision logic is the pure function :func:`step`; :func:`beacon` does the I/O: one
``kcm.leader`` per poll, and every ``SERVICE_CHECK_SECONDS`` one ``kcm.restarts`` (a
``systemctl show``), with ``kcm.health`` only while restarts are being counted.
"""

import copy
import json
import logging
import os
import time

import salt.loader
import salt.utils.beacons
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "kcm_leader"

# Need `debounce` observations in a row: one slow GET or missed renewal must not page anybody.
DEBOUNCED = ("unreachable", "no_leader")
# "restarting" is this master's own (its KCM service), kept apart from the Lease's in state["service"].
BAD_CONDITIONS = ("stale", "no_leader", "unreachable", "restarting")

# A crash loop: `restarts` restarts by systemd within `window` seconds with no healthy /healthz
# seen between them (issue #27). At most `kept` restart times are kept (the state file stays small).
CRASH_LOOP = {"restarts": 3, "window": 600, "kept": 100}
# Seconds between reads of systemd's restart counter: each read starts a systemctl process (a
# leader poll starts none), and the counter misses no restart between two reads.
SERVICE_CHECK_SECONDS = 10

# Any change of these is a renewal or a takeover (what client-go's expiry rule watches).
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


def __virtual__():
    return __virtualname__


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate(config):
    """
    Check the beacon configuration (``kcm_beacon.validate``): ``(True, "Valid beacon
    configuration")`` or ``(False, <the key and the expected form>)``; never raises.

    CLI Example:

    .. code-block:: bash

        salt '*' beacons.add kcm_leader '[{"interval": 2}, {"debounce": 2}]'
    """
    if "kcm_beacon.validate" not in __salt__:
        return False, "kcm_leader: the kcm_beacon module is not available (run saltutil.sync_modules)"
    return __salt__["kcm_beacon.validate"](__virtualname__, config)


# pure: the state machine


def fingerprint(record):
    """A string that changes whenever the leader record changes."""
    return json.dumps([record.get(field) for field in FINGERPRINT_FIELDS], sort_keys=True, default=str)


def _initial_service():
    """What the crash-loop watch knows before reading systemd: ``restarts`` (the last NRestarts
    read), ``times`` (of the restarts since the last healthy /healthz), ``healthy_since``,
    ``exit_status`` (the last one read: a read while a process runs has none)."""
    return {
        "checked_at": None,
        "restarts": None,
        "times": [],
        "healthy_since": None,
        "condition": None,
        "exit_status": None,
    }


def initial_state():
    """The state before anything was observed."""
    return {
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
        "service": _initial_service(),
    }


def _record_of(observation):
    return {field: observation.get(field) for field in RECORD_FIELDS}


def _is_me(record, me):
    return bool(record.get("holder")) and bool({record.get("minion"), record.get("node")} & set(filter(None, me)))


def _note_change(state, record, now, renewed):
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


def _record_age(state, now, renewed):
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
    if renewed is None:
        return local_age, "observed"
    return max(local_age, now - renewed), "renew_time"


def _classify(state, record, now, settings, renewed):
    """Condition of a readable record: ok, stale or no_leader (plus age facts)."""
    age, basis = _record_age(state, now, renewed)
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
        events.append(
            {
                "tag": "lost",
                "holder": old.get("holder"),
                "new_holder": new.get("holder"),
                "transitions": new.get("transitions"),
            }
        )
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


def service_due(state, now):
    """Whether systemd's restart counter is to be read at this poll (every SERVICE_CHECK_SECONDS)."""
    checked = ((state or {}).get("service") or {}).get("checked_at")
    return checked is None or not 0 <= now - checked < SERVICE_CHECK_SECONDS


def _new_restarts(watch, unit):
    """Restarts since the last read: NRestarts is a counter, so none is missed between two
    reads. The first read is the baseline; a start by hand resets the counter to 0, so a
    smaller one counts the restarts since that start."""
    seen, count = watch.get("restarts"), unit.get("restarts")
    if not isinstance(seen, int) or not isinstance(count, int):
        return 0
    return count - seen if count >= seen else count


def wants_health(state, unit):
    """Whether /healthz is worth asking after systemd answered ``unit`` (``kcm.restarts``):
    only while restarts are counted (a new one, or older ones no healthy answer followed)
    or a crash loop is announced."""
    watch = (state or {}).get("service") or _initial_service()
    return bool(_new_restarts(watch, unit) or watch["times"] or watch["condition"] == "restarting")


def _crash_loop(watch, unit, now, settings, unreachable=False):
    """The crash-loop condition ("restarting" or "ok") after one reading ``unit`` (``kcm.restarts``,
    with ``healthy`` when asked) and the facts of its event; updates ``watch``. While this master
    cannot reach the apiserver (``unreachable``) a loop is counted but not announced: KCM exits at
    start then (it reads the apiserver's authentication config), KCMApiserverUnreachable says why."""
    new = _new_restarts(watch, unit)
    for field in ("restarts", "exit_status"):
        if isinstance(unit.get(field), int):
            watch[field] = unit[field]
    times = [t for t in watch["times"] + [now] * new if t > now - CRASH_LOOP["window"]]
    if unit.get("healthy"):
        # Up and healthy after its restarts, as after a lost Lease: not a loop (yet).
        times = []
        watch["healthy_since"] = now if new or watch["healthy_since"] is None else watch["healthy_since"]
    else:
        watch["healthy_since"] = None
    watch["times"] = times[-CRASH_LOOP["kept"] :]
    facts = {
        "restarts": len(times),
        "window_seconds": CRASH_LOOP["window"],
        "unit": unit.get("unit"),
        "exit_status": watch.get("exit_status"),
    }
    if watch["condition"] == "restarting":
        since = watch["healthy_since"]
        return ("ok" if since is not None and now - since >= settings["healthy_for"] else "restarting"), facts
    return ("restarting" if len(times) >= CRASH_LOOP["restarts"] and not unreachable else "ok"), facts


def _service_events(state, unit, now, settings):
    """Events for one reading of the service (None: not read at this poll)."""
    if unit is None:
        return []
    watch = state.setdefault("service", _initial_service())
    watch["checked_at"] = now
    current, facts = _crash_loop(watch, unit, now, settings, state["condition"] == "unreachable")
    events = _condition_events(watch["condition"], current, facts)
    watch["condition"] = current
    return events


def step(previous, observation, now, settings, me=(), service=None):
    """
    Advance the beacon's state by one observation; pure, no I/O.

    previous
        the state returned by the last call (or :func:`initial_state`)
    observation
        what ``kcm.leader`` returned (the record, with ``renewed_at``: its ``renew_time``
        in epoch seconds), or ``{"error": reason}`` when it raised
    now
        local wall-clock seconds (``time.time()``)
    settings
        ``debounce``, ``stale_after``, ``retry_period``, ``lease_duration``, ``cluster``,
        ``cluster_id`` (carried in every event)
    me
        the names this minion goes by (minion id, node name)
    service
        what ``kcm.restarts`` returned, with ``healthy`` (``kcm.health``) where
        :func:`wants_health`; None when systemd was not read at this poll
        (:func:`service_due`). ``settings`` then needs ``healthy_for``.

    Returns ``(state, events)``; each event is a dict with a ``tag`` tail.
    The first sight of a healthy record announces nothing: a beacon that just
    started has no "before" to compare with.
    """
    state = copy.deepcopy(previous) if previous else initial_state()
    events = []
    facts = {}
    if "error" in observation:
        observed = "unreachable"
        facts["reason"] = str(observation.get("error"))[:200]
    else:
        record = _record_of(observation)
        current_print = fingerprint(record)
        renewed = observation.get("renewed_at")
        if current_print != state["fingerprint"]:
            _note_change(state, record, now, renewed)
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
        observed, facts = _classify(state, record, now, settings, renewed)

    current = _debounced(state, observed, settings)
    events.extend(_condition_events(state["condition"], current, facts))
    if current != state["condition"]:
        state["reason"] = facts.get("reason") if current == "unreachable" else None
    state["condition"] = current
    events.extend(_service_events(state, service, now, settings))

    common = dict(state["record"], cluster=settings.get("cluster"), cluster_id=settings.get("cluster_id"))
    return state, [dict(common, **event) for event in events]


def announced_view(state):
    """What was announced: a change here is worth a write to the state file."""
    record = state.get("record") or {}
    return {
        "seen": state.get("seen"),
        "condition": state.get("condition"),
        "holder": [record.get(field) for field in ("holder", "node", "minion", "transitions")],
        "restarting": (state.get("service") or {}).get("condition"),
    }


def forget_clock(state):
    """
    The state as loaded after a restart: what was announced survives, the
    record clock does not (renewals went unseen while the minion was away, so
    the next observation is judged by renew_time, as at first sight).
    """
    state = dict(state, fingerprint=None, changed_at=None, offset=None, polled_at=None, history=False)
    state["pending"] = {"condition": None, "count": 0}
    # Restarts are counted again from the next read; an announced crash loop stays announced.
    state["service"] = dict(_initial_service(), condition=(state.get("service") or {}).get("condition"))
    return state


# I/O: one kcm.leader call per poll, the state file and the signature (through _utils)


def _utils():
    # Beacons get no __utils__, and signing must be no execution function: a utils loader of its own.
    if "kcm_trust.utils" not in __context__:
        __context__["kcm_trust.utils"] = salt.loader.utils(__opts__)
    return __context__["kcm_trust.utils"]


def _state_path(cfg):
    name = cfg.get("_beacon_name", __virtualname__)
    return cfg.get("state_file") or os.path.join(__opts__["cachedir"], "kcm", f"beacon-{name}.json")


def load_state(path):
    """The persisted state as a restart sees it, or None when there is none (or it is unreadable)."""
    state = _utils()["kcm_state_file.read_json"](path)
    return forget_clock(dict(initial_state(), **state)) if isinstance(state, dict) else None


def _save_state(path, state):
    # Atomic, 0600; a file that cannot be written only risks one repeated announcement.
    try:
        _utils()["kcm_state_file.write_json"](path, state)
    except OSError as exc:
        log.warning("kcm_leader: could not write state file %s: %s", path, exc)


def _settings(cfg):
    """``kcm_beacon.settings`` with the names this minion goes by; None where there is nothing to watch."""
    settings = __salt__["kcm_beacon.settings"](__virtualname__, cfg)
    if not settings:
        return None
    grains = globals().get("__grains__") or {}
    names = {settings["minion"], settings.get("identity"), grains.get("host")}
    return dict(settings, me=tuple(sorted(name for name in names if name)))


def _cluster_id(key, observation, cfg):
    """
    kcm.cluster_id (a memo hit after its first answer), asked only after a good poll: with
    the apiserver down it would be one more blocking GET in the minion's main loop, and the
    last answer is as good. None until it was ever had.
    """
    if "error" not in observation:
        try:
            __context__[f"{key}.cluster_id"] = __salt__["kcm.cluster_id"](**_timeout(cfg))
        except Exception:  # pylint: disable=broad-except
            log.debug("kcm_leader: kcm.cluster_id raised", exc_info=True)
    return __context__.get(f"{key}.cluster_id")


def _timeout(cfg):
    return {"timeout": cfg["timeout"]} if "timeout" in cfg else {}


def _now():
    """Local wall-clock seconds; a function so tests can move time without touching `time`."""
    return time.time()


def _observe(cfg):
    """One kcm.leader call: the record with ``renewed_at``, or ``{"error": <reason: detail>}``."""
    try:
        result = __salt__["kcm.leader"](**_timeout(cfg))
    except CommandExecutionError as exc:
        # The function's own one-line "<reason>: <detail>": no stack, no secrets.
        return {"error": str(exc).splitlines()[0] if str(exc) else "error"}
    except Exception as exc:  # pylint: disable=broad-except
        # Only the exception type and its first line: no stack, no secrets.
        first = str(exc).splitlines()[0][:120] if str(exc) else ""
        return {"error": f"kcm.leader raised {type(exc).__name__}: {first}".rstrip(": ")}
    if not isinstance(result, dict):
        return {"error": f"kcm.leader returned {type(result).__name__}, not a dict"}
    return dict(result, renewed_at=_utils()["kcm_time.epoch"](result.get("renew_time")))


def _service(cfg, settings, previous, now):
    """
    ``kcm.restarts`` when :func:`service_due`, with ``healthy`` (``kcm.health``) when
    :func:`wants_health`; None when not due, or where it cannot be read (logged at debug: the
    leader watch goes on).
    """
    if not service_due(previous, now):
        return None
    try:
        unit = __salt__["kcm.restarts"]()
    except Exception:  # pylint: disable=broad-except
        log.debug("kcm_leader: kcm.restarts raised", exc_info=True)
        return None
    if wants_health(previous, unit):
        try:
            unit["healthy"] = bool(__salt__["kcm.health"](**_timeout(cfg)).get("healthy"))
        except Exception:  # pylint: disable=broad-except
            unit["healthy"] = False  # not answering: down between two restarts
    return unit


def _with_last_error(event):
    """A ``restarting`` event with its journal's last error line (read once per crash loop)."""
    if event["tag"] == "restarting":
        try:
            event["last_error"] = __salt__["kcm.restarts"](last_error=True).get("last_error")
        except Exception:  # pylint: disable=broad-except
            log.debug("kcm_leader: kcm.restarts raised", exc_info=True)
    return event


def _signed(events):
    utils = _utils()
    files = utils["kcm_state_file.read_json"], utils["kcm_state_file.write_json"]
    return utils["kcm_trust.sign_beacon_events"](__opts__, events, *files) if events else events


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
    cfg = salt.utils.beacons.list_to_dict(config)
    settings = _settings(cfg)
    if settings is None:
        return []
    key = f"kcm_leader.{cfg.get('_beacon_name', __virtualname__)}"
    path = _state_path(cfg)
    previous = __context__.get(key) or load_state(path) or initial_state()
    now = _now()
    observation = _observe(cfg)
    settings["cluster_id"] = _cluster_id(key, observation, cfg)
    service = _service(cfg, settings, previous, now)
    state, events = step(previous, observation, now, settings, settings["me"], service)
    events = [_with_last_error(event) for event in events]
    __context__[key] = state
    if announced_view(state) != announced_view(previous):
        _save_state(path, state)
    for event in events:
        log.info("kcm_leader: %s (holder %s)", event["tag"], event.get("holder"))
    return _signed(events)


def close(config):
    """
    Forget the in-memory state; the state file keeps what was announced.

    CLI Example:

    .. code-block:: bash

        salt '*' beacons.delete kcm_leader
    """
    cfg = salt.utils.beacons.list_to_dict(config)
    key = f"kcm_leader.{cfg.get('_beacon_name', __virtualname__)}"
    __context__.pop(key, None)
    __context__.pop(f"{key}.cluster_id", None)
