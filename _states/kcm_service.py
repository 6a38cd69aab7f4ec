"""
States of the KCM service: the unit checked against the binary it will run, and the
restart of a KCM that Salt does not supervise.

- ``kcm_service.unit_accepted``: renders the unit from the same ``source:`` list and
  context as the ``file.managed`` that lays it down (a site's own unit included, see
  ``kcm_config.template_sources``), and runs the ``ExecStart=`` systemd would run from it,
  with the new binary as argv[0] and ``--version`` added, as the unit's ``User=`` (never as
  root). KCM parses every flag before it
  handles ``--version``, so a flag the release does not know is refused here, before the
  unit or the active link changes.
- ``kcm_service.restarted``: for ``kcm:service:manage: false``, under the same ``watch:``
  list as ``service.running``; like ``cmd.wait`` it does nothing by itself, and its
  ``mod_watch`` restarts KCM through ``kcm:service:control_cmd`` (``kcm_orch.restart``:
  stop, release the Lease, start) when a watched state changed.

.. code-block:: yaml

    kcm-service-unit-accepted:
      kcm_service.unit_accepted:
        - name: /data/apps/k8s/kubernetes/versions/v1.37.2/kube-controller-manager
        - active_binary: /data/apps/k8s/kubernetes/sbin/kube-controller-manager
        - source: [salt://kcm/files/default/kube-controller-manager.service.jinja]
        - context: {exec_start: ...}
        - prereq:
          - file: kcm-service-unit

    kcm-service-restarted:
      kcm_service.restarted:
        - name: kube-controller-manager
        - control_cmd: /usr/local/bin/kcm-ctl
        - watch:
          - file: kcm-service-unit
"""

import logging
import os
import subprocess

from salt.exceptions import CommandExecutionError

BINARY_TIMEOUT = 30

__virtualname__ = "kcm_service"

log = logging.getLogger(__name__)


def __virtual__():
    return __virtualname__


def _rendered_unit(source, context):
    """The unit text ``file.managed`` would write from ``source`` (the first that exists)."""
    saltenv = __env__  # noqa: F821
    chosen, _ = __salt__["file.source_list"](source, "", saltenv)
    rendered, _, comment = __salt__["file.get_managed"](
        name="",
        template="jinja",
        source=chosen,
        source_hash="",
        source_hash_name=None,
        user=None,
        group=None,
        mode=None,
        attrs=None,
        saltenv=saltenv,
        context=context,
        defaults=None,
        skip_verify=True,
    )
    if not rendered:
        raise CommandExecutionError(f"cannot render {chosen}: {comment}")
    try:
        with open(rendered, encoding="utf-8") as handle:
            return chosen, handle.read()
    finally:
        # A rendered template is a temporary file of its own (file.managed removes its too).
        os.unlink(rendered)


def _ret(name, result, comment, changes=None):
    return {"name": name, "result": result, "comment": comment, "changes": changes or {}}


def unit_accepted(name, source, context, active_binary):
    """
    Succeed when the KCM binary ``name`` accepts the ``ExecStart=`` of the unit rendered
    from ``source`` with ``context``; fail with the binary's own message otherwise. Makes
    no changes.

    name
        The binary to check (the version about to become active).
    source
        The unit's ``source:`` list, as given to its ``file.managed``.
    context
        The template context, as given to its ``file.managed``.
    active_binary
        The path the unit's ``ExecStart=`` names (the active link); ``name`` runs in its
        place, as the link will point there.

    In test mode, a binary that does not exist yet (the same run installs it) gives result
    None.
    """
    if not os.path.exists(name):
        if __opts__.get("test"):  # noqa: F821
            return _ret(name, None, f"{name} is not installed yet; the unit is checked against it when it is")
        return _ret(name, False, f"{name} does not exist; cannot check the unit's ExecStart=")
    try:
        chosen, text = _rendered_unit(source, context)
        argv = __utils__["kcm_systemd.parse_exec_start"](text)  # noqa: F821
    except (CommandExecutionError, ValueError) as exc:
        return _ret(name, False, f"the unit is not what systemd would run: {exc}")
    if argv[0] != active_binary:
        return _ret(name, False, f"the ExecStart= of {chosen} runs {argv[0]}, not {active_binary}")
    try:
        # As the unit's User=, never as root.
        done = __utils__[
            "kcm_systemd.run_as"
        ](  # noqa: F821
            [name, *argv[1:], "--version"], context.get("user") or "root", BINARY_TIMEOUT
        )
    except (OSError, KeyError, subprocess.TimeoutExpired) as exc:
        return _ret(name, False, f"cannot run {name}: {exc}")
    version, complaint = __utils__["kcm_binary.version_or_complaint"](  # noqa: F821
        done.returncode, done.stdout, done.stderr
    )
    if not version:
        return _ret(name, False, f"{name} refuses the ExecStart= of {chosen}: {complaint}")
    return _ret(name, True, f"{name} ({version}) accepts the ExecStart= of {chosen}")


def restarted(name, control_cmd=""):
    """
    Restart KCM through ``kcm:service:control_cmd`` when a state it watches changed (its
    ``mod_watch``); by itself, like ``cmd.wait``, it does nothing.

    name
        The service name (for the output).
    control_cmd
        ``kcm:service:control_cmd``. Empty: a watched change is reported as a restart that
        is still needed (``changes: {restart: needed}``), which ``kcm_orch.apply`` turns
        into an error.
    """
    how = f"kcm:service:control_cmd ({control_cmd})" if control_cmd else "nobody (no kcm:service:control_cmd)"
    return _ret(name, True, f"{name} is restarted by {how} when a watched state changes")


def mod_watch(name, control_cmd="", **kwargs):  # pylint: disable=unused-argument
    """
    Restart KCM after a change of a watched state (see :func:`restarted`). Called by
    Salt's ``watch`` requisite, not directly.
    """
    if not control_cmd:
        return _ret(
            name,
            True,
            f"a watched state changed, but {name} is not supervised by Salt"
            " (kcm:service:manage false, no kcm:service:control_cmd): restart it yourself",
            {"restart": "needed"},
        )
    if __opts__.get("test"):  # noqa: F821
        return _ret(name, None, f"{name} would be restarted by kcm:service:control_cmd", {"restart": "done"})
    try:
        control = __salt__["kcm_orch.restart"]()  # noqa: F821
    except CommandExecutionError as exc:
        control = {"result": False, "comment": str(exc)}
    finally:
        __context__.pop("retcode", None)  # noqa: F821
    if not control.get("result"):
        return _ret(name, False, control.get("comment") or f"{name} was not restarted")
    return _ret(name, True, control.get("comment"), {"restart": "done", "released": control.get("released")})
