"""
The KCM of this master, as a file and as a process: the version its binary reports, the
flags the formula renders for it, whether it accepts them (the preflight), and what its
``/healthz`` says.

This file is part of the ``kcm`` execution module (``__virtualname__`` ``kcm``: Salt's
loader puts the functions of every file with that name under ``kcm.``), so these are
``kcm.version``, ``kcm.args``, ``kcm.preflight`` and ``kcm.health``; ``_modules/kcm.py``
answers the questions about the leader lock. The install state calls ``kcm.version`` too,
and the unit state ``kcm.preflight``: what the binary prints is read one way (``_said``).
Defaults come from the deployed facts (``kcm_config.deployed``).

Errors raise ``CommandExecutionError`` with ``info={"reason": ...}`` (``not_deployed``,
``binary``, ``malformed``, and the ``kcm_api`` reasons; ``_utils/kcm_error.py``). Two answers
are verdicts, returned with exit code 1: a binary that refuses the flags
(``{"ok": False, ...}`` from :func:`preflight`) and an unhealthy KCM (:func:`health`).
"""

import logging
import re
import subprocess

log = logging.getLogger(__name__)

__virtualname__ = "kcm"

TIMEOUT = 30
# `kube-controller-manager --version` prints `Kubernetes v1.37.2` (Go's -ldflags version).
_VERSION = re.compile(r"\bKubernetes (v\d+\.\d+\.\d+[\w.+-]*)")


def __virtual__():
    return __virtualname__


def _failure(reason, detail):
    return __utils__["kcm_error.failure"](reason, detail)  # noqa: F821


def _deployed():
    return __salt__["kcm_config.deployed"]() or {}


def _runas(runas, config=None):
    # The binary runs as the KCM user: its files are root's, but root still never executes
    # what it did not verify, and this one serves kcm.status every reconcile.
    return runas or (config or _deployed()).get("user") or "root"


def _run(argv, runas):
    try:
        return __utils__["kcm_systemd.run_as"](argv, runas, TIMEOUT)  # noqa: F821
    except KeyError:
        raise _failure("binary", f"cannot run {argv[0]} as {runas}: no such user") from None
    except FileNotFoundError:
        raise _failure("binary", f"{argv[0]} does not exist") from None
    except PermissionError:
        raise _failure("binary", f"{argv[0]} is not executable") from None
    except subprocess.TimeoutExpired:
        raise _failure("binary", f"{argv[0]} did not finish within {TIMEOUT} s") from None
    except OSError as exc:
        raise _failure("binary", f"{argv[0]} cannot run ({exc.strerror})") from None


def _said(proc):
    """``(version, None)`` when the run succeeded and printed a version (``v1.37.2``), else
    ``(None, complaint)``: the binary's own words. Cobra prints the whole usage text
    (hundreds of lines) around ``Error: ...``, so the complaint is its distinct ``Error:``
    lines or, without any, its last lines."""
    match = _VERSION.search(f"{proc.stdout or ''}\n{proc.stderr or ''}")
    if proc.returncode == 0 and match:
        return match.group(1), None
    lines = [line.strip() for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
    errors = list(dict.fromkeys(line for line in lines if line.lower().startswith("error:")))
    return None, "\n".join(errors or lines[-5:])[:1000] or f"exited {proc.returncode} without a message"


def version(binary=None, runas=None):
    """
    Return the version the KCM binary reports for ``--version``, e.g. ``v1.37.2``, run as
    the KCM user.

    binary
        Default: the deployed ``files.binary``.
    runas
        Default: the deployed ``user`` (root when nothing is deployed).

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.version
        salt 'master1' kcm.version /data/apps/k8s/kubernetes/versions/v1.37.2/kube-controller-manager
    """
    binary = binary or (_deployed().get("files") or {}).get("binary")
    if not binary:
        raise _failure(
            "not_deployed", "no binary= given and kcm is not deployed on this minion (run state.apply kcm first)"
        )
    found, complaint = _said(_run([binary, "--version"], _runas(runas)))
    if not found:
        raise _failure("binary", f"{binary} --version: {complaint}")
    return found


def _config(config):
    config = config or _deployed()
    if not config:
        raise _failure("not_deployed", "no config= given and kcm is not deployed on this minion")
    return config


def _flags(function, config):
    """``kcm_flags.<function>`` of ``config``: ``render`` (the flags) or ``exec_start`` (the unit's line)."""
    try:
        return __salt__[f"kcm_flags.{function}"](config)
    except KeyError as exc:
        raise _failure("malformed", f"config has no key {exc} (expected a resolved kcm config)") from None


def args(config=None):
    """
    Return the flags the formula renders for KCM (``--name=value``, sorted): the same
    list the unit's ``ExecStart=`` carries, from the same function.

    config
        A resolved config (as in ``kcm_config.deployed``). Default: the deployed one.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.args
    """
    return _flags("render", _config(config))


def preflight(binary=None, config=None, unit=None):
    """
    Run ``binary`` as the config's KCM user with the flags of the unit plus ``--version`` and report
    whether it accepts them: ``{"ok": True, "version": "v1.37.2", "binary": ...}`` or
    ``{"ok": False, "error": <the binary's own message>, "binary": ...}`` (non-zero exit).

    KCM parses every flag before it handles ``--version``, so a flag the release does
    not know is refused here without starting anything. The argv is the one systemd
    builds from the unit's ``ExecStart=`` line (``kcm_systemd.parse_exec_start``: quoting,
    ``%%``, ``$$``), with ``binary`` in the place of the command, so a value that only
    breaks after systemd's splitting is refused here too. This is the formula's one
    preflight: the ``kcm_service.unit`` state asks it before it writes the unit, and
    ``kcm_orch.preflight`` asks that state.

    binary
        Default: the config's ``files.binary``.
    config
        A resolved config. Default: the deployed one.
    unit
        The text of the unit to check (``kcm_service.unit`` passes the one it is about to
        write); its ``ExecStart=`` must run the config's ``files.binary`` (the active
        link). Default: the ``ExecStart=`` the formula renders (``kcm_flags.exec_start``).

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.preflight
        salt 'master1' kcm.preflight binary=/data/apps/k8s/kubernetes/versions/v1.37.2/kube-controller-manager
    """
    config = _config(config)
    active = (config.get("files") or {}).get("binary")
    binary = binary or active
    if not binary:
        raise _failure("not_deployed", "no binary= given and the config has no files.binary")
    try:
        # The formula's line is read as the unit file carries it (continuations included).
        text = unit or f"[Service]\nExecStart={_flags('exec_start', config)}\n"
        argv = __utils__["kcm_systemd.parse_exec_start"](text)  # noqa: F821
    except ValueError as exc:
        raise _failure("malformed", f"the ExecStart= line is not what systemd would run: {exc}") from None
    if argv[0] != active:
        raise _failure("malformed", f"the unit's ExecStart= runs {argv[0]}, not {active}")
    found, complaint = _said(_run([binary, *argv[1:], "--version"], _runas(None, config)))
    if found:
        return {"ok": True, "version": found, "binary": binary}
    __context__["retcode"] = 1
    return {"ok": False, "error": complaint, "binary": binary}


def _probe_host(bind_address):
    # A wildcard bind answers on loopback, and the serving cert names 127.0.0.1.
    if bind_address in (None, "", "0.0.0.0"):
        return "127.0.0.1"
    if bind_address == "::":
        return "[::1]"
    return f"[{bind_address}]" if ":" in bind_address else bind_address


def health(secure_port=None, bind_address=None, ca_cert=None, timeout=None, **_):
    """
    Return the local KCM's ``/healthz?verbose``, parsed per check:
    ``{"healthy": bool, "status": <HTTP status>, "checks": {"leaderElection": "ok", ...}, "url": ...}``.

    The secure port's certificate is verified against the deployed CA. An unhealthy KCM
    is an answer, not an error: the data comes back and the call exits non-zero; a KCM
    that cannot be asked raises. Note: only the current leader can fail
    ``leaderElection``; a healthy standby says nothing about who leads.

    bind_address, secure_port, ca_cert
        Default: the deployed ``bind_address`` (``0.0.0.0`` probes 127.0.0.1),
        ``secure_port`` and ``files.ca_cert``.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.health
    """
    deployed = _deployed()
    port = secure_port or deployed.get("secure_port")
    ca_cert = ca_cert or (deployed.get("files") or {}).get("ca_cert")
    if not port or not ca_cert:
        missing = "secure_port" if not port else "ca_cert"
        raise _failure("not_deployed", f"no {missing}= given and kcm is not deployed on this minion")
    url = f"https://{_probe_host(bind_address or deployed.get('bind_address'))}:{int(port)}/healthz?verbose"
    reply = __salt__["kcm_api.probe"](url, ca_cert, timeout=timeout)
    result = dict(__utils__["kcm_lease.parse_healthz"](reply["status"], reply["body"]), url=url)  # noqa: F821
    if not result["healthy"]:
        __context__["retcode"] = 1
    return result
