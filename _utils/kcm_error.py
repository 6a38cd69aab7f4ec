"""
The one error convention of the formula's execution functions: raise
``CommandExecutionError(detail, info={"reason": reason})``, where ``reason`` is a short
machine word (``not_deployed``, ``unreachable``, ``forbidden``, ``binary``...) and ``detail``
one line a person can act on. States, runners and the beacon catch ``CommandExecutionError``
and read the word with :func:`reason_of`.

Salt prints an exception with ``info`` over several lines ("Additional info follows");
:func:`failure` builds one whose text stays the single line ``<reason>: <detail>``, which is
what ``salt-call`` writes after ``Error running '<function>':`` (exit code 1).

Called as ``raise __utils__["kcm_error.failure"]("not_deployed", "...")``.

The master side's settings follow the same rule: a runner or the engine keeps no default
of its own; ``kcm.master`` writes every one from ``defaults.yaml`` into the Salt master's
configuration, and :func:`master_settings` reads a section of it so that a missing key
fails naming itself and what to do.
"""

from salt.exceptions import CommandExecutionError

__virtualname__ = "kcm_error"


def __virtual__():
    return __virtualname__


class KcmCommandError(CommandExecutionError):
    """A CommandExecutionError whose text is ``<reason>: <detail>``, never a nested dump."""

    def __str__(self):
        reason = (self.info or {}).get("reason") if isinstance(self.info, dict) else None
        return f"{reason}: {self.error}" if reason else str(self.error)


def failure(reason, detail, **info):
    """
    Return (for the caller to raise) a ``CommandExecutionError`` with ``detail`` as its
    message and ``info={"reason": reason, **info}``.

    Example:

    .. code-block:: python

        raise __utils__["kcm_error.failure"]("not_deployed", "run state.apply kcm first")
    """
    return KcmCommandError(detail, info=dict(info, reason=reason))


def reason_of(exc):
    """The short reason of a ``CommandExecutionError`` (``error`` when it carries none).

    Example:

    .. code-block:: python

        __utils__["kcm_error.reason_of"](exc)
    """
    info = getattr(exc, "info", None)
    return info.get("reason", "error") if isinstance(info, dict) else "error"


class _MasterSettings(dict):
    """A section of the Salt master's configuration that kcm.master writes: reading a key
    that is not there raises :func:`missing_setting`; no caller supplies a default."""

    def __init__(self, values, root, pillar):
        super().__init__(values)
        self.root, self.pillar = root, pillar

    def __missing__(self, key):
        raise missing_setting(f"{self.root}:{key}", f"{self.pillar}:{key}")


def missing_setting(key, pillar_key):
    """
    Return (for the caller to raise) the failure of a setting ``key`` (``kcm_alert:event_ttl``)
    missing from the Salt master's configuration, naming the pillar key kcm.master writes
    it from.

    Example:

    .. code-block:: python

        raise __utils__["kcm_error.missing_setting"]("kcm_orch:count", "kcm:master:orch:count")
    """
    return failure(
        "not_configured",
        f"{key} is not in the Salt master's configuration: apply kcm.master"
        f" (pillar {pillar_key}) and restart salt-master",
        key=key,
    )


def master_settings(opts, root, pillar):
    """
    Return the section ``root`` of the Salt master's configuration ``opts`` (``kcm_alert``,
    ``kcm_orch``) as a mapping whose missing keys raise :func:`missing_setting`, naming
    ``<root>:<key>`` and ``<pillar>:<key>`` (``kcm:master``, ``kcm:master:orch``).

    Example:

    .. code-block:: python

        cfg = __utils__["kcm_error.master_settings"](__opts__, "kcm_alert", "kcm:master")
        cfg["event_ttl"]  # raises "not_configured: kcm_alert:event_ttl is not in ..." without it
    """
    return _MasterSettings(opts.get(root) or {}, root, pillar)
