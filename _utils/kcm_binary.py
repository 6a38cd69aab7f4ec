"""
What the KCM binary answered to ``--version`` (after the unit's flags or alone), read one way
for ``kcm.version``, ``kcm.preflight`` and the ``kcm_service.unit_accepted`` state. Pure.
"""

import re

__virtualname__ = "kcm_binary"

# `kube-controller-manager --version` prints `Kubernetes v1.37.2` (Go's -ldflags version).
_VERSION = re.compile(r"\bKubernetes (v\d+\.\d+\.\d+[\w.+-]*)")


def __virtual__():
    return __virtualname__


def version_or_complaint(returncode, stdout, stderr):
    """``(version, None)`` when the run succeeded and printed a version (``v1.37.2``), else
    ``(None, complaint)``: the binary's own words. Cobra prints the whole usage text
    (hundreds of lines) around ``Error: ...``, so the complaint is its distinct ``Error:``
    lines or, without any, its last lines."""
    match = _VERSION.search(f"{stdout or ''}\n{stderr or ''}")
    if returncode == 0 and match:
        return match.group(1), None
    lines = [line.strip() for line in (stderr or stdout or "").splitlines() if line.strip()]
    errors = list(dict.fromkeys(line for line in lines if line.lower().startswith("error:")))
    return None, "\n".join(errors or lines[-5:])[:1000] or f"exited {returncode} without a message"
