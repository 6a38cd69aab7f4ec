"""CIS Kubernetes Benchmark (cis-1.12, kube-bench v0.15.6) controller-manager checks 1.3.1-1.3.7,
asserted the way kube-bench's own audits judge them, on the flags the formula renders for its
defaults (defaults.yaml) in every release of the version table, and what a pillar switch
turns off. kube-bench itself cannot be built in CI (docs/cis.md has its run by hand)."""

from pathlib import Path

import pytest
import yaml

from tests.unit.test_flags import as_map

CASES = yaml.safe_load((Path(__file__).parent / "cases" / "flags_by_version.yaml").read_text())
DEFAULTS = yaml.safe_load((Path(__file__).resolve().parents[2] / "formula/kcm/defaults.yaml").read_text())["kcm"]
RELEASES = sorted(CASES["releases"])


@pytest.fixture
def flags_of(kcm_config, kcm_flags):
    def make(version, **over):
        cfg = dict(DEFAULTS, version=version, **over)
        return as_map(kcm_flags.render(kcm_config.resolve(cfg, grains={}, opts={"cachedir": "/c"})))

    return make


def cis_failures(flags):
    """The scored 1.3.x checks ``flags`` fail, each as kube-bench's cfg/cis-1.12/master.yaml
    tests it (1.3.1 is manual there: the formula requires the flag to be set, above 0)."""
    failed = []
    if int(flags.get("terminated-pod-gc-threshold", "0")) <= 0:
        failed.append("1.3.1")
    if flags.get("profiling") != "false":
        failed.append("1.3.2")
    if flags.get("use-service-account-credentials") != "true":
        failed.append("1.3.3")
    if not flags.get("service-account-private-key-file"):
        failed.append("1.3.4")
    if not flags.get("root-ca-file"):
        failed.append("1.3.5")
    gates = dict(g.split("=", 1) for g in flags.get("feature-gates", "").split(",") if "=" in g)
    if gates.get("RotateKubeletServerCertificate") == "false":
        failed.append("1.3.6")
    # "--bind-address is 127.0.0.1 or not set" (kube-bench: flag absent, or the value).
    if flags.get("bind-address", "127.0.0.1") != "127.0.0.1":
        failed.append("1.3.7")
    return failed


@pytest.mark.parametrize("version", RELEASES)
def test_the_defaults_pass_every_controller_manager_flag_check(flags_of, version):
    flags = flags_of(version)
    assert cis_failures(flags) == []
    assert flags["terminated-pod-gc-threshold"] == "12500"


@pytest.mark.parametrize(
    "pillar, fails",
    [
        ({"profiling": True}, ["1.3.2"]),
        ({"bind_address": "0.0.0.0"}, ["1.3.7"]),
        ({"bind_address": "10.10.10.21"}, ["1.3.7"]),
        ({"use_service_account_credentials": False}, ["1.3.3"]),
        ({"terminated_pod_gc_threshold": 0}, ["1.3.1"]),
        ({"extra_args": {"profiling": None}}, ["1.3.2"]),
        ({"extra_args": {"feature-gates": "RotateKubeletServerCertificate=false"}}, ["1.3.6"]),
    ],
)
def test_each_pillar_switch_away_from_the_benchmark_is_seen(flags_of, pillar, fails):
    assert cis_failures(flags_of("v1.34.3", **pillar)) == fails


def test_profiling_is_rendered_on_only_when_asked(flags_of):
    assert flags_of("v1.34.3", profiling=True)["profiling"] == "true"
    assert flags_of("v1.14.2")["profiling"] == "false"


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("profiling", "false", "kcm:profiling: 'false' is not true or false"),
        ("terminated_pod_gc_threshold", "12500", "kcm:terminated_pod_gc_threshold: '12500' is not an integer"),
    ],
)
def test_the_new_switches_are_typed(kcm_config, key, value, expected):
    cfg = kcm_config.resolve(dict(DEFAULTS, **{key: value}), grains={}, opts={"cachedir": "/c"}, defaults=DEFAULTS)
    assert any(p.startswith(expected) for p in kcm_config.validate(cfg)), kcm_config.validate(cfg)
