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


def resolve(config, grains=None, opts=None):
    """
    Return the resolved config: ``version`` as ``v1.X.Y``, ``bind_address`` taken from
    ``bind_interface`` when set, the download URL and hash filled in, and ``files:`` with
    the absolute path of every file the formula manages. Never raises: values it cannot
    resolve are left as given for :func:`validate` to report.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.resolve "$(salt-call --out=json pillar.get kcm unmask=True)"
    """
    grains = grains if grains is not None else __grains__  # noqa: F821
    opts = opts if opts is not None else __opts__  # noqa: F821
    cfg = json.loads(json.dumps(config, default=str))
    cfg.pop("lookup", None)
    try:
        cfg["version"] = __salt__["kcm_flags.normalize_version"](cfg["version"])  # noqa: F821
    except (ValueError, KeyError):
        pass
    version, paths = str(cfg.get("version", "")), cfg.get("paths") or {}
    if cfg.get("bind_interface"):
        cfg["bind_address"] = _interface_address(grains, cfg["bind_interface"]) or ""
    source = cfg.setdefault("source", {})
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
    pki, name = paths.get("pki", ""), (cfg.get("service") or {}).get("name", "kube-controller-manager")
    pki_cfg = cfg.get("pki") or {}
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


def public(config):
    """
    Return ``config`` without PEM text (what may be shown, logged or written to deployed.json).

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.public "$(salt-call --out=json kcm_config.deployed)"
    """
    out = dict(config)
    out["pki"] = {k: v for k, v in (config.get("pki") or {}).items() if k not in PEM_KEYS}
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
    unknown = sorted(set(cfg) - TOP_KEYS - {"files"})
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
    if not re.match(r"^https://[^/\s]+(:\d+)?/?$", url):
        problems.append(f"kcm:apiserver: '{url}' is not an https:// URL such as https://10.10.10.20:6443")
    if not isinstance(cfg.get("controllers"), list) or not cfg.get("controllers"):
        problems.append("kcm:controllers: expected a non-empty list such as ['*', bootstrapsigner, tokencleaner]")
    keep = cfg.get("keep_versions")
    if not isinstance(keep, int) or keep < 1:
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
    try:
        duration_seconds(cfg.get("cluster_signing_duration", ""))
    except ValueError as exc:
        problems.append(f"kcm:cluster_signing_duration: {exc}")
    election = cfg.get("leader_election") or {}
    if not isinstance(election.get("release_on_exit", True), bool):
        problems.append(f"kcm:leader_election:release_on_exit: '{election['release_on_exit']}' is not a boolean"
                        " (true or false)")
    for key in ("lease_duration", "renew_deadline", "retry_period"):
        try:
            seconds[key] = duration_seconds(election.get(key, ""))
        except ValueError as exc:
            problems.append(f"kcm:leader_election:{key}: {exc}")
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
    problems = []
    if not isinstance(config, dict):
        return ["kcm: expected a mapping"]
    _check_scalars(config, problems)
    _check_durations(config, problems)
    pki = config.get("pki") or {}
    if pki.get("mode", "pillar") not in PKI_MODES:
        problems.append(f"kcm:pki:mode: '{pki.get('mode')}' is not one of {', '.join(PKI_MODES)}")
    else:
        problems.extend(check_pki(pki))
    if not any(p.startswith("kcm:version") for p in problems) and isinstance(config.get("extra_args", {}), dict):
        try:
            problems.extend(__salt__["kcm_flags.problems"](config))  # noqa: F821
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"kcm: cannot render flags ({exc})")
    return problems
