"""
The formula's configuration: normalize the merged ``kcm:`` pillar, validate it before
anything on disk changes, and read back what was deployed.

``map.jinja`` merges ``defaults.yaml`` <- os family <- pillar; :func:`resolve` turns that
into the resolved config every state and template uses; :func:`validate` lists every
problem at once, each naming its pillar key and the expected form.
"""

import datetime
import ipaddress
import json
import logging
import os
import re
import unicodedata
import urllib.parse

log = logging.getLogger(__name__)

__virtualname__ = "kcm_config"

KCM_CN = "system:kube-controller-manager"
PEM_KEYS = ("ca_cert", "ca_key", "cert", "key", "service_account_key", "signer_cert", "signer_key")
# PEMs each mode needs from pillar (signer_* are optional everywhere).
PILLAR_PEMS = {
    "pillar": ("ca_cert", "ca_key", "cert", "key", "service_account_key"),
    "local": ("ca_cert", "ca_key", "service_account_key"),
    "remote": ("ca_cert", "service_account_key"),
}
KEY_SIZES = {"ec": (256, 384, 521), "rsa": (2048, 3072, 4096)}
PKI_MODES = ("pillar", "local", "remote")
SOURCE_TYPES = ("tarball", "binary")
DURATION_RE = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
OFFICIAL_URL = "https://dl.k8s.io/{version}/kubernetes-server-linux-{arch}.tar.gz"
TARBALL_MEMBER = "kubernetes/server/bin/kube-controller-manager"
TOP_KEYS = {
    "version", "identity", "cluster", "source", "user", "group", "create_user", "paths",
    "keep_versions", "apiserver", "bind_address", "bind_interface", "secure_port",
    "service_cluster_ip_range", "cluster_signing_duration", "controllers",
    "use_service_account_credentials", "leader_election", "log_to_file", "verbosity", "pki",
    "extra_args", "service", "beacon", "master", "lookup",
}


def __virtual__():
    return __virtualname__


def duration_seconds(text):
    """
    Return a Go duration (``15s``, ``1h30m``, ``87600h``) in seconds, or raise ``ValueError``.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.duration_seconds 1h30m
    """
    text = str(text).strip()
    if not DURATION_RE.match(text):
        raise ValueError(f"'{text}' is not a duration such as 15s, 2m or 87600h")
    return sum(float(n) * UNIT_SECONDS[u] for n, u in DURATION_PART_RE.findall(text))


def _interface_address(grains, interface):
    addrs = (grains.get("ip4_interfaces") or {}).get(interface) or []
    return addrs[0] if addrs else None


def resolve(config, grains=None, opts=None, defaults=None):
    """
    Return the resolved config: ``version`` as ``v1.X.Y``, ``bind_address`` taken from
    ``bind_interface`` when set, the download URL and hash filled in, and ``files:`` with
    the absolute path of every file the formula manages. Never raises: values it cannot
    resolve are left as given for :func:`validate` to report, and a section of the wrong
    type is replaced by its entry in ``defaults`` (the formula's defaults.yaml) and
    recorded in ``shape_problems``.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.resolve "$(salt-call --out=json pillar.get kcm unmask=True)"
    """
    grains = grains if grains is not None else __grains__  # noqa: F821
    opts = opts if opts is not None else __opts__  # noqa: F821
    cfg = json.loads(json.dumps(config, default=str))
    cfg.pop("lookup", None)
    # A section of the wrong type (a list where a map belongs) would make the SLS fail to
    # render with a Jinja error: it is replaced by its default and named by validate().
    cfg["shape_problems"] = _repair_shapes(cfg, defaults or {})
    try:
        cfg["version"] = __salt__["kcm_flags.normalize_version"](cfg["version"])  # noqa: F821
    except (ValueError, KeyError):
        pass
    # A section of the wrong type is left for validate() to name; paths are computed as if empty.
    version, paths = str(cfg.get("version", "")), _mapping(cfg.get("paths"))
    if cfg.get("bind_interface"):
        cfg["bind_address"] = _interface_address(grains, str(cfg["bind_interface"])) or ""
    source = _mapping(cfg.setdefault("source", {}))
    arch = source.get("arch") or "amd64"
    if not source.get("url"):
        source["url"] = OFFICIAL_URL.format(version=version, arch=arch)
    if not source.get("hash"):
        source["hash"] = source["url"] + ".sha512"
    source["filename"] = (
        f"kubernetes-server-{version}-linux-{arch}.tar.gz"
        if source.get("type", "tarball") == "tarball"
        else f"kube-controller-manager-{version}-linux-{arch}"
    )
    source["member"] = TARBALL_MEMBER
    pki, name = paths.get("pki", ""), _mapping(cfg.get("service")).get("name", "kube-controller-manager")
    pki_cfg = _mapping(cfg.get("pki"))
    cfg["files"] = {
        "binary": f"{paths.get('bin', '')}/kube-controller-manager",
        "version_dir": f"{paths.get('install', '')}/versions/{version}",
        "version_binary": f"{paths.get('install', '')}/versions/{version}/kube-controller-manager",
        "versions": f"{paths.get('install', '')}/versions",
        "download": f"{paths.get('cache', '')}/{source['filename']}",
        "link": f"{paths['link']}/kube-controller-manager" if paths.get("link") else "",
        "kubeconfig": f"{paths.get('kubeconfig', '')}/kube-controller-manager.kubeconfig",
        "ca_cert": f"{pki}/ca.pem",
        "ca_key": f"{pki}/ca-key.pem",
        "cert": f"{pki}/kube-controller-manager.pem",
        "key": f"{pki}/kube-controller-manager-key.pem",
        "service_account_key": f"{pki}/sa.key",
        "signer_cert": f"{pki}/cluster-signer.pem" if pki_cfg.get("signer_cert") else f"{pki}/ca.pem",
        "signer_key": f"{pki}/cluster-signer-key.pem" if pki_cfg.get("signer_cert") else f"{pki}/ca-key.pem",
        "unit": f"{paths.get('unit', '')}/{name}.service",
        "release_program": f"{paths.get('install', '')}/libexec/kcm-release-lease",
        "deployed": deployed_path(opts),
    }
    return cfg


def _mapping(value):
    """``value`` when it is a mapping, else ``{}`` (resolve never raises on a bad shape)."""
    return value if isinstance(value, dict) else {}


def public(config):
    """
    Return ``config`` without PEM text (what may be shown, logged or written to deployed.json).

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.public "$(salt-call --out=json kcm_config.deployed)"
    """
    out = dict(config)
    out["pki"] = {k: v for k, v in _mapping(config.get("pki")).items() if k not in PEM_KEYS}
    return out


def deployed_path(opts=None):
    """
    Return the path of the deployed facts file on this minion.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.deployed_path
    """
    opts = opts if opts is not None else __opts__  # noqa: F821
    return os.path.join(opts["cachedir"], "kcm", "deployed.json")


def deployed(opts=None):
    """
    Return the resolved config of the last ``state.apply kcm`` on this minion (no PEM text),
    or ``{}`` when the formula was never applied here.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.deployed
    """
    try:
        with open(deployed_path(opts), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------
# validation


def _check_scalars(cfg, problems):
    unknown = sorted(set(cfg) - TOP_KEYS - {"files", "shape_problems"})
    for key in unknown:
        problems.append(f"kcm:{key}: unknown key (see pillar.example for the keys the formula reads)")
    try:
        __salt__["kcm_flags.normalize_version"](cfg.get("version", ""))  # noqa: F821
    except ValueError as exc:
        problems.append(f"kcm:version: {exc}")
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
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        problems.append(f"kcm:secure_port: '{port}' is not a port number (1-65535)")
    url = str(cfg.get("apiserver", ""))
    why = url_problem(url)
    if why or not re.match(r"^https://[^/?#]+/?$", url):
        problems.append(f"kcm:apiserver: '{url}' is not an https:// URL such as https://10.10.10.20:6443"
                        + ("" if not url.startswith("https://") else f" ({why or 'no path, query or fragment'})"))
    if not isinstance(cfg.get("controllers"), list) or not cfg.get("controllers"):
        problems.append("kcm:controllers: expected a non-empty list such as ['*', bootstrapsigner, tokencleaner]")
    keep = cfg.get("keep_versions")
    if not _KINDS[INT](keep) or keep < 1:
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


def _check_durations(cfg, problems):
    seconds = {}
    election = _mapping(cfg.get("leader_election"))
    if not isinstance(election.get("release_on_exit", True), bool):
        problems.append(f"kcm:leader_election:release_on_exit: '{election['release_on_exit']}' is not a boolean"
                        " (true or false)")
    values = [("cluster_signing_duration", cfg.get("cluster_signing_duration", ""))]
    values += [(f"leader_election:{key}", election.get(key, "")) for key in ("lease_duration", "renew_deadline",
                                                                               "retry_period")]
    for key, value in values:
        try:
            got = duration_seconds(value)
        except ValueError as exc:
            problems.append(f"kcm:{key}: {exc}")
            continue
        # KCM panics (crash loop) on a zero retry period; none of these may be zero.
        if got <= 0:
            problems.append(f"kcm:{key}: '{value}' must be above zero")
        elif key.startswith("leader_election:"):
            seconds[key.split(":")[1]] = got
    if len(seconds) == 3:
        lease, renew, retry = seconds["lease_duration"], seconds["renew_deadline"], seconds["retry_period"]
        # client-go refuses to start unless lease > renew > 1.2 x retry (JitterFactor).
        if not lease > renew > 1.2 * retry:
            problems.append(
                "kcm:leader_election: expected lease_duration > renew_deadline > 1.2 x retry_period,"
                f" got {election['lease_duration']} / {election['renew_deadline']} / {election['retry_period']}"
            )


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

    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


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
    """
    Return the problems of a ``kcm:pki`` mapping for its mode: missing PEMs, a key that
    does not match its certificate, a CA that is not a CA, a certificate not signed by the
    CA, an expired certificate, a CN other than ``system:kube-controller-manager``, issuing
    settings x509_v2 would loop on.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.check_pki "$(salt-call --out=json pillar.get kcm:pki unmask=True)"
    """
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


def cert_sans(config, grains=None):
    """
    Return the subjectAltNames for the KCM serving+client certificate: hostname, FQDN,
    the identity, localhost, 127.0.0.1 and every address KCM binds or is scraped on.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.cert_sans "$(salt-call --out=json kcm_config.deployed)"
    """
    grains = grains if grains is not None else __grains__  # noqa: F821
    names = [grains.get("host"), grains.get("fqdn"), grains.get("id"), config.get("identity"), "localhost"]
    bind = str(config.get("bind_address") or "")
    addrs = ["127.0.0.1"]
    if bind in ("0.0.0.0", "::", ""):
        addrs += [a for a in grains.get("ipv4", []) if a != "127.0.0.1"]
    else:
        addrs.append(bind)
    out, seen = [], set()
    for kind, values in (("dns", names), ("ip", addrs)):
        for value in values:
            if value and value not in seen:
                seen.add(value)
                out.append({kind: value})
    return out


def validate(config):
    """
    Return every problem of a resolved config as a list of messages naming the pillar key
    and the expected form; ``[]`` when it is good.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.validate "$(salt-call --out=json kcm_config.deployed)"
    """
    if not isinstance(config, dict):
        return ["kcm: expected a mapping"]
    shapes, texts = shape_problems(config), _text_problems(config)
    problems = list(config.get("shape_problems") or []) + [m for _, m in shapes] + [m for _, m in texts]
    # Later checks read these values: they see the badly typed ones as absent, and what
    # they would say again about those keys (echoing a control character) is dropped.
    reported = [_key(path) for path, _ in shapes] + [key for key, _ in texts]
    config = json.loads(json.dumps(config, default=str))
    for path, _ in shapes:
        parent, _ = _lookup(config, path[:-1]) if len(path) > 1 else (config, True)
        parent.pop(path[-1], None)
    checked = _checks(config, flags=not shapes)
    return problems + [p for p in checked if not any(p.startswith(k + ":") or p.startswith(k + " ")
                                                       for k in reported)]


def path_problems(config):
    """
    Return the problems of what decides which files the formula touches (the paths, the
    service name) and of the value shapes and text: what ``kcm.clean`` checks before it
    removes anything, without needing the PKI of a full config.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.path_problems "$(salt-call --out=json kcm_config.deployed)"
    """
    if not isinstance(config, dict):
        return ["kcm: expected a mapping"]
    problems = list(config.get("shape_problems") or []) + [m for _, m in shape_problems(config)]
    problems += text_problems(config)
    if not problems:
        _match(problems, config, ("service", "name"), UNIT_NAME_RE,
               "a systemd unit name such as kube-controller-manager")
        _check_paths(config, problems)
    return problems


def _checks(config, flags=True):
    problems = []
    _check_names(config, problems)
    _check_paths(config, problems)
    _check_source(config, problems)
    _check_flags_input(config, problems)
    _check_beacon(config, problems)
    if isinstance(config.get("master"), dict):
        problems.extend(p for p in master_problems(config["master"]) if not p.startswith("kcm:master:config_dir"))
    _check_scalars(config, problems)
    _check_durations(config, problems)
    pki = config.get("pki") or {}
    if pki.get("mode", "pillar") not in PKI_MODES:
        problems.append(f"kcm:pki:mode: '{pki.get('mode')}' is not one of {', '.join(PKI_MODES)}")
    else:
        problems.extend(check_pki(pki))
    if flags and not any(p.startswith("kcm:version") for p in problems):
        try:
            problems.extend(__salt__["kcm_flags.problems"](config))  # noqa: F821
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"kcm: cannot render flags ({exc})")
    return problems


# ---------------------------------------------------------------------------------------
# shapes and text: checked before any value is used, so a bad one is a message, never a
# traceback, and nothing that leaves Python (SLS, unit, kubeconfig, alert) carries a
# control character.

MAP, LIST, BOOL, INT, NUMBER, TEXT = "a mapping", "a list", "true or false", "an integer", "a number", "a string"
# (pillar key path, expected kind). Sections first: a section of the wrong kind hides its keys.
SHAPES = (
    (("source",), MAP), (("paths",), MAP), (("leader_election",), MAP), (("pki",), MAP),
    (("extra_args",), MAP), (("service",), MAP), (("beacon",), MAP), (("master",), MAP),
    (("master", "enroll"), MAP), (("master", "labels"), MAP), (("master", "reporters"), MAP),
    (("master", "reporters", "tgt"), TEXT), (("master", "reporters", "tgt_type"), TEXT),
    (("controllers",), LIST), (("beacon", "cert_thresholds"), LIST),
    (("master", "alertmanager_urls"), LIST), (("master", "webhook_urls"), LIST),
    (("create_user",), BOOL), (("use_service_account_credentials",), BOOL), (("log_to_file",), BOOL),
    (("service", "manage"), BOOL), (("beacon", "enabled"), BOOL), (("master", "sync_runners"), BOOL),
    (("master", "enroll", "enabled"), BOOL), (("master", "allow_http"), BOOL), (("master", "alert_engine"), BOOL),
    (("master", "batch_wait"), NUMBER), (("master", "reconcile_interval"), INT), (("master", "flush_interval"), INT),
    (("secure_port",), INT), (("keep_versions",), INT), (("verbosity",), INT),
    (("pki", "days_valid"), INT), (("pki", "days_remaining"), INT), (("pki", "key_size"), INT),
    (("beacon", "interval"), NUMBER), (("beacon", "debounce"), INT), (("beacon", "stale_after"), NUMBER),
    (("beacon", "timeout"), NUMBER), (("beacon", "cert_check_interval"), NUMBER),
    (("version",), TEXT), (("identity",), TEXT), (("cluster",), TEXT), (("user",), TEXT), (("group",), TEXT),
    (("apiserver",), TEXT), (("bind_address",), TEXT), (("bind_interface",), TEXT),
    (("service_cluster_ip_range",), TEXT), (("cluster_signing_duration",), TEXT),
    (("service", "name"), TEXT), (("service", "control_cmd"), TEXT),
    (("source", "type"), TEXT), (("source", "url"), TEXT), (("source", "hash"), TEXT), (("source", "arch"), TEXT),
    (("pki", "mode"), TEXT), (("pki", "ca_server"), TEXT), (("pki", "signing_policy"), TEXT),
    (("pki", "key_algo"), TEXT), (("master", "config_dir"), TEXT), (("master", "ca_bundle"), TEXT),
    (("master", "enroll", "grain"), TEXT), (("master", "enroll", "value"), TEXT),
)
_KINDS = {
    MAP: lambda v: isinstance(v, dict),
    LIST: lambda v: isinstance(v, list),
    BOOL: lambda v: isinstance(v, bool),
    INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    TEXT: lambda v: isinstance(v, str),
}
_EXAMPLES = {MAP: "{}", LIST: "[]", BOOL: "true (unquoted)", INT: "2 (unquoted)", NUMBER: "2 (unquoted)",
             TEXT: "'text'"}
# Values that may hold a newline: PEM text only.
MULTILINE = {("pki", k) for k in PEM_KEYS}
USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
# systemd's unit-name characters (unit_name_is_valid), without '@' templates; '.service' is added.
UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_.\\-]{1,248}$")
NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._:-]{0,251}[A-Za-z0-9])?$")
MINION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
PATH_RE = re.compile(r"^/[A-Za-z0-9._/+@-]*$")
FLAG_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
CONTROLLER_RE = re.compile(r"^-?(\*|[a-z0-9][a-z0-9-]*)$")
ARCH_RE = re.compile(r"^[a-z0-9_]{1,16}$")
HASH_RE = re.compile(r"^((md5|sha1|sha224|sha256|sha384|sha512)=)?[0-9a-fA-F]{32,128}$")
CANONICAL_VERSION_RE = re.compile(r"^v1\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
GRAIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
TARGET_TYPES = ("glob", "list", "grain", "pcre", "compound")


def _key(path):
    return "kcm:" + ":".join(str(p) for p in path)


def _lookup(cfg, path):
    node = cfg
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None, False
        node = node[part]
    return node, True


def shape_problems(cfg):
    """
    Return ``[(path, message)]`` for every key of ``cfg`` whose value has the wrong type
    (a list where a mapping belongs, the string ``"false"`` where a boolean does), before
    anything uses it.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.shape_problems '{"paths": []}'
    """
    out, hidden = [], []
    for path, kind in SHAPES:
        if any(path[: len(h)] == h for h in hidden):
            continue
        value, present = _lookup(cfg, path)
        if present and value is not None and not _KINDS[kind](value):
            out.append((path, f"{_key(path)}: {value!r} is not {kind} (for example {_EXAMPLES[kind]})"))
            hidden.append(path)
        elif present and value is None and kind in (MAP, LIST):
            continue
    return out


def _repair_shapes(cfg, defaults):
    problems = []
    for path, message in shape_problems(cfg):
        problems.append(message)
        default, _ = _lookup(defaults, path)
        parent, _ = _lookup(cfg, path[:-1]) if len(path) > 1 else (cfg, True)
        parent[path[-1]] = json.loads(json.dumps(default)) if default is not None else None
    return problems


def _walk_text(node, path):
    """Yield (path, text) for every string key and value under ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path + (f"<key {key}>",), str(key)
            yield from _walk_text(value, path + (key,))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _walk_text(value, path + (index,))
    elif isinstance(node, str):
        yield path, node


def text_problems(cfg):
    """
    Return a message for every string in ``cfg`` that holds a control character (a
    newline, tab, ESC, NUL) or a Unicode line/paragraph separator; PEM values may hold
    newlines and nothing else.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.text_problems '{"cluster": "a\\nb"}'
    """
    return [message for _, message in _text_problems(cfg)]


def _text_problems(cfg):
    """(pillar key, message) for every string holding a control character."""
    problems = []
    for path, text in _walk_text({k: v for k, v in cfg.items() if k not in ("files", "shape_problems")}, ()):
        if path[:2] in MULTILINE:
            text = text.replace("\r\n", "\n").replace("\n", "")
        for char in text:
            if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
                is_name = str(path[-1]).startswith("<key ")
                key = _key(path[:-1]) if is_name else _key(path)
                where = f"{key} (the key {path[-1][5:-1]!r})" if is_name else key
                problems.append((key, f"{where}: holds the control character U+{ord(char):04X};"
                                      " expected printable text"))
                break
    return problems


def url_problem(url, schemes=("https",), allow_http_loopback=False):
    """
    Say why ``url`` is not an acceptable URL (scheme, userinfo, host, port), or return
    ``None``.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.url_problem https://user:pw@10.0.0.1:6443
    """
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


def _match(problems, cfg, path, regex, expected, allow_empty=False):
    value, present = _lookup(cfg, path)
    if not present or (allow_empty and value in ("", None)) or not isinstance(value, str):
        return
    if not regex.match(value):
        problems.append(f"{_key(path)}: '{value}' is not {expected}")


def _check_names(cfg, problems):
    _match(problems, cfg, ("user",), USER_RE, "a user name such as k8s (letters, digits, _ . -; at most 32)")
    _match(problems, cfg, ("group",), USER_RE, "a group name such as k8s (letters, digits, _ . -; at most 32)")
    _match(problems, cfg, ("cluster",), NAME_RE, "a cluster name such as kubernetes (letters, digits, . _ : -)")
    _match(problems, cfg, ("identity",), NAME_RE, "a host name such as master-1", allow_empty=True)
    _match(problems, cfg, ("service", "name"), UNIT_NAME_RE,
           "a systemd unit name such as kube-controller-manager (letters, digits, : _ . \\ -; no '/')")
    name, _ = _lookup(cfg, ("service", "name"))
    if isinstance(name, str) and name.endswith(".service"):
        problems.append(f"kcm:service:name: '{name}': give the name without '.service' (it is added)")
    _match(problems, cfg, ("bind_interface",), re.compile(r"^[A-Za-z0-9._:@-]{1,15}$"),
           "a network interface name such as eth0", allow_empty=True)
    _match(problems, cfg, ("source", "arch"), ARCH_RE, "an architecture such as amd64 or arm64")
    _match(problems, cfg, ("pki", "ca_server"), MINION_ID_RE, "a minion id such as ca-1", allow_empty=True)
    _match(problems, cfg, ("pki", "signing_policy"), MINION_ID_RE,
           "an x509_v2 signing policy name such as kcm", allow_empty=True)
    version, _ = _lookup(cfg, ("version",))
    if isinstance(version, str) and VERSION_LIKE_RE.match(version) and not CANONICAL_VERSION_RE.match(version):
        problems.append(f"kcm:version: '{version}' is not in canonical form such as v1.37.2 (no leading zeros)")


VERSION_LIKE_RE = re.compile(r"^v1\.\d+\.\d+")


def _check_paths(cfg, problems):
    for key, value in _mapping(cfg.get("paths")).items():
        if isinstance(value, str) and value and not (PATH_RE.match(value) and "/../" not in value + "/"
                                                     and "/./" not in value + "/"):
            problems.append(
                f"kcm:paths:{key}: '{value}' is not a plain absolute path (letters, digits, . _ / + @ -; no .. or .)"
            )


def _check_source(cfg, problems):
    source = _mapping(cfg.get("source"))
    url = source.get("url")
    if isinstance(url, str) and url.startswith("https://"):
        why = url_problem(url)
        if why:
            problems.append(f"kcm:source:url: {why}")
    digest = source.get("hash")
    if isinstance(digest, str) and digest:
        if re.match(r"^[a-z]+://", digest):
            why = url_problem(digest, ("https", "salt", "file"))
            if why:
                problems.append(f"kcm:source:hash: {why}")
        elif not HASH_RE.match(digest):
            problems.append(
                f"kcm:source:hash: '{digest}' is not 'sha512=<hex>', a hex digest or the URL of a hash file"
            )


def _check_flags_input(cfg, problems):
    verbosity = cfg.get("verbosity")
    if isinstance(verbosity, int) and not 0 <= verbosity <= 10:
        problems.append(f"kcm:verbosity: {verbosity} is not a log level 0-10")
    for item in cfg.get("controllers") or []:
        if not isinstance(item, str) or not CONTROLLER_RE.match(item):
            problems.append(f"kcm:controllers: {item!r} is not a controller name such as '*', tokencleaner or -ttl")
    for name, value in _mapping(cfg.get("extra_args")).items():
        if not FLAG_NAME_RE.match(str(name).lstrip("-")):
            problems.append(f"kcm:extra_args: '{name}' is not a flag name such as feature-gates")
        scalars = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in scalars) or isinstance(value, dict):
            problems.append(f"kcm:extra_args:{name}: expected a string, number, boolean, list of those, or null")


def _check_beacon(cfg, problems):
    beacon = _mapping(cfg.get("beacon"))
    for key in ("interval", "debounce", "stale_after", "timeout", "cert_check_interval"):
        value = beacon.get(key)
        if _KINDS[NUMBER](value) and value <= 0:
            problems.append(f"kcm:beacon:{key}: {value} must be above 0")
    for item in beacon.get("cert_thresholds") or []:
        if not _KINDS[INT](item) or item < 1:
            problems.append(f"kcm:beacon:cert_thresholds: {item!r} is not a positive number of days")


def master_problems(master):
    """
    Return the problems of the ``kcm:master`` mapping (the Salt master's alert and
    enrollment settings): label names Alertmanager accepts, lists of https URLs
    (``http://`` only for a loopback receiver with ``allow_http: true``), paths.

    CLI Example:

    .. code-block:: bash

        salt-call kcm_config.master_problems "$(salt-call --out=json pillar.get kcm:master)"
    """
    problems = []
    wrapped = {"master": master}
    for _path, message in shape_problems(wrapped):
        problems.append(message)
    if problems or not isinstance(master, dict):
        return problems or ["kcm:master: expected a mapping"]
    problems.extend(text_problems(wrapped))
    allow_http = master.get("allow_http") is True
    for key in ("alertmanager_urls", "webhook_urls"):
        for url in master.get(key) or []:
            why = url_problem(url, allow_http_loopback=allow_http) if isinstance(url, str) else f"{url!r} is not a URL"
            if why:
                hint = "" if allow_http or not str(url).startswith("http://") else \
                    " (set kcm:master:allow_http: true for a loopback receiver)"
                problems.append(f"kcm:master:{key}: {why}{hint}")
    for name, value in (master.get("labels") or {}).items():
        if not LABEL_NAME_RE.match(str(name)):
            problems.append(f"kcm:master:labels: '{name}' is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        if not isinstance(value, str):
            problems.append(f"kcm:master:labels:{name}: {value!r} is not a string (quote it)")
    for key in ("config_dir", "ca_bundle"):
        value = master.get(key)
        if isinstance(value, str) and value and not (PATH_RE.match(value) and "/../" not in value + "/"):
            problems.append(f"kcm:master:{key}: '{value}' is not a plain absolute path")
    if not master.get("config_dir"):
        problems.append("kcm:master:config_dir: required (the master's config directory, such as /etc/salt/master.d)")
    reporters = master.get("reporters") or {}
    if reporters.get("tgt_type", "glob") not in TARGET_TYPES:
        problems.append(f"kcm:master:reporters:tgt_type: '{reporters.get('tgt_type')}' is not one of"
                        f" {', '.join(TARGET_TYPES)}")
    if not str(reporters.get("tgt") or "").strip():
        problems.append("kcm:master:reporters:tgt: required (the KCM masters, such as 'role:k8s-master')")
    batch_wait = master.get("batch_wait")
    if isinstance(batch_wait, (int, float)) and not isinstance(batch_wait, bool) and not 0 < batch_wait <= 5:
        # Every event of a batch waits up to this long: past 5 s the alert comes late.
        problems.append(f"kcm:master:batch_wait: {batch_wait!r} is not seconds in (0, 5], such as 0.2")
    for key in ("reconcile_interval", "flush_interval"):
        if _KINDS[INT](master.get(key)) and master[key] < 1:
            problems.append(f"kcm:master:{key}: {master[key]} is not a positive number of seconds")
    _match(problems, wrapped, ("master", "enroll", "grain"), GRAIN_RE, "a grain name such as role")
    _match(problems, wrapped, ("master", "enroll", "value"), re.compile(r"^[A-Za-z0-9_.:-]+$"),
           "a grain value such as k8s-master (no glob or space)")
    return problems
