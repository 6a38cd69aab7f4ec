"""
Certificates and keys of the deployed kube-controller-manager: days left on each one
(including the copies embedded in the kubeconfig) and the service-account public key
that kube-apiserver needs.

Errors raise ``CommandExecutionError`` with ``info={"reason": ...}`` (``not_deployed``,
``cert``; ``_utils/kcm_error.py``). :func:`cert_status` reports a certificate it cannot
read inside its answer (``{"error": "unreadable: ..."}`` for that name), so one bad file does
not hide the others.
"""

import base64
import datetime
import logging

log = logging.getLogger(__name__)

__virtualname__ = "kcm_pki"


def __virtual__():
    return __virtualname__


def _read(path):
    # Root reads these (the kcm_cert beacon too): a regular file of root's, never a FIFO or a link.
    return __utils__["kcm_kubeconfig.read_trusted"](path)  # noqa: F821


def _failure(reason, detail):
    return __utils__["kcm_error.failure"](reason, detail)  # noqa: F821


def _files():
    files = (__salt__["kcm_config.deployed"]() or {}).get("files") or {}
    if not files:
        raise _failure("not_deployed", "kcm is not deployed on this minion (run state.apply kcm first)")
    return files


def service_account_public_key(path=None):
    """
    Return the PEM public key of the service-account signing key (for kube-apiserver's
    ``--service-account-key-file``); the private key is never returned. Published to the
    mine by the formula as ``kcm_service_account_public_key``.

    CLI Example:

    .. code-block:: bash

        salt 'master-1' kcm_pki.service_account_public_key
        salt-run mine.get 'master*' kcm_service_account_public_key
    """
    from cryptography.hazmat.primitives import serialization

    path = path or _files().get("service_account_key")
    if not path:
        raise _failure("not_deployed", "kcm is not deployed here (no service-account key path)")
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise _failure("cert", f"cannot read the service-account key {path}: {type(exc).__name__}") from None
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _facts(pem_bytes, source, now):
    """Subject, serial, notAfter, days left (two decimals) and SHA-256 fingerprint of one PEM certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem_bytes)
    not_after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {
        "source": source,
        "subject": cns[0].value if cns else cert.subject.rfc4514_string(),
        "not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_left": round((not_after - now).total_seconds() / 86400, 2),
        "serial": format(cert.serial_number, "x"),
        # The certificate's identity wherever it is used: a CA in two files is one certificate.
        "fingerprint": cert.fingerprint(hashes.SHA256()).hex(),
    }


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def certificate(path):
    """
    Return ``source``, ``subject``, ``serial``, ``not_after``, ``days_left`` (two
    decimals) and ``fingerprint`` (SHA-256, hex) of the PEM certificate at ``path``; raise
    (reason ``cert``) when it cannot be read. The one place the formula computes days left
    on a certificate.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm_pki.certificate /etc/k8s/ssl/kube-controller-manager.pem
    """
    try:
        pem = _read(path)
    except ValueError as exc:
        raise _failure("cert", f"cannot read {exc}") from None
    try:
        return _facts(pem, path, _now())
    except ValueError:
        raise _failure("cert", f"{path} is not a PEM certificate") from None


def _embedded(kubeconfig, now):
    """The certificates inside the kubeconfig's current context (client and cluster CA)."""
    try:
        cluster, user = __utils__["kcm_kubeconfig.current"](kubeconfig)  # noqa: F821
        out = {}
        for name, data in (
            ("kubeconfig:client", user.get("client-certificate-data")),
            ("kubeconfig:ca", cluster.get("certificate-authority-data")),
        ):
            if data:
                out[name] = _facts(base64.b64decode(data), kubeconfig, now)
        return out
    except (ValueError, TypeError) as exc:
        return {"kubeconfig:client": {"source": kubeconfig, "error": f"unreadable: {type(exc).__name__}"}}


def cert_status():
    """
    Return days left for every certificate the formula manages: the CA, the KCM
    certificate, the cluster signer, and the copies embedded in the kubeconfig (its
    current context). Keyed by a short name (``cert``, ``ca_cert``, ``kubeconfig:client``...).

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm_pki.cert_status
    """
    files = _files()
    now = _now()
    out = {}
    for name in ("cert", "ca_cert", "signer_cert"):
        path = files.get(name)
        if not path or (name == "signer_cert" and path == files.get("ca_cert")):
            continue
        try:
            out[name] = _facts(_read(path), path, now)
        except (OSError, ValueError) as exc:
            out[name] = {"source": path, "error": f"unreadable: {type(exc).__name__}"}
    if files.get("kubeconfig"):
        out.update(_embedded(files["kubeconfig"], now))
    return out


# The PKI modes (kcm:pki:mode) in which state.apply kcm issues the KCM certificate itself.
RENEWED_BY_APPLY = ("local", "remote")


def renewal_due():
    """
    Return whether ``state.apply kcm`` would renew this master's KCM certificate now:
    ``{"due", "cluster", "mode", "days_remaining", "days_left"}``. In the ``local`` and
    ``remote`` PKI modes (``kcm:pki:mode``) it is due when the certificate, or the kubeconfig's
    embedded copy of it, has fewer than ``kcm:pki:days_remaining`` days left or cannot be read;
    in ``pillar`` mode never (the certificate comes from pillar: renew it there). The settings
    are the pillar's, which the next apply follows. The Salt master's ``kcm_orch.renew`` asks
    it before a rolling renewal.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm_pki.renewal_due
    """
    _files()  # raises when kcm is not deployed here
    requested = __salt__["kcm_config.requested"]  # noqa: F821
    mode, days_remaining = requested("pki:mode"), requested("pki:days_remaining")
    status = cert_status()
    used = [status[name] for name in ("cert", "kubeconfig:client") if name in status]
    days_left = min((facts["days_left"] for facts in used if "days_left" in facts), default=None)
    due = mode in RENEWED_BY_APPLY and (
        not used or any("error" in facts for facts in used) or days_left < float(days_remaining)
    )
    return {
        "due": bool(due),
        "cluster": requested("cluster"),
        "mode": mode,
        "days_remaining": days_remaining,
        "days_left": days_left,
    }
