"""
Who the KCM masters are, on the Salt master, and whether a report (or an answer) is one of
theirs: the one answer every master-side decision uses (alerts, enrollment, the reconcile,
the fleet view).

A KCM master is a minion whose **id** (the id of its accepted key) matches the master's
own configuration, ``kcm_alert:masters`` (written by ``kcm.master`` from pillar
``kcm:master:masters``): an id glob such as ``master-*``, a list of ids or id globs, or
``N@<nodegroup>`` whose definition uses ids only. Grains, pillar and mine data are what
a minion says about itself and never count (grain, pillar, compound matchers are
refused). ``kcm_alert:clusters`` (``{name: <same forms>}``) may bind each cluster name to
its own masters; a cluster's ``cluster_id`` is pinned at its first genuine report.

A report counts when its tag names a well-formed id with an accepted key that is a KCM
master (checked first, without any I/O, so a refusal is cheap), its ``id`` agrees, and it
carries that minion's signature (made by the beacons with the minion's own Salt key,
:func:`sign_events`) within a time window, with a finite ``signed_at`` and an
``(epoch, counter)`` newer than the last one the master accepted from it.

Called as ``__utils__["kcm_trust.refusal"](...)`` from the runners and the engine; the
beacons reach :func:`sign_beacon_events` through a utils loader of their own, handing it
``kcm_state_file``'s reader and writer (no execution function signs, so nothing callable
over the bus signs arbitrary fields).
"""

import base64
import fnmatch
import json
import logging
import math
import os
import re
import time

__virtualname__ = "kcm_trust"

log = logging.getLogger(__name__)

MINION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
# An id glob: id characters and the glob's own; no '@' (a matcher), ':' (grain/pillar), space.
ID_GLOB_RE = re.compile(r"^[A-Za-z0-9._*?!\[\]-]{1,253}$")
NODEGROUP_RE = re.compile(r"^N@([A-Za-z0-9_.-]+)$")
KEY = "kcm:master:masters"


def __virtual__():
    return __virtualname__


# --------------------------------------------------------------------------
# the target: ids only
# --------------------------------------------------------------------------


def well_formed(minion_id):
    """Whether ``minion_id`` is a minion id that can name one minion and one file only."""
    return isinstance(minion_id, str) and bool(MINION_ID_RE.match(minion_id))


_ID_TARGET = "a minion id glob such as master-*, a list of ids or N@<nodegroup of ids>"


def _glob_problem(glob, key):
    if not isinstance(glob, str) or not ID_GLOB_RE.match(glob):
        return (
            f"{key}: {str(glob)[:80]!r} is not {_ID_TARGET}; grain, pillar and compound targets are what"
            " a minion says about itself"
        )
    if not glob.strip("*?[]!"):
        return f"{key}: {glob!r} matches every minion; expected {_ID_TARGET}"
    return None


def target_problem(target, key=KEY):
    """Why ``target`` is not an id target (an id glob, a list of ids/id globs, ``N@group``), or None."""
    if isinstance(target, str) and NODEGROUP_RE.match(target):
        return None
    if isinstance(target, str):
        if not target.strip():
            return f"{key}: required ({_ID_TARGET}): the KCM masters by minion id"
        return _glob_problem(target, key)
    if isinstance(target, list):
        if not target:
            return f"{key}: required ({_ID_TARGET}): the KCM masters by minion id"
        return next((why for why in (_glob_problem(g, key) for g in target) if why), None)
    if target is None:
        return f"{key}: required ({_ID_TARGET}): the KCM masters by minion id"
    return f"{key}: {target!r} is not {_ID_TARGET}"


def masters_problems(master):
    """The problems of ``kcm:master:masters`` / ``clusters`` (and of the grain settings they replace)."""
    problems = []
    if "reporters" in master:
        problems.append(
            "kcm:master:reporters: replaced by kcm:master:masters (the KCM masters by minion id,"
            " such as master-*; a grain is what a minion says about itself)"
        )
    for key in ("grain", "value"):
        if key in (master.get("enroll") or {}):
            problems.append(
                f"kcm:master:enroll:{key}: no longer read: enrollment highstates the minions of"
                " kcm:master:masters (by id)"
            )
    clusters = master.get("clusters")
    if clusters is not None and not isinstance(clusters, dict):
        problems.append(f"kcm:master:clusters: {clusters!r} is not a mapping of cluster names to minion ids")
        clusters = {}
    targets = [("kcm:master:masters", master.get("masters"))]
    targets += [(f"kcm:master:clusters:{name}", target) for name, target in (clusters or {}).items()]
    return problems + [why for why in (target_problem(target, key) for key, target in targets) if why]


def _nodegroup_globs(name, nodegroups, key):
    """The id globs of nodegroup ``name``; only ids, id globs and ``L@`` lists joined by ``or``."""
    definition = (nodegroups or {}).get(name)
    if definition is None:
        raise ValueError(f"{key}: N@{name}: the master defines no nodegroup {name}")
    words = definition if isinstance(definition, list) else str(definition).split()
    globs = []
    for word in words:
        if word == "or" and not isinstance(definition, list):
            continue
        parts = word[2:].split(",") if isinstance(word, str) and word.startswith("L@") else [word]
        for part in parts:
            why = _glob_problem(part, f"{key}: N@{name}")
            if why:
                raise ValueError(why + " (a nodegroup of ids: ids, id globs and L@ lists joined by 'or')")
            globs.append(part)
    if not globs:
        raise ValueError(f"{key}: N@{name}: the nodegroup names no minion id")
    return tuple(globs)


def resolve(target, nodegroups=None, key=KEY):
    """The id globs of an id target; raises ValueError naming ``key`` for anything else."""
    why = target_problem(target, key)
    if why:
        raise ValueError(why)
    if isinstance(target, str):
        group = NODEGROUP_RE.match(target)
        return _nodegroup_globs(group.group(1), nodegroups, key) if group else (target,)
    return tuple(target)


class Trust:
    """The KCM masters of a Salt master's configuration (``opts``), decided by minion id."""

    def __init__(self, opts):
        settings = opts.get("kcm_alert") or {}
        self.target = settings.get("masters")
        self.problem = None
        self.masters, self.clusters, self._memo = (), {}, {}
        try:
            self.masters = resolve(self.target, opts.get("nodegroups"))
            for name, target in sorted((settings.get("clusters") or {}).items()):
                self.clusters[str(name)] = resolve(target, opts.get("nodegroups"), f"kcm:master:clusters:{name}")
        except ValueError as exc:
            # No answer is no KCM master at all: everything is refused, and says why.
            self.problem, self.masters, self.clusters = str(exc), (), {}
        self.pki_dir = opts.get("pki_dir") or ""

    def is_master(self, minion):
        """Whether ``minion`` (a well-formed id) is a KCM master; pure, memoized."""
        found = self._memo.get(minion)
        if found is None:
            found = any(fnmatch.fnmatchcase(minion, glob) for glob in self.masters)
            if len(self._memo) < 100_000:
                self._memo[minion] = found
        return found

    def may_report(self, minion, cluster):
        """Whether ``minion`` may speak for the cluster named ``cluster`` (kcm_alert:clusters)."""
        if not self.clusters:
            return True
        globs = self.clusters.get(str(cluster))
        return bool(globs) and any(fnmatch.fnmatchcase(minion, glob) for glob in globs)

    def why_not_master(self, minion):
        return self.problem or f"{minion} is not a KCM master (kcm_alert:masters {self.target!r})"

    def accepted_masters(self):
        """The KCM masters whose keys this master accepted (its key directory, never a cache)."""
        try:
            names = os.listdir(os.path.join(self.pki_dir, "minions"))
        except OSError:
            return []
        return sorted(n for n in names if MINION_ID_RE.match(n) and self.is_master(n))


_TRUST = {}


def trust(opts):
    """The :class:`Trust` of ``opts``, built once per configuration (a refusal must stay cheap)."""
    settings = opts.get("kcm_alert") or {}
    key = json.dumps(
        [settings.get("masters"), settings.get("clusters"), opts.get("nodegroups"), opts.get("pki_dir")],
        sort_keys=True,
        default=str,
    )
    found = _TRUST.get(key)
    if found is None:
        if len(_TRUST) > 16:
            _TRUST.clear()
        found = _TRUST[key] = Trust(opts)
    return found


def self_pick_warnings(opts, trust_=None):
    """What in the master's configuration lets a new minion choose an id that is a KCM master."""
    found = trust_ or trust(opts)
    out = []
    if opts.get("auto_accept"):
        out.append("auto_accept is on: any new minion whose id matches kcm_alert:masters becomes a KCM master")
    if opts.get("autosign_grains_dir") or opts.get("autosign_file"):
        out.append(
            "autosign_grains_dir/autosign_file accept keys by what a minion says: an id matching"
            " kcm_alert:masters then becomes a KCM master"
        )
    if found.problem:
        out.append(found.problem)
    return out


# --------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------


def reporter_of(tag, beacons):
    """The minion a ``salt/beacon/<minion>/<beacon>/<kind>`` tag names, or None unless
    ``<beacon>`` is the one that sends ``<kind>`` (``beacons``: ``{kind: beacon}``, the table
    of ``kcm_alert_rules``, handed over by the caller)."""
    parts = str(tag or "").split("/")
    if len(parts) != 5 or parts[:2] != ["salt", "beacon"]:
        return None
    return parts[2] if beacons.get(parts[4]) == parts[3] else None


def kind_of(tag):
    """The last part of a tag: the report's kind."""
    return str(tag or "").rstrip("/").rsplit("/", 1)[-1]


def signed_message(kind, data):
    """The bytes the beacons sign: the kind and every field but ``sig`` and the bus's
    ``_``-prefixed ones, as canonical JSON."""
    fields = {k: v for k, v in data.items() if k != "sig" and not str(k).startswith("_")}
    return json.dumps({"kind": kind, "data": fields}, sort_keys=True, separators=(",", ":")).encode()


def _finite(value):
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _public_key(key_path):
    from cryptography.hazmat.primitives import serialization

    with open(key_path, "rb") as handle:
        return serialization.load_pem_public_key(handle.read())


def signature_problem(key_path, kind, data, now, window):
    """Why ``data['sig']`` is not the signature of this event by the key at ``key_path``, or None."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signed_at = _finite(data.get("signed_at"))
    if not isinstance(data.get("sig"), str) or data.get("signed_at") is None:
        return "unsigned"
    if signed_at is None:
        return f"signed_at {str(data.get('signed_at'))[:40]!r} is not a finite time"
    if abs(now - signed_at) > window:
        return f"signed {int(now - signed_at)} s ago (window {window:g} s)"
    try:
        _public_key(key_path).verify(
            base64.b64decode(data["sig"]), signed_message(kind, data), padding.PKCS1v15(), hashes.SHA256()
        )
    except (OSError, ValueError, TypeError, InvalidSignature):
        return "the signature is not the reporter's"
    return None


def refusal(tag, data, trust_, now, window, beacons):
    """
    Why the event ``tag``/``data`` is not a report to act on, or None (see the module
    docstring; ``beacons`` as for :func:`reporter_of`). The id checks come first and cost
    no I/O: a minion that is no KCM master is refused before its key or signature is looked at.
    """
    data = data if isinstance(data, dict) else {}
    reporter = reporter_of(tag, beacons)
    if reporter is None or not MINION_ID_RE.match(reporter):
        return f"the tag {str(tag)[:80]!r} names no minion"
    if data.get("id") != reporter:
        return f"the tag names {reporter} but the event comes from {str(data.get('id'))[:80]!r}"
    if not trust_.is_master(reporter):
        return trust_.why_not_master(reporter)
    if not trust_.may_report(reporter, data.get("cluster")):
        return f"{reporter} is not a KCM master of cluster {str(data.get('cluster'))[:80]!r} (kcm_alert:clusters)"
    key_path = os.path.join(trust_.pki_dir, "minions", reporter)
    if not os.path.isfile(key_path):
        return f"{reporter} has no accepted key"
    why = signature_problem(key_path, kind_of(tag), data, now, float(window))
    if why is None and sequence(data) is None:
        why = "no (epoch, counter) replay guard in the report"
    return why


def sequence(data):
    """The report's ``(epoch, counter)`` (integers), or None."""
    epoch, counter = data.get("epoch"), data.get("counter")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62 for v in (epoch, counter)):
        return None
    return epoch, counter


# How far behind the newest counter of a sender a report may arrive (concurrent callers) and
# still count once; older ones are refused.
REPLAY_WINDOW = 64


def replay_problem(senders, reporter, data):
    """
    Why a signed report of ``reporter`` is a replay, or None; records it in ``senders``
    (``{minion: {"epoch", "counter", "seen"}}``, the master's store): the newest counter of
    the sender's epoch and the counters seen within ``REPLAY_WINDOW`` below it, so a report
    counts once even when it arrives a little out of order. A newer epoch is a minion with a
    fresh disk (reinstalled, same key): its counter restarts.
    """
    seq = sequence(data)
    entry = senders.get(reporter) or {}
    last = sequence(entry)
    if seq is None:
        return "no (epoch, counter) replay guard in the report"
    if last is None or seq[0] > last[0]:
        senders[reporter] = {"epoch": seq[0], "counter": seq[1], "seen": []}
        return None
    seen = [c for c in entry.get("seen") or [] if isinstance(c, int)]
    epoch, newest = last
    counter = seq[1]
    if seq[0] < epoch or counter == newest or counter in seen or counter <= newest - REPLAY_WINDOW:
        return f"a replay: (epoch, counter) {seq} was seen, or is older than {last} of {reporter} allows"
    if counter > newest:
        seen, newest = seen + [newest], counter
    else:
        seen.append(counter)
    kept = sorted(c for c in seen if c > newest - REPLAY_WINDOW)
    senders[reporter] = {"epoch": epoch, "counter": newest, "seen": kept}
    return None


def pin_problem(pins, trust_, data):
    """
    Why a report about cluster ``data['cluster']`` contradicts its pin, or None; pins what
    it sees first. With ``kcm_alert:clusters`` each configured name is one cluster: its
    ``cluster_id`` is pinned (``pins``: ``{name: cluster_id}``, the master's store) at its
    first genuine report, and only ``kcm_alert.unpin <name>`` forgets it (a rebuilt
    cluster). Without it, clusters may share a name (told apart by ``cluster_id``) and any
    KCM master speaks for any of them: nothing is pinned.
    """
    if not trust_.clusters:
        return None
    name = str(data.get("cluster") or "unknown")
    cluster_id = data.get("cluster_id")
    pinned = (pins.get(name) or {}).get("cluster_id")
    if pinned and cluster_id != pinned:
        return (
            f"cluster {printable(name, 80)!r} is pinned to cluster_id {pinned!r}, not"
            f" {printable(cluster_id, 40)!r} (salt-run kcm_alert.unpin {printable(name, 80)} after a rebuild)"
        )
    if cluster_id and not pinned:
        pins[name] = {"cluster_id": str(cluster_id)}
    return None


def answer_problem(key_path, minion, answer, nonce, now, window):
    """
    Why the reconcile's (or fleet view's) answer of ``minion`` is not that minion's signed
    answer to the question ``nonce``, or None. The master bus also carries job returns any
    minion fires in another's name (Salt core), so an answer counts only signed.
    """
    if not isinstance(answer, dict) or answer.get("id") != minion or answer.get("nonce") != nonce:
        return "not a signed answer to this question"
    return signature_problem(key_path, "answer", answer, now, window)


# --------------------------------------------------------------------------
# the signing side (on the minion: the beacons, and kcm_beacon.answer)
# --------------------------------------------------------------------------


def _signing_key(opts):
    from cryptography.hazmat.primitives import serialization

    with open(os.path.join(opts.get("pki_dir", ""), "minion.pem"), "rb") as handle:
        return serialization.load_pem_private_key(handle.read(), password=None)


def _next_sequence(opts, count, read_json, write_json):
    """``count`` fresh (epoch, counter) pairs: the counter is kept in the minion's cachedir;
    without it (a fresh disk) a new epoch starts, the current time in ms, above any before."""
    path = os.path.join(opts.get("cachedir", ""), "kcm", "sign-sequence.json")
    state = read_json(path)
    if not isinstance(state, dict) or sequence(state) is None:
        state = {"epoch": int(time.time() * 1000), "counter": 0}
    first = state["counter"] + 1
    state["counter"] += count
    write_json(path, state)
    return [(state["epoch"], first + i) for i in range(count)]


def sign_beacon_events(opts, events, read_json, write_json):
    """:func:`sign_events` for a beacon (its ``kcm_state_file`` reader and writer); unsigned, and logged,
    without a readable key or counter file, so the master refuses them."""
    try:
        return sign_events(opts, events, read_json, write_json)
    except (OSError, ValueError) as exc:
        log.warning("kcm beacons: cannot sign (%s); the events go unsigned and the master refuses them", exc)
        return events


def sign_events(opts, events, read_json, write_json):
    """
    Return ``events`` (dicts with a ``tag`` tail) each with this minion's ``id``,
    ``signed_at``, ``epoch``, ``counter`` and ``sig`` (its Salt key). Without a readable key
    or counter the events go unsigned (logged by the caller), so the master refuses them.
    """
    if not events:
        return events
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = _signing_key(opts)
    out = []
    for event, (epoch, counter) in zip(events, _next_sequence(opts, len(events), read_json, write_json)):
        event = dict(event, id=opts["id"], signed_at=round(time.time(), 3), epoch=epoch, counter=counter)
        kind = event.pop("tag")
        signature = key.sign(signed_message(kind, event), padding.PKCS1v15(), hashes.SHA256())
        out.append(dict(event, tag=kind, sig=base64.b64encode(signature).decode()))
    return out


def sign_answer(opts, answer, nonce):
    """``answer`` (the minion's own reading) signed for the master's question ``nonce``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    answer = dict(answer, id=opts["id"], nonce=str(nonce)[:64], signed_at=round(time.time(), 3))
    signature = _signing_key(opts).sign(signed_message("answer", answer), padding.PKCS1v15(), hashes.SHA256())
    return dict(answer, sig=base64.b64encode(signature).decode())


def printable(value, limit=256):
    """``value`` as text without control characters (escaped like ``repr``), at most ``limit``."""
    text = str(value)
    if any(not ch.isprintable() for ch in text):
        text = repr(text)[1:-1]
    return text[:limit]
