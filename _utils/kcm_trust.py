"""
Whether a ``kcm_leader`` report on the master's bus is one the ``kcm_alert`` runner may act on.

The master relays batched beacon events with the data the minion sent, tag included, so
neither proves who sent a report. A report counts when its tag names a well-formed minion id
with an accepted key, its ``id`` agrees, that minion is a KCM master, and it carries that
minion's signature (made by the ``kcm_leader`` beacon with the minion's own Salt key) within
a time window: only the signature, checked against the key the master accepted, ties a
report to its sender.

Called as ``__utils__["kcm_trust.refusal"](...)`` from the runner.
"""

import base64
import json
import os
import re

__virtualname__ = "kcm_trust"

MINION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


def __virtual__():
    return __virtualname__


def reporter_of(tag):
    """The minion a ``salt/beacon/<minion>/kcm_leader/<kind>`` tag names, or None."""
    parts = str(tag or "").split("/")
    if len(parts) == 5 and parts[:2] == ["salt", "beacon"] and parts[3] == "kcm_leader":
        return parts[2]
    return None


def kind_of(tag):
    """The last part of a tag: the report's kind."""
    return str(tag or "").rstrip("/").rsplit("/", 1)[-1]


def signed_message(kind, data):
    """The bytes the kcm_leader beacon signs: the kind and every field but ``sig`` and the
    bus's ``_``-prefixed ones, as canonical JSON."""
    fields = {k: v for k, v in data.items() if k != "sig" and not str(k).startswith("_")}
    return json.dumps({"kind": kind, "data": fields}, sort_keys=True, separators=(",", ":")).encode()


def signature_problem(key_path, kind, data, now, window):
    """Why ``data['sig']`` is not the signature of this event by the key at ``key_path``, or None."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        signed_at = float(data.get("signed_at"))
    except (TypeError, ValueError):
        signed_at = None
    if not isinstance(data.get("sig"), str) or signed_at is None:
        return "unsigned"
    if abs(now - signed_at) > window:
        return f"signed {int(now - signed_at)} s ago (window {window} s)"
    try:
        with open(key_path, "rb") as handle:
            public = serialization.load_pem_public_key(handle.read())
        public.verify(base64.b64decode(data["sig"]), signed_message(kind, data), padding.PKCS1v15(),
                      hashes.SHA256())
    except (OSError, ValueError, TypeError, InvalidSignature):
        return "the signature is not the reporter's"
    return None


def refusal(tag, data, pki_dir, is_kcm_master, reporters, now, window):
    """
    Why the event ``tag``/``data`` is not a report to act on, or None (see the module
    docstring). ``is_kcm_master(minion_id)`` answers whether a minion is one of
    ``reporters`` (the configured target, named in the refusal).
    """
    data = data if isinstance(data, dict) else {}
    reporter = reporter_of(tag)
    if reporter is None or not MINION_ID_RE.match(reporter):
        return f"the tag {str(tag)[:80]!r} names no minion"
    if data.get("id") != reporter:
        return f"the tag names {reporter} but the event comes from {str(data.get('id'))[:80]!r}"
    key_path = os.path.join(pki_dir, "minions", reporter)
    if not os.path.isfile(key_path):
        return f"{reporter} has no accepted key"
    if not is_kcm_master(reporter):
        return f"{reporter} is not a KCM master (kcm_alert:reporters {reporters})"
    return signature_problem(key_path, kind_of(tag), data, now, float(window))
