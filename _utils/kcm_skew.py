"""
The Kubernetes version skew policy for KCM, as one pure decision: KCM may be at most one
minor older than the kube-apiserver, never newer
(https://kubernetes.io/releases/version-skew-policy/#kube-controller-manager-kube-scheduler-and-cloud-controller-manager).

:func:`decide` is called by the ``kcm_skew`` execution module (one master, before
``state.apply kcm`` changes anything) and by the ``kcm_orch`` runner (every master, against
the oldest apiserver any of them reports, before the first one changes). It takes the minors
already parsed (``kcm_flags.minor`` owns the parsing of a Kubernetes version) and returns
what to do; it reads nothing and raises nothing.

Called as ``__utils__["kcm_skew.decide"](...)``.
"""

__virtualname__ = "kcm_skew"

OVERRIDE_KEY = "kcm:skew:override_reason"


def __virtual__():
    return __virtualname__


def _verdict(allowed, comment, warning=False):
    return {"allowed": allowed, "comment": comment, "warnings": [comment] if warning else []}


def _refusal(version, apiserver, version_minor, apiserver_minor, deployed, why):
    """What the policy says against a change, or None when it allows it."""
    if apiserver is None:
        if deployed in (None, "", version):
            return None
        return (
            f"kcm:version: {version} cannot replace the deployed {deployed}: the kube-apiserver's /version"
            f" could not be read ({why}), so the skew policy (KCM at most one minor older than the"
            " apiserver, never newer) cannot be checked"
        )
    if version_minor > apiserver_minor:
        return (
            f"kcm:version: {version} is newer than the kube-apiserver ({apiserver}); the skew policy allows"
            " KCM at most one minor older than the apiserver, never newer: upgrade the apiservers first"
        )
    return None


def decide(version, version_minor, apiserver=None, apiserver_minor=None, deployed=None, why=None, override_reason=""):
    """
    Return ``{"allowed": bool, "comment": str, "warnings": [str]}`` for KCM ``version``
    (minor ``version_minor``) against the kube-apiserver at ``apiserver`` (minor
    ``apiserver_minor``; ``apiserver`` None when its ``/version`` could not be read, ``why``
    saying why), with ``deployed`` the version the formula deployed on the master (None or
    ``''`` before the first install):

    - newer than the apiserver: refused;
    - the same minor or one older: allowed;
    - two or more minors older: allowed with a warning;
    - ``/version`` unreadable: a version change is refused; the first install and a run that
      keeps the deployed version are allowed with a warning;
    - ``override_reason`` (pillar ``kcm:skew:override_reason``) non-empty: what would be
      refused is allowed with a warning quoting the reason.

    Example:

    .. code-block:: python

        __utils__["kcm_skew.decide"]("v1.37.2", 37, "v1.36.3", 36, deployed="v1.36.3")
    """
    refusal = _refusal(version, apiserver, version_minor, apiserver_minor, deployed, why)
    if refusal:
        reason = str(override_reason or "").strip()
        if reason:
            return _verdict(True, f"{refusal}; allowed by {OVERRIDE_KEY}: {reason}", warning=True)
        return _verdict(False, f"{refusal} (or set {OVERRIDE_KEY} to a reason to override)")
    if apiserver is None:
        what = "first install" if deployed in (None, "") else f"deployed {deployed} kept"
        return _verdict(
            True,
            f"kcm:version: {version} ({what}) without a skew check: the kube-apiserver's"
            f" /version could not be read ({why})",
            warning=True,
        )
    behind = apiserver_minor - version_minor
    if behind > 1:
        return _verdict(
            True,
            f"kcm:version: {version} is {behind} minors older than the kube-apiserver"
            f" ({apiserver}); the skew policy supports KCM at most one minor older",
            warning=True,
        )
    return _verdict(True, f"kcm:version: {version} is within the skew policy of the kube-apiserver ({apiserver})")


def oldest(reports):
    """
    Return ``(version, minor, source)`` of the oldest apiserver among ``reports`` (tuples
    ``(version, minor, source)``; ``source`` e.g. the minion that read it), or None when
    there is none. Ties keep the first (by ``source``).

    Example:

    .. code-block:: python

        __utils__["kcm_skew.oldest"]([("v1.37.2", 37, "master-1"), ("v1.36.3", 36, "master-2")])
    """
    reports = sorted(reports, key=lambda r: (r[1], str(r[2])))
    return reports[0] if reports else None
