"""
Release the leader Lease when this master's KCM has exited (``kcm:leader_election:release_on_exit``).

KCM does not give its Lease back when it exits (kubernetes/kubernetes#132599), so every
stop, restart or crash of the leader leaves the cluster without controllers for a lease
duration plus a retry period. The formula lays down ``kcm-release-lease`` (a stdlib
program, ``formula/kcm/files/kcm-release-lease.py``) and runs it from the unit as
``ExecStopPost=-``: after KCM's process is gone it releases the Lease, client-go style and
conditional on ``resourceVersion``, if this host held it.

This module decides the command, once, for the unit (:func:`exec_line`) and for the
orchestrations' ``control_cmd`` path without systemd (:func:`run`).

Only Lease locks are released: releases before v1.20 lock on Endpoints (v1.14-v1.16) or
on Endpoints and a Lease together (v1.17-v1.19, where a released Lease alone would read as
an unknown holder and delay the takeover), so for them, and for a ``configmaps*`` lock, no
release step is rendered and failover stays what KCM does by itself.
"""

import logging
import sys

log = logging.getLogger(__name__)

__virtualname__ = "kcm_release"

DEFAULT_NAMESPACE = "kube-system"
DEFAULT_NAME = "kube-controller-manager"
# What the release step may take, connect included; a stop never waits longer on it.
BUDGET = 2.0


def __virtual__():
    return __virtualname__


def lock(config):
    """
    Return the leader-election lock KCM uses with ``config``: ``{"kind", "namespace",
    "name"}`` (``kind`` as ``--leader-elect-resource-lock`` spells it), or ``None`` when
    leader election is off. The one answer to "which lock": the release hook and
    ``kcm.leader`` both ask it. Without a version (KCM not deployed), KCM's default lock
    with ``kind`` None (a Lease, or the Endpoints of v1.14-v1.16).

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_release.lock "$(salt-call --out=json kcm_config.deployed)"
    """
    # Only the version and extra_args decide the lock (the formula renders --leader-elect=true
    # and no --leader-elect-resource-*), so facts without the rest still answer.
    flags = {str(name).lstrip("-"): value for name, value in ((config or {}).get("extra_args") or {}).items()}
    if str(flags.get("leader-elect")).lower() in ("false", "0"):
        return None
    version = (config or {}).get("version")
    ver = __salt__["kcm_flags.minor"](version) if version else None  # noqa: F821
    default = None if ver is None else "endpoints" if ver < 17 else "endpointsleases" if ver < 20 else "leases"
    kind = flags.get("leader-elect-resource-lock") or default
    return {
        "kind": str(kind) if kind else None,
        "namespace": str(flags.get("leader-elect-resource-namespace") or DEFAULT_NAMESPACE),
        "name": str(flags.get("leader-elect-resource-name") or DEFAULT_NAME),
    }


def _command(config, python=None):
    """
    The argv of the release step for a resolved ``config``, or ``[]`` when there is none:
    ``release_on_exit`` false, leader election off, or a lock other than a Lease. The
    interpreter is the one running this salt-minion (grain ``pythonexecutable``: the
    onedir's Python on a onedir install), run isolated (``-I``).
    """
    if not (config.get("leader_election") or {}).get("release_on_exit", True):
        return []
    target = lock(config)
    if target is None or target["kind"] != "leases":
        return []
    python = python or __grains__.get("pythonexecutable") or sys.executable  # noqa: F821
    argv = [
        python,
        "-I",
        config["files"]["release_program"],
        "--kubeconfig",
        config["files"]["kubeconfig"],
        "--namespace",
        target["namespace"],
        "--name",
        target["name"],
        "--budget",
        f"{BUDGET:g}",
    ]
    if config.get("identity"):
        argv += ["--identity", str(config["identity"])]
    return argv


def exec_line(config, python=None):
    """
    Return the release step's argv as the text of a systemd ``ExecStopPost=`` (quoted for systemd),
    or ``''`` when there is no release step.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_release.exec_line "$(salt-call --out=json kcm_config.deployed)"
    """
    argv = _command(config, python=python)
    # The one systemd escaping of the formula (kcm_systemd), as for ExecStart=.
    return __utils__["kcm_systemd.command_line"](argv, continuation=False) if argv else ""  # noqa: F821


def run(config=None):
    """
    Run the release step now, as the unit's ``ExecStopPost=`` would: for the
    orchestrations' planned stops through ``kcm:service:control_cmd`` (no systemd to run
    the hook). Uses the deployed config unless ``config`` is given. Never fails: returns
    ``{"result": True, "released": bool, "comment": <the program's line>}``.

    CLI Example:

    .. code-block:: bash

        salt 'master1' kcm_release.run
    """
    config = config or __salt__["kcm_config.deployed"]() or {}  # noqa: F821
    try:
        argv = _command(config) if config else []
    except (KeyError, TypeError, ValueError) as exc:
        return {"result": True, "released": False, "comment": f"no release step: cannot read the config ({exc})"}
    if not argv:
        return {
            "result": True,
            "released": False,
            "comment": "no release step (release_on_exit off, or a lock other than a Lease)",
        }
    proc = __salt__["cmd.run_all"](  # noqa: F821
        argv, python_shell=False, timeout=BUDGET + 3, ignore_retcode=True, output_loglevel="quiet"
    )
    line = (proc.get("stdout") or proc.get("stderr") or "").strip().splitlines()
    comment = line[-1] if line else f"the release step printed nothing (exit {proc.get('retcode')})"
    return {"result": True, "released": comment.startswith("kcm-release-lease: released"), "comment": comment}
