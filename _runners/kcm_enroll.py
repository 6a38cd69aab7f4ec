"""
Opt-in enrollment: when a KCM master starts for the first time, run its highstate once, so a
new master joins the KCM cluster the Salt way (as a standby).

Wired by ``kcm.master`` (pillar ``kcm:master:enroll``): the reactor maps
``salt/minion/*/start`` to ``salt://reactor/kcm/enroll.sls``, which calls :func:`on_start`.
Who is a KCM master is the master's own configuration, by minion id
(``kcm_alert:masters``, ``kcm_trust``): nothing is asked of the minion, so no event (a
start the minion fired itself, or one forged in a batch in another's name) can enroll
anything else, or hold a lock while a minion answers. A minion is enrolled once per
accepted key (bank ``kcm/enroll``, with the key's fingerprint); a refused sender is
remembered (bank ``kcm/enroll-refused``) and logged once per ``kcm_alert:refusal_log_interval``
(kcm:master:refusal_log_interval, as the alert runner's refusals).
"""

import hashlib
import logging
import os
import time

import salt.cache
import salt.client
import salt.utils.event
import salt.utils.files
import salt.utils.verify

log = logging.getLogger(__name__)

__virtualname__ = "kcm_enroll"
BANK = "kcm/enroll"
REFUSED_BANK = "kcm/enroll-refused"


def __virtual__():
    return __virtualname__


def _lock_path():
    return os.path.join(__opts__["cachedir"], "kcm-enroll.lock")


def _u(name):
    return __utils__[f"kcm_trust.{name}"]  # noqa: F821


def _trust():
    return _u("trust")(__opts__)


def enrolled():
    """
    Return the minion ids this master has enrolled (highstated once on their first start).

    CLI Example:

    .. code-block:: bash

        salt-run kcm_enroll.enrolled
    """
    return sorted(salt.cache.factory(__opts__).list(BANK))


def forget(minion_id):
    """
    Forget that ``minion_id`` was enrolled (or refused), so its next start is judged again.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_enroll.forget master-4
    """
    cache = salt.cache.factory(__opts__)
    cache.flush(BANK, minion_id)
    cache.flush(REFUSED_BANK, minion_id)
    return True


def _key_fingerprint(minion_id):
    try:
        with open(os.path.join(__opts__["pki_dir"], "minions", minion_id), "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def _refusal(minion_id):
    """
    Why ``minion_id`` may not be enrolled, or ``None``: it must be a well-formed minion id
    (Salt's ``valid_id`` and no glob, space or path characters) that is a KCM master by id
    (``kcm_alert:masters``) and whose key this master accepted.
    """
    trust = _trust()
    if not _u("well_formed")(minion_id) or not salt.utils.verify.valid_id(__opts__, minion_id):
        return f"{_u('printable')(minion_id, 80)!r} is not a well-formed minion id"
    if not trust.is_master(minion_id):
        return trust.why_not_master(minion_id)
    if _key_fingerprint(minion_id) is None:
        return f"{minion_id} has no accepted key"
    return None


def _refused(minion_id, why):
    """Remember, and log and fire once per interval, a refused start; cheap when repeated."""
    printable = _u("printable")
    name = printable(minion_id, 80)
    cache, now = salt.cache.factory(__opts__), time.time()
    known = _u("well_formed")(minion_id)
    last = cache.fetch(REFUSED_BANK, minion_id) if known else None
    cfg = __utils__["kcm_error.master_settings"](__opts__, "kcm_alert", "kcm:master")  # noqa: F821
    if isinstance(last, dict) and now - float(last.get("at") or 0) < cfg["refusal_log_interval"]:
        return {"minion": minion_id, "result": "refused", "reason": why, "remembered": True}
    if known:
        cache.store(REFUSED_BANK, minion_id, {"at": now, "reason": why})
    log.warning("kcm_enroll: not enrolling %s: %s", name, printable(why))
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as bus:
        bus.fire_event({"minion": printable(minion_id), "reason": why}, "kcm/enroll/refused")
    return {"minion": minion_id, "result": "refused", "reason": why}


def on_start(tag, sender=None):
    """
    Handle a ``salt/minion/<id>/start`` event (the reactor's entry point): the minion id
    is taken from the tag, must agree with the event's ``data['id']`` (``sender``), and must
    be a well-formed id of a KCM master by id (``kcm_alert:masters``) whose key this master
    accepted; then ``state.highstate`` runs on it once per accepted key. A start forged in a
    batched event gains nothing: only a KCM master by id is highstated, once per key, whoever
    fired it. Returns what was done: ``enrolled`` (with the job id), ``already`` or
    ``refused`` (with the ``reason``).

    CLI Example:

    .. code-block:: bash

        salt-run kcm_enroll.on_start salt/minion/master-4/start sender=master-4
    """
    parts = str(tag or "").split("/")
    minion_id = parts[2] if len(parts) == 4 and parts[:2] == ["salt", "minion"] and parts[3] == "start" else None
    if minion_id is None:
        return _refused(tag, f"{_u('printable')(tag, 80)!r} is not a salt/minion/<id>/start tag")
    why = _refusal(minion_id)
    if why:
        return _refused(minion_id, why)
    if sender is not None and sender != minion_id:
        return _refused(minion_id, f"the start of {minion_id} was sent by {_u('printable')(sender, 80)!r}")
    return _highstate_once(minion_id)


def _highstate_once(minion_id):
    """
    Run ``state.highstate`` on ``minion_id`` (a KCM master :func:`_refusal` let through)
    unless it was enrolled with its current key; record it. The minion is targeted as a
    one-item list; the lock is held only while the record is read and claimed, never while
    a minion is asked anything.
    """
    fingerprint = _key_fingerprint(minion_id)
    cache = salt.cache.factory(__opts__)
    # Two starts of one minion (two reactor threads) enroll it once: claim under the lock.
    with salt.utils.files.flopen(_lock_path(), "a"):
        # localfs gives {} for no record.
        known = cache.fetch(BANK, minion_id)
        if isinstance(known, dict) and known.get("key") == fingerprint:
            return {"minion": minion_id, "result": "already"}
        cache.store(BANK, minion_id, {"key": fingerprint, "jid": None, "at": time.time()})
    jid = salt.client.LocalClient(mopts=__opts__).cmd_async([minion_id], "state.highstate", tgt_type="list")
    cache.store(BANK, minion_id, {"key": fingerprint, "jid": jid, "at": time.time()})
    log.info("kcm_enroll: %s joined as a control-plane master; highstate job %s", minion_id, jid)
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as bus:
        bus.fire_event({"minion": minion_id, "jid": jid}, "kcm/enroll/highstate")
    return {"minion": minion_id, "result": "enrolled", "jid": jid}
