"""
Version-aware flags of kube-controller-manager (KCM), v1.14 to today's releases.

One implementation turns the formula's resolved config into the KCM command line: the
systemd unit template, ``kcm.args`` and ``kcm.preflight`` all call :func:`render`, so what
is checked is what runs.

The tables below are data; each row cites the release note or source that fixes it
(RN-1.xx = the Kubernetes 1.xx release notes).
"""

import logging
import re

log = logging.getLogger(__name__)

__virtualname__ = "kcm_flags"

# flag -> (first minor that has it or None, first minor without it or None, source)
FLAG_HISTORY = {
    # Insecure serving: no-op from 1.22 (#96216), removed 1.24 (#106860).
    "port": (None, 24, "RN-1.22 #96216, RN-1.24 #106860"),
    "address": (None, 24, "RN-1.22 #96216, RN-1.24 #106860"),
    # Renamed in 1.19 (#91154), old name removed in 1.25 (#108476).
    "experimental-cluster-signing-duration": (None, 25, "RN-1.19 #91154, RN-1.25 #108476"),
    "cluster-signing-duration": (19, None, "RN-1.19 #91154"),
    # Per-signer files appeared in 1.19 (#90822).
    "cluster-signing-kubelet-serving-cert-file": (19, None, "RN-1.19 #90822"),
    "cluster-signing-kubelet-serving-key-file": (19, None, "RN-1.19 #90822"),
    "cluster-signing-kubelet-client-cert-file": (19, None, "RN-1.19 #90822"),
    "cluster-signing-kubelet-client-key-file": (19, None, "RN-1.19 #90822"),
    "cluster-signing-kube-apiserver-client-cert-file": (19, None, "RN-1.19 #90822"),
    "cluster-signing-kube-apiserver-client-key-file": (19, None, "RN-1.19 #90822"),
    "cluster-signing-legacy-unknown-cert-file": (19, None, "RN-1.19 #90822"),
    "cluster-signing-legacy-unknown-key-file": (19, None, "RN-1.19 #90822"),
    # The lock object's name and namespace became configurable in 1.16 (component-base 83802d7).
    "leader-elect-resource-name": (16, None, "component-base 83802d7 (first tag 1.16)"),
    "leader-elect-resource-namespace": (16, None, "component-base 83802d7 (first tag 1.16)"),
    # HPA.
    "horizontal-pod-autoscaler-use-rest-clients": (None, 22, "RN-1.22 #90368"),
    "horizontal-pod-autoscaler-upscale-delay": (None, 31, "RN-1.31 #124948"),
    "horizontal-pod-autoscaler-downscale-delay": (None, 31, "RN-1.31 #124948"),
    "concurrent-horizontal-pod-autoscaler-syncs": (26, None, "RN-1.26 #108501"),
    # Legacy klog flags: removed in 1.26 (#112120).
    **{
        name: (None, 26, "RN-1.26 #112120")
        for name in (
            "logtostderr",
            "alsologtostderr",
            "log-dir",
            "log-file",
            "log-file-max-size",
            "skip-headers",
            "skip-log-headers",
            "stderrthreshold",
            "log-backtrace-at",
            "add-dir-header",
        )
    },
    # klog's --one-output came with v1.20 (the v1.19.16 binary lacks it, v1.20.15 has it).
    "one-output": (20, 26, "RN-1.20, RN-1.26 #112120"),
    "deployment-controller-sync-period": (None, 24, "RN-1.24 #107178"),
    "deleting-pods-qps": (None, 25, "RN-1.25 #109612"),
    "deleting-pods-burst": (None, 25, "RN-1.25 #109612"),
    "register-retry-count": (None, 25, "RN-1.25 #109612"),
    "enable-taint-manager": (None, 27, "RN-1.27 #115840"),
    "pod-eviction-timeout": (None, 27, "RN-1.27 #115840"),
    "concurrent-service-syncs": (None, 37, "RN-1.37 #138002"),
    "show-hidden-metrics-for-version": (18, None, "RN-1.18"),
    "min-compatibility-version": (35, None, "RN-1.35"),
}

# Allowed --leader-elect-resource-lock values: (first minor, values) - the last row whose
# minor is <= the version applies (client-go #106852, #114055, #117558).
RESOURCE_LOCKS = (
    (14, ("endpoints", "configmaps", "leases")),
    (17, ("endpoints", "configmaps", "leases", "endpointsleases", "configmapsleases")),
    (24, ("leases", "endpointsleases", "configmapsleases")),
    (27, ("leases",)),
)

# Controller names before 1.28 -> canonical names from 1.28 on (#115813; the old names stay
# accepted as aliases). Source: cmd/kube-controller-manager/app/*.go `aliases:` at v1.37.2.
CONTROLLER_ALIASES = {
    "attachdetach": "persistentvolume-attach-detach-controller",
    "bootstrapsigner": "bootstrap-signer-controller",
    "clusterrole-aggregation": "clusterrole-aggregation-controller",
    "cronjob": "cronjob-controller",
    "csrapproving": "certificatesigningrequest-approving-controller",
    "csrcleaner": "certificatesigningrequest-cleaner-controller",
    "csrsigning": "certificatesigningrequest-signing-controller",
    "daemonset": "daemonset-controller",
    "deployment": "deployment-controller",
    "disruption": "disruption-controller",
    "endpoint": "endpoints-controller",
    "endpointslice": "endpointslice-controller",
    "endpointslicemirroring": "endpointslice-mirroring-controller",
    "ephemeral-volume": "ephemeral-volume-controller",
    "garbagecollector": "garbage-collector-controller",
    "horizontalpodautoscaling": "horizontal-pod-autoscaler-controller",
    "job": "job-controller",
    "legacy-service-account-token-cleaner": "legacy-serviceaccount-token-cleaner-controller",
    "namespace": "namespace-controller",
    "nodeipam": "node-ipam-controller",
    "nodelifecycle": "node-lifecycle-controller",
    "persistentvolume-binder": "persistentvolume-binder-controller",
    "persistentvolume-expander": "persistentvolume-expander-controller",
    "podgc": "pod-garbage-collector-controller",
    "pv-protection": "persistentvolume-protection-controller",
    "pvc-protection": "persistentvolumeclaim-protection-controller",
    "replicaset": "replicaset-controller",
    "replicationcontroller": "replicationcontroller-controller",
    "resourcequota": "resourcequota-controller",
    "root-ca-cert-publisher": "root-ca-certificate-publisher-controller",
    "serviceaccount": "serviceaccount-controller",
    "serviceaccount-token": "serviceaccount-token-controller",
    "statefulset": "statefulset-controller",
    "storage-version-gc": "storageversion-garbage-collector-controller",
    "ttl": "ttl-controller",
    "ttl-after-finished": "ttl-after-finished-controller",
    "tokencleaner": "token-cleaner-controller",
}
# Names that exist before 1.28 but have no canonical twin in 1.28+ (the cloud controllers:
# service-lb, route, cloud-node-lifecycle; CONTROLLER_HISTORY says when they left).
CONTROLLERS_BEFORE_1_28 = frozenset(CONTROLLER_ALIASES) | {"cloud-node-lifecycle", "route", "service"}
CANONICAL_ONLY = frozenset(
    {
        "podcertificaterequest-cleaner-controller",
        "taint-eviction-controller",
        "device-taint-eviction-controller",
        "podgroup-protection-controller",
        "kube-apiserver-serving-clustertrustbundle-publisher-controller",
        "resourcepoolstatusrequest-controller",
        "validatingadmissionpolicy-status-controller",
        "volumeattributesclass-protection-controller",
        "service-cidr-controller",
        "storage-version-migrator-controller",
        "selinux-warning-controller",
        "resourceclaim-controller",  # not resource-claim-: the v1.35.4-v1.37.2 binaries list it so
        "service-lb-controller",
        "node-route-controller",
        "cloud-node-lifecycle-controller",
        "evictionrequest-controller",
        "imperative-eviction-responder-controller",
    }
)
CANONICAL_BY_ALIAS_REVERSED = {v: k for k, v in CONTROLLER_ALIASES.items()}
# Controllers not every release knows: name -> (first minor that has it or None, first minor
# without it or None), in the spelling of those releases. Source: the "All controllers:" list of
# `kube-controller-manager --help` of the real binaries in docs/releases.md. v1.28 (and older)
# lists a feature-gated controller only with its gate on (resourceclaim-, storageversion-garbage-
# collector-, validatingadmissionpolicy-status-, legacy-serviceaccount-token-cleaner-controller;
# storage-version-gc): those stay accepted and the binary judges the gate.
CONTROLLER_HISTORY = {
    # The v1.16.15 to v1.18.19 binaries lack both; v1.19.16 has them.
    "endpointslicemirroring": (19, None),
    "ephemeral-volume": (19, None),
    "legacy-service-account-token-cleaner": (28, None),
    "service-cidr-controller": (29, None),
    "taint-eviction-controller": (29, None),
    "storage-version-migrator-controller": (30, None),
    "kube-apiserver-serving-clustertrustbundle-publisher-controller": (32, None),
    "selinux-warning-controller": (32, None),
    "volumeattributesclass-protection-controller": (32, None),
    "device-taint-eviction-controller": (33, None),
    "podcertificaterequest-cleaner-controller": (34, None),
    "podgroup-protection-controller": (36, None),
    "resourcepoolstatusrequest-controller": (36, None),
    # Listed by the v1.38.0-beta.0 binary, not by v1.37.2's.
    "evictionrequest-controller": (38, None),
    "imperative-eviction-responder-controller": (38, None),
    "service-lb-controller": (None, 37),
    "node-route-controller": (None, 37),
    "cloud-node-lifecycle-controller": (None, 37),
}

# The formula's one parser of a Kubernetes version: spelled as the release tags are (no leading zeros).
VERSION_RE = re.compile(r"^v?1\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$")
OLDEST_MINOR = 14


def __virtual__():
    return __virtualname__


def normalize_version(version):
    """
    Return the version as ``v1.MINOR.PATCH`` or raise ``ValueError`` saying what is wrong.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_flags.normalize_version 1.34.3
    """
    match = VERSION_RE.match(str(version).strip())
    if not match:
        raise ValueError(f"'{version}' is not a Kubernetes release such as v1.34.3")
    if int(match.group(1)) < OLDEST_MINOR:
        raise ValueError(f"'{version}' is older than v1.{OLDEST_MINOR}, the oldest release supported")
    return "v" + str(version).strip().lstrip("v")


def minor(version):
    """
    Return the minor number of a Kubernetes version (``v1.34.3`` -> 34).

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_flags.minor v1.34.3
    """
    return int(VERSION_RE.match(normalize_version(version)).group(1))


def flag_problem(flag, version):
    """
    Say why ``--flag`` cannot be given to KCM ``version``, or return ``None`` when neither the
    hand-written table nor the binaries captured know a reason (a flag no captured binary
    lists is left to the binary's preflight).

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_flags.flag_problem port v1.34.3
    """
    flag = flag.lstrip("-")
    row = FLAG_HISTORY.get(flag)
    if row:
        added, removed, source = row
        ver = minor(version)
        if added is not None and ver < added:
            return f"--{flag} does not exist before v1.{added} ({source}); {version} lacks it"
        if removed is not None and ver >= removed:
            return f"--{flag} was removed in v1.{removed} ({source}); {version} rejects it"
    why = _binaries_refuse(1, flag, version)
    return f"--{flag} {why}; {version} rejects it" if why else None


def _gates_problem(gates, version):
    """Which feature gates of a ``--feature-gates`` value (``A=true,kube:B=false``) KCM
    ``version`` no longer (or does not yet) have, by the binaries captured, or ``None``."""
    out = []
    for item in _value(gates).split(","):
        name = item.split("=", 1)[0].strip()
        component, _, gate = name.rpartition(":")
        if component not in ("", "kube"):
            continue  # another component's gate: not KCM's to judge
        why = _binaries_refuse(2, gate, version)
        if why:
            out.append(f"feature gate {gate} {why}")
    return f"{'; '.join(out)}; {version} rejects it" if out else None


def _binaries_refuse(column, name, version):
    """Why the captured binaries say ``version`` lacks ``name`` (column 1: a flag, 2: a feature
    gate), naming the releases between which it went or came; ``None`` when they cannot tell.
    A minor whose binary was not captured lacks only what an older captured binary lost."""
    spoken = __utils__["kcm_release_flags.spoken"]  # noqa: F821
    minors = __utils__["kcm_release_flags.minors"]()  # noqa: F821
    ver = minor(version)
    having = [m for m in minors if name in spoken(m)[column]]
    lacking = [m for m in minors if name not in spoken(m)[column]]
    if not having or ver in having:
        return None
    older = [m for m in having if m < ver]
    gone = [m for m in lacking if older and max(older) < m <= ver]
    if gone:
        has, lacks, verb = max(older), min(gone), "was removed"
    elif ver in lacking:
        has, lacks, verb = min(having), max(m for m in lacking if m < min(having)), "comes"
    else:
        return None
    first, last = sorted((has, lacks))
    when = f"in v1.{last}" if last == first + 1 else f"between v1.{first + 1} and v1.{last}"
    return f"{verb} {when} ({spoken(has)[0]}'s binary has it, {spoken(lacks)[0]}'s does not)"


def _value_problem(flag, value, version):
    """Why ``--flag=value`` is refused by KCM ``version``, or ``None``."""
    flag = flag.lstrip("-")
    ver = minor(version)
    if flag == "leader-elect-resource-lock":
        allowed = [vals for since, vals in RESOURCE_LOCKS if since <= ver][-1]
        if str(value) not in allowed:
            return f"--{flag}={value} is refused by {version}; allowed: {', '.join(allowed)}"
    if flag == "port" and 22 <= ver < 24 and str(value) != "0":
        return f"--port may only be 0 in {version} (insecure serving removed in v1.22, #96216)"
    if flag == "controllers":
        return controllers_problem(str(value).split(","), version)
    if flag == "feature-gates":
        return _gates_problem(value, version)
    return None


def controller_names(controllers, version):
    """
    Return the controller list spelled the way ``version`` names them: canonical
    ``*-controller`` names from v1.28, the short names before. ``*`` and ``-name`` pass through.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_flags.controller_names '["*", "bootstrapsigner"]' v1.34.3
    """
    new_names = minor(version) >= 28
    out = []
    for item in controllers:
        item = str(item).strip()
        sign, name = ("-", item[1:]) if item.startswith("-") else ("", item)
        if name != "*":
            if new_names:
                name = CONTROLLER_ALIASES.get(name, name)
            else:
                name = CANONICAL_BY_ALIAS_REVERSED.get(name, name)
        out.append(sign + name)
    return out


def _controller_exists(name, ver):
    first, gone = CONTROLLER_HISTORY.get(name, (None, None))
    return (first is None or ver >= first) and (gone is None or ver < gone)


def controllers_problem(controllers, version):
    """
    Say which controller names ``version`` does not know, or return ``None``.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_flags.controllers_problem '["*", "nosuch"]' v1.34.3
    """
    ver = minor(version)
    known = (set(CONTROLLER_ALIASES.values()) | CANONICAL_ONLY) if ver >= 28 else CONTROLLERS_BEFORE_1_28
    known = {name for name in known if _controller_exists(name, ver)}
    unknown = [item for item in controller_names(controllers, version) if item.lstrip("-") not in known | {"*"}]
    if unknown:
        return f"{version} knows no controller named {', '.join(unknown)}"
    return None


def _value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _base_flags(config):
    """The flags the formula sets for a resolved config, as ``{name: value}`` before
    ``extra_args`` are applied."""
    version = config["version"]
    ver = minor(version)
    files = config["files"]
    # The secrets through systemd's copies of root-only files (kcm_systemd.credentials).
    opened = dict(files, **((config.get("credentials") or {}).get("paths") or {}))
    election = config["leader_election"]
    flags = {
        "bind-address": config["bind_address"],
        "secure-port": config["secure_port"],
        "kubeconfig": opened["kubeconfig"],
        "authentication-kubeconfig": opened["kubeconfig"],
        "authorization-kubeconfig": opened["kubeconfig"],
        "tls-cert-file": files["cert"],
        "tls-private-key-file": opened["key"],
        "client-ca-file": files["ca_cert"],
        "root-ca-file": files["ca_cert"],
        "cluster-signing-cert-file": files["signer_cert"],
        "cluster-signing-key-file": opened["signer_key"],
        "service-account-private-key-file": opened["service_account_key"],
        "service-cluster-ip-range": config["service_cluster_ip_range"],
        "use-service-account-credentials": bool(config["use_service_account_credentials"]),
        "controllers": controller_names(config["controllers"], version),
        "leader-elect": True,
        "leader-elect-lease-duration": election["lease_duration"],
        "leader-elect-renew-deadline": election["renew_deadline"],
        "leader-elect-retry-period": election["retry_period"],
        "v": config.get("verbosity", 2),
        # CIS 1.3.2: no /debug/pprof unless kcm:profiling asks for it (KCM's default is on).
        "profiling": bool(config.get("profiling", False)),
        # CIS 1.3.1: the threshold is stated, not left implicit (12500 is KCM's own default).
        "terminated-pod-gc-threshold": config.get("terminated_pod_gc_threshold", 12500),
    }
    if ver >= 19:
        flags["cluster-signing-duration"] = config["cluster_signing_duration"]
    else:
        flags["experimental-cluster-signing-duration"] = config["cluster_signing_duration"]
    if ver < 22:
        # The insecure port (10252) is open by default before v1.22: close it.
        flags["port"] = 0
    if config.get("log_to_file") and ver < 26:
        flags["logtostderr"] = False
        # systemd's LogsDirectory= of the unit, the one place the KCM user may write.
        flags["log-dir"] = files.get("log_dir") or "/var/log/kube-controller-manager"
    return flags


def _flags(config):
    """The final ``{name: value}`` map: :func:`_base_flags` with ``extra_args`` applied (a
    value adds or overrides, ``None`` removes)."""
    result = _base_flags(config)
    for name, value in (config.get("extra_args") or {}).items():
        name = str(name).lstrip("-")
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def render(config):
    """
    Return KCM's command-line flags for a resolved config: ``--name=value`` strings, sorted.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_flags.render "$(salt-call --out=json kcm_config.deployed)"
    """
    return [f"--{name}={_value(value)}" for name, value in sorted(_flags(config).items())]


def exec_start(config, binary=None):
    """
    Return the ``ExecStart=`` value of the unit for a resolved config: ``binary``
    (default: the active ``files.binary``) and :func:`render`'s flags, each word escaped
    by systemd's quoting rules (``kcm_systemd.command_line``). The unit template writes
    this string as it is, and ``kcm.preflight`` runs what systemd makes of it.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_flags.exec_start "$(salt-call --out=json kcm_config.deployed)"
    """
    binary = binary or config["files"]["binary"]
    return __utils__["kcm_systemd.command_line"]([binary, *render(config)])  # noqa: F821


def problems(config):
    """
    Return what the version table knows to be wrong with the final flags of ``config``
    (flags absent from its version, values it refuses), each message naming the pillar key.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_flags.problems "$(salt-call --out=json kcm_config.deployed)"
    """
    version = config["version"]
    out = []
    if config.get("log_to_file") and minor(version) >= 26:
        out.append(
            f"kcm:log_to_file: {version} has no klog file flags (removed in v1.26, #112120);"
            " it logs to stderr (journald): set log_to_file: false"
        )
    for name, value in sorted(_flags(config).items()):
        why = flag_problem(name, version) or _value_problem(name, _value(value), version)
        if why:
            if name in (config.get("extra_args") or {}):
                key = f"kcm:extra_args:{name}"
            else:
                key = "kcm:controllers" if name == "controllers" else "kcm:version"
            out.append(f"{key}: {why}")
    return out
