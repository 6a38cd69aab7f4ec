"""
Runner ``kcm``: the fleet view. One Salt master usually watches many KCM clusters of
three masters each; ``salt-run kcm.status`` asks every targeted master once and prints
one table, one row per master, grouped by cluster, with a line per cluster saying
whether it has exactly one live leader.

Each row is what ``kcm.status`` returns on that master (the same function as
``salt 'master*' kcm.status``, so the columns mean the same), asked through
``kcm_beacon.answer``: signed by the minion for this very question, since the master bus
also carries job returns a minion fires in another's name. A row is keyed by the id of the
minion that signed it, never by what the row says; a row of a minion that is no KCM master
(``kcm_alert:masters``, by id) is shown as refused and never counts. Clusters are told apart by
name and ``cluster_id`` (the ``kube-system`` namespace UID, see ``kcm.cluster_id``): two
clusters that both kept ``kcm:cluster: kubernetes`` are two groups.

``--out=json`` / ``--out=yaml`` print the data instead of the table:
``{"clusters": [{cluster, cluster_id, masters, answered, live_leaders, leader, ok,
verdict}], "masters": [rows], "ok": bool, "retcode": 0 | 1}``.
"""

import logging
import os
import time
import uuid

import salt.client
import salt.utils.minions

log = logging.getLogger(__name__)

__virtualname__ = "kcm"

# The outputter that draws the table (``_output/kcm_fleet.py``, synced with
# ``salt-run saltutil.sync_output``); Salt falls back to ``nested`` without it.
OUTPUTTER = "kcm_fleet"
NO_ANSWER = "(no answer)"
# A master that answered but has no kcm deployed (or an unreadable deployed file).
NO_CLUSTER = "(no cluster)"
# A row this view does not believe: no KCM master by id, or not its signed answer.
REFUSED = "(refused)"


def __virtual__():
    return __virtualname__


def _ask(tgt, tgt_type, timeout, nonce):
    """One LocalClient call: {minion: its signed kcm_beacon.answer} for those that answered."""
    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        return client.cmd(tgt, "kcm_beacon.answer", [nonce], tgt_type=tgt_type, timeout=timeout) or {}


def _expected(tgt, tgt_type):
    """
    The minions the target names (accepted keys, and for a list the names without one),
    so a silent or unknown master is shown, not hidden.
    """
    found = salt.utils.minions.CkMinions(__opts__).check_minions(tgt, tgt_type, greedy=False)
    return sorted(set(found.get("minions") or []) | set(found.get("missing") or []))


def _refused_row(minion, why):
    return {"minion": minion, "cluster": REFUSED, "cluster_id": None, "leader": "refused", "errors": why}


def _row(minion, answer, timeout, trust, nonce, now):
    """The kcm.status row of one master, keyed by ``minion`` (who answered), or a row that
    says why there is none or why it is not believed."""
    key_path = os.path.join(trust.pki_dir, "minions", minion)
    if not os.path.isfile(key_path):
        # A name the target lists that has no accepted key: a master missing, not a refusal.
        return {
            "minion": minion,
            "cluster": NO_ANSWER,
            "cluster_id": None,
            "leader": "unknown",
            "errors": "no accepted key",
        }
    if answer is not None and not trust.is_master(minion):
        return _refused_row(minion, trust.why_not_master(minion))
    if isinstance(answer, dict):
        # The alert runner's window (kcm_alert:signature_window, written by kcm.master).
        cfg = __utils__["kcm_error.master_settings"](__opts__, "kcm_alert", "kcm:master")  # noqa: F821
        why = __utils__["kcm_trust.answer_problem"](
            key_path,
            minion,
            answer,
            nonce,
            now,  # noqa: F821
            cfg["signature_window"],
        )
        if why:
            return _refused_row(minion, why)
        answer = answer.get("status")
    if isinstance(answer, list) and answer and isinstance(answer[0], dict):
        row = answer[0]
        # The row's own "minion" is what it says; the answering minion is who it is.
        return dict(row, minion=minion, cluster=row.get("cluster") or NO_CLUSTER)
    if answer is None:
        error = f"no answer within {timeout:g} s"
    elif isinstance(answer, dict) and "error" in answer:
        error = str(answer["error"]).splitlines()[0][:200] if str(answer["error"]) else "error"
    else:
        # e.g. "'kcm_beacon.answer' is not available." before saltutil.sync_modules
        error = str(answer).splitlines()[0][:200] if str(answer) else "empty answer"
    return {"minion": minion, "cluster": NO_ANSWER, "cluster_id": None, "leader": "unknown", "errors": error}


def _group_name(row):
    return row.get("cluster") or NO_CLUSTER


def _verdict(name, cluster_id, rows, leaders):
    if name == NO_CLUSTER:
        return f"{name}: kcm is not deployed on {len(rows)} of the targeted minions (not KCM masters)"
    if name == REFUSED:
        return f"{name}: {len(rows)} answers not believed (no KCM master by id, or not its signed answer)"
    label = f"{name} ({cluster_id[:8]})" if cluster_id else name
    silent = sum(1 for row in rows if row.get("leader") == "unknown")
    unanswered = f"; {silent} of {len(rows)} masters could not say" if silent else ""
    if len(leaders) == 1:
        return f"{label}: ok, one live leader: {leaders[0]}{unanswered}"
    if not leaders:
        # Name the holder the masters read: an expired lease, or a leader whose own master
        # is among the silent ones (that row cannot say which cluster it belongs to).
        holders = sorted({str(row["holder"]).rsplit("_", 1)[0] for row in rows if row.get("holder")})
        named = f" (the Lease names {', '.join(holders)})" if holders else ""
        return f"{label}: NO LIVE LEADER{named}{unanswered}"
    return f"{label}: {len(leaders)} LIVE LEADERS ({', '.join(leaders)}){unanswered}"


def _summarize(rows, cluster=None):
    """
    Group status rows by cluster (name + cluster_id) and judge each group; pure.

    A group is ok when exactly one of its masters says it holds a live lease. ``cluster``
    keeps the groups whose name or cluster_id (or its first characters) is ``cluster``.
    """
    groups = {}
    for row in rows:
        groups.setdefault((_group_name(row), row.get("cluster_id") or ""), []).append(row)
    clusters, masters = [], []
    for (name, cluster_id), members in sorted(groups.items()):
        if cluster and cluster not in (name, cluster_id) and not (cluster_id and cluster_id.startswith(cluster)):
            continue
        members.sort(key=lambda row: str(row.get("minion")))
        leaders = [str(row.get("minion")) for row in members if row.get("leader") == "yes"]
        # Minions without kcm, and rows not believed, are listed, not failed (nor counted).
        ok = name in (NO_CLUSTER, REFUSED) or (len(leaders) == 1 and name != NO_ANSWER)
        clusters.append(
            {
                "cluster": name,
                "cluster_id": cluster_id or None,
                "masters": len(members),
                "answered": sum(1 for row in members if row.get("leader") != "unknown"),
                "live_leaders": len(leaders),
                "leader": leaders[0] if len(leaders) == 1 else None,
                "ok": ok,
                "verdict": _verdict(name, cluster_id, members, leaders),
            }
        )
        masters.extend(members)
    ok = all(c["ok"] for c in clusters)
    # salt-run exits with data['retcode'] (salt/cli/run.py), so scripts can test the run
    return {"clusters": clusters, "masters": masters, "ok": ok, "retcode": 0 if ok else 1}


def status(tgt=None, tgt_type="glob", cluster=None, timeout=15):
    """
    Return the fleet view: every targeted master's ``kcm.status`` row, grouped by
    cluster, and per cluster whether it has exactly one live leader.

    Asks the masters once (one publish of ``kcm_beacon.answer``, each answer signed by
    its minion) and waits at most ``timeout`` seconds; a master that does not answer is
    listed with the reason. Exits non-zero when a cluster has no live leader or more than
    one, or a master did not answer. A row of a minion that is no KCM master by id is shown
    as refused and never counted.

    tgt
        The minions to ask (default: the KCM masters, ``kcm_alert:masters`` over the
        accepted keys); with ``tgt_type`` (glob, list, ...).
    cluster
        Only this cluster: its ``kcm:cluster`` name or its ``cluster_id`` (a prefix does).
    timeout
        Seconds to wait for the masters' answers.

    CLI Example:

    .. code-block:: bash

        salt-run kcm.status
        salt-run kcm.status tgt='prod-master-*' cluster=prod
        salt-run kcm.status --out=json
    """
    timeout = float(timeout)
    trust = __utils__["kcm_trust.trust"](__opts__)  # noqa: F821
    if tgt is None:
        tgt, tgt_type = trust.accepted_masters(), "list"
    nonce = uuid.uuid4().hex
    answers = _ask(tgt, tgt_type, timeout, nonce) if tgt else {}
    now = time.time()
    minions = sorted(set(_expected(tgt, tgt_type) if tgt else []) | set(answers))
    rows = [_row(minion, answers.get(minion), timeout, trust, nonce, now) for minion in minions]
    data = _summarize(rows, cluster=cluster)
    if trust.problem:
        data.update(ok=False, retcode=1, problem=trust.problem)
    return {"outputter": OUTPUTTER, "data": data}
