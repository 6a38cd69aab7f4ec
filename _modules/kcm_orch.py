"""
The minion's half of the leader-aware orchestrations (``orch.kcm.upgrade``,
``orch.kcm.drill``; the master's half is the ``kcm_orch`` runner): check a change before
it touches anything, apply it, and restart, stop or start this master's KCM.

Restarts go through one seam, :func:`restart` / :func:`stop` / :func:`start`:

- ``kcm:service:manage`` true (production): Salt's ``service.*`` functions (systemd);
  the unit's ``ExecStopPost=`` releases the leader Lease after every stop;
- ``kcm:service:manage`` false: the command in ``kcm:service:control_cmd``, run without
  a shell with the action (``restart``, ``stop`` or ``start``) appended, for masters
  whose KCM is supervised by something other than Salt (the test harness, a container
  supervisor). As nothing runs the unit's ``ExecStopPost=`` there, a stop is followed
  by the same release step (``kcm_release.run``), and a restart is a stop, the release
  and a start. Without either, a restart that is needed is reported as an error, never
  skipped silently.

Both keys are read from the deployed facts (``kcm_config.deployed``: what the last
``state.apply kcm`` laid down) and, before the first apply, from pillar
(``kcm_config.setting``).

What a change restarts is decided by the formula's SLS, not here: ``kcm.service.running``
watches what KCM runs, through ``service.running`` or, for ``control_cmd``,
``kcm_service.restarted`` (whose ``mod_watch`` calls :func:`restart`). :func:`apply` runs
the SLS and reads which of them acted; :func:`preflight` runs the SLS's own check
(``kcm-service-unit-accepted``) with its requisites, which install the new release beside
the active one.
"""

import logging
import shlex

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "kcm_orch"

SLS = "kcm"
# The states of kcm.service.running that restart KCM (systemd, control_cmd), and the check
# of kcm.service.unit that the preflight runs.
SERVICE_ID = "kcm-service-running"
RESTARTED_ID = "kcm-service-restarted"
ACCEPTED_ID = "kcm-service-unit-accepted"
VALIDATE_ID = "kcm-config-validated"
UNCONTROLLED = (
    "kcm:service:manage is false and kcm:service:control_cmd is empty"
    " (expected a command that takes restart|stop|start as its last argument)"
)
CONTROL_TIMEOUT = 120


def __virtual__():
    return __virtualname__


def _with_exit_code(result):
    """
    Return ``result`` with the call's exit code set from ``result['result']``: the one
    decision of each function here, whatever the Salt functions it called (``state.*``,
    ``cmd.run_all``, ``service.*``) left in ``__context__`` on the way.
    """
    __context__["retcode"] = 0 if result.get("result") else 1
    return result


def _deployed():
    return __salt__["kcm_config.deployed"]() or {}


def _service_settings():
    """``(manage, name, control_cmd)`` in effect on this master: deployed, else pillar."""
    setting = __salt__["kcm_config.setting"]
    return (
        bool(setting("service:manage", True)),
        str(setting("service:name", "kube-controller-manager")),
        str(setting("service:control_cmd", "")),
    )


def _control(action):
    """Run ``action`` through systemd or ``kcm:service:control_cmd``."""
    manage, name, command = _service_settings()
    if manage:
        ok = bool(__salt__[f"service.{action}"](name))
        return {
            "result": ok,
            "how": "service",
            "comment": f"service.{action} {name}: {'done' if ok else 'failed'}",
        }
    if not command:
        return {
            "result": False,
            "how": None,
            "comment": f"cannot {action} KCM: {UNCONTROLLED}",
        }
    if action == "start":
        return _run_control(command, action)
    # Without systemd nothing runs the unit's ExecStopPost=: release the Lease here, after
    # the stop (a restart is a stop, the release, then a start).
    stopped = _run_control(command, "stop")
    if not stopped["result"]:
        return stopped
    released = __salt__["kcm_release.run"]()
    stopped["released"] = released["released"]
    stopped["comment"] += f"; {released['comment']}"
    if action == "stop":
        return stopped
    started = _run_control(command, "start")
    started["released"] = stopped["released"]
    started["comment"] = f"{stopped['comment']}; {started['comment']}"
    return started


def _run_control(command, action):
    argv = shlex.split(command) + [action]
    proc = __salt__["cmd.run_all"](argv, python_shell=False, timeout=CONTROL_TIMEOUT, ignore_retcode=True)
    ok = proc.get("retcode") == 0
    detail = (proc.get("stderr") or proc.get("stdout") or "").strip().splitlines()
    return {
        "result": ok,
        "how": "control_cmd",
        "comment": f"kcm:service:control_cmd {action}: "
        + ("done" if ok else f"exit {proc.get('retcode')}: {' '.join(detail[-3:])[:500]}"),
    }


def restart():
    """
    Restart this master's KCM: ``service.restart`` when ``kcm:service:manage`` is true,
    otherwise ``<kcm:service:control_cmd> restart``. Returns ``{result, how, comment}``.

    The SLS calls it too: ``kcm_service.restarted``'s ``mod_watch``, when something the
    service watches changed and Salt does not manage the unit.

    CLI Example:

    .. code-block:: bash

        salt 'master1' kcm_orch.restart
    """
    return _with_exit_code(_control("restart"))


def stop():
    """
    Stop this master's KCM (``service.stop`` or ``<kcm:service:control_cmd> stop``).
    Used by the failover drill. Returns ``{result, how, comment}``.

    CLI Example:

    .. code-block:: bash

        salt 'master1' kcm_orch.stop
        salt -L 'master1,master2' kcm_orch.stop    # two of three: the survivor must lead
    """
    return _with_exit_code(_control("stop"))


def start():
    """
    Start this master's KCM (``service.start`` or ``<kcm:service:control_cmd> start``).
    Returns ``{result, how, comment}``. The drill's last step, on the KCMs it stopped;
    starting a running KCM changes nothing.

    CLI Example:

    .. code-block:: bash

        salt 'master1' kcm_orch.start
    """
    return _with_exit_code(_control("start"))


# ---------------------------------------------------------------------------------------
# preflight: what the change would run, checked before anything that runs changes


def _state_kwargs(pillar, saltenv):
    kwargs = {}
    if pillar:
        kwargs["pillar"] = pillar
    if saltenv:
        kwargs["saltenv"] = saltenv
    return kwargs


def _failures(ret):
    """'<id>: <comment>' for each state that did not succeed; the error list itself otherwise."""
    if isinstance(ret, list):
        return [str(line) for line in ret] or ["the state run returned nothing"]
    if not isinstance(ret, dict) or not ret:
        return [f"the state run returned {ret!r}"[:500]]
    return [
        f"{(st or {}).get('__id__', sid)}: {(st or {}).get('comment')}"
        for sid, st in ret.items()
        if not isinstance(st, dict) or st.get("result") is False
    ]


def _chunk(ret, state_id):
    """The result of ``state_id`` in a state run, or ``{}``."""
    return next((st for st in ret.values() if isinstance(st, dict) and st.get("__id__") == state_id), {})


def preflight(pillar=None, saltenv=None):
    """
    Check a change on this master before anything that runs is touched: the formula's own
    check of the unit (``kcm-service-unit-accepted``) with its requisites, which download
    and verify the release the (current or given) pillar asks for and install it beside the
    active one (``versions/<version>/``); the new binary then runs the ``ExecStart=`` of the
    unit the change would lay down, plus ``--version``. The active symlink, the unit, the
    deployed facts and the running KCM stay as they are.

    Returns ``{"result": True, "version": ..., "binary": ..., "deployed_version": ...}`` or
    ``{"result": False, "comment": <why; for a rejected flag the binary's own message>}``
    (non-zero exit).

    pillar
        Pillar override, as for ``state.apply`` (e.g. ``{"kcm": {"version": "v1.37.3"}}``).
    saltenv
        Salt fileserver environment (default: the minion's).

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm_orch.preflight
        salt 'master*' kcm_orch.preflight pillar='{"kcm": {"version": "v1.37.3"}}'
    """
    kwargs = _state_kwargs(pillar, saltenv)
    ret = __salt__["state.sls_id"](ACCEPTED_ID, SLS, **kwargs)
    if not isinstance(ret, dict):
        # kcm.service leaves its check out when the config is invalid: the validation says why.
        checked = __salt__["state.sls_id"](VALIDATE_ID, SLS, **kwargs)
        why = _failures(checked) if isinstance(checked, dict) else []
        comment = "invalid pillar: " + "; ".join(why) if why else f"{SLS} does not render: " + "; ".join(_failures(ret))
        return _with_exit_code({"result": False, "comment": comment})
    failed = _failures(ret)
    if failed:
        return _with_exit_code({"result": False, "comment": "; ".join(failed)[:2000]})
    binary = _chunk(ret, ACCEPTED_ID).get("name")
    try:
        version = __salt__["kcm.version"](binary=binary)
    except CommandExecutionError as exc:
        return _with_exit_code({"result": False, "binary": binary, "comment": f"{binary} --version: {exc}"})
    return _with_exit_code(
        {
            "result": True,
            "version": version,
            "binary": binary,
            "deployed_version": _deployed().get("version"),
            "comment": _chunk(ret, ACCEPTED_ID).get("comment") or f"{binary} ({version}) is ready",
        }
    )


# ---------------------------------------------------------------------------------------
# apply: the formula, whose service states restart KCM


def _changed_ids(ret):
    return sorted(st.get("__id__", sid) for sid, st in ret.items() if isinstance(st, dict) and st.get("changes"))


def apply(pillar=None, saltenv=None):  # pylint: disable=redefined-builtin
    """
    Run ``state.apply kcm``, whose watch of what KCM runs restarts it: ``service.running``
    with ``kcm:service:manage`` true, ``kcm_service.restarted`` (:func:`restart`, through
    ``kcm:service:control_cmd``) otherwise. A restart that was needed but that nothing could
    do (neither of the two) is an error.

    Returns ``{"result", "restarted", "how", "changed": [state ids], "comment"}``; on a
    failed state, ``failed`` lists ``<id>: <comment>`` (non-zero exit).

    pillar, saltenv
        As for :func:`preflight`: the pillar override and the fileserver environment.

    CLI Example:

    .. code-block:: bash

        salt 'master1' kcm_orch.apply
        salt 'master1' kcm_orch.apply pillar='{"kcm": {"version": "v1.37.3"}}'
    """
    ret = __salt__["state.apply"](SLS, **_state_kwargs(pillar, saltenv))
    failed = _failures(ret)
    if failed:
        return _with_exit_code(
            {
                "result": False,
                "restarted": False,
                "how": None,
                "changed": [],
                "failed": failed,
                "comment": f"state.apply {SLS} failed: " + "; ".join(failed)[:2000],
            }
        )
    changed = _changed_ids(ret)
    manage, _, _ = _service_settings()
    if manage:
        restarted = SERVICE_ID in changed
        comment = "applied" + (" and restarted by service.running" if restarted else "")
        return _with_exit_code(
            {
                "result": True,
                "restarted": restarted,
                "how": "service" if restarted else None,
                "changed": changed,
                "comment": comment,
            }
        )
    restart = _chunk(ret, RESTARTED_ID)
    if not restart.get("changes"):
        return _with_exit_code(
            {
                "result": True,
                "restarted": False,
                "how": None,
                "changed": changed,
                "comment": "applied; nothing the service watches changed",
            }
        )
    if restart["changes"].get("restart") == "needed":
        return _with_exit_code(
            {
                "result": False,
                "restarted": False,
                "how": None,
                "changed": changed,
                "comment": f"applied; cannot restart KCM: {UNCONTROLLED}",
            }
        )
    return _with_exit_code(
        {
            "result": True,
            "restarted": True,
            "how": "control_cmd",
            "changed": changed,
            "comment": "applied; " + str(restart.get("comment")),
        }
    )
