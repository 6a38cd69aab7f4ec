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
``state.apply kcm`` laid down) and, before the first apply, from pillar.
"""

import logging
import shlex

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "kcm_orch"

SLS = "kcm"
ACTIONS = ("restart", "stop", "start")
# State IDs whose changes make the running KCM stale: the same list service.sls watches.
RESTART_IDS = ("kcm-service-unit", "kcm-install-active-link", "kcm-kubeconfig-file")
RESTART_SLS = ("kcm.pki",)
SERVICE_ID = "kcm-service-running"
PREFLIGHT_ID = "kcm-service-preflight"
VALIDATE_ID = "kcm-config-validated"
INSTALL_ID = "kcm-install-binary"
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
    """``(manage, name, control_cmd)``: deployed facts first, then pillar, then defaults."""
    pillar_service = ((__pillar__.get("kcm") or {}).get("service") or {}) if isinstance(
        __pillar__.get("kcm"), dict
    ) else {}
    deployed_service = _deployed().get("service") or {}

    def setting(key, default):
        for source in (deployed_service, pillar_service):
            if key in source and source[key] not in (None, ""):
                return source[key]
        return default

    return (
        bool(setting("manage", True)),
        str(setting("name", "kube-controller-manager")),
        str(setting("control_cmd", "")),
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
            "comment": (
                f"cannot {action} KCM: kcm:service:manage is false and kcm:service:control_cmd is empty"
                " (expected a command that takes restart|stop|start as its last argument)"
            ),
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
    """
    return _with_exit_code(_control("stop"))


def start():
    """
    Start this master's KCM (``service.start`` or ``<kcm:service:control_cmd> start``).
    Returns ``{result, how, comment}``.

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


def _state_arg(high, state_id, key):
    """One argument of a state in ``state.show_sls`` high data, or None."""
    body = high.get(state_id) if isinstance(high, dict) else None
    if not isinstance(body, dict):
        return None
    for module, args in body.items():
        if module.startswith("__") or not isinstance(args, list):
            continue
        for arg in args:
            if isinstance(arg, dict) and key in arg:
                return arg[key]
    return None


def _flags(config):
    try:
        return __salt__["kcm_flags.render"](config)
    except (KeyError, TypeError, ValueError):
        return None


def preflight(pillar=None, saltenv=None):
    """
    Check a change on this master before anything that runs is touched: download and
    verify the release the (current or given) pillar asks for, install it beside the
    active one (``versions/<version>/``), and run it with the flags the formula renders
    for the new config plus ``--version`` (``kcm.preflight``). The active symlink, the
    unit, the deployed facts and the running KCM stay as they are.

    Returns ``{"result": True, "version": ..., "binary": ..., "deployed_version": ...,
    "flags_changed": bool}`` or ``{"result": False, "comment": <why; for a rejected
    flag the binary's own message>}`` (non-zero exit).

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
    high = __salt__["state.show_sls"](f"{SLS}.service", **kwargs)
    if not isinstance(high, dict):
        failures = "; ".join(_failures(high))
        return _with_exit_code({"result": False, "comment": f"kcm.service does not render: {failures}"})
    config = _state_arg(high, PREFLIGHT_ID, "config")
    binary = _state_arg(high, PREFLIGHT_ID, "name")
    if not config or not binary:
        # service.sls leaves the preflight out when the config is invalid: say why.
        full = _state_arg(high, VALIDATE_ID, "config") or {}
        problems = __salt__["kcm_config.validate"](full) if full else ["kcm: the pillar has no kcm config"]
        return _with_exit_code({"result": False, "comment": "invalid pillar: " + "; ".join(problems)})
    installed = __salt__["state.sls_id"](INSTALL_ID, f"{SLS}.install", **kwargs)
    failed = _failures(installed)
    if failed:
        failures = "; ".join(failed)
        return _with_exit_code({"result": False, "comment": f"installing {config.get('version')} failed: {failures}"})
    try:
        report = __salt__["kcm.preflight"](binary=binary, config=config)
    except CommandExecutionError as exc:
        return _with_exit_code({"result": False, "binary": binary, "comment": f"cannot check {binary}: {exc}"})
    if not report.get("ok"):
        return _with_exit_code(
            {"result": False, "binary": binary, "comment": f"{binary} refuses the new flags: {report.get('error')}"}
        )
    deployed = _deployed()
    return _with_exit_code(
        {
            "result": True,
            "version": report.get("version"),
            "binary": binary,
            "deployed_version": deployed.get("version"),
            "flags_changed": _flags(config) != (_flags(deployed) if deployed else None),
            "comment": f"{binary} ({report.get('version')}) accepts the new flags",
        }
    )


# ---------------------------------------------------------------------------------------
# apply: the formula, then the restart its service state would do


def _changed_ids(ret):
    return sorted(
        st.get("__id__", sid)
        for sid, st in ret.items()
        if isinstance(st, dict) and st.get("changes")
    )


def _needs_restart(ret):
    return any(
        isinstance(st, dict)
        and st.get("changes")
        and (st.get("__id__") in RESTART_IDS or st.get("__sls__") in RESTART_SLS)
        for st in ret.values()
    )


def apply(pillar=None, saltenv=None):  # pylint: disable=redefined-builtin
    """
    Run ``state.apply kcm`` and make sure the running KCM matches it: with
    ``kcm:service:manage`` true the formula's ``service.running`` restarts it (watch);
    otherwise, when a state the service watches changed, :func:`restart` runs
    ``kcm:service:control_cmd``.

    Returns ``{"result", "restarted", "how", "changed": [state ids], "comment"}``; on a
    failed state, ``failed`` lists ``<id>: <comment>`` (non-zero exit).

    pillar
        Pillar override, as for ``state.apply``.
    saltenv
        Salt fileserver environment (default: the minion's).

    CLI Example:

    .. code-block:: bash

        salt 'master1' kcm_orch.apply
        salt 'master1' kcm_orch.apply pillar='{"kcm": {"version": "v1.37.3"}}'
    """
    ret = __salt__["state.apply"](SLS, **_state_kwargs(pillar, saltenv))
    failed = _failures(ret)
    if failed:
        return _with_exit_code({"result": False, "restarted": False, "how": None, "changed": [], "failed": failed,
                      "comment": f"state.apply {SLS} failed: " + "; ".join(failed)[:2000]})
    changed = _changed_ids(ret)
    manage, _, _ = _service_settings()
    if manage:
        restarted = SERVICE_ID in changed
        comment = "applied" + (" and restarted by service.running" if restarted else "")
        return _with_exit_code({"result": True, "restarted": restarted, "how": "service" if restarted else None,
                      "changed": changed, "comment": comment})
    if not _needs_restart(ret):
        return _with_exit_code({"result": True, "restarted": False, "how": None, "changed": changed,
                      "comment": "applied; nothing the service watches changed"})
    control = _control("restart")
    return _with_exit_code({"result": control["result"], "restarted": control["result"], "how": control["how"],
                  "changed": changed, "comment": "applied; " + control["comment"]})
