"""
Runner ``kcm``: the fleet view. One Salt master usually watches many KCM clusters of
three masters each; ``salt-run kcm.status`` asks every targeted master once and prints
one table, one row per master, grouped by cluster, with a line per cluster saying
whether it has exactly one live leader.

Each row is what ``kcm.status`` returns on that master (the same function as
``salt 'master*' kcm.status``, so the columns mean the same). Clusters are told apart by
name and ``cluster_id`` (the ``kube-system`` namespace UID, see ``kcm.cluster_id``): two
clusters that both kept ``kcm:cluster: kubernetes`` are two groups.

``--out=json`` / ``--out=yaml`` print the data instead of the table:
``{"clusters": [{cluster, cluster_id, masters, answered, live_leaders, leader, ok,
verdict}], "masters": [rows], "ok": bool, "retcode": 0 | 1}``.
"""

import logging

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


def __virtual__():
    return __virtualname__


def _ask(tgt, tgt_type, timeout):
    """One LocalClient call: {minion: its kcm.status return} for those that answered."""
    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        return client.cmd(tgt, "kcm.status", tgt_type=tgt_type, timeout=timeout) or {}


def _expected(tgt, tgt_type):
    """
    The minions the target names (accepted keys, and for a list the names without one),
    so a silent or unknown master is shown, not hidden.
    """
    found = salt.utils.minions.CkMinions(__opts__).check_minions(tgt, tgt_type, greedy=False)
    return sorted(set(found.get("minions") or []) | set(found.get("missing") or []))


def _row(minion, answer, timeout):
    """The kcm.status row of one master, or a row that says why there is none."""
    if isinstance(answer, list) and answer and isinstance(answer[0], dict):
        row = answer[0]
        return dict(row, minion=row.get("minion") or minion, cluster=row.get("cluster") or NO_CLUSTER)
    if answer is None:
        error = f"no answer within {timeout:g} s"
    else:
        # e.g. "'kcm.status' is not available." before saltutil.sync_modules
        error = str(answer).splitlines()[0][:200] if str(answer) else "empty answer"
    return {"minion": minion, "cluster": NO_ANSWER, "cluster_id": None, "leader": "unknown", "errors": error}


def _group_name(row):
    return row.get("cluster") or NO_CLUSTER


def _verdict(name, cluster_id, rows, leaders):
    if name == NO_CLUSTER:
        return f"{name}: kcm is not deployed on {len(rows)} of the targeted minions (not KCM masters)"
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
        # Minions without kcm (the target was wider than the masters) are listed, not failed.
        ok = name == NO_CLUSTER or (len(leaders) == 1 and name != NO_ANSWER)
        clusters.append({
            "cluster": name,
            "cluster_id": cluster_id or None,
            "masters": len(members),
            "answered": sum(1 for row in members if row.get("leader") != "unknown"),
            "live_leaders": len(leaders),
            "leader": leaders[0] if len(leaders) == 1 else None,
            "ok": ok,
            "verdict": _verdict(name, cluster_id, members, leaders),
        })
        masters.extend(members)
    ok = all(c["ok"] for c in clusters)
    # salt-run exits with data['retcode'] (salt/cli/run.py), so scripts can test the run
    return {"clusters": clusters, "masters": masters, "ok": ok, "retcode": 0 if ok else 1}


def status(tgt="*", tgt_type="glob", cluster=None, timeout=15):
    """
    Return the fleet view: every targeted master's ``kcm.status`` row, grouped by
    cluster, and per cluster whether it has exactly one live leader.

    Asks the masters once (one publish of ``kcm.status``) and waits at most ``timeout``
    seconds; a master that does not answer is listed with the reason. Exits non-zero
    when a cluster has no live leader or more than one, or a master did not answer.

    tgt
        The masters (default ``*``); with ``tgt_type`` (glob, list, grain, compound...).
    cluster
        Only this cluster: its ``kcm:cluster`` name or its ``cluster_id`` (a prefix does).
    timeout
        Seconds to wait for the masters' answers.

    CLI Example:

    .. code-block:: bash

        salt-run kcm.status
        salt-run kcm.status tgt='role:k8s-master' tgt_type=grain cluster=prod
        salt-run kcm.status --out=json
    """
    timeout = float(timeout)
    answers = _ask(tgt, tgt_type, timeout)
    minions = sorted(set(_expected(tgt, tgt_type)) | set(answers))
    rows = [_row(minion, answers.get(minion), timeout) for minion in minions]
    data = _summarize(rows, cluster=cluster)
    return {"outputter": OUTPUTTER, "data": data}
