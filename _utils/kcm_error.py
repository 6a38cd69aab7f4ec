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
