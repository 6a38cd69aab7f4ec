"""
The KCM of this master, as a file and as a process: the version its binary reports, the
flags the formula renders for it, whether it accepts them (the preflight), and what its
``/healthz`` says.

This file is part of the ``kcm`` execution module (``__virtualname__`` ``kcm``: Salt's
loader puts the functions of every file with that name under ``kcm.``), so these are
``kcm.version``, ``kcm.args``, ``kcm.preflight`` and ``kcm.health``; ``_modules/kcm.py``
answers the questions about the leader lock. The install state calls ``kcm.version`` too;
what the binary prints is read by ``_utils/kcm_binary.py``, as the unit state reads it.
Defaults come from the deployed facts (``kcm_config.deployed``).

Errors raise ``CommandExecutionError`` with ``info={"reason": ...}`` (``not_deployed``,
``binary``, ``malformed``, and the ``kcm_api`` reasons; ``_utils/kcm_error.py``). Two answers
are verdicts, returned with exit code 1: a binary that refuses the flags
(``{"ok": False, ...}`` from :func:`preflight`) and an unhealthy KCM (:func:`health`).
"""

import logging
import subprocess

log = logging.getLogger(__name__)

__virtualname__ = "kcm"

TIMEOUT = 30


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
    return __utils__["kcm_binary.version_or_complaint"](proc.returncode, proc.stdout, proc.stderr)  # noqa: F821


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


def _render(config):
    try:
        return __salt__["kcm_flags.render"](config)
    except KeyError as exc:
        raise _failure("malformed", f"config has no key {exc} (expected a resolved kcm config)") from None


def _systemd_argv(config, binary):
    """The argv systemd builds from the unit's ExecStart= line, with ``binary`` as argv[0]."""
    _render(config)
    try:
        line = __salt__["kcm_flags.exec_start"](config, binary=binary)
        # Read as the unit file carries it (continuations included), not as a pre-split list.
        return __utils__["kcm_systemd.parse_exec_start"](f"[Service]\nExecStart={line}\n")  # noqa: F821
    except ValueError as exc:
        raise _failure("malformed", f"the rendered ExecStart= line is not what systemd would run: {exc}") from None


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
    return _render(_config(config))


def preflight(binary=None, config=None):
    """
    Run ``binary`` as the config's KCM user with the flags the formula renders plus ``--version`` and report
    whether it accepts them: ``{"ok": True, "version": "v1.37.2", "binary": ...}`` or
    ``{"ok": False, "error": <the binary's own message>, "binary": ...}`` (non-zero exit).

    KCM parses every flag before it handles ``--version``, so a flag the release does
    not know is refused here without starting anything. The argv is the one systemd
    builds from the unit's ``ExecStart=`` line (``kcm_flags.exec_start`` parsed by
    ``kcm_systemd.parse_exec_start``: quoting, ``%%``, ``$$``), with ``binary`` as argv[0],
    so a value that only breaks after systemd's splitting is refused here too.

    binary
        Default: the deployed ``files.binary``.
    config
        A resolved config. Default: the deployed one.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.preflight
        salt 'master1' kcm.preflight binary=/data/apps/k8s/kubernetes/versions/v1.37.2/kube-controller-manager
    """
    config = _config(config)
    binary = binary or (config.get("files") or {}).get("binary")
    if not binary:
        raise _failure("not_deployed", "no binary= given and the config has no files.binary")
    found, complaint = _said(_run([*_systemd_argv(config, binary), "--version"], _runas(None, config)))
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
