"""
Certificates and keys of the deployed kube-controller-manager: days left on each one
(including the copies embedded in the kubeconfig) and the service-account public key
that kube-apiserver needs.
"""

import base64
import datetime
import logging
import os

import yaml

log = logging.getLogger(__name__)

__virtualname__ = "kcm_pki"


def __virtual__():
    return __virtualname__


def _deployed():
    return __salt__["kcm_config.deployed"]()


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

    path = path or (_deployed().get("files") or {}).get("service_account_key")
    if not path:
        return {"error": "kcm is not deployed here (no service-account key path)"}
    try:
        with open(path, "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return {"error": f"cannot read the service-account key {path}: {type(exc).__name__}"}
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _describe(pem_bytes, source, now):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem_bytes)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    left = cert.not_valid_after_utc - now
    return {
        "source": source,
        "subject": cns[0].value if cns else cert.subject.rfc4514_string(),
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_left": round(left.total_seconds() / 86400, 2),
        "serial": format(cert.serial_number, "x"),
    }


def cert_status(deployed=None):
    """
    Return days left for every certificate the formula manages: the CA, the KCM
    certificate, the cluster signer, and the copies embedded in the kubeconfig. Keyed by
    a short name (``cert``, ``ca_cert``, ``kubeconfig:client``...).

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm_pki.cert_status
    """
    deployed = deployed or _deployed()
    files = deployed.get("files") or {}
    if not files:
        return {"error": "kcm is not deployed here"}
    now = datetime.datetime.now(datetime.timezone.utc)
    out = {}
    for name in ("cert", "ca_cert", "signer_cert"):
        path = files.get(name)
        if not path or (name == "signer_cert" and path == files.get("ca_cert")):
            continue
        try:
            with open(path, "rb") as fh:
                out[name] = _describe(fh.read(), path, now)
        except (OSError, ValueError) as exc:
            out[name] = {"source": path, "error": f"unreadable: {type(exc).__name__}"}
    kubeconfig = files.get("kubeconfig")
    try:
        with open(kubeconfig, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
        embedded = {
            "kubeconfig:client": (doc.get("users") or [{}])[0].get("user", {}).get("client-certificate-data"),
            "kubeconfig:ca": (doc.get("clusters") or [{}])[0].get("cluster", {}).get("certificate-authority-data"),
        }
        for name, data in embedded.items():
            if data:
                out[name] = _describe(base64.b64decode(data), kubeconfig, now)
    except (OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
        out["kubeconfig:client"] = {"source": kubeconfig, "error": f"unreadable: {type(exc).__name__}"}
    return out


def expiring(threshold_days=30, deployed=None):
    """
    Return the certificates from :func:`cert_status` with fewer than ``threshold_days``
    left (or unreadable).

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm_pki.expiring 30
    """
    status = cert_status(deployed)
    if "error" in status:
        return status
    return {
        name: info for name, info in status.items()
        if "error" in info or info["days_left"] < float(threshold_days)
    }


def key_permissions(deployed=None):
    """
    Return the mode of every private key file the formula manages, e.g. ``{'key': '0600'}``.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm_pki.key_permissions
    """
    files = (deployed or _deployed()).get("files") or {}
    out = {}
    for name in ("key", "ca_key", "service_account_key", "signer_key", "kubeconfig"):
        path = files.get(name)
        if path and os.path.exists(path):
            out[name] = oct(os.stat(path).st_mode & 0o777).replace("0o", "0")
    return out
