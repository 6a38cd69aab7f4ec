"""
Opt-in enrollment: when a control-plane minion starts for the first time, run its
highstate once, so a new master joins the KCM cluster the Salt way (as a standby).

Wired by ``kcm.master`` (pillar ``kcm:master:enroll``): the reactor maps
``salt/minion/*/start`` to ``salt://reactor/kcm/enroll.sls``, which calls
:func:`highstate_once`. Minions already enrolled are remembered in the master cache
(bank ``kcm/enroll``), so later restarts do not re-run highstate.
"""

import logging
import os
import re

import salt.cache
import salt.client
import salt.utils.event
import salt.utils.files
import salt.utils.verify

log = logging.getLogger(__name__)

__virtualname__ = "kcm_enroll"
BANK = "kcm/enroll"
# Stricter than Salt's valid_id: no glob, space or path characters, so an id can only
# ever name one minion and one cache entry.
MINION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


def __virtual__():
    return __virtualname__


def _lock_path():
    return os.path.join(__opts__["cachedir"], "kcm-enroll.lock")


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
    Forget that ``minion_id`` was enrolled, so its next start runs highstate again.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_enroll.forget master-4
    """
    salt.cache.factory(__opts__).flush(BANK, minion_id)
    return True


def refusal(minion_id):
    """
    Say why ``minion_id`` may not be enrolled, or return ``None``: it must be a
    well-formed minion id (Salt's ``valid_id`` and no glob, space or path characters)
    whose key this master has accepted.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_enroll.refusal 'nobody or *'
    """
    if not isinstance(minion_id, str) or not MINION_ID_RE.match(minion_id) \
            or not salt.utils.verify.valid_id(__opts__, minion_id):
        return f"{str(minion_id)[:80]!r} is not a well-formed minion id"
    if not os.path.isfile(os.path.join(__opts__["pki_dir"], "minions", minion_id)):
        return f"{minion_id} has no accepted key"
    return None


def _refused(minion_id, why):
    log.warning("kcm_enroll: not enrolling %s: %s", str(minion_id)[:80], why)
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as bus:
        bus.fire_event({"minion": str(minion_id)[:256], "reason": why}, "kcm/enroll/refused")
    return {"minion": minion_id, "result": "refused", "reason": why}


def on_start(tag, sender=None, grain=None, value=None):
    """
    Handle a ``salt/minion/<id>/start`` event (the reactor's entry point): the minion id
    is taken from the tag, must agree with the ``id`` the master authenticated for the
    sender (``sender``, the event's ``data['id']``) and pass :func:`refusal`; then
    :func:`highstate_once`.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_enroll.on_start salt/minion/master-4/start sender=master-4
    """
    parts = str(tag or "").split("/")
    minion_id = parts[2] if len(parts) == 4 and parts[:2] == ["salt", "minion"] and parts[3] == "start" else None
    if minion_id is None:
        return _refused(tag, f"{str(tag)[:80]!r} is not a salt/minion/<id>/start tag")
    why = refusal(minion_id)
    if why:
        return _refused(minion_id, why)
    if sender is not None and sender != minion_id:
        return _refused(minion_id, f"the start of {minion_id} was sent by {str(sender)[:80]!r}")
    return highstate_once(minion_id, grain=grain, value=value)


def highstate_once(minion_id, grain=None, value=None):
    """
    Run ``state.highstate`` on ``minion_id`` if it has grain ``grain:value`` and was never
    enrolled before; record it. Returns what was done: ``enrolled`` (with the job id),
    ``already``, ``not-a-master`` or ``refused`` (see :func:`refusal`). ``grain`` and
    ``value`` default to the master config ``kcm_enroll: {grain: role, value: k8s-master}``
    that ``kcm.master`` writes. The minion is targeted as a one-item list, and the grain
    is read from the minion's own (authenticated) return, never from the event.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_enroll.highstate_once master-4 grain=role value=k8s-master
    """
    settings = __opts__.get("kcm_enroll") or {}
    grain = grain or settings.get("grain", "role")
    value = value or settings.get("value", "k8s-master")
    why = refusal(minion_id)
    if why:
        return _refused(minion_id, why)
    cache = salt.cache.factory(__opts__)
    # One reactor thread per event: take the lock so two starts of one minion enroll it once.
    with salt.utils.files.flopen(_lock_path(), "a"):
        if cache.contains(BANK, minion_id):
            return {"minion": minion_id, "result": "already"}
        client = salt.client.LocalClient(mopts=__opts__)
        answer = client.cmd([minion_id], "grains.get", [grain], tgt_type="list", timeout=15)
        if str(answer.get(minion_id)) != str(value):
            return {"minion": minion_id, "result": "not-a-master"}
        jid = client.cmd_async([minion_id], "state.highstate", tgt_type="list")
        cache.store(BANK, minion_id, {"jid": jid})
    log.info("kcm_enroll: %s joined as a control-plane master; highstate job %s", minion_id, jid)
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as bus:
        bus.fire_event({"minion": minion_id, "jid": jid}, "kcm/enroll/highstate")
    return {"minion": minion_id, "result": "enrolled", "jid": jid}
