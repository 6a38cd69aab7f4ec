"""
Ask a kube-controller-manager (KCM) cluster the questions operators ask during an
incident: who leads, is it healthy, is it this master, and would the installed binary
accept the flags the formula renders.

Runtime defaults come from the deployed facts (``kcm_config.deployed``: what the last
``state.apply kcm`` laid down on this minion), so ``salt 'master*' kcm.leader`` needs no
arguments. Each default can be overridden per call (``kubeconfig=``, ``secure_port=``,
``bind_address=``, ``ca_cert=``, ``binary=``, ``cert=``, ``identity=``, ``service=``,
``timeout=``).

Errors raise ``CommandExecutionError`` with ``info={"reason": <short reason>}`` and a
one-line message ``<reason>: <detail>`` (``_utils/kcm_error.py``); the CLI prints
``Error running 'kcm.leader': ...`` and exits 1, never with a traceback or key material.
Reasons: ``not_deployed``, ``kubeconfig``, ``unreachable``, ``timeout``, ``tls``,
``unauthorized``, ``forbidden``, ``not_found`` (no leader lock), ``http``, ``malformed``,
``binary``, ``cert``. Two functions answer with a verdict instead: :func:`health` returns
its data with ``healthy: false`` and :func:`status` its row with ``errors`` filled, both
with exit code 1 (as does ``kcm.preflight`` for refused flags).

Identity (the name KCM writes into the Lease, ``<hostname>_<uuid>``) is, first found:
the ``identity=`` argument, the deployed ``identity`` (pillar ``kcm:identity``), the
current pillar ``kcm:identity``. Without one, this minion answers to its kernel
hostname (``socket.gethostname()``, the value Go's ``os.Hostname`` reads; not
shortened) and to its minion id. Set ``kcm:identity`` when KCM runs under a hostname
that is neither.
"""

import datetime
import logging
import os
import shutil
import socket
import subprocess

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "kcm"

# Where each kind of lock keeps the leader record; a kind names the objects KCM writes, in the
# order they are read (the Lease first: on "<x>leases" locks it is the one KCM trusts). Kind
# None (not deployed): a Lease, or the Endpoints of v1.14-v1.16.
LOCK_OBJECTS = {
    None: ("lease", "endpoints"),
    "leases": ("lease",),
    "endpointsleases": ("lease", "endpoints"),
    "configmapsleases": ("lease", "configmap"),
    "endpoints": ("endpoints",),
    "configmaps": ("configmap",),
}
OBJECT_PATHS = {
    "lease": "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}",
    "endpoints": "/api/v1/namespaces/{namespace}/endpoints/{name}",
    "configmap": "/api/v1/namespaces/{namespace}/configmaps/{name}",
}
# The cluster's identity: the UID of kube-system, made once when the cluster was created and
# readable by KCM's own identity (the bootstrap role system:kube-controller-manager may GET
# namespaces), so two clusters that share a `kcm:cluster` name are still told apart.
NAMESPACE_PATH = "/api/v1/namespaces/kube-system"
# kubeconfig key -> UID for the life of this process (the beacon asks on every poll).
_CLUSTER_IDS = {}


def __virtual__():
    return __virtualname__


def _failure(reason, detail):
    return __utils__["kcm_error.failure"](reason, detail)  # noqa: F821


def _lease(name, *args):
    """A ``kcm_lease`` helper; those that read a time get the one RFC 3339 parser."""
    if name in ("parse_lease", "parse_endpoints", "is_expired", "age_seconds"):
        args = (*args, __utils__["kcm_time.parse_rfc3339"])  # noqa: F821
    return __utils__[f"kcm_lease.{name}"](*args)  # noqa: F821


# ---------------------------------------------------------------------------------------
# settings


def _deployed():
    return __salt__["kcm_config.deployed"]() or {}


def _setting(kwargs, name, default=None):
    value = kwargs.get(name)
    return default if value in (None, "") else value


def _file(kwargs, key, deployed=None):
    """A deployed file path (``files.<key>``), overridable by the kwarg of the same name;
    ``deployed``: the facts when the caller has read them already."""
    value = _setting(kwargs, key) or ((deployed if deployed is not None else _deployed()).get("files") or {}).get(key)
    if not value:
        raise _failure(
            "not_deployed",
            f"no {key}= given and kcm is not deployed on this minion (run state.apply kcm first)",
        )
    return value


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def _minion_id():
    return __opts__.get("id") or __grains__.get("id")


# ---------------------------------------------------------------------------------------
# identity and leader


def _configured_identity(kwargs):
    for value in (
        _setting(kwargs, "identity"),
        _deployed().get("identity"),
        (__pillar__.get("kcm") or {}).get("identity") if isinstance(__pillar__.get("kcm"), dict) else None,
    ):
        if value:
            return str(value)
    return None


def _identities(kwargs):
    """
    The names under which this minion's KCM can appear in the Lease: the configured
    identity alone when there is one; otherwise the kernel hostname (what KCM itself
    uses) and the minion id (the usual choice when KCM runs in a UTS namespace).
    """
    configured = _configured_identity(kwargs)
    if configured:
        return (configured,)
    return tuple(dict.fromkeys(name for name in (socket.gethostname(), _minion_id()) if name))


def identity(**kwargs):
    """
    Return the name this minion's KCM reports as the first part of its Lease identity.

    Precedence: ``identity=``, the deployed ``kcm:identity``, the current pillar
    ``kcm:identity``, then the kernel hostname (``socket.gethostname()``, the same
    value KCM's ``os.Hostname()`` reads; not shortened). Without a configured identity,
    :func:`is_leader` also accepts the minion id as this minion's name.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.identity
    """
    return _identities(kwargs)[0]


def _minion_for(node, kwargs):
    # Only "this minion" is known for sure: a mine entry is what any minion says about itself.
    if node is None:
        return None
    return _minion_id() if node in _identities(kwargs) else node


def _api_get(path, kubeconfig, timeout):
    return __salt__["kcm_api.get"](path, kubeconfig, timeout=timeout)


def _reason(exc):
    return __utils__["kcm_error.reason_of"](exc)  # noqa: F821


def _lock(deployed):
    """
    The lock KCM takes with the deployed config: ``kcm_release.lock``, the one answer the
    release hook reads too, so a custom ``leader-elect-resource-*`` in ``extra_args`` is read
    where KCM writes it. Not deployed yet: KCM's default lock, a Lease or (v1.14-v1.16) the
    Endpoints.
    """
    try:
        lock = __salt__["kcm_release.lock"](deployed)
    except (KeyError, TypeError, ValueError) as exc:
        raise _failure("not_deployed", f"the deployed facts name no lock ({exc}); run state.apply kcm") from None
    if lock is None:
        raise _failure("not_found", "leader election is off (kcm:extra_args leader-elect: false): there is no lock")
    if lock["kind"] not in LOCK_OBJECTS:
        raise _failure("malformed", f"--leader-elect-resource-lock={lock['kind']} is no lock kind KCM knows")
    return lock


def _read_lock(kwargs):
    """The raw leader record from the first object of the lock that exists."""
    # One read of the deployed facts for both: the beacon asks this every poll.
    deployed = _deployed()
    kubeconfig = _file(kwargs, "kubeconfig", deployed)
    timeout = kwargs.get("timeout")
    lock = _lock(deployed)
    where = f"{lock['namespace']}/{lock['name']}"
    objects = LOCK_OBJECTS[lock["kind"]]
    for kind in objects:
        try:
            obj = _api_get(OBJECT_PATHS[kind].format(**lock), kubeconfig, timeout)
        except CommandExecutionError as exc:
            if _reason(exc) != "not_found":
                raise
            continue
        try:
            if kind == "lease":
                return _lease("parse_lease", obj)
            # Endpoints and ConfigMap locks keep the record in the same annotation.
            return dict(_lease("parse_endpoints", obj), source=kind)
        except LookupError as exc:
            raise _failure("not_found", f"{kind} {where}: {exc}") from None
        except ValueError as exc:
            raise _failure("malformed", f"{kind} {where}: {exc}") from None
    raise _failure(
        "not_found", f"no {' or '.join(objects)} {where} exists (no KCM has run leader election with this lock)"
    )


def _leader(kwargs):
    """The lock's record plus its node, the minion that node is, and whether it expired."""
    record = _read_lock(kwargs)
    node = _lease("node_of", record["holder"])
    return {
        "holder": record["holder"],
        "node": node,
        "minion": _minion_for(node, kwargs),
        "acquire_time": record["acquire_time"],
        "renew_time": record["renew_time"],
        "lease_duration_seconds": record["lease_duration_seconds"],
        "transitions": record["transitions"],
        "expired": _lease("is_expired", record, _utcnow()),
        "source": record["source"],
    }


def leader(**kwargs):
    """
    Return who holds the KCM leader lock.

    Reads the lock KCM takes with the deployed config (``kcm_release.lock``, which the
    release hook reads too): by default the Lease ``kube-system/kube-controller-manager``,
    on v1.14-v1.16 the Endpoints annotation ``control-plane.alpha.kubernetes.io/leader``;
    ``extra_args`` ``leader-elect-resource-lock``/``-namespace``/``-name`` move it.

    Returns ``holder`` (the full identity, ``<hostname>_<uuid>``; None when released),
    ``node`` (the hostname part), ``minion`` (this minion's id when ``node`` is this
    minion's :func:`identity`; otherwise the node name itself: a mined name is what any
    minion may say, so none is taken), ``acquire_time``, ``renew_time``,
    ``lease_duration_seconds``, ``transitions``, ``expired`` and ``source``
    (``lease`` | ``endpoints`` | ``configmap``).

    ``expired`` is true when nobody holds the lock or ``renew_time + duration`` is in the
    past by this minion's clock; clock skew between masters shifts it by the skew, so
    keep masters on NTP.

    kubeconfig
        Default: the deployed KCM kubeconfig.
    timeout
        Seconds for connect and read. Default 2.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.leader
        salt-call kcm.leader kubeconfig=/root/.kube/config
    """
    return _leader(kwargs)


def is_leader(**kwargs):
    """
    Return True when this minion's KCM holds a live (unexpired) leader lock.

    Compares the leader's node with this minion's names (see :func:`identity`). Raises
    as :func:`leader` does when the lock cannot be read.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.is_leader
    """
    record = _leader(kwargs)
    return bool(record["node"] in _identities(kwargs) and not record["expired"])


# ---------------------------------------------------------------------------------------
# cluster identity


def _cluster_id_cache(write=None):
    """``<cachedir>/kcm/cluster-id.json``: read it (``{}`` when absent), or replace it with ``write``."""
    path = os.path.join(__opts__["cachedir"], "kcm", "cluster-id.json") if __opts__.get("cachedir") else None
    if write is None:
        cached = __utils__["kcm_state_file.read_json"](path, {}) if path else {}  # noqa: F821
        return cached if isinstance(cached, dict) else {}
    try:
        if path:
            __utils__["kcm_state_file.write_json"](path, write)  # noqa: F821
    except OSError as exc:
        # Only costs one more GET next time; the answer itself is good.
        log.debug("kcm: cannot write %s: %s", path, exc)
    return write


def _cluster_uid(kwargs):
    """
    The ``kube-system`` namespace UID, read once per kubeconfig version and cached in this
    process and in ``<cachedir>/kcm/cluster-id.json``.

    The kubeconfig's path and mtime are the cache key: a rewritten kubeconfig (another
    cluster, a renewed certificate) is asked again; when that GET fails, the UID cached
    for the same path still answers (an unreachable apiserver is when alerts need it).
    """
    kubeconfig = _file(kwargs, "kubeconfig")
    path = os.path.realpath(kubeconfig)
    try:
        key = f"{path}@{os.stat(path).st_mtime_ns}"
    except OSError:
        key = path
    if key in _CLUSTER_IDS:
        return _CLUSTER_IDS[key]
    cached = _cluster_id_cache()
    if cached.get("key") == key and cached.get("uid"):
        _CLUSTER_IDS[key] = cached["uid"]
        return cached["uid"]
    try:
        obj = _api_get(NAMESPACE_PATH, kubeconfig, kwargs.get("timeout"))
    except CommandExecutionError:
        if cached.get("path") == path and cached.get("uid"):
            return cached["uid"]
        raise
    metadata = obj.get("metadata")
    uid = metadata.get("uid") if isinstance(metadata, dict) else None
    if not isinstance(uid, str) or not uid:
        raise _failure("malformed", "namespace kube-system has no metadata.uid")
    _cluster_id_cache(write={"key": key, "path": path, "uid": uid})
    _CLUSTER_IDS[key] = uid
    return uid


def cluster_id(**kwargs):
    """
    Return this cluster's stable identity: the UID of the ``kube-system`` namespace.

    Two clusters that both kept ``kcm:cluster: kubernetes`` have different UIDs, so the
    beacon carries it in every event (``cluster_id``) and the alerts carry it as a label.
    Read with the KCM kubeconfig (KCM's own RBAC role may GET namespaces) once, then
    cached under the minion cachedir until the kubeconfig changes.

    kubeconfig
        Default: the deployed KCM kubeconfig.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.cluster_id
    """
    return _cluster_uid(kwargs)


# ---------------------------------------------------------------------------------------
# the service, as systemd sees it

# What `systemctl show` is asked about the unit, and the keys :func:`restarts` answers with.
UNIT_PROPERTIES = {"ActiveState": "active", "NRestarts": "restarts", "ExecMainStatus": "exit_status"}
# How much of the unit's journal is searched for its last error line, and how much of it is shown.
JOURNAL_LINES = 300
ERROR_CHARS = 200


def _unit_name(kwargs):
    return _setting(kwargs, "service", (_deployed().get("service") or {}).get("name") or "kube-controller-manager")


def _systemd_output(argv):
    """What ``argv`` (systemctl, journalctl) prints, or None where no systemd runs (containers,
    tests) or it could not be run: an answer of "unknown", never a failure."""
    if not (os.path.isdir("/run/systemd/system") and shutil.which(argv[0])):
        return None
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None


def _unit(name):
    """{key of UNIT_PROPERTIES: value} of the unit ``name`` (one ``systemctl show``)."""
    out = _systemd_output(["systemctl", "show", f"--property={','.join(UNIT_PROPERTIES)}", "--", name])
    shown = __utils__["kcm_systemd.show_properties"](out or "")  # noqa: F821
    return {key: shown.get(prop) or None for prop, key in UNIT_PROPERTIES.items()}


def _count(value):
    return int(value) if str(value).isdigit() else None


def restarts(last_error=False, **kwargs):
    """
    Return what systemd says of the KCM service: ``unit``, ``active`` (its ActiveState,
    ``unknown`` without systemd), ``restarts`` (NRestarts: the restarts systemd made since the
    unit was last started by hand, after a crash or a lost Lease) and ``exit_status``
    (ExecMainStatus: the exit code of its last process; None while one runs), both None
    without systemd. With ``last_error=True`` also ``last_error``: the last line of its
    journal that says why KCM stopped (a klog error, a flag error, systemd failing to start
    it), secrets filtered, control characters escaped and cut to 200 characters, or None.
    The kcm_leader beacon reads it to tell a crash loop (KCMRestarting) from the exit on a
    lost Lease.

    service
        Default: the deployed ``service:name``.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.restarts last_error=True
    """
    name = _unit_name(kwargs)
    unit = _unit(name)
    row = {
        "unit": name,
        "active": unit["active"] or "unknown",
        "restarts": _count(unit["restarts"]),
        # A running process has no exit status yet: systemd shows 0 for it.
        "exit_status": None if unit["active"] == "active" else _count(unit["exit_status"]),
    }
    if last_error:
        journal = _systemd_output(["journalctl", "--no-pager", "-o", "cat", "-n", str(JOURNAL_LINES), "-u", name])
        line = __utils__["kcm_systemd.last_error_line"](journal or "")  # noqa: F821
        row["last_error"] = __utils__["kcm_alert_rules.one_line"](line, ERROR_CHARS) if line else None  # noqa: F821
    return row


# ---------------------------------------------------------------------------------------
# status: one row for --out=table


def _cert_days_left(path):
    # kcm_pki's own figure, as the kcm_cert beacon and its alert report it: a table that
    # floored 6.98 to 6 beside an alert saying 6.98 read as two different certificates.
    return __salt__["kcm_pki.certificate"](path)["days_left"]


def _part(errors, name, func, default):
    """Run one column's question; a failure fills ``errors`` instead of losing the row."""
    try:
        return func()
    except CommandExecutionError as exc:
        errors.append(f"{name}: {_reason(exc)}")
        return default


def status(**kwargs):
    """
    Return one flat row about this master, made for ``--out=table``: ``minion``,
    ``cluster`` (the deployed ``kcm:cluster``), ``cluster_id`` (:func:`cluster_id`),
    ``version``, ``service_active``, ``healthy``, ``leader`` (yes/no), ``holder``,
    ``lease_age_seconds`` (since the last renewal), ``cert_days_left`` (the KCM
    certificate), and ``errors`` (what could not be answered; the call then exits
    non-zero, and the row is still returned).

    The row comes as a one-element list, because Salt's table outputter draws tables
    from lists of dicts only (a bare dict would print its keys without values).

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.status --out=table
    """
    now = _utcnow()
    errors = []
    service = _unit_name(kwargs)
    record = _part(errors, "leader", lambda: _leader(kwargs), None)
    health_result = _part(errors, "health", lambda: __salt__["kcm.health"](**kwargs), None)
    row = {
        "minion": _minion_id(),
        "cluster": _deployed().get("cluster"),
        "cluster_id": _part(errors, "cluster_id", lambda: _cluster_uid(kwargs), None),
        "version": _part(errors, "version", lambda: __salt__["kcm.version"](binary=kwargs.get("binary")), None),
        "service_active": _unit(service)["active"] or "unknown",
        "healthy": health_result["healthy"] if health_result else None,
        "leader": "unknown",
        "holder": None,
        "lease_age_seconds": None,
        "cert_days_left": _part(errors, "cert", lambda: _cert_days_left(_file(kwargs, "cert")), None),
    }
    if record is not None:
        mine = record["node"] in _identities(kwargs) and not record["expired"]
        row.update(
            leader="yes" if mine else "no",
            holder=record["holder"],
            lease_age_seconds=_lease("age_seconds", record, now),
        )
    row["errors"] = ", ".join(errors)
    if errors:
        __context__["retcode"] = 1
    return [row]


def cert_status(**kwargs):
    """
    Return days left for every certificate the formula manages on this master, including
    the copies embedded in the kubeconfig (``kcm_pki.cert_status``).

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.cert_status
    """
    return __salt__["kcm_pki.cert_status"]()
