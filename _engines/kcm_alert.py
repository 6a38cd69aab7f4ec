"""
Engine ``kcm_alert``: the only alert path. It listens on the master's event bus for
``salt/beacon/*/kcm_leader/*`` and ``salt/beacon/*/kcm_cert/*`` and hands what arrived
within ``batch_wait`` seconds to the ``kcm_alert.handle_batch`` runner function in one call.

Why not the reactor: the reactor renders its SLS for every event, one after another in
its main thread, and runs a runner job (with its own job events and job-cache write) each,
before any code of the formula can look at the event. A forged report from any minion
would cost that much to refuse; here the runner refuses a sender that is no KCM master by
its id, in memory, within the same process (bench/refusal.py), and logs it once per
interval. When 100 clusters fail over at once, 300 reports cost the reactor about 50 ms of
CPU each, and the last alert leaves after more than 10 s (bench/fleet.py); a single
worker that takes the events in batches decides them under one lock and posts them to
Alertmanager in one request, still once per change. What a post could not deliver stays
in the runner's outbox; the master's schedule (``kcm_alert.flush``, ``kcm_alert.reconcile``)
retries and reconciles.

Configuration (master config, written by ``kcm.master`` from pillar ``kcm:master:batch_wait``
and ``kcm:master:max_batch``, whose defaults are in ``formula/kcm/defaults.yaml``; the
engine keeps none and does not start without them):

.. code-block:: yaml

    engines:
      - kcm_alert:
          batch_wait: 0.2      # seconds the first event of a batch waits for others
          max_batch: 500       # events handled in one call at most
"""

import fnmatch
import logging
import time

import salt.utils.event

log = logging.getLogger(__name__)

__virtualname__ = "kcm_alert"

TAGS = ("salt/beacon/*/kcm_leader/*", "salt/beacon/*/kcm_cert/*")


def __virtual__():
    return __virtualname__


def _batches(next_event, batch_wait, max_batch, clock=time.monotonic):
    """
    Yield lists of (tag, data) of the kcm_leader and kcm_cert events from ``next_event(timeout)``
    (which returns one ``{"tag", "data"}`` event or None), each list closed
    ``batch_wait`` seconds after its first event or at ``max_batch`` events; pure.
    """
    pending, first = [], None
    while True:
        timeout = batch_wait if not pending else max(0.01, first + batch_wait - clock())
        event = next_event(timeout)
        if event and any(fnmatch.fnmatchcase(str(event.get("tag")), tag) for tag in TAGS):
            if not pending:
                first = clock()
            pending.append((event["tag"], event.get("data") or {}))
        if pending and (len(pending) >= max_batch or clock() - first >= batch_wait):
            yield pending
            pending = []


# A batch that raised is handed over again: the runner's dedupe store makes what was
# already decided a duplicate, so a retry cannot alert twice, and a passing fault (a full
# disk, a lock file being replaced) does not lose the batch.
ATTEMPTS = 3
RETRY_DELAY = 1.0


def _handle(batch, sleep=time.sleep):
    for attempt in range(1, ATTEMPTS + 1):
        try:
            __runners__["kcm_alert.handle_batch"](batch)
            return True
        except Exception:  # pylint: disable=broad-except
            # One broken batch must not stop the engine (Salt would restart it, losing more).
            log.exception(
                "kcm_alert engine: a batch of %s beacon events failed (attempt %s of %s)", len(batch), attempt, ATTEMPTS
            )
            if attempt < ATTEMPTS:
                sleep(RETRY_DELAY)
    log.error("kcm_alert engine: gave up on a batch of %s beacon events", len(batch))
    return False


def _warn_self_pick():
    """Log what lets a new minion pick a KCM master's id itself (``kcm_alert.masters``)."""
    try:
        for warning in __runners__["kcm_alert.masters"]()["warnings"]:
            log.warning("kcm_alert engine: %s", warning)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("kcm_alert engine: could not read kcm_alert:masters: %s", exc)
    return True


def start(batch_wait=None, max_batch=None):
    """
    Run the engine: batch the kcm_leader and kcm_cert beacon events and hand them to the runner.
    ``batch_wait`` and ``max_batch`` come from its entry in ``engines:`` (kcm.master writes
    both); without one it stops, naming it.

    CLI Example:

    .. code-block:: bash

        # master config; restart salt-master after salt-run saltutil.sync_engines
        engines:
          - kcm_alert: {batch_wait: 0.2, max_batch: 500}
    """
    for name, value in (("batch_wait", batch_wait), ("max_batch", max_batch)):
        if value is None:
            raise __utils__["kcm_error.missing_setting"](f"engines:kcm_alert:{name}", f"kcm:master:{name}")
    batch_wait, max_batch = float(batch_wait), int(max_batch)
    warned = False
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=True) as bus:

        def next_event(timeout):
            return bus.get_event(wait=timeout, tag="salt/beacon/", full=True)

        log.info(
            "kcm_alert engine: batching %s (batch_wait %s s, max_batch %s)", ", ".join(TAGS), batch_wait, max_batch
        )
        for batch in _batches(next_event, batch_wait, max_batch):
            # Once, at the first batch: the runners may be synced only after the master started.
            warned = warned or _warn_self_pick()
            _handle(batch)
