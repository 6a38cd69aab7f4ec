"""
Opt-in enrollment: when a control-plane minion starts for the first time, run its
highstate once, so a new master joins the KCM cluster the Salt way (as a standby).

Wired by ``kcm.master`` (pillar ``kcm:master:enroll``): the reactor maps
``salt/minion/*/start`` to ``salt://reactor/kcm/enroll.sls``, which calls
:func:`highstate_once`. Minions already enrolled are remembered in the master cache
(bank ``kcm/enroll``), so later restarts do not re-run highstate.
"""

import logging

import salt.cache
import salt.client
import salt.utils.event
import salt.utils.files

log = logging.getLogger(__name__)

__virtualname__ = "kcm_enroll"
BANK = "kcm/enroll"


def __virtual__():
    return __virtualname__


def _lock_path():
    import os

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


def highstate_once(minion_id, grain=None, value=None):
    """
    Run ``state.highstate`` on ``minion_id`` if it has grain ``grain:value`` and was never
    enrolled before; record it. Returns what was done: ``enrolled`` (with the job id),
    ``already`` or ``not-a-master``. ``grain`` and ``value`` default to the master config
    ``kcm_enroll: {grain: role, value: k8s-master}`` that ``kcm.master`` writes.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_enroll.highstate_once master-4 grain=role value=k8s-master
    """
    settings = __opts__.get("kcm_enroll") or {}
    grain = grain or settings.get("grain", "role")
    value = value or settings.get("value", "k8s-master")
    cache = salt.cache.factory(__opts__)
    # One reactor thread per event: take the lock so two starts of one minion enroll it once.
    with salt.utils.files.flopen(_lock_path(), "a"):
        if cache.contains(BANK, minion_id):
            return {"minion": minion_id, "result": "already"}
        client = salt.client.LocalClient(mopts=__opts__)
        target = f"G@{grain}:{value} and L@{minion_id}"
        matched = client.cmd(target, "test.true", tgt_type="compound", timeout=15)
        if not matched:
            return {"minion": minion_id, "result": "not-a-master"}
        jid = client.cmd_async(target, "state.highstate", tgt_type="compound")
        cache.store(BANK, minion_id, {"jid": jid})
    log.info("kcm_enroll: %s joined as a control-plane master; highstate job %s", minion_id, jid)
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as bus:
        bus.fire_event({"minion": minion_id, "jid": jid}, "kcm/enroll/highstate")
    return {"minion": minion_id, "result": "enrolled", "jid": jid}
