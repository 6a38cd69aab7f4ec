"""
The value checks of a ``kcm:`` pillar: names, paths, URLs, ports, ranges, the flag input
and the Salt master's alert settings. Each problem is a message that names its pillar key
and the expected form, so ``kcm_config.validate`` can list every one at once.

Pure functions over an already shape-checked config (``kcm_shapes``); called as
``__utils__["kcm_checks.value_problems"](config)`` from ``kcm_config``, and
``beacon_value_problem`` from ``kcm_beacon.validate`` (the beacons' rules are these).
"""

import ipaddress
import os
import re
import urllib.parse

__virtualname__ = "kcm_checks"

SOURCE_TYPES = ("tarball", "binary")
TOP_KEYS = {
    "version",
    "identity",
    "cluster",
    "source",
    "user",
    "group",
    "create_user",
    "paths",
    "keep_versions",
    "apiserver",
    "bind_address",
    "bind_interface",
    "secure_port",
    "service_cluster_ip_range",
    "cluster_signing_duration",
    "controllers",
    "use_service_account_credentials",
    "leader_election",
    "log_to_file",
    "verbosity",
    "profiling",
    "terminated_pod_gc_threshold",
    "pki",
    "extra_args",
    "service",
    "beacon",
    "master",
    "lookup",
    "tofs",
    "skew",
}


def __virtual__():
    return __virtualname__


def _get(cfg, *path):
    for part in path:
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _match(problems, value, key, regex, expected, allow_empty=False):
    if (allow_empty and value in ("", None)) or not isinstance(value, str):
        return
    if not regex.match(value):
        problems.append(f"{key}: '{value}' is not {expected}")


def url_problem(url, schemes=("https",), allow_http_loopback=False):
    """Why ``url`` is not an acceptable URL (scheme, userinfo, host, port), or ``None``."""
    try:
        parts = urllib.parse.urlsplit(str(url))
        port = parts.port
    except ValueError as exc:
        return f"'{url}' is not a URL ({exc})"
    scheme = parts.scheme
    if scheme == "http" and allow_http_loopback:
        if not _loopback(parts.hostname):
            return f"'{url}': http:// is allowed for a loopback receiver only (127.0.0.0/8, ::1, localhost)"
    elif scheme not in schemes:
        return f"'{url}' must start with {' or '.join(s + '://' for s in schemes)}"
    if scheme in ("https", "http"):
        if "@" in parts.netloc:
            return f"'{url}' carries credentials (user:password@); they would show in events, alerts and logs"
        if not parts.hostname:
            return f"'{url}' names no host"
        if port is not None and not 1 <= port <= 65535:
            return f"'{url}': port {port} is not 1-65535"
        if re.search(r"\s", str(url)):
            return f"'{url}' holds whitespace"
    return None


def _loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


# systemd's unit-name characters (unit_name_is_valid), without '@' templates; '.service' is added.
PATH_RE = re.compile(r"^/[A-Za-z0-9._/+@-]*$")
UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_.\\-]{1,248}$")


# Directories of the system itself: the formula makes its own directories root's alone, and
# must never take over one of these (or put KCM's files where root's PATH or units live).
SYSTEM_DIRS = frozenset(
    (
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib",
        "/usr/lib64",
        "/usr/libexec",
        "/usr/local",
        "/usr/local/bin",
        "/usr/local/sbin",
        "/usr/local/lib",
        "/usr/share",
        "/usr/include",
        "/var",
        "/var/lib",
        "/var/log",
        "/var/tmp",
        "/var/run",
        "/var/cache",
        "/var/spool",
        "/etc/systemd",
        "/etc/systemd/system",
        "/usr/lib/systemd",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
        "/run/systemd/system",
        "/etc/salt",
    )
)
# The directories a unit may be installed in (kcm:paths:unit): systemd's own.
UNIT_DIRS = frozenset(
    (
        "/etc/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
        "/run/systemd/system",
        "/usr/local/lib/systemd/system",
    )
)


def path_problems(cfg):
    """What decides which files the formula touches: the service name and the paths."""
    problems = []
    _match(
        problems,
        _get(cfg, "service", "name"),
        "kcm:service:name",
        UNIT_NAME_RE,
        "a systemd unit name such as kube-controller-manager (letters, digits, : _ . \\ -; no '/')",
    )
    for key, value in (_get(cfg, "paths") or {}).items():
        if (
            isinstance(value, str)
            and value
            and not (PATH_RE.match(value) and "/../" not in value + "/" and "/./" not in value + "/")
        ):
            problems.append(
                f"kcm:paths:{key}: '{value}' is not a plain absolute path (letters, digits, . _ / + @ -; no .. or .)"
            )
        elif (
            isinstance(value, str)
            and key not in ("link", "logs")
            and (value.rstrip("/") or "/") in SYSTEM_DIRS
            and not (key == "unit" and value.rstrip("/") in UNIT_DIRS)
        ):
            problems.append(
                f"kcm:paths:{key}: '{value}' is a system directory; give a directory of the formula's own"
                " such as /data/apps/k8s/kubernetes (it is made root's, 0755)"
            )
    return problems


USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._:-]{0,251}[A-Za-z0-9])?$")
MINION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
ARCH_RE = re.compile(r"^[a-z0-9_]{1,16}$")


def _check_names(cfg, problems):
    _match(
        problems, cfg.get("user"), "kcm:user", USER_RE, "a user name such as k8s (letters, digits, _ . -; at most 32)"
    )
    _match(
        problems,
        cfg.get("group"),
        "kcm:group",
        USER_RE,
        "a group name such as k8s (letters, digits, _ . -; at most 32)",
    )
    _match(
        problems,
        cfg.get("cluster"),
        "kcm:cluster",
        NAME_RE,
        "a cluster name such as kubernetes (letters, digits, . _ : -)",
    )
    _match(problems, cfg.get("identity"), "kcm:identity", NAME_RE, "a host name such as master-1", allow_empty=True)
    name = _get(cfg, "service", "name")
    if isinstance(name, str) and name.endswith(".service"):
        problems.append(f"kcm:service:name: '{name}': give the name without '.service' (it is added)")
    _match(
        problems,
        cfg.get("bind_interface"),
        "kcm:bind_interface",
        re.compile(r"^[A-Za-z0-9._:@-]{1,15}$"),
        "a network interface name such as eth0",
        allow_empty=True,
    )
    _match(problems, _get(cfg, "source", "arch"), "kcm:source:arch", ARCH_RE, "an architecture such as amd64 or arm64")
    _match(
        problems,
        _get(cfg, "pki", "ca_server"),
        "kcm:pki:ca_server",
        MINION_ID_RE,
        "a minion id such as ca-1",
        allow_empty=True,
    )
    _match(
        problems,
        _get(cfg, "pki", "signing_policy"),
        "kcm:pki:signing_policy",
        MINION_ID_RE,
        "an x509_v2 signing policy name such as kcm",
        allow_empty=True,
    )


# sha256 or sha512 only (64 or 128 hex digits): md5 and sha1 collide, so they prove nothing.
HASH_RE = re.compile(r"^(sha256=[0-9a-fA-F]{64}|sha512=[0-9a-fA-F]{128}|[0-9a-fA-F]{64}|[0-9a-fA-F]{128})$")


def _check_source(cfg, problems):
    url = _get(cfg, "source", "url")
    if isinstance(url, str) and url.startswith("https://"):
        why = url_problem(url)
        if why:
            problems.append(f"kcm:source:url: {why}")
    digest = _get(cfg, "source", "hash")
    if isinstance(digest, str) and digest:
        if re.match(r"^[a-z]+://", digest):
            why = url_problem(digest, ("https", "salt", "file"))
            if why:
                problems.append(f"kcm:source:hash: {why}")
        elif not HASH_RE.match(digest):
            problems.append(
                f"kcm:source:hash: '{digest}' is not 'sha512=<hex>' or 'sha256=<hex>', a sha256/sha512 hex digest"
                " or the URL of a hash file (md5 and sha1 are refused)"
            )


FLAG_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
CONTROLLER_RE = re.compile(r"^-?(\*|[a-z0-9][a-z0-9-]*)$")


def _check_flags_input(cfg, problems):
    verbosity = cfg.get("verbosity")
    if isinstance(verbosity, int) and not 0 <= verbosity <= 10:
        problems.append(f"kcm:verbosity: {verbosity} is not a log level 0-10")
    for item in cfg.get("controllers") or []:
        if not isinstance(item, str) or not CONTROLLER_RE.match(item):
            problems.append(f"kcm:controllers: {item!r} is not a controller name such as '*', tokencleaner or -ttl")
    for name, value in (_get(cfg, "extra_args") or {}).items():
        if not FLAG_NAME_RE.match(str(name).lstrip("-")):
            problems.append(f"kcm:extra_args: '{name}' is not a flag name such as feature-gates")
        scalars = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in scalars) or isinstance(value, dict):
            problems.append(f"kcm:extra_args:{name}: expected a string, number, boolean, list of those, or null")


def _positive(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


# The one rule set of the kcm beacons' settings, key -> (accepts(value), expected form): kcm_beacon.validate
# (what beacon.present runs) and the pillar validation of kcm:beacon both ask beacon_value_problem.
BEACON_RULES = {
    "interval": (_positive, "a number of seconds > 0"),
    "debounce": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (polls in a row)"),
    "stale_after": (_positive, "a number of retry periods > 0"),
    "timeout": (lambda v: _positive(v) and v <= 10, "seconds in (0, 10] (the poll blocks the minion loop)"),
    "cert_thresholds": (
        lambda v: isinstance(v, list) and all(map(_positive, v)),
        "a list of days > 0, e.g. [21, 7] ([] = no checks)",
    ),
    "cert_check_interval": (_positive, "a number of seconds > 0 (how often certificates are read)"),
    "healthy_for": (_positive, "a number of seconds > 0 (of healthy /healthz that end a crash loop)"),
    "state_file": (lambda v: isinstance(v, str) and os.path.isabs(v), "an absolute path"),
    **dict.fromkeys(
        ("enabled", "disable_during_state_run", "run_once"), (lambda v: isinstance(v, bool), "true or false")
    ),
}


def beacon_value_problem(key, value):
    """The form the kcm beacons' setting ``key`` expects when ``value`` lacks it, else None
    (a key without a rule takes any value)."""
    accepts, expected = BEACON_RULES.get(key, (None, None))
    return None if accepts is None or accepts(value) else expected


def _check_beacon(cfg, problems):
    for key, value in (_get(cfg, "beacon") or {}).items():
        expected = beacon_value_problem(key, value)
        if expected:
            problems.append(f"kcm:beacon:{key}: expected {expected}, got {value!r}")
    thresholds, remaining = _get(cfg, "beacon", "cert_thresholds"), _get(cfg, "pki", "days_remaining")
    if (
        _get(cfg, "pki", "mode") in ("local", "remote")
        and not beacon_value_problem("cert_thresholds", thresholds)
        and thresholds
        and _is_int(remaining)
        and max(thresholds) >= remaining
    ):
        # The formula renews these at days_remaining: a warning must mean that renewal failed.
        problems.append(
            f"kcm:beacon:cert_thresholds: {thresholds!r}: each must be below kcm:pki:days_remaining"
            f" ({remaining}), where the {_get(cfg, 'pki', 'mode')} mode renews the certificate"
        )


# A template's file name below a files_switch folder, or a salt:// URL: no '..', no scheme.
TOFS_SOURCE_RE = re.compile(r"^(salt://)?[A-Za-z0-9_+@-][A-Za-z0-9._/+@-]*$")


def _check_tofs(cfg, problems):
    for grain in _get(cfg, "tofs", "files_switch") or []:
        _match(problems, grain, "kcm:tofs:files_switch", GRAIN_RE, "a grain name such as id or os_family")
        if not isinstance(grain, str):
            problems.append(f"kcm:tofs:files_switch: {grain!r} is not a grain name such as id or os_family")
    for state_id, names in (_get(cfg, "tofs", "source_files") or {}).items():
        for name in names if isinstance(names, list) else [names]:
            if not (isinstance(name, str) and TOFS_SOURCE_RE.match(name)) or "/../" in f"/{name}/":
                problems.append(
                    f"kcm:tofs:source_files:{state_id}: {name!r} is not a file name such as"
                    " kube-controller-manager.service.jinja or a salt:// URL (a list of them)"
                )


def _unwritable(path):
    """Why ``path`` cannot be made a writable directory, or None."""
    probe = path
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"cannot be a directory: {probe} is a file"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"is not writable ({probe} refuses writes)"
    return None


def _check_network(cfg, problems):
    try:
        net = ipaddress.ip_network(str(cfg.get("service_cluster_ip_range", "")), strict=True)
        if net.version != 4 and net.prefixlen < 108:
            problems.append("kcm:service_cluster_ip_range: an IPv6 range must be /108 or smaller")
    except ValueError:
        problems.append(
            f"kcm:service_cluster_ip_range: '{cfg.get('service_cluster_ip_range')}' is not a CIDR"
            " such as 10.254.0.0/22 (host bits must be zero)"
        )
    if cfg.get("bind_interface") and not cfg.get("bind_address"):
        problems.append(f"kcm:bind_interface: interface '{cfg['bind_interface']}' has no IPv4 address in grains")
    else:
        try:
            ipaddress.ip_address(str(cfg.get("bind_address", "")))
        except ValueError:
            problems.append(f"kcm:bind_address: '{cfg.get('bind_address')}' is not an IP address")
    port = cfg.get("secure_port")
    if not _is_int(port) or not 1 <= port <= 65535:
        problems.append(f"kcm:secure_port: '{port}' is not a port number (1-65535)")
    url = str(cfg.get("apiserver", ""))
    why = url_problem(url)
    if why or not re.match(r"^https://[^/?#]+/?$", url):
        problems.append(
            f"kcm:apiserver: '{url}' is not an https:// URL such as https://10.10.10.20:6443"
            + ("" if not url.startswith("https://") else f" ({why or 'no path, query or fragment'})")
        )


def _check_scalars(cfg, problems):
    for key in sorted(set(cfg) - TOP_KEYS - {"files", "credentials", "shape_problems"}):
        problems.append(f"kcm:{key}: unknown key (see pillar.example for the keys the formula reads)")
    _check_network(cfg, problems)
    if not isinstance(cfg.get("controllers"), list) or not cfg.get("controllers"):
        problems.append("kcm:controllers: expected a non-empty list such as ['*', bootstrapsigner, tokencleaner]")
    keep = cfg.get("keep_versions")
    if not _is_int(keep) or keep < 1:
        problems.append(f"kcm:keep_versions: '{keep}' is not a positive integer")
    source = cfg.get("source") or {}
    if source.get("type") not in SOURCE_TYPES:
        problems.append(f"kcm:source:type: '{source.get('type')}' is not one of {', '.join(SOURCE_TYPES)}")
    if not re.match(r"^(https|salt|file)://", str(source.get("url", ""))):
        problems.append(f"kcm:source:url: '{source.get('url')}' must start with https://, salt:// or file://")
    for key, value in (cfg.get("paths") or {}).items():
        if value and not str(value).startswith("/"):
            problems.append(f"kcm:paths:{key}: '{value}' is not an absolute path")
        elif value:
            why = _unwritable(str(value))
            if why:
                problems.append(f"kcm:paths:{key}: '{value}' {why}")
    if not isinstance(cfg.get("extra_args", {}), dict):
        problems.append("kcm:extra_args: expected a mapping of flag name -> value (null removes a flag)")


def value_problems(cfg):
    """Every problem of the values of a shape-checked config but its version, durations,
    PKI and flags (``kcm_config.validate`` adds those), each naming its pillar key."""
    problems = []
    _check_names(cfg, problems)
    problems.extend(path_problems(cfg))
    _check_source(cfg, problems)
    _check_flags_input(cfg, problems)
    _check_beacon(cfg, problems)
    _check_tofs(cfg, problems)
    if isinstance(cfg.get("master"), dict):
        problems.extend(p for p in master_problems(cfg["master"]) if not p.startswith("kcm:master:config_dir"))
    _check_scalars(cfg, problems)
    return problems


LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
GRAIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
# The least value of each number of kcm:master (its type is kcm_shapes'), and what is expected.
_SECONDS, _COUNT = "a positive number of seconds", "a positive number of {}"
_MASTER_LEAST = {
    "reconcile_interval": (1, _SECONDS),
    "flush_interval": (1, _SECONDS),
    "resend_interval": (1, _SECONDS),
    "event_ttl": (1, _SECONDS),
    "dedupe_ttl": (1, _SECONDS),
    "signature_window": (1, _SECONDS),
    "receiver_timeout": (1e-9, _SECONDS),
    "reconcile_timeout": (1e-9, _SECONDS),
    "receiver_backoff": (0, "zero or more seconds"),
    "refusal_log_interval": (0, "zero or more seconds"),
    "receiver_retries": (1, _COUNT.format("attempts")),
    "max_batch": (1, _COUNT.format("events")),
    "max_seen": (1, _COUNT.format("entries")),
    "max_open": (1, _COUNT.format("entries")),
}


def master_problems(master):
    """The value problems of a shape-checked ``kcm:master`` mapping: label names Alertmanager
    accepts, https receiver URLs (``http://`` only for a loopback receiver with
    ``allow_http: true``), paths, the batch wait (the KCM masters: ``kcm_trust.masters_problems``)."""
    problems = []
    allow_http = master.get("allow_http") is True
    for key in ("alertmanager_urls", "webhook_urls"):
        for url in master.get(key) or []:
            why = url_problem(url, allow_http_loopback=allow_http) if isinstance(url, str) else f"{url!r} is not a URL"
            if why:
                hint = (
                    ""
                    if allow_http or not str(url).startswith("http://")
                    else " (set kcm:master:allow_http: true for a loopback receiver)"
                )
                problems.append(f"kcm:master:{key}: {why}{hint}")
    for name, value in (master.get("labels") or {}).items():
        if not LABEL_NAME_RE.match(str(name)):
            problems.append(f"kcm:master:labels: '{name}' is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        if not isinstance(value, str):
            problems.append(f"kcm:master:labels:{name}: {value!r} is not a string (quote it)")
    proxy = master.get("proxy")
    if isinstance(proxy, str) and proxy:
        why = url_problem(proxy, ("http", "https"))
        if why:
            problems.append(f"kcm:master:proxy: {why}")
    for key in ("config_dir", "ca_bundle", "dedupe_file"):
        value = master.get(key)
        if isinstance(value, str) and value and not (PATH_RE.match(value) and "/../" not in value + "/"):
            problems.append(f"kcm:master:{key}: '{value}' is not a plain absolute path")
    if not master.get("config_dir"):
        problems.append("kcm:master:config_dir: required (the master's config directory, such as /etc/salt/master.d)")
    batch_wait = master.get("batch_wait")
    if isinstance(batch_wait, (int, float)) and not isinstance(batch_wait, bool) and not 0 < batch_wait <= 5:
        # Every event of a batch waits up to this long: past 5 s the alert comes late.
        problems.append(f"kcm:master:batch_wait: {batch_wait!r} is not seconds in (0, 5], such as 0.2")
    for key, (least, what) in _MASTER_LEAST.items():
        value = master.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < least:
            problems.append(f"kcm:master:{key}: {value!r} is not {what}")
    if _is_int(master.get("renew_interval")) and master["renew_interval"] < 0:
        problems.append(
            f"kcm:master:renew_interval: {master['renew_interval']} is not seconds (0 turns the renewal off)"
        )
    orch = master.get("orch") if isinstance(master.get("orch"), dict) else {}
    for key, value in orch.items():
        least = 0 if key == "min_remaining" else 1e-9  # every other setting is seconds or KCMs > 0
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < least:
            problems.append(f"kcm:master:orch:{key}: {value!r} is not {'>= 0' if least == 0 else 'above 0'}")
    resend, flush = master.get("resend_interval"), master.get("flush_interval")
    if _is_int(resend) and _is_int(flush) and 0 < resend < flush:
        # The flush re-sends: a shorter interval would not be kept, and endsAt (4 of them) could pass between flushes.
        problems.append(
            f"kcm:master:resend_interval: {resend} is shorter than kcm:master:flush_interval ({flush}),"
            " which runs the re-sends"
        )
    runbook = master.get("runbook_url")
    if runbook == "":
        # Every alert links its section of docs/runbook.md: the default is the project's copy.
        problems.append("kcm:master:runbook_url: required: the http(s) URL of docs/runbook.md where your team reads it")
    if isinstance(runbook, str) and runbook:
        why = url_problem(runbook, ("https", "http"))
        if why or "#" in runbook:
            problems.append(f"kcm:master:runbook_url: {why or repr(runbook) + ' holds a #: the anchor is added'}")
    return problems
