"""
States for a kube-controller-manager cluster, built on the ``kcm`` execution module.

- ``kcm.leader_elected``: wait until a live leader holds the lock (orchestration steps
  that must not run while the cluster has no leader).

.. code-block:: yaml

    kcm-leader-elected:
      kcm.leader_elected:
        - name: kube-controller-manager
        - timeout: 60
"""

import logging
import time

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "kcm"


def __virtual__():
    if "kcm.leader" not in __salt__:
        return (False, "the kcm execution module is not available (run saltutil.sync_modules)")
    return __virtualname__


def _read_leader(query):
    """``kcm.leader``, or ``{"failed": <reason: detail>}`` when the lock cannot be read."""
    try:
        return __salt__["kcm.leader"](**query)
    except CommandExecutionError as exc:
        return {"failed": str(exc)}


def _live(record):
    return isinstance(record, dict) and "failed" not in record and record.get("holder") and not record.get("expired")


def _leader_summary(record):
    """One line on who holds the lock, for the state's comment."""
    if not isinstance(record, dict):
        return f"unexpected answer {record!r}"
    if "failed" in record:
        return f"no answer ({record['failed']})"
    if not record.get("holder"):
        return "no leader (the lock is released or empty)"
    if record.get("expired"):
        return f"{record['holder']} holds an expired lock (renewed {record.get('renew_time')})"
    return f"{record['holder']} leads (node {record.get('node')}, minion {record.get('minion')})"


def leader_elected(name, timeout=60, interval=1, **kwargs):
    """
    Wait until the KCM leader lock names a live holder (not released, not expired).

    name
        A label for the state output (e.g. ``kube-controller-manager``).
    timeout
        Seconds to wait before failing. Default 60.
    interval
        Seconds between reads. Default 1.
    kubeconfig, identity
        Passed to ``kcm.leader``.
    api_timeout
        Per-request timeout for ``kcm.leader`` (seconds; default 2).

    In test mode the lock is read once and reported; nothing waits.
    """
    ret = {"name": name, "changes": {}, "result": False, "comment": ""}
    query = {k: v for k, v in kwargs.items() if not k.startswith("__") and k != "api_timeout"}
    if kwargs.get("api_timeout") is not None:
        query["timeout"] = kwargs["api_timeout"]
    record = _read_leader(query)
    if __opts__.get("test"):
        ret["result"] = True if _live(record) else None
        ret["comment"] = _leader_summary(record) + ("" if _live(record) else f"; would wait up to {timeout} s")
        return ret
    deadline = time.monotonic() + float(timeout)
    while not _live(record) and time.monotonic() < deadline:
        time.sleep(max(0.05, min(float(interval), deadline - time.monotonic())))
        record = _read_leader(query)
    if _live(record):
        ret["result"] = True
        ret["comment"] = _leader_summary(record)
    else:
        ret["comment"] = f"no live KCM leader after {timeout} s: {_leader_summary(record)}"
    return ret
