"""The version table: which flags KCM gets for each release (expectations in cases/)."""

import copy
from pathlib import Path

import pytest
import yaml

CASES = yaml.safe_load((Path(__file__).parent / "cases" / "flags_by_version.yaml").read_text())
DEFAULTS = yaml.safe_load((Path(__file__).resolve().parents[2] / "formula/kcm/defaults.yaml").read_text())["kcm"]


@pytest.fixture
def resolved(kcm_config):
    def make(version, **over):
        cfg = dict(DEFAULTS, version=version, **over)
        return kcm_config.resolve(cfg, grains={}, opts={"cachedir": "/c"})

    return make


def as_map(flags):
    out = {}
    for flag in flags:
        name, _, value = flag[2:].partition("=")
        out[name] = value
    return out


@pytest.mark.parametrize("version", sorted(CASES["releases"]))
def test_exact_flag_set_per_release(kcm_flags, resolved, version):
    case = CASES["releases"][version]
    rendered = kcm_flags.render(resolved(version))
    got = as_map(rendered)
    assert set(got) == set(CASES["common"]) | set(case["add"])
    for name, value in case["add"].items():
        assert got[name] == value
    assert got["controllers"] == case["controllers"]
    names = [flag[2:].partition("=")[0] for flag in rendered]
    assert names == sorted(names), "the unit lists flags sorted by name, one per line"
    assert kcm_flags.problems(resolved(version)) == []


def test_rendered_values_come_from_the_config(kcm_flags, resolved):
    got = as_map(kcm_flags.render(resolved("v1.34.3")))
    assert got["secure-port"] == "10257"  # the guide's 10252 was the insecure port
    assert got["leader-elect"] == "true"
    assert got["leader-elect-lease-duration"] == "15s"
    assert got["use-service-account-credentials"] == "true"
    assert got["kubeconfig"] == got["authentication-kubeconfig"] == got["authorization-kubeconfig"]
    # the secrets through systemd's copies of root-only files (LoadCredential=)
    assert got["kubeconfig"] == "/run/credentials/kube-controller-manager.service/kube-controller-manager.kubeconfig"
    assert got["service-account-private-key-file"] == "/run/credentials/kube-controller-manager.service/sa.key"
    assert got["tls-private-key-file"].endswith(".service/kube-controller-manager-key.pem")
    assert got["cluster-signing-key-file"].endswith(".service/ca-key.pem")
    assert got["tls-cert-file"] == "/etc/k8s/ssl/kube-controller-manager.pem"


def test_before_systemd_247_the_secrets_are_read_where_they_lie(kcm_config, kcm_flags):
    cfg = dict(copy.deepcopy(DEFAULTS), version="v1.34.3")
    got = as_map(
        kcm_flags.render(kcm_config.resolve(cfg, grains={"systemd": {"version": "239"}}, opts={"cachedir": "/c"}))
    )
    assert got["kubeconfig"] == "/etc/k8s/kubeconfig/kube-controller-manager.kubeconfig"
    assert got["service-account-private-key-file"] == "/etc/k8s/ssl/sa.key"


def test_extra_args_add_override_and_remove(kcm_flags, resolved):
    cfg = resolved("v1.34.3", extra_args={"v": 4, "profiling": True, "client-ca-file": None})
    got = as_map(kcm_flags.render(cfg))
    assert got["v"] == "4"
    assert got["profiling"] == "true"
    assert "client-ca-file" not in got


@pytest.mark.parametrize(
    "version, flag, value, fragment",
    [
        ("v1.24.0", "port", 0, "removed in v1.24"),
        ("v1.30.0", "address", "0.0.0.0", "removed in v1.24"),
        ("v1.25.0", "experimental-cluster-signing-duration", "8760h", "removed in v1.25"),
        ("v1.18.0", "cluster-signing-duration", "8760h", "does not exist before v1.19"),
        ("v1.26.0", "logtostderr", True, "removed in v1.26"),
        ("v1.26.0", "log-dir", "/var/log/kcm", "removed in v1.26"),
        ("v1.15.0", "leader-elect-resource-name", "kcm", "does not exist before v1.16"),
        ("v1.22.0", "horizontal-pod-autoscaler-use-rest-clients", True, "removed in v1.22"),
        ("v1.31.0", "horizontal-pod-autoscaler-upscale-delay", "3m", "removed in v1.31"),
        ("v1.25.0", "concurrent-horizontal-pod-autoscaler-syncs", 5, "does not exist before v1.26"),
        ("v1.27.0", "pod-eviction-timeout", "5m", "removed in v1.27"),
        ("v1.37.2", "concurrent-service-syncs", 1, "removed in v1.37"),
        ("v1.27.0", "leader-elect-resource-lock", "endpointsleases", "allowed: leases"),
        ("v1.24.0", "leader-elect-resource-lock", "endpoints", "refused by v1.24.0"),
        ("v1.22.0", "port", 10252, "may only be 0"),
    ],
)
def test_extra_args_the_release_rejects_are_reported(kcm_flags, resolved, version, flag, value, fragment):
    problems = kcm_flags.problems(resolved(version, extra_args={flag: value}))
    assert len(problems) == 1
    assert problems[0].startswith(f"kcm:extra_args:{flag}: ")
    assert fragment in problems[0]


@pytest.mark.parametrize(
    "version, flag, value",
    [
        ("v1.21.0", "port", 10252),
        ("v1.23.0", "port", 0),
        ("v1.17.0", "leader-elect-resource-lock", "endpointsleases"),
        ("v1.14.2", "leader-elect-resource-lock", "endpoints"),
        ("v1.25.0", "logtostderr", True),
        ("v1.16.0", "leader-elect-resource-name", "kcm"),
        ("v1.26.0", "concurrent-horizontal-pod-autoscaler-syncs", 5),
        ("v1.36.0", "concurrent-service-syncs", 1),
    ],
)
def test_extra_args_the_release_accepts_pass(kcm_flags, resolved, version, flag, value):
    assert kcm_flags.problems(resolved(version, extra_args={flag: value})) == []


def test_log_to_file_only_before_1_26(kcm_flags, resolved):
    got = as_map(kcm_flags.render(resolved("v1.25.0", log_to_file=True)))
    assert got["logtostderr"] == "false"
    assert got["log-dir"] == "/var/log/kube-controller-manager"  # the unit's LogsDirectory=
    problems = kcm_flags.problems(resolved("v1.26.0", log_to_file=True))
    assert problems == [
        "kcm:log_to_file: v1.26.0 has no klog file flags (removed in v1.26, #112120);"
        " it logs to stderr (journald): set log_to_file: false"
    ]


def test_controller_names_follow_the_release(kcm_flags):
    assert kcm_flags.controller_names(["*", "-podgc", "csrsigning"], "v1.28.0") == [
        "*",
        "-pod-garbage-collector-controller",
        "certificatesigningrequest-signing-controller",
    ]
    # canonical names written in pillar are spelled the old way for older releases
    assert kcm_flags.controller_names(["bootstrap-signer-controller"], "v1.20.0") == ["bootstrapsigner"]
    assert "nosuch" in kcm_flags.controllers_problem(["*", "nosuch"], "v1.34.3")
    assert "taint-eviction-controller" in kcm_flags.controllers_problem(["taint-eviction-controller"], "v1.20.0")
    assert kcm_flags.controllers_problem(["*", "-route"], "v1.20.0") is None


def test_the_dra_claim_controller_is_named_as_the_real_binaries_list_it(kcm_flags):
    # `kube-controller-manager --help` of v1.35.4, v1.36.3 and v1.37.2 lists resourceclaim-controller
    # (docs/releases.md); the table used to accept only resource-claim-controller, which they refuse.
    assert kcm_flags.controllers_problem(["*", "-resourceclaim-controller"], "v1.37.2") is None
    assert "resource-claim-controller" in kcm_flags.controllers_problem(["resource-claim-controller"], "v1.37.2")


@pytest.mark.parametrize(
    ("pillar", "refused_by", "known_to"),
    [
        # (controllers, a release whose real binary does not list it, the nearest one that does)
        (["*", "-taint-eviction-controller"], "v1.28.15", "v1.29.15"),
        (["*", "-selinux-warning-controller"], "v1.31.13", "v1.32.9"),
        (["*", "-podgroup-protection-controller"], "v1.35.4", "v1.36.3"),
        (["*", "-service-lb-controller"], "v1.37.2", "v1.36.3"),
        (["*", "-legacy-service-account-token-cleaner"], "v1.26.13", "v1.28.15"),
        (["*", "-endpointslicemirroring"], "v1.18.19", "v1.19.16"),
        (["*", "-ephemeral-volume"], "v1.16.15", "v1.19.16"),
        (["*", "-evictionrequest-controller"], "v1.37.2", "v1.38.0-beta.0"),
        (["*", "-imperative-eviction-responder-controller"], "v1.37.2", "v1.38.0-beta.0"),
    ],
)
def test_a_controller_is_known_only_to_the_releases_whose_binary_lists_it(kcm_flags, pillar, refused_by, known_to):
    # The "All controllers:" lists of the real binaries in docs/releases.md: the table used to accept
    # every canonical name for every release from v1.28, which those binaries refuse at start.
    assert pillar[1][1:] in kcm_flags.controllers_problem(pillar, refused_by)
    assert kcm_flags.controllers_problem(pillar, known_to) is None


def test_klog_one_output_is_refused_before_v1_20(kcm_flags):
    # The real v1.19.16 binary has no --one-output (docs/releases.md); v1.20.15's has it.
    assert "v1.19.16 lacks it" in kcm_flags.flag_problem("one-output", "v1.19.16")
    assert kcm_flags.flag_problem("one-output", "v1.20.15") is None


@pytest.mark.parametrize("text", ["1.34", "v2.0.0", "v1.13.9", "latest", "v1.34.x", "v1.034.3", "1.34.03"])
def test_bad_versions_are_refused(kcm_flags, text):
    with pytest.raises(ValueError):
        kcm_flags.normalize_version(text)


def test_leading_v_is_optional(kcm_flags):
    assert kcm_flags.normalize_version("1.34.3") == "v1.34.3"
    assert kcm_flags.minor("v1.37.2") == 37
