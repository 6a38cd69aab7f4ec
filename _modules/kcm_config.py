"""
The formula's configuration as one resolved dict: :func:`resolve` turns the merged ``kcm:``
pillar into the config every state and template uses, :func:`validate` lists every problem
of it at once (each naming its pillar key and the expected form) before anything on disk
changes, and :func:`deployed` / :func:`setting` read back what the last ``state.apply kcm``
laid down on this minion.

The checks themselves are pure functions in ``_utils/``: ``kcm_shapes`` (types and
text), ``kcm_checks`` (values), ``kcm_pki_checks`` (the PEMs); the version and the flags are
checked here, through ``kcm_flags``, and the durations through ``kcm_time``.
"""

import hashlib
import json
import logging
import os
import re

import yaml

log = logging.getLogger(__name__)

__virtualname__ = "kcm_config"

PEM_KEYS = ("ca_cert", "ca_key", "cert", "key", "service_account_key", "signer_cert", "signer_key")
OFFICIAL_URL = "https://dl.k8s.io/{version}/kubernetes-server-linux-{arch}.tar.gz"
TARBALL_MEMBER = "kubernetes/server/bin/kube-controller-manager"
# A grain value that may name a folder under files/ (a minion id, an os family).
_SWITCH_DIR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def __virtual__():
    return __virtualname__


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
    cfg["shape_problems"] = __utils__["kcm_shapes.repair_shapes"](cfg, defaults or {})  # noqa: F821
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
        "deployed": _deployed_path(opts),
        # The accounts this formula created (kcm.install.user), the ones kcm.clean removes.
        "created_accounts": os.path.join(os.path.dirname(_deployed_path(opts)), "created-accounts"),
        # systemd's LogsDirectory= (log_to_file): the one place the KCM user may write.
        "log_dir": f"/var/log/{name}",
    }
    cfg["credentials"] = __utils__["kcm_systemd.credentials"](cfg["files"], name, grains)  # noqa: F821
    return cfg


def _mapping(value):
    """``value`` when it is a mapping, else ``{}`` (resolve never raises on a bad shape)."""
    return value if isinstance(value, dict) else {}


def without_pems(config):
    """
    Return ``config`` without the PEM text of ``kcm:pki`` (what may be shown, logged or
    written to the deployed facts).

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.without_pems "$(salt-call --out=json kcm_config.deployed)"
    """
    out = dict(config)
    out["pki"] = {k: v for k, v in _mapping(config.get("pki")).items() if k not in PEM_KEYS}
    return out


def pem_fingerprints(config):
    """
    Return ``{pem key: "sha256:<hex>"}`` for every PEM of ``kcm:pki`` that is set: what the
    validate state shows in place of the PEM text, and checks against the PEMs it reads
    from pillar itself.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.pem_fingerprints "$(salt-call --out=json pillar.get kcm unmask=True)"
    """
    pki = _mapping(config.get("pki"))
    return {
        key: "sha256:" + hashlib.sha256(str(pki[key]).encode("utf-8")).hexdigest() for key in PEM_KEYS if pki.get(key)
    }


def merged_pems(lookup_pki, pki):
    """
    Return the PEM text of ``kcm:pki`` the way ``map.jinja`` merges it: defaults ``''``,
    then ``lookup_pki`` (pillar ``kcm:lookup:pki``), then ``pki`` (pillar ``kcm:pki``). The
    validate state reads those two from pillar itself and merges them here, so that the
    PEMs never are state arguments (``state.show_sls`` and ``show_lowstate`` print those).

    CLI Example:

    .. code-block:: bash

        salt-call kcm_config.merged_pems "$(salt-call --out=json pillar.get kcm:lookup:pki)" \\
            "$(salt-call --out=json pillar.get kcm:pki)"
    """
    out = {}
    for section in (lookup_pki, pki):
        if isinstance(section, dict):
            out.update({key: section[key] for key in PEM_KEYS if key in section})
        elif section is not None:
            # defaults.merge replaces the section; resolve() then repairs a wrong type with
            # the defaults, which hold no PEM.
            out = {}
    return {key: out.get(key, "") for key in PEM_KEYS}


def _deployed_path(opts=None):
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
        with open(_deployed_path(opts), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _at(node, key):
    for part in key.split(":"):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def setting(key, default=None):
    """
    Return the setting ``key`` (``service:control_cmd``, ``identity``) in effect on this
    minion: the deployed facts (what the last ``state.apply kcm`` laid down) first, then the
    current pillar ``kcm:<key>`` (before the first apply), then ``default``. An empty value
    counts as not set.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.setting service:control_cmd
    """
    for source in (deployed(), __pillar__.get("kcm")):  # noqa: F821
        value = _at(source, key)
        if value not in (None, ""):
            return value
    return default


def requested(key):
    """
    Return ``kcm:<key>`` as the pillar asks for it, merged the way ``map.jinja`` merges:
    pillar ``kcm``, then ``kcm:lookup``, then the formula's ``defaults.yaml``; ``None`` when
    none sets it. Unlike :func:`setting`, the deployed facts are not asked: this is the
    change a run is about to make (the skew guard judges it before anything changes).

    CLI Example:

    .. code-block:: bash

        salt 'master*' kcm_config.requested version
    """
    # __pillar__, not pillar.get: Salt 3008's pillar.get masks the values it returns.
    for source in (__pillar__.get("kcm"), _at(__pillar__, "kcm:lookup")):  # noqa: F821
        value = _at(source, key)
        if value not in (None, ""):
            return value
    text = __salt__["cp.get_file_str"]("salt://kcm/defaults.yaml") or ""  # noqa: F821
    try:
        return _at((yaml.safe_load(text) or {}).get("kcm"), key)
    except (yaml.YAMLError, AttributeError):
        return None


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


def template_sources(config, state_id, name, root="kcm", grains=None):
    """
    Return the ``source:`` list of a template the formula lays down, so that a site can ship
    its own without forking (template-formula's TOFS): the names in pillar
    ``kcm:tofs:source_files:<state_id>`` then ``name``, each looked up in
    ``salt://<root>/files/<value>/`` for the value of every grain in
    ``kcm:tofs:files_switch`` (default ``id``, ``os_family``), then in
    ``salt://<root>/files/default/``. A ``salt://`` URL in ``source_files`` is used as
    given. ``file.managed`` lays down the first that exists.

    CLI Example:

    .. code-block:: bash

        salt '*' kcm_config.template_sources "$(salt-call --out=json kcm_config.deployed)" \\
            kcm-service-unit kube-controller-manager.service.jinja
    """
    grains = grains if grains is not None else __grains__  # noqa: F821
    tofs = _mapping(config.get("tofs"))
    names = _mapping(tofs.get("source_files")).get(state_id) or []
    names = (names if isinstance(names, list) else [names]) + [name]
    folders = []
    for grain in tofs.get("files_switch") or []:
        value = grains.get(grain)
        folders += [
            v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str) and _SWITCH_DIR_RE.match(v)
        ]
    out = []
    for folder in folders + ["default"]:
        for each in names:
            url = each if each.startswith("salt://") else f"salt://{root}/files/{folder}/{each}"
            if url not in out:
                out.append(url)
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
    shapes = __utils__["kcm_shapes.shape_problems"](config)  # noqa: F821
    texts = __utils__["kcm_shapes.text_problems"](config)  # noqa: F821
    problems = list(config.get("shape_problems") or []) + [m for _, m in shapes] + [m for _, m in texts]
    # Later checks read these values: they see the badly typed ones as absent, and what
    # they would say again about those keys (echoing a control character) is dropped.
    reported = ["kcm:" + ":".join(path) for path, _ in shapes] + [key for key, _ in texts]
    config = json.loads(json.dumps(config, default=str))
    for path, _ in shapes:
        parent = _at(config, ":".join(path[:-1])) if len(path) > 1 else config
        parent.pop(path[-1], None)
    checked = _checks(config, flags=not shapes)
    return problems + [p for p in checked if not any(p.startswith(k + ":") or p.startswith(k + " ") for k in reported)]


def _checks(config, flags=True):
    problems = __utils__["kcm_checks.value_problems"](config)  # noqa: F821
    try:
        __salt__["kcm_flags.normalize_version"](config.get("version", ""))  # noqa: F821
    except ValueError as exc:
        problems.append(f"kcm:version: {exc}")
    _check_durations(config, problems)
    problems.extend(__utils__["kcm_pki_checks.check_pki"](_mapping(config.get("pki"))))  # noqa: F821
    if flags and not any(p.startswith("kcm:version") for p in problems):
        try:
            problems.extend(__salt__["kcm_flags.problems"](config))  # noqa: F821
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"kcm: cannot render flags ({exc})")
    return problems


def _check_durations(cfg, problems):
    seconds = {}
    election = _mapping(cfg.get("leader_election"))
    if not isinstance(election.get("release_on_exit", True), bool):
        problems.append(
            f"kcm:leader_election:release_on_exit: '{election['release_on_exit']}' is not a boolean (true or false)"
        )
    values = [("cluster_signing_duration", cfg.get("cluster_signing_duration", ""))]
    values += [
        (f"leader_election:{key}", election.get(key, ""))
        for key in ("lease_duration", "renew_deadline", "retry_period")
    ]
    for key, value in values:
        try:
            got = __utils__["kcm_time.parse_duration"](value)  # noqa: F821
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
    problems = _shape_and_text(config, list(config.get("shape_problems") or []))
    return problems or __utils__["kcm_checks.path_problems"](config)  # noqa: F821


def _shape_and_text(config, problems):
    problems += [m for _, m in __utils__["kcm_shapes.shape_problems"](config)]  # noqa: F821
    return problems + [m for _, m in __utils__["kcm_shapes.text_problems"](config)]  # noqa: F821


def master_problems(master):
    """
    Return the problems of the ``kcm:master`` mapping (the Salt master's alert and
    enrollment settings): label names Alertmanager accepts, lists of https URLs
    (``http://`` only for a loopback receiver with ``allow_http: true``), paths, and the KCM
    masters by minion id (``kcm:master:masters``, ``kcm:master:clusters``).

    CLI Example:

    .. code-block:: bash

        salt-call kcm_config.master_problems "$(salt-call --out=json pillar.get kcm:master)"
    """
    wrapped = {"master": master}
    shapes = [m for _, m in __utils__["kcm_shapes.shape_problems"](wrapped)]  # noqa: F821
    if shapes or not isinstance(master, dict):
        return shapes or ["kcm:master: expected a mapping"]
    texts = [m for _, m in __utils__["kcm_shapes.text_problems"](wrapped)]  # noqa: F821
    # Who the KCM masters are (by minion id only) is kcm_trust's: the same rules as the master reads.
    return texts + __utils__["kcm_checks.master_problems"](master) + __utils__["kcm_trust.masters_problems"](master)  # noqa: F821
