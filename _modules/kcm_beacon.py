"""
What the formula's beacons (``kcm_leader``, ``kcm_cert``) and the Salt master ask this
minion: the check of a beacon's configuration, its settings from the deployed facts
(durations parsed by ``kcm_time``), and the signed answer to the master's reconcile and
fleet view.

The signature on the beacons' events is no execution function (anyone allowed to run
``kcm_beacon.*`` could otherwise sign any report in this minion's name): the beacons call
``kcm_trust.sign_beacon_events`` through a utils loader of their own, and read and write
their state files through it too. The master fires batched beacon events with the data the
minion sent, so any minion could send one naming another; each event is signed with this
minion's Salt key (``pki_dir/minion.pem``), and the ``kcm_alert`` runner checks it against
the accepted key of the minion the tag names.
"""

import logging

log = logging.getLogger(__name__)

__virtualname__ = "kcm_beacon"

# Keys Salt's beacon framework itself understands; validate() sees them too.
FRAMEWORK_KEYS = ("interval", "disable_during_state_run", "beacon_module", "run_once", "enabled")
OWN_KEYS = {
    "kcm_leader": ("debounce", "stale_after", "state_file", "timeout", "healthy_for"),
    "kcm_cert": ("cert_thresholds", "cert_check_interval", "state_file"),
}
EXAMPLES = {
    "kcm_leader": "[{interval: 2}, {debounce: 2}, {stale_after: 3}]",
    "kcm_cert": "[{interval: 10}, {cert_thresholds: [21, 7]}, {cert_check_interval: 3600}]",
}


def __virtual__():
    return __virtualname__


def _problem(beacon, config):
    if not isinstance(config, list) or not all(isinstance(item, dict) for item in config):
        return f"{beacon}: configuration must be a list of one-key dicts, e.g. {EXAMPLES[beacon]}"
    known = FRAMEWORK_KEYS + OWN_KEYS[beacon]
    for item in config:
        for key, value in item.items():
            if key.startswith("_"):
                continue
            if key not in known:
                return f"{beacon}: unknown key {key!r}; known keys: {', '.join(known)}"
            # The rules are kcm_checks', which the pillar validation of kcm:beacon applies too.
            expected = __utils__["kcm_checks.beacon_value_problem"](key, value)  # noqa: F821
            if expected:
                return f"{beacon}: {key} must be {expected}, got {value!r}"
    return None


def validate(beacon, config):
    """
    Check the configuration of the kcm beacon ``beacon`` (``kcm_leader`` or ``kcm_cert``);
    never raises. Returns ``(True, "Valid beacon configuration")`` or ``(False, message)``
    where the message names the key and the expected form.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm_beacon.validate kcm_leader '[{"debounce": 0}]'
    """
    try:
        problem = _problem(beacon, config)
    except Exception as exc:  # pylint: disable=broad-except
        # A raising validate() drops every beacon's events for the cycle.
        problem = f"{beacon}: configuration could not be checked: {exc}"
    return (False, problem) if problem else (True, "Valid beacon configuration")


# The keys each beacon cannot run without (all in defaults.yaml, so in the deployed facts).
NEEDS = {
    "kcm_leader": ("debounce", "stale_after", "healthy_for"),
    "kcm_cert": ("cert_thresholds", "cert_check_interval"),
}


def settings(beacon, config=None):
    """
    Return the settings of the kcm beacon ``beacon`` (``kcm_leader`` or ``kcm_cert``): its
    ``config`` (a dict) over the deployed ``kcm:beacon`` (pillar merged with
    ``defaults.yaml``, so no beacon keeps its own copy of a default), plus ``cluster``,
    ``identity``, ``minion`` and the leader election's ``retry_period`` and
    ``lease_duration`` in seconds. ``{}`` where there is nothing to watch: KCM not deployed
    here, or deployed facts it cannot use (logged, with what to do). Never raises: the
    beacons call it in the minion's main loop.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm_beacon.settings kcm_leader
        salt 'master*' kcm_beacon.settings kcm_cert '{"cert_thresholds": [60]}'
    """
    deployed = __salt__["kcm_config.deployed"]() or {}
    if not deployed:
        log.debug("%s: KCM not deployed here (no deployed facts); nothing to watch", beacon)
        return {}
    election = deployed.get("leader_election") or {}
    out = dict(deployed.get("beacon") or {}, **(config or {}))
    out.update(cluster=deployed.get("cluster"), identity=deployed.get("identity") or None, minion=__opts__.get("id"))
    try:
        for key in ("retry_period", "lease_duration"):
            out[key] = __utils__["kcm_time.parse_duration"](election.get(key))  # noqa: F821
    except ValueError as exc:
        log.warning("%s: the deployed leader_election.%s is not a duration (%s); run state.apply kcm", beacon, key, exc)
        return {}
    missing = [key for key in NEEDS.get(beacon, ()) if key not in out]
    if missing:
        log.warning("%s: the deployed kcm:beacon has no %s; run state.apply kcm", beacon, ", ".join(missing))
        return {}
    return out


def _reading(function, **kwargs):
    try:
        return __salt__[function](**kwargs)  # noqa: F821
    except Exception as exc:  # pylint: disable=broad-except
        # Its first line only: no stack, no secrets.
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return {"error": first}


def answer(nonce):
    """
    Return this minion's ``kcm.leader`` (``leader``) and ``kcm.status`` (``status``),
    signed with its Salt key for the master's question ``nonce``: the reconcile of the
    kcm_alert runner and the fleet view (``salt-run kcm.status``) read only such answers (a
    job return on the master bus may come from another minion). Nothing but this minion's
    own reading is signed, and under the kind ``answer``, which no report has.

    CLI Example:

    .. code-block:: bash

        salt 'master-*' kcm_beacon.answer 0123abcd
    """
    reading = {"leader": _reading("kcm.leader"), "status": _reading("kcm.status")}
    return __utils__["kcm_trust.sign_answer"](__opts__, reading, nonce)  # noqa: F821
