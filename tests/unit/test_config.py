"""Validation of the merged pillar: every problem at once, each naming its key."""

import datetime
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kcmlab import formula  # noqa: E402
from tests.support import pki as testpki  # noqa: E402

DEFAULTS = yaml.safe_load((Path(__file__).resolve().parents[2] / "formula/kcm/defaults.yaml").read_text())["kcm"]


def test_good_config_has_no_problem(check):
    assert check() == []


@pytest.mark.parametrize(
    "over, expected",
    [
        ({"version": "1.34"}, "kcm:version: '1.34' is not a Kubernetes release such as v1.34.3"),
        ({"version": "v1.13.0"}, "kcm:version: 'v1.13.0' is older than v1.14, the oldest release supported"),
        (
            {"service_cluster_ip_range": "10.254.0.0/33"},
            "kcm:service_cluster_ip_range: '10.254.0.0/33' is not a CIDR such as 10.254.0.0/22"
            " (host bits must be zero)",
        ),
        (
            {"service_cluster_ip_range": "10.254.0.1/22"},
            "kcm:service_cluster_ip_range: '10.254.0.1/22' is not a CIDR such as 10.254.0.0/22"
            " (host bits must be zero)",
        ),
        (
            {"cluster_signing_duration": "10 years"},
            "kcm:cluster_signing_duration: '10 years' is not a duration such as 15s, 2m or 87600h",
        ),
        (
            {"leader_election": {"lease_duration": "10s", "renew_deadline": "15s", "retry_period": "2s"}},
            "kcm:leader_election: expected lease_duration > renew_deadline > 1.2 x retry_period, got 10s / 15s / 2s",
        ),
        (
            {"leader_election": {"lease_duration": "15s", "renew_deadline": "2s", "retry_period": "2s"}},
            "kcm:leader_election: expected lease_duration > renew_deadline > 1.2 x retry_period, got 15s / 2s / 2s",
        ),
        (
            {"leader_election": dict(DEFAULTS["leader_election"], release_on_exit="yes")},
            "kcm:leader_election:release_on_exit: 'yes' is not a boolean (true or false)",
        ),
        (
            {"apiserver": "http://10.10.10.20:8080"},
            "kcm:apiserver: 'http://10.10.10.20:8080' is not an https:// URL such as https://10.10.10.20:6443",
        ),
        ({"secure_port": 70000}, "kcm:secure_port: '70000' is not a port number (1-65535)"),
        ({"bind_address": "eth2"}, "kcm:bind_address: 'eth2' is not an IP address"),
        ({"bind_interface": "eth9"}, "kcm:bind_interface: interface 'eth9' has no IPv4 address in grains"),
        (
            {"extra_args": {"port": 0}},
            "kcm:extra_args:port: --port was removed in v1.24 (RN-1.22 #96216, RN-1.24 #106860); v1.37.2 rejects it",
        ),
        ({"controllers": ["*", "nosuch"]}, "kcm:controllers: v1.37.2 knows no controller named nosuch"),
        ({"source": {"type": "zip", "url": "https://x/y"}}, "kcm:source:type: 'zip' is not one of tarball, binary"),
        (
            {"source": {"type": "tarball", "url": "ftp://x/y"}},
            "kcm:source:url: 'ftp://x/y' must start with https://, salt:// or file://",
        ),
        ({"colour": "blue"}, "kcm:colour: unknown key (see pillar.example for the keys the formula reads)"),
        # The kcm_leader beacon refuses it at beacon.present, after the install changed the disk.
        (
            {"beacon": dict(DEFAULTS["beacon"], timeout=30)},
            "kcm:beacon:timeout: expected seconds in (0, 10] (the poll blocks the minion loop), got 30",
        ),
    ],
)
def test_each_bad_value_is_named(check, over, expected):
    assert expected in check(**over)


KCM_BEACON = formula.load("_modules", "kcm_beacon")
KCM_BEACON.__utils__ = formula.utils()
# Values of every type and edge: each key's rule refuses some of them.
CANDIDATES = [
    0,
    -1,
    0.5,
    2,
    10,
    11,
    30,
    True,
    "2",
    "yes",
    None,
    [],
    [30, 7],
    [0],
    [30, "7"],
    {"a": 1},
    "/var/cache/kcm.json",
    "relative.json",
]


@pytest.mark.parametrize("key", sorted(formula.load("_utils", "kcm_checks").BEACON_RULES))
def test_what_a_beacon_refuses_the_pillar_validation_refuses_naming_the_key(check, key):
    # kcm-config-validated runs before anything on disk changes; beacon.present runs last.
    beacon = "kcm_leader" if key in KCM_BEACON.FRAMEWORK_KEYS + KCM_BEACON.OWN_KEYS["kcm_leader"] else "kcm_cert"
    refused = [value for value in CANDIDATES if not KCM_BEACON.validate(beacon, [{key: value}])[0]]
    assert refused, f"no candidate value shows {key}'s rule"
    for value in refused:
        problems = check(beacon=dict(DEFAULTS["beacon"], **{key: value}))
        assert any(p.startswith(f"kcm:beacon:{key}: ") for p in problems), (key, value, problems)


@pytest.mark.parametrize("version", ["v1.34.3", "1.34.3", "v1.37.2-rc.0", "v1.034.3", "1.034.3", "v1.34.03"])
def test_the_config_validation_accepts_a_version_exactly_when_its_parser_does(check, kcm_flags, version):
    # kcm_flags.normalize_version is the one parser: the validation must not spell versions its own way.
    try:
        kcm_flags.normalize_version(version)
        parsed = True
    except ValueError:
        parsed = False
    assert parsed == (version in ("v1.34.3", "1.34.3", "v1.37.2-rc.0"))
    assert parsed == (not [p for p in check(version=version) if p.startswith("kcm:version")])


def test_bind_interface_takes_its_first_ipv4(kcm_config):
    cfg = kcm_config.resolve(dict(DEFAULTS, bind_interface="eth2"), opts={"cachedir": "/c"})
    assert cfg["bind_address"] == "10.10.10.21"


def test_all_problems_are_reported_at_once(check):
    problems = check(version="x", secure_port="10257", apiserver="10.0.0.1")
    keys = {p.split(":")[1] for p in problems}
    assert {"version", "secure_port", "apiserver"} <= keys


def pem_case(good, **changes):
    return dict(good, **changes)


def test_pki_problems(check, good_pki):
    other_ca, other_key = testpki.make_ca("other")
    foreign, foreign_key = testpki.issue(other_ca, other_key)
    ca_cert, ca_key = testpki.make_ca("leaf-not-ca", is_ca=False)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    from cryptography import x509

    real_ca = x509.load_pem_x509_certificate(good_pki["ca_cert"].encode())
    from cryptography.hazmat.primitives import serialization

    real_ca_key = serialization.load_pem_private_key(good_pki["ca_key"].encode(), None)
    expired, expired_key = testpki.issue(
        real_ca, real_ca_key, not_before=past, not_after=past + datetime.timedelta(days=1)
    )
    wrong_cn, wrong_cn_key = testpki.issue(real_ca, real_ca_key, cn="admin", orgs=("system:masters",))

    cases = {
        "kcm:pki:key: does not match kcm:pki:cert": {"key": testpki.key_pem(other_key)},
        "kcm:pki:ca_key: does not match kcm:pki:ca_cert": {"ca_key": testpki.key_pem(other_key)},
        "kcm:pki:cert: not signed by kcm:pki:ca_cert": {
            "cert": testpki.cert_pem(foreign),
            "key": testpki.key_pem(foreign_key),
        },
        "kcm:pki:ca_cert: not a CA certificate (basicConstraints CA:TRUE expected)": {
            "ca_cert": testpki.cert_pem(ca_cert),
            "ca_key": testpki.key_pem(ca_key),
        },
        "kcm:pki:cert: CN is admin, expected system:kube-controller-manager": {
            "cert": testpki.cert_pem(wrong_cn),
            "key": testpki.key_pem(wrong_cn_key),
        },
        "kcm:pki:cert: O=system:masters would bypass RBAC; issue it without that group": {
            "cert": testpki.cert_pem(wrong_cn),
            "key": testpki.key_pem(wrong_cn_key),
        },
        "kcm:pki:service_account_key: missing (PEM text expected in pillar mode)": {"service_account_key": ""},
        "kcm:pki:cert: not a PEM certificate": {"cert": "-----BEGIN CERTIFICATE-----\nnope\n"},
    }
    for expected, change in cases.items():
        assert expected in check(pki=dict(good_pki, mode="pillar", **change)), expected
    msgs = check(pki=dict(good_pki, mode="pillar", cert=testpki.cert_pem(expired), key=testpki.key_pem(expired_key)))
    assert any(m.startswith("kcm:pki:cert: expired on ") for m in msgs)


def test_without_pems_has_no_pem(kcm_config, good_pki):
    cfg = kcm_config.resolve(dict(DEFAULTS, pki=dict(good_pki, mode="pillar")), opts={"cachedir": "/c"})
    text = repr(kcm_config.without_pems(cfg))
    assert "BEGIN" not in text
    assert kcm_config.without_pems(cfg)["pki"] == {"mode": "pillar"}


def test_setting_prefers_the_deployed_facts_then_pillar_then_the_default(kcm_config, tmp_path):
    kcm_config.__opts__ = {"cachedir": str(tmp_path)}
    kcm_config.__pillar__ = {"kcm": {"identity": "from-pillar", "service": {"control_cmd": "/bin/pillar-ctl"}}}
    # Before the first apply: the pillar answers, and an unset key takes the default.
    assert kcm_config.setting("service:control_cmd") == "/bin/pillar-ctl"
    assert kcm_config.setting("service:manage", True) is True
    (tmp_path / "kcm").mkdir()
    (tmp_path / "kcm" / "deployed.json").write_text(
        '{"identity": "", "service": {"control_cmd": "/bin/deployed-ctl", "manage": false}}'
    )
    assert kcm_config.setting("service:control_cmd") == "/bin/deployed-ctl"
    assert kcm_config.setting("service:manage", True) is False
    # An empty deployed value is not a setting: the pillar's is used.
    assert kcm_config.setting("identity") == "from-pillar"


def test_an_unknown_pki_mode_is_named_alone(check, good_pki):
    msgs = check(pki=dict(good_pki, mode="vault"))
    assert "kcm:pki:mode: 'vault' is not one of pillar, local, remote" in msgs
    assert not any(m.startswith("kcm:pki:") and "mode" not in m for m in msgs)


def test_template_sources_put_the_sites_files_before_the_formulas(kcm_config):
    config = {
        "tofs": {
            "files_switch": ["id", "os_family", "roles"],
            "source_files": {"kcm-service-unit": ["site.jinja", "salt://elsewhere/unit.jinja"]},
        }
    }
    grains = {"id": "master-1", "os_family": "Debian", "roles": ["kcm", "bad/../name"]}

    sources = kcm_config.template_sources(config, "kcm-service-unit", "unit.jinja", grains=grains)

    assert sources == [
        "salt://kcm/files/master-1/site.jinja",
        "salt://elsewhere/unit.jinja",
        "salt://kcm/files/master-1/unit.jinja",
        "salt://kcm/files/Debian/site.jinja",
        "salt://kcm/files/Debian/unit.jinja",
        "salt://kcm/files/kcm/site.jinja",
        "salt://kcm/files/kcm/unit.jinja",
        "salt://kcm/files/default/site.jinja",
        "salt://kcm/files/default/unit.jinja",
    ]
    # without kcm:tofs (no switch, no site file) only the formula's own file is looked up
    assert kcm_config.template_sources({}, "kcm-service-unit", "unit.jinja", grains=grains) == [
        "salt://kcm/files/default/unit.jinja"
    ]


@pytest.mark.parametrize(
    "digest",
    [
        "md5=" + "a" * 32,
        "sha1=" + "a" * 40,
        "a" * 32,
        "a" * 40,
        "sha224=" + "a" * 56,
        "sha512=" + "a" * 64,
    ],
)
def test_a_weak_or_malformed_source_hash_is_refused(check, digest):
    # L8: md5/sha1 (and bare 32/40-hex digests) were accepted
    problems = check(source=dict(DEFAULTS["source"], hash=digest))
    assert [p for p in problems if p.startswith("kcm:source:hash:")] == [
        f"kcm:source:hash: '{digest}' is not 'sha512=<hex>' or 'sha256=<hex>', a sha256/sha512 hex digest"
        " or the URL of a hash file (md5 and sha1 are refused)"
    ]


@pytest.mark.parametrize("digest", ["sha256=" + "a" * 64, "sha512=" + "B" * 128, "c" * 64, "d" * 128])
def test_a_sha256_or_sha512_source_hash_passes(check, digest):
    assert check(source=dict(DEFAULTS["source"], hash=digest)) == []


@pytest.mark.parametrize(
    "key, path",
    [
        ("bin", "/usr/local/bin"),
        ("install", "/opt"),
        ("pki", "/etc"),
        ("kubeconfig", "/etc/"),
        ("conf", "/root"),
        ("cache", "/tmp"),
        ("install", "/usr"),
        ("bin", "/usr/bin"),
        ("pki", "/var"),
        ("unit", "/etc"),
        ("kubeconfig", "/usr/lib/systemd/system"),
        ("install", "/home"),
        ("bin", "/"),
    ],
)
def test_a_system_directory_as_a_path_is_refused_naming_the_key(check, key, path):
    # M6: paths:bin=/usr/local/bin was accepted and then chowned to the KCM user
    problems = check(paths=dict(DEFAULTS["paths"], **{key: path}))
    assert [p for p in problems if p.startswith("kcm:paths:")] == [
        f"kcm:paths:{key}: '{path}' is a system directory; give a directory of the formula's own"
        " such as /data/apps/k8s/kubernetes (it is made root's, 0755)"
    ]


@pytest.mark.parametrize(
    "key, path",
    [
        ("unit", "/etc/systemd/system"),
        ("link", "/usr/local/bin"),
        ("link", "/usr/bin"),
        ("install", "/opt/kcm"),
        ("cache", "/root/software"),
    ],
)
def test_systemd_unit_directories_and_link_directories_pass(check, key, path):
    assert check(paths=dict(DEFAULTS["paths"], **{key: path})) == []


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_a_cert_warning_at_or_above_the_renewal_point_is_refused_where_the_formula_renews(check, good_pki, mode):
    # renewal at days_remaining (30) happens first: a warning at 30 days would page for a certificate
    # that is about to be renewed, not for a renewal that failed
    pki = dict(good_pki, mode=mode, ca_server="ca-1", days_remaining=30)
    problems = check(pki=pki, beacon=dict(DEFAULTS["beacon"], cert_thresholds=[30, 7]))
    assert (
        "kcm:beacon:cert_thresholds: [30, 7]: each must be below kcm:pki:days_remaining (30), where the"
        f" {mode} mode renews the certificate"
    ) in problems
    assert not [p for p in check(pki=pki) if p.startswith("kcm:beacon:")]  # the defaults sit below it


def test_pillar_certificates_take_any_threshold(check):
    # pillar mode: nothing renews by itself, so the thresholds are the site's whole warning
    assert not [
        p for p in check(beacon=dict(DEFAULTS["beacon"], cert_thresholds=[90, 30, 7])) if p.startswith("kcm:beacon:")
    ]
