"""
States of the KCM service: the unit, written only once the binary it will run accepts it,
and the restart of a KCM that Salt does not supervise.

- ``kcm_service.unit``: renders the unit once from the ``source:`` list (a site's own unit
  included, see ``kcm_config.template_sources``) and ``context``; when it or the active
  link is about to change, ``kcm.preflight`` runs its ``ExecStart=`` with the new binary in
  the place of the link, as the unit's ``User=`` (never as root). KCM parses every flag
  before it handles ``--version``, so a flag the release does not know is refused there,
  and the unit is not written. Then Salt's ``file.managed`` writes the rendered text
  (atomically, root's, 0600, no symlink followed) and reports the diff. The active link
  requires this state, so it does not move either.
- ``kcm_service.restarted``: for ``kcm:service:manage: false``, under the same ``watch:``
  list as ``service.running``; like ``cmd.wait`` it does nothing by itself, and its
  ``mod_watch`` restarts KCM through ``kcm:service:control_cmd`` (``kcm_orch.restart``:
  stop, release the Lease, start) when a watched state changed.

.. code-block:: yaml

    kcm-service-unit:
      kcm_service.unit:
        - name: /usr/lib/systemd/system/kube-controller-manager.service
        - binary: /data/apps/k8s/kubernetes/versions/v1.37.2/kube-controller-manager
        - source: [salt://kcm/files/default/kube-controller-manager.service.jinja]
        - context: {binary: /data/apps/k8s/kubernetes/sbin/kube-controller-manager, user: k8s, exec_start: ...}
        - require_in:
          - file: kcm-install-active-link

    kcm-service-restarted:
      kcm_service.restarted:
        - name: kube-controller-manager
        - control_cmd: /usr/local/bin/kcm-ctl
        - watch:
          - kcm_service: kcm-service-unit
"""

import logging
import os

from salt.exceptions import CommandExecutionError

__virtualname__ = "kcm_service"

log = logging.getLogger(__name__)


def __virtual__():
    return __virtualname__


def _rendered_unit(source, context):
    """The unit text rendered from ``source`` (the first that exists), and which one that was."""
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
        # file.get_managed leaves the rendered template, a temporary file, to its caller.
        os.unlink(rendered)


def _ret(name, result, comment, changes=None):
    return {"name": name, "result": result, "comment": comment, "changes": changes or {}}


def _at_rest(name, text, link, binary):
    """True when the unit ``name`` (not a symlink) holds ``text`` and ``link`` points at ``binary``."""
    try:
        with open(name, encoding="utf-8") as handle:
            return not os.path.islink(name) and handle.read() == text and os.readlink(link) == binary
    except OSError:
        return False


def unit(name, binary, source, context):
    """
    Write the KCM unit ``name``, rendered once, when the binary about to run it accepts
    its ``ExecStart=`` (``kcm.preflight``); otherwise fail with the binary's own message
    and write nothing.

    name
        The unit file.
    binary
        The KCM binary the unit will run (the version about to become active): it runs
        the ``ExecStart=`` in the place of the active link, ``context["binary"]``.
    source
        The template's ``source:`` list, rendered with Jinja and ``context``.
    context
        The template context; ``binary`` is the active link, ``user`` the unit's ``User=``.

    Nothing runs when neither the unit nor the active link is about to change. In test
    mode the binary runs too (it writes nothing); one that the same run installs is not
    there yet, and is checked when it is.
    """
    try:
        chosen, text = _rendered_unit(source, context)
    except CommandExecutionError as exc:
        return _ret(name, False, str(exc))
    verdict = ""
    if _at_rest(name, text, context["binary"], binary):
        pass  # nothing KCM runs changes here: no restart into it, nothing to check
    elif __opts__["test"] and not os.path.exists(binary):  # noqa: F821
        verdict = f"{binary} is not installed yet; the unit is checked against it when it is"
    else:
        try:
            said = __salt__["kcm.preflight"](  # noqa: F821
                binary=binary, unit=text, config={"user": context.get("user"), "files": {"binary": context["binary"]}}
            )
        except CommandExecutionError as exc:
            return _ret(name, False, f"cannot check {binary} against {chosen}: {exc}")
        if not said["ok"]:
            return _ret(name, False, f"{binary} refuses the ExecStart= of {chosen}: {said['error']}")
        verdict = f"{binary} ({said['version']}) accepts the ExecStart= of {chosen}"
    # Salt's own file state: an atomic replace, the diff in changes, test mode's prediction;
    # the directories it makes 0755 like systemd's own (Salt's default would be 0700).
    ret = __states__["file.managed"](  # noqa: F821
        name,
        contents=text,
        user="root",
        group="root",
        mode="0600",
        follow_symlinks=False,
        makedirs=True,
        dir_mode="0755",
    )
    ret["comment"] = "; ".join(part for part in (verdict, ret["comment"]) if part)
    return ret


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
