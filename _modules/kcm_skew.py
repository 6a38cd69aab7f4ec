"""
The version skew guard: is the KCM release pillar asks for allowed next to the live
kube-apiserver? The Kubernetes skew policy allows KCM at most one minor older than the
apiserver, never newer.

- :func:`apiserver_version` reads the apiserver's ``/version`` through the KCM kubeconfig
  (``kcm_api``: TLS verified, the kubeconfig trusted only when root's);
- :func:`facts` gathers what the decision needs on this master: the version asked for, the
  version deployed (``kcm_config.deployed``), the apiserver's version or why it could not
  be read, and the override (pillar ``kcm:skew:override_reason``);
- :func:`check` returns the decision (``_utils/kcm_skew.py``): ``kcm-config-validated``
  runs it before anything on disk changes, and the ``kcm_orch`` runner makes the same
  decision for every master against the oldest apiserver any of them reports.

Versions are parsed by ``kcm_flags.minor``, the formula's one parser of a Kubernetes
version.
"""

import json
import logging
import os
import shutil
import tempfile

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "kcm_skew"

# Seconds the /version request may take: a state run waits for it, once.
TIMEOUT = 5


def __virtual__():
    return __virtualname__


def _minor(version):
    """The minor of a version as a server reports it; build metadata (``+k3s1``) is not part
    of the release (semver), a pre-release suffix is understood by ``kcm_flags``."""
    return __salt__["kcm_flags.minor"](str(version).split("+", 1)[0])  # noqa: F821


def _kubeconfig(given):
    deployed = (__salt__["kcm_config.deployed"]().get("files") or {}).get("kubeconfig")  # noqa: F821
    for path in (given, deployed):
        if path and os.path.exists(path):
            return path
    return None


def _public_version(timeout):
    """
    ``/version`` as anyone may read it (the apiserver's ``system:public-info-viewer`` role),
    for a first install: no kubeconfig exists yet, but pillar names the apiserver and its CA
    (``kcm:apiserver``, ``kcm:pki:ca_cert``). TLS is verified against that CA, written for
    the request to a private directory of root's, as ``kcm_api.probe`` reads a CA from a file.
    """
    url, ca_pem = (__salt__["kcm_config.requested"](key) for key in ("apiserver", "pki:ca_cert"))  # noqa: F821
    if not (isinstance(url, str) and url.startswith("https://") and isinstance(ca_pem, str) and ca_pem.strip()):
        raise __utils__["kcm_error.failure"](  # noqa: F821
            "kubeconfig", "no kubeconfig deployed yet, and pillar gives no https kcm:apiserver with kcm:pki:ca_cert"
        )
    scratch = tempfile.mkdtemp(prefix="kcm-skew-", dir=__opts__.get("cachedir"))  # noqa: F821
    try:
        ca_path = os.path.join(scratch, "ca.pem")
        with open(ca_path, "w", encoding="ascii", errors="replace") as handle:
            handle.write(ca_pem)
        reply = __salt__["kcm_api.probe"](url.rstrip("/") + "/version", ca_path, timeout=timeout)  # noqa: F821
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if reply["status"] != 200:
        raise __utils__["kcm_error.failure"](  # noqa: F821
            "http",
            f"{url}/version answered HTTP {reply['status']} to a client without credentials"
            " (anonymous requests off?) and no kubeconfig is deployed yet",
        )
    try:
        answer = json.loads(reply["body"])
    except ValueError:
        raise __utils__["kcm_error.failure"]("malformed", f"{url}/version is not JSON") from None  # noqa: F821
    return answer if isinstance(answer, dict) else {}


def apiserver_version(kubeconfig=None, timeout=TIMEOUT):
    """
    Return the ``gitVersion`` the kube-apiserver reports at ``/version`` (``v1.37.2``),
    read through ``kubeconfig`` (default: the deployed KCM kubeconfig) with TLS verified.
    Before the first install, when no kubeconfig exists yet, ``/version`` is read without
    credentials (``system:public-info-viewer``) from pillar ``kcm:apiserver``, verified
    against pillar ``kcm:pki:ca_cert``. Raises ``CommandExecutionError`` when it cannot be
    read or is not a Kubernetes version.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm_skew.apiserver_version
    """
    path = _kubeconfig(kubeconfig)
    if path:
        answer = __salt__["kcm_api.get"]("/version", path, timeout=timeout)  # noqa: F821
    else:
        answer = _public_version(timeout)
    version = answer.get("gitVersion")
    try:
        _minor(version)
    except (TypeError, ValueError) as exc:
        raise __utils__["kcm_error.failure"](  # noqa: F821
            "malformed", f"/version gitVersion {str(version)[:80]!r} is not understood ({exc})"
        ) from None
    return version


def facts(version=None, kubeconfig=None, override_reason=None):
    """
    Return what the skew decision needs on this master: ``version`` (default: pillar
    ``kcm:version``, then ``kcm:lookup:version``, then the formula's default) and its
    ``version_minor``, ``deployed`` (the version the last
    ``state.apply kcm`` laid down, None before the first), ``apiserver`` and
    ``apiserver_minor`` (None when ``/version`` could not be read, ``why`` saying why), and
    ``override_reason`` (default pillar ``kcm:skew:override_reason``, then
    ``kcm:lookup:skew:override_reason``).

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm_skew.facts version=v1.37.2
    """
    if version is None:
        version = __salt__["kcm_config.requested"]("version")  # noqa: F821
    if override_reason is None:
        override_reason = __salt__["kcm_config.requested"]("skew:override_reason") or ""  # noqa: F821
    try:
        version = __salt__["kcm_flags.normalize_version"](version)  # noqa: F821
        version_minor = _minor(version)
    except ValueError as exc:
        raise CommandExecutionError(f"kcm:version: {exc}") from None
    out = {
        "version": version,
        "version_minor": version_minor,
        "deployed": __salt__["kcm_config.deployed"]().get("version") or None,  # noqa: F821
        "apiserver": None,
        "apiserver_minor": None,
        "why": None,
        "override_reason": override_reason if isinstance(override_reason, str) else "",
    }
    try:
        out["apiserver"] = apiserver_version(kubeconfig)
        out["apiserver_minor"] = _minor(out["apiserver"])
    except CommandExecutionError as exc:
        out["why"] = str(exc)
        log.info("kcm_skew: the kube-apiserver's /version could not be read: %s", exc)
    return out


def check(version=None, kubeconfig=None, override_reason=None):
    """
    Return ``{"allowed", "comment", "warnings", "facts"}``: may KCM ``version`` (default
    pillar ``kcm:version``) run next to the kube-apiserver this master reaches? Newer than
    the apiserver is refused, two or more minors older is allowed with a warning; when
    ``/version`` cannot be read a version change is refused and the first install allowed
    with a warning. ``override_reason`` (default pillar ``kcm:skew:override_reason``), when
    non-empty, allows what would be refused, quoting the reason.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm_skew.check
        salt 'master*' kcm_skew.check version=v1.38.0
    """
    found = facts(version, kubeconfig, override_reason)
    decision = __utils__["kcm_skew.decide"](  # noqa: F821
        found["version"],
        found["version_minor"],
        found["apiserver"],
        found["apiserver_minor"],
        found["deployed"],
        found["why"],
        found["override_reason"],
    )
    return dict(decision, facts=found)
