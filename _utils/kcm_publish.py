"""
What may not go into a publication. A job the Salt master publishes (``LocalClient`` with
``kwarg={"pillar": ...}``, as ``kcm_orch`` does to apply a change) is sent to every
connected minion, which then checks whether the target names it, and its arguments stay
in the master's job cache; so a pillar override there reaches machines that are not KCM
masters and outlives the run. PEM text and private keys belong in the masters' pillar files
(targeted by minion id), never in an override.

Called as ``__utils__["kcm_publish.secret_paths"](pillar)`` by the ``kcm_orch`` runner.
"""

__virtualname__ = "kcm_publish"

PEM_MARK = "-----BEGIN "
# The kcm:pki keys that hold a private key, refused even when not PEM-armoured (DER, base64).
PRIVATE_KEYS = ("ca_key", "key", "service_account_key", "signer_key")


def __virtual__():
    return __virtualname__


def secret_paths(value, path="pillar"):
    """
    The colon-joined keys under ``value`` (a pillar override) that carry PEM text anywhere,
    or a non-empty private key under ``kcm:pki``: ``["pillar:kcm:pki:ca_key"]``.
    """
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}:{key}"
            if where.endswith(tuple(f"kcm:pki:{name}" for name in PRIVATE_KEYS)) and item not in (None, ""):
                found.append(where)
            else:
                found += secret_paths(item, where)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found += secret_paths(item, f"{path}:{index}")
    elif isinstance(value, (str, bytes)):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if PEM_MARK in text:
            found.append(path)
    return found
