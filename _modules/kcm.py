"""
Ask a kube-controller-manager (KCM) cluster the questions operators ask during an
incident: who leads, is it healthy, is it this master, and would the installed binary
accept the flags the formula renders.

Runtime defaults come from the deployed facts (``kcm_config.deployed``: what the last
``state.apply kcm`` laid down on this minion), so ``salt 'master*' kcm.leader`` needs no
arguments. Each default can be overridden per call (``kubeconfig=``, ``secure_port=``,
``bind_address=``, ``ca_cert=``, ``binary=``, ``cert=``, ``identity=``, ``service=``,
``timeout=``).

Failures return ``{"error": <short reason>, "detail": <one line>}`` and make the call
exit non-zero; they never carry a traceback or key material. Reasons: ``not_deployed``,
``kubeconfig``, ``unreachable``, ``timeout``, ``tls``, ``unauthorized``, ``forbidden``,
``not_found`` (no leader lock), ``http``, ``malformed``, ``binary``.

Identity (the name KCM writes into the Lease, ``<hostname>_<uuid>``) is, first found:
the ``identity=`` argument, the deployed ``identity`` (pillar ``kcm:identity``), the
current pillar ``kcm:identity``. Without one, this minion answers to its kernel
hostname (``socket.gethostname()``, the value Go's ``os.Hostname`` reads; not
shortened) and to its minion id. Set ``kcm:identity`` when KCM runs under a hostname
that is neither.
"""

import datetime
import json
import logging
import os
import re
import shutil
import socket
import subprocess

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "kcm"

LOCK_NAMESPACE = "kube-system"
LOCK_NAME = "kube-controller-manager"
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{LOCK_NAMESPACE}/leases/{LOCK_NAME}"
ENDPOINTS_PATH = f"/api/v1/namespaces/{LOCK_NAMESPACE}/endpoints/{LOCK_NAME}"
LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"
# The cluster's identity: the UID of kube-system, made once when the cluster was created and
# readable by KCM's own identity (the bootstrap role system:kube-controller-manager may GET
# namespaces), so two clusters that share a `kcm:cluster` name are still told apart.
NAMESPACE_PATH = f"/api/v1/namespaces/{LOCK_NAMESPACE}"
# kubeconfig key -> UID for the life of this process (the beacon asks on every poll).
_CLUSTER_IDS = {}

# RFC 3339 as Kubernetes writes it: metav1.Time (seconds) and MicroTime (microseconds).
_TIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$"
)
_VERSION_RE = re.compile(r"\bv\d+\.\d+\.\d+[\w.+-]*")
_CHECK_RE = re.compile(r"^\[([+-])\](\S+)\s*(.*)$")
BINARY_TIMEOUT = 30


def __virtual__():
    return __virtualname__


class _Failure(Exception):
    """A short reason plus one line of detail, turned into the error dict at the edge."""

    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------------------
# pure parsing (no I/O): tested against records written from the documented formats


def _parse_time(value, field):
    """An RFC 3339 timestamp as an aware datetime; None stays None."""
    if value is None:
        return None
    match = _TIME_RE.match(str(value))
    if not match:
        raise ValueError(f"{field}: {value!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0").ljust(6, "0")[:6])
    if zone in ("Z", "z"):
        tz = datetime.timezone.utc
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = datetime.timezone(sign * datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    return datetime.datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz
    )


def _integer(value, field):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: {value!r} is not an integer")
    return value


def _record(holder, duration, acquire, renew, transitions, source, prefix):
    """The normalized leader record shared by both lock kinds."""
    if holder is not None and not isinstance(holder, str):
        raise ValueError(f"{prefix}holderIdentity: {holder!r} is not a string")
    _parse_time(acquire, prefix + "acquireTime")
    _parse_time(renew, prefix + "renewTime")
    return {
        "holder": holder or None,
        "acquire_time": acquire,
        "renew_time": renew,
        "lease_duration_seconds": _integer(duration, prefix + "leaseDurationSeconds"),
        "transitions": _integer(transitions, prefix + "transitions") or 0,
        "source": source,
    }


def _parse_lease(obj):
    """
    The leader record of a ``coordination.k8s.io/v1`` Lease object (parsed JSON).
    Raises ValueError naming the field when the object is not a Lease as documented.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("spec", {}), dict):
        raise ValueError("Lease: expected an object with a spec mapping")
    spec = obj.get("spec", {})
    return _record(
        spec.get("holderIdentity"),
        spec.get("leaseDurationSeconds"),
        spec.get("acquireTime"),
        spec.get("renewTime"),
        spec.get("leaseTransitions"),
        "lease",
        "spec.",
    )


def _parse_endpoints(obj):
    """
    The leader record in the ``control-plane.alpha.kubernetes.io/leader`` annotation of
    an Endpoints object (KCM v1.14-v1.19). Raises LookupError when the annotation is
    absent, ValueError when it is not the documented JSON record.
    """
    if not isinstance(obj, dict):
        raise ValueError("Endpoints: expected an object")
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(LEADER_ANNOTATION)
    if raw is None:
        raise LookupError(f"Endpoints {LOCK_NAMESPACE}/{LOCK_NAME} has no {LEADER_ANNOTATION} annotation")
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValueError(f"annotation {LEADER_ANNOTATION} is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError(f"annotation {LEADER_ANNOTATION} is not a JSON object")
    return _record(
        data.get("holderIdentity"),
        data.get("leaseDurationSeconds"),
        data.get("acquireTime"),
        data.get("renewTime"),
        data.get("leaderTransitions"),
        "endpoints",
        "annotation.",
    )


def _node_of(holder):
    """``k8s-01_105bfb92-...`` -> ``k8s-01``; the hostname may itself contain '_'."""
    if not holder:
        return None
    return holder.rsplit("_", 1)[0] if "_" in holder else holder


def _expired(record, now):
    """
    True when nobody holds the lock, or ``renew_time + lease_duration_seconds < now``.

    ``now`` is this minion's clock while ``renew_time`` is the leader's: with clock skew
    between masters the answer is off by that skew (client-go itself ignores these
    timestamps and times expiry from when it saw the record change). Keep the masters on
    NTP, or watch for changes over time (the beacon) rather than trusting one reading.
    """
    if not record.get("holder"):
        return True
    renew = _parse_time(record.get("renew_time"), "renewTime")
    duration = record.get("lease_duration_seconds")
    if renew is None or duration is None:
        return True
    return renew + datetime.timedelta(seconds=duration) < now


def _age_seconds(record, now):
    renew = _parse_time(record.get("renew_time"), "renewTime")
    return None if renew is None else round((now - renew).total_seconds(), 1)


def _parse_healthz(status, body):
    """``/healthz?verbose`` -> ``{healthy, status, checks: {name: 'ok' | 'failed: ...'}}``."""
    checks = {}
    for line in str(body).splitlines():
        match = _CHECK_RE.match(line.strip())
        if match:
            sign, name, text = match.groups()
            checks[name] = "ok" if sign == "+" else (text or "failed")
    healthy = status == 200 and all(value == "ok" for value in checks.values())
    return {"healthy": healthy, "status": status, "checks": checks}


def _binary_error(stderr, stdout=""):
    """
    The binary's own complaint. Cobra prints the whole usage text (hundreds of lines)
    around ``Error: ...``, so keep the ``Error:`` lines; without any, the last lines.
    """
    lines = [line.rstrip() for line in (stderr or stdout or "").splitlines() if line.strip()]
    errors = list(dict.fromkeys(line for line in lines if line.lower().startswith("error:")))
    text = "\n".join(errors or lines[-5:]).strip()
    return text[:1000] or "exited non-zero without a message"


# ---------------------------------------------------------------------------------------
# settings and the error edge


def _deployed():
    if "kcm_config.deployed" not in __salt__:
        return {}
    return __salt__["kcm_config.deployed"]() or {}


def _setting(kwargs, name, default=None):
    value = kwargs.get(name)
    return default if value in (None, "") else value


def _file(kwargs, key):
    """A deployed file path (``files.<key>``), overridable by the kwarg of the same name."""
    value = _setting(kwargs, key) or (_deployed().get("files") or {}).get(key)
    if not value:
        raise _Failure(
            "not_deployed",
            f"no {key}= given and kcm is not deployed on this minion (run state.apply kcm first)",
        )
    return value


def _error(reason, detail):
    __context__["retcode"] = 1
    log.debug("kcm: %s: %s", reason, detail)
    return {"error": reason, "detail": detail}


def _from_exception(exc):
    if isinstance(exc, _Failure):
        return _error(exc.reason, exc.detail)
    return _error(getattr(exc, "reason", "error"), getattr(exc, "detail", None) or str(exc))


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
    :func:`is_leader` also accepts the minion id as this minion's name. Add this
    function to the Salt mine (``mine_functions: {kcm.identity: []}``) so
    ``kcm.leader`` on any master can name the leader's minion id.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.identity
    """
    return _identities(kwargs)[0]


def _mined_minion(node):
    """The minion whose mined ``kcm.identity`` equals ``node``, or None."""
    if __opts__.get("file_client") == "local" or "mine.get" not in __salt__:
        return None
    try:
        mined = __salt__["mine.get"]("*", "kcm.identity") or {}
    except Exception:  # pylint: disable=broad-except
        # The mine is a convenience here; a master that does not answer must not fail kcm.leader.
        log.debug("kcm: mine.get kcm.identity failed", exc_info=True)
        return None
    matches = sorted(minion for minion, ident in mined.items() if ident == node)
    return matches[0] if matches else None


def _minion_for(node, kwargs):
    if node is None:
        return None
    if node in _identities(kwargs):
        return _minion_id()
    if kwargs.get("map_minion", True):
        return _mined_minion(node) or node
    return node


def _kcm_api(name):
    if f"kcm_api.{name}" not in __salt__:
        raise _Failure("not_deployed", "the kcm_api module is not available (run saltutil.sync_modules)")
    return __salt__[f"kcm_api.{name}"]


def _api_get(path, kubeconfig, timeout):
    return _kcm_api("request_json")(path, kubeconfig, timeout=timeout)


def _read_lock(kwargs):
    """The raw leader record: the Lease, or the Endpoints annotation when no Lease exists."""
    kubeconfig = _file(kwargs, "kubeconfig")
    timeout = kwargs.get("timeout")
    try:
        return _parse_lease(_api_get(LEASE_PATH, kubeconfig, timeout))
    except CommandExecutionError as exc:
        if getattr(exc, "reason", None) != "not_found":
            raise
    except ValueError as exc:
        raise _Failure("malformed", f"Lease {LOCK_NAMESPACE}/{LOCK_NAME}: {exc}") from None
    # No Lease: KCM v1.14-v1.16 keep the record only in the Endpoints annotation.
    try:
        return _parse_endpoints(_api_get(ENDPOINTS_PATH, kubeconfig, timeout))
    except CommandExecutionError as exc:
        if getattr(exc, "reason", None) == "not_found":
            raise _Failure(
                "not_found",
                f"neither Lease nor Endpoints {LOCK_NAMESPACE}/{LOCK_NAME} exists (no KCM has run leader election)",
            ) from None
        raise
    except LookupError as exc:
        raise _Failure("not_found", str(exc)) from None
    except ValueError as exc:
        raise _Failure("malformed", f"Endpoints {LOCK_NAMESPACE}/{LOCK_NAME}: {exc}") from None


def _describe(record, now, kwargs):
    node = _node_of(record["holder"])
    return {
        "holder": record["holder"],
        "node": node,
        "minion": _minion_for(node, kwargs),
        "acquire_time": record["acquire_time"],
        "renew_time": record["renew_time"],
        "lease_duration_seconds": record["lease_duration_seconds"],
        "transitions": record["transitions"],
        "expired": _expired(record, now),
        "source": record["source"],
    }


def _leader(kwargs):
    return _describe(_read_lock(kwargs), _utcnow(), kwargs)


def leader(**kwargs):
    """
    Return who holds the KCM leader lock.

    Reads the Lease ``kube-system/kube-controller-manager``; when there is none (KCM
    v1.14-v1.16), the Endpoints annotation ``control-plane.alpha.kubernetes.io/leader``.

    Returns ``holder`` (the full identity, ``<hostname>_<uuid>``; None when released),
    ``node`` (the hostname part), ``minion`` (this minion's id when ``node`` is this
    minion's :func:`identity`; otherwise the minion whose mined ``kcm.identity`` matches;
    otherwise the node name itself), ``acquire_time``, ``renew_time``,
    ``lease_duration_seconds``, ``transitions``, ``expired`` and ``source``
    (``lease`` | ``endpoints``).

    ``expired`` is true when nobody holds the lock or ``renew_time + duration`` is in the
    past by this minion's clock; clock skew between masters shifts it by the skew, so
    keep masters on NTP.

    kubeconfig
        Default: the deployed KCM kubeconfig.
    timeout
        Seconds for connect and read. Default 2.
    map_minion
        False skips the mine lookup for the leader's minion id. Default True.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.leader
        salt-call kcm.leader kubeconfig=/root/.kube/config
    """
    try:
        return _leader(kwargs)
    except (_Failure, CommandExecutionError) as exc:
        return _from_exception(exc)


def is_leader(**kwargs):
    """
    Return True when this minion's KCM holds a live (unexpired) leader lock.

    Compares the leader's node with this minion's names (see :func:`identity`). On
    failure returns the error dict of :func:`leader`.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.is_leader
    """
    kwargs = dict(kwargs, map_minion=False)
    try:
        record = _leader(kwargs)
    except (_Failure, CommandExecutionError) as exc:
        return _from_exception(exc)
    return bool(record["node"] in _identities(kwargs) and not record["expired"])


# ---------------------------------------------------------------------------------------
# cluster identity


def _cluster_id_path():
    cachedir = __opts__.get("cachedir")
    return os.path.join(cachedir, "kcm", "cluster-id.json") if cachedir else None


def _read_cluster_id_cache():
    if not _cluster_id_path():
        return {}
    try:
        with open(_cluster_id_path(), encoding="utf-8") as fh:
            cached = json.load(fh)
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def _write_cluster_id_cache(cached):
    import salt.utils.atomicfile  # pylint: disable=import-outside-toplevel

    if not _cluster_id_path():
        return
    try:
        os.makedirs(os.path.dirname(_cluster_id_path()), mode=0o700, exist_ok=True)
        with salt.utils.atomicfile.atomic_open(_cluster_id_path(), "w") as fh:
            json.dump(cached, fh, sort_keys=True)
    except OSError as exc:
        # Only costs one more GET next time; the answer itself is good.
        log.debug("kcm: cannot write %s: %s", _cluster_id_path(), exc)


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
    cached = _read_cluster_id_cache()
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
        raise _Failure("malformed", f"namespace {LOCK_NAMESPACE} has no metadata.uid")
    _write_cluster_id_cache({"key": key, "path": path, "uid": uid})
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
    try:
        return _cluster_uid(kwargs)
    except (_Failure, CommandExecutionError) as exc:
        return _from_exception(exc)


# ---------------------------------------------------------------------------------------
# the local KCM process: health, version, flags


def _probe_host(bind_address):
    # A wildcard bind answers on loopback, and the serving cert names 127.0.0.1.
    if bind_address in (None, "", "0.0.0.0"):
        return "127.0.0.1"
    if bind_address == "::":
        return "[::1]"
    return f"[{bind_address}]" if ":" in bind_address else bind_address


def health(**kwargs):
    """
    Return the local KCM's ``/healthz?verbose``, parsed per check:
    ``{"healthy": bool, "status": <HTTP status>, "checks": {"leaderElection": "ok", ...}, "url": ...}``.

    The secure port's certificate is verified against the deployed CA. The call exits
    non-zero when KCM is not healthy. Note: only the current leader can fail
    ``leaderElection``; a healthy standby says nothing about who leads.

    bind_address, secure_port, ca_cert
        Default: the deployed ``bind_address`` (``0.0.0.0`` probes 127.0.0.1),
        ``secure_port`` and ``files.ca_cert``.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.health
    """
    try:
        result = _health(kwargs)
    except (_Failure, CommandExecutionError) as exc:
        return _from_exception(exc)
    if not result["healthy"]:
        __context__["retcode"] = 1
    return result


def _health(kwargs):
    deployed = _deployed()
    port = _setting(kwargs, "secure_port", deployed.get("secure_port"))
    if not port:
        raise _Failure("not_deployed", "no secure_port= given and kcm is not deployed on this minion")
    host = _probe_host(_setting(kwargs, "bind_address", deployed.get("bind_address")))
    url = f"https://{host}:{int(port)}/healthz?verbose"
    reply = _kcm_api("probe")(url, _file(kwargs, "ca_cert"), timeout=kwargs.get("timeout"))
    return dict(_parse_healthz(reply["status"], reply["body"]), url=url)


def _run(argv):
    try:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BINARY_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise _Failure("binary", f"{argv[0]} does not exist") from None
    except PermissionError:
        raise _Failure("binary", f"{argv[0]} is not executable") from None
    except subprocess.TimeoutExpired:
        raise _Failure("binary", f"{argv[0]} did not finish within {BINARY_TIMEOUT} s") from None
    except OSError as exc:
        raise _Failure("binary", f"{argv[0]} cannot run ({exc.strerror})") from None


def _version_of(binary):
    proc = _run([binary, "--version"])
    match = _VERSION_RE.search(proc.stdout or "")
    if proc.returncode != 0 or not match:
        raise _Failure("binary", f"{binary} --version: {_binary_error(proc.stderr, proc.stdout)}")
    return match.group(0)


def version(**kwargs):
    """
    Return the installed KCM binary's version, e.g. ``v1.37.2``.

    binary
        Default: the deployed ``files.binary``.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.version
    """
    try:
        return _version_of(_file(kwargs, "binary"))
    except _Failure as exc:
        return _from_exception(exc)


def _config(config):
    config = config or _deployed()
    if not config:
        raise _Failure("not_deployed", "no config= given and kcm is not deployed on this minion")
    return config


def _render(config):
    if "kcm_flags.render" not in __salt__:
        raise _Failure("not_deployed", "the kcm_flags module is not available (run saltutil.sync_modules)")
    try:
        return __salt__["kcm_flags.render"](config)
    except KeyError as exc:
        raise _Failure("malformed", f"config has no key {exc} (expected a resolved kcm config)") from None


def _systemd_argv(config, binary):
    """The argv systemd builds from the unit's ExecStart= line, with ``binary`` as argv[0]."""
    _render(config)
    try:
        line = __salt__["kcm_flags.exec_start"](config, binary=binary)
        # Read as the unit file carries it (continuations included), not as a pre-split list.
        return __utils__["kcm_systemd.parse_exec_start"](f"[Service]\nExecStart={line}\n")  # noqa: F821
    except ValueError as exc:
        raise _Failure("malformed", f"the rendered ExecStart= line is not what systemd would run: {exc}") from None


def args(config=None):
    """
    Return the flags the formula renders for KCM (``--name=value``, sorted): the same
    list the unit's ``ExecStart=`` carries, from the same function.

    config
        A resolved config (as in ``kcm_config.deployed``). Default: the deployed one.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.args
    """
    try:
        return _render(_config(config))
    except _Failure as exc:
        return _from_exception(exc)


def preflight(binary=None, config=None):
    """
    Run ``binary`` with the flags the formula renders plus ``--version`` and report
    whether it accepts them: ``{"ok": True, "version": "v1.37.2", "binary": ...}`` or
    ``{"ok": False, "error": <the binary's own message>, "binary": ...}`` (non-zero exit).

    KCM parses every flag before it handles ``--version``, so a flag the release does
    not know is refused here without starting anything. The argv is the one systemd
    builds from the unit's ``ExecStart=`` line (``kcm_flags.exec_start`` parsed by
    ``kcm_systemd.parse_exec_start``: quoting, ``%%``, ``$$``), with ``binary`` as argv[0],
    so a value that only breaks after systemd's splitting is refused here too.

    binary
        Default: the deployed ``files.binary``.
    config
        A resolved config. Default: the deployed one.

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.preflight
        salt 'master1' kcm.preflight binary=/data/apps/k8s/kubernetes/versions/v1.37.2/kube-controller-manager
    """
    try:
        config = _config(config)
        binary = binary or (config.get("files") or {}).get("binary")
        if not binary:
            raise _Failure("not_deployed", "no binary= given and the config has no files.binary")
        proc = _run([*_systemd_argv(config, binary), "--version"])
    except _Failure as exc:
        return _from_exception(exc)
    match = _VERSION_RE.search(proc.stdout or "")
    if proc.returncode == 0 and match:
        return {"ok": True, "version": match.group(0), "binary": binary}
    __context__["retcode"] = 1
    return {"ok": False, "error": _binary_error(proc.stderr, proc.stdout), "binary": binary}


# ---------------------------------------------------------------------------------------
# status: one row for --out=table


def _service_active(name):
    # No systemd as PID 1 (containers, tests): say so instead of failing.
    if not (os.path.isdir("/run/systemd/system") and shutil.which("systemctl")):
        return "unknown"
    try:
        proc = subprocess.run(
            ["systemctl", "is-active", name], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return proc.stdout.strip() or "unknown"


def _cert_days_left(path, now):
    from cryptography import x509  # pylint: disable=import-outside-toplevel

    try:
        with open(path, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
    except OSError as exc:
        raise _Failure("cert", f"cannot read {path} ({exc.strerror})") from None
    except ValueError:
        raise _Failure("cert", f"{path} is not a PEM certificate") from None
    not_after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(
        tzinfo=datetime.timezone.utc
    )
    return (not_after - now).days


def _part(errors, name, func, default):
    """Run one column's question; a failure fills ``errors`` instead of losing the row."""
    try:
        return func()
    except (_Failure, CommandExecutionError) as exc:
        errors.append(f"{name}: {getattr(exc, 'reason', 'error')}")
        return default


def status(**kwargs):
    """
    Return one flat row about this master, made for ``--out=table``: ``minion``,
    ``cluster`` (pillar ``kcm:cluster``), ``cluster_id`` (:func:`cluster_id`),
    ``version``, ``service_active``, ``healthy``, ``leader`` (yes/no), ``holder``,
    ``lease_age_seconds`` (since the last renewal), ``cert_days_left`` (the KCM
    certificate), and ``errors`` (what could not be answered; the call then exits
    non-zero).

    The row comes as a one-element list, because Salt's table outputter draws tables
    from lists of dicts only (a bare dict would print its keys without values).

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.status --out=table
    """
    now = _utcnow()
    errors = []
    service = _setting(kwargs, "service", (_deployed().get("service") or {}).get("name") or LOCK_NAME)
    record = _part(errors, "leader", lambda: _leader(dict(kwargs, map_minion=False)), None)
    health_result = _part(errors, "health", lambda: _health(kwargs), None)
    row = {
        "minion": _minion_id(),
        "cluster": _deployed().get("cluster"),
        "cluster_id": _part(errors, "cluster_id", lambda: _cluster_uid(kwargs), None),
        "version": _part(errors, "version", lambda: _version_of(_file(kwargs, "binary")), None),
        "service_active": _service_active(service),
        "healthy": health_result["healthy"] if health_result else None,
        "leader": "unknown",
        "holder": None,
        "lease_age_seconds": None,
        "cert_days_left": _part(errors, "cert", lambda: _cert_days_left(_file(kwargs, "cert"), now), None),
    }
    if record is not None:
        mine = record["node"] in _identities(kwargs) and not record["expired"]
        row.update(
            leader="yes" if mine else "no",
            holder=record["holder"],
            lease_age_seconds=_age_seconds(record, now),
        )
    row["errors"] = ", ".join(errors)
    if errors:
        __context__["retcode"] = 1
    return [row]


def cert_status(**kwargs):
    """
    Return days left for every certificate the formula manages on this master, including
    the copies embedded in the kubeconfig (see ``kcm_pki.cert_status``).

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm.cert_status
    """
    status = __salt__["kcm_pki.cert_status"]()
    if "error" in status:
        __context__["retcode"] = 1
    return status
