"""
The checks of the PEMs a ``kcm:pki`` pillar carries, before any is written: a missing PEM
for the mode, a key that does not match its certificate, a CA that is not a CA, a
certificate the CA did not sign, an expired one, a CN other than
``system:kube-controller-manager``, issuing settings x509_v2 would loop on.

Called as ``__utils__["kcm_pki_checks.check_pki"](pki)`` from ``kcm_config``.
"""

import datetime

__virtualname__ = "kcm_pki_checks"

KCM_CN = "system:kube-controller-manager"
# PEMs each mode needs from pillar (signer_* are optional everywhere).
PILLAR_PEMS = {
    "pillar": ("ca_cert", "ca_key", "cert", "key", "service_account_key"),
    "local": ("ca_cert", "ca_key", "service_account_key"),
    "remote": ("ca_cert", "service_account_key"),
}
KEY_SIZES = {"ec": (256, 384, 521), "rsa": (2048, 3072, 4096)}
PKI_MODES = ("pillar", "local", "remote")


def __virtual__():
    return __virtualname__


def _load_cert(pem, key, problems):
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(str(pem).encode())
    except ValueError:
        problems.append(f"kcm:pki:{key}: not a PEM certificate")
        return None


def _load_key(pem, key, problems):
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(str(pem).encode(), password=None)
    except (ValueError, TypeError):
        problems.append(f"kcm:pki:{key}: not an unencrypted PEM private key")
        return None


def _public_bytes(public_key):
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _signed_by(cert, ca_cert):
    try:
        cert.verify_directly_issued_by(ca_cert)
        return True
    except (ValueError, TypeError, Exception):  # InvalidSignature is not a ValueError
        return False


def _check_validity(cert, key, problems):
    now = datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc <= now:
        problems.append(f"kcm:pki:{key}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    elif cert.not_valid_before_utc > now:
        problems.append(f"kcm:pki:{key}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")


def _check_ca(pki, problems):
    from cryptography import x509

    ca = _load_cert(pki["ca_cert"], "ca_cert", problems)
    if ca is None:
        return None
    _check_validity(ca, "ca_cert", problems)
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        problems.append("kcm:pki:ca_cert: not a CA certificate (basicConstraints CA:TRUE expected)")
    if str(pki.get("ca_key") or "").strip():
        ca_key = _load_key(pki["ca_key"], "ca_key", problems)
        if ca_key is not None and _public_bytes(ca_key.public_key()) != _public_bytes(ca.public_key()):
            problems.append("kcm:pki:ca_key: does not match kcm:pki:ca_cert")
    return ca


def _check_kcm_cert(pki, ca, problems):
    from cryptography.x509.oid import NameOID

    cert = _load_cert(pki["cert"], "cert", problems)
    key = _load_key(pki["key"], "key", problems)
    if cert is None:
        return
    _check_validity(cert, "cert", problems)
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [KCM_CN]:
        problems.append(f"kcm:pki:cert: CN is {cns[0] if cns else 'missing'}, expected {KCM_CN}")
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if "system:masters" in orgs:
        problems.append("kcm:pki:cert: O=system:masters would bypass RBAC; issue it without that group")
    if key is not None and _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
        problems.append("kcm:pki:key: does not match kcm:pki:cert")
    if ca is not None and not _signed_by(cert, ca):
        problems.append("kcm:pki:cert: not signed by kcm:pki:ca_cert")


def _check_signer(pki, problems):
    has_cert, has_key = (bool(str(pki.get(k) or "").strip()) for k in ("signer_cert", "signer_key"))
    if has_cert != has_key:
        problems.append("kcm:pki:signer_cert/signer_key: give both or neither (the cluster signer's pair)")
        return
    if has_cert:
        cert = _load_cert(pki["signer_cert"], "signer_cert", problems)
        key = _load_key(pki["signer_key"], "signer_key", problems)
        if cert is not None and key is not None and _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
            problems.append("kcm:pki:signer_key: does not match kcm:pki:signer_cert")
    elif pki.get("mode") == "remote" and not str(pki.get("ca_key") or "").strip():
        problems.append(
            "kcm:pki:signer_cert: remote mode keeps the CA key off the masters, so --cluster-signing-* needs a"
            " dedicated signer (signer_cert and signer_key), or give ca_key"
        )


def _check_issuing(pki, problems):
    algo, size = pki.get("key_algo", "ec"), pki.get("key_size")
    if algo not in KEY_SIZES:
        problems.append(f"kcm:pki:key_algo: '{algo}' is not one of {', '.join(KEY_SIZES)}")
    elif size not in KEY_SIZES[algo]:
        problems.append(f"kcm:pki:key_size: {size} is not one of {KEY_SIZES[algo]} for {algo}")
    valid, remaining = pki.get("days_valid"), pki.get("days_remaining")
    if not isinstance(valid, int) or valid < 1:
        problems.append(f"kcm:pki:days_valid: '{valid}' is not a positive number of days")
    elif not isinstance(remaining, int) or not 0 <= remaining < valid:
        # x509_v2 re-issues whenever fewer than days_remaining are left: >= days_valid
        # would re-issue (and restart KCM) on every run.
        problems.append(f"kcm:pki:days_remaining: '{remaining}' must be a number of days below days_valid ({valid})")
    if pki.get("mode") == "remote":
        for key in ("ca_server", "signing_policy"):
            if not str(pki.get(key) or "").strip():
                problems.append(f"kcm:pki:{key}: required in remote mode (the CA minion id and its x509_v2 policy)")


def check_pki(pki):
    """The problems of a ``kcm:pki`` mapping for its mode, each naming its key; a mode the
    formula does not know is one problem, and nothing else is checked."""
    if pki.get("mode", "pillar") not in PKI_MODES:
        return [f"kcm:pki:mode: '{pki.get('mode')}' is not one of {', '.join(PKI_MODES)}"]
    problems = []
    mode = pki.get("mode", "pillar")
    missing = [k for k in PILLAR_PEMS[mode] if not str(pki.get(k) or "").strip()]
    for key in missing:
        problems.append(f"kcm:pki:{key}: missing (PEM text expected in {mode} mode)")
    ca = _check_ca(pki, problems) if "ca_cert" not in missing else None
    if mode == "pillar" and not {"cert", "key"} & set(missing):
        _check_kcm_cert(pki, ca, problems)
    if "service_account_key" not in missing:
        _load_key(pki["service_account_key"], "service_account_key", problems)
    _check_signer(pki, problems)
    if mode != "pillar":
        _check_issuing(pki, problems)
    return problems
