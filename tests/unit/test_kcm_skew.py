"""The version skew guard's decision (issue 28): KCM at most one minor older than the
kube-apiserver, never newer; an unreadable /version refuses a version change and lets a
first install go ahead with a warning; a stated reason overrides a refusal.

``kcm_skew.check`` runs here with the formula's own ``kcm_flags`` (the version parser) and
``_utils/kcm_skew.py``; the apiserver's ``/version`` is a stand-in for ``kcm_api.get``
(the real apiserver: tests/functional/test_skew.py)."""

import json
from pathlib import Path

import pytest
import yaml
from salt.exceptions import CommandExecutionError

from kcmlab import formula

NEWER = (
    "kcm:version: v1.37.2 is newer than the kube-apiserver (v1.36.3); the skew policy allows KCM at most"
    " one minor older than the apiserver, never newer: upgrade the apiservers first"
)
UNREADABLE = (
    "kcm:version: v1.37.2 cannot replace the deployed v1.36.3: the kube-apiserver's /version could not"
    " be read (unreachable: GET https://10.0.0.1:6443/version: Connection refused), so the skew policy"
    " (KCM at most one minor older than the apiserver, never newer) cannot be checked"
)
OVERRIDE_HINT = " (or set kcm:skew:override_reason to a reason to override)"


class Apiserver:
    """What ``kcm_api.get('/version', ...)`` answers: a gitVersion, or an error."""

    def __init__(self):
        self.version, self.calls = None, []

    def __call__(self, path, kubeconfig, timeout=None):
        self.calls.append((path, kubeconfig))
        if self.version is None:
            raise formula.utils()["kcm_error.failure"](
                "unreachable", "GET https://10.0.0.1:6443/version: Connection refused"
            )
        return {"major": "1", "gitVersion": self.version}


@pytest.fixture
def apiserver():
    return Apiserver()


@pytest.fixture
def skew(apiserver, tmp_path):
    kubeconfig = tmp_path / "kcm.kubeconfig"
    kubeconfig.write_text("{}")
    flags = formula.kcm_flags()
    module = formula.load("_modules", "kcm_skew")
    config = formula.load("_modules", "kcm_config")
    config.__salt__ = {"cp.get_file_str": lambda url: (formula.REPO / "formula/kcm/defaults.yaml").read_text()}

    def requested(key):
        config.__pillar__ = module.__pillar__  # the pillar a test sets on the module
        return config.requested(key)

    module.deployed = {}
    module.__utils__ = formula.utils()
    module.__salt__ = {
        "kcm_flags.minor": flags.minor,
        "kcm_flags.normalize_version": flags.normalize_version,
        "kcm_api.get": apiserver,
        "kcm_config.deployed": lambda: module.deployed,
        "kcm_config.requested": requested,
    }
    # The minion's pillar as Salt hands it to the module (unmasked; pillar.get masks on 3008).
    module.__pillar__ = {"kcm": {"version": "v1.37.2"}}
    module.kubeconfig = str(kubeconfig)
    return module


def decided(skew, apiserver, version, served, deployed=None, reason=""):
    apiserver.version = served
    skew.deployed = {"version": deployed, "files": {"kubeconfig": skew.kubeconfig}} if deployed else {}
    got = skew.check(version, skew.kubeconfig, reason)
    return got["allowed"], got["comment"], got["warnings"]


def test_a_kcm_newer_than_the_apiserver_is_refused_naming_the_key_and_both_versions(skew, apiserver):
    assert decided(skew, apiserver, "v1.37.2", "v1.36.3", deployed="v1.36.3") == (False, NEWER + OVERRIDE_HINT, [])
    # a first install is refused the same when /version can be read
    assert decided(skew, apiserver, "v1.37.2", "v1.36.3")[0] is False
    assert apiserver.calls[-1] == ("/version", skew.kubeconfig)


@pytest.mark.parametrize(
    "version, served",
    [
        ("v1.37.2", "v1.37.2"),
        ("v1.37.0", "v1.37.2"),
        ("v1.36.3", "v1.37.2"),
        ("1.36.3", "v1.37.2-rc.1"),
        ("v1.36.3", "v1.37.2+k3s1"),
    ],
)
def test_the_same_minor_or_one_older_is_allowed_without_a_warning(skew, apiserver, version, served):
    allowed, comment, warnings = decided(skew, apiserver, version, served, deployed="v1.36.3")
    assert (allowed, warnings) == (True, [])
    assert comment == (
        f"kcm:version: v{version.lstrip('v')} is within the skew policy of the kube-apiserver ({served})"
    )


def test_two_minors_older_is_allowed_with_a_warning(skew, apiserver):
    warning = (
        "kcm:version: v1.35.4 is 2 minors older than the kube-apiserver (v1.37.2); the skew policy"
        " supports KCM at most one minor older"
    )
    assert decided(skew, apiserver, "v1.35.4", "v1.37.2", deployed="v1.35.4") == (True, warning, [warning])


def test_unreadable_version_refuses_a_version_change(skew, apiserver):
    assert decided(skew, apiserver, "v1.37.2", None, deployed="v1.36.3") == (False, UNREADABLE + OVERRIDE_HINT, [])


def test_unreadable_version_lets_a_first_install_and_an_unchanged_version_go_ahead_with_a_warning(skew, apiserver):
    why = "(unreachable: GET https://10.0.0.1:6443/version: Connection refused)"
    first = (
        "kcm:version: v1.37.2 (first install) without a skew check: the kube-apiserver's /version could not"
        f" be read {why}"
    )
    assert decided(skew, apiserver, "v1.37.2", None) == (True, first, [first])
    kept = (
        "kcm:version: v1.37.2 (deployed v1.37.2 kept) without a skew check: the kube-apiserver's /version"
        f" could not be read {why}"
    )
    assert decided(skew, apiserver, "v1.37.2", None, deployed="v1.37.2") == (True, kept, [kept])


def test_no_kubeconfig_yet_is_unreadable_and_never_reads_another_file(skew, apiserver, tmp_path):
    apiserver.version = "v1.36.3"
    got = skew.check("v1.37.2", str(tmp_path / "absent.kubeconfig"), "")
    assert got["allowed"] is True and "(first install) without a skew check" in got["comment"]
    assert "kubeconfig: no kubeconfig deployed yet, and pillar gives no https kcm:apiserver" in got["comment"]
    assert apiserver.calls == []


@pytest.fixture
def public(skew, tmp_path):
    """The apiserver's /version as a client without credentials reads it (kcm_api.probe)."""
    seen = []

    def probe(url, ca_cert, timeout=None):
        seen.append((url, Path(ca_cert).read_text(), str(Path(ca_cert).parent)))
        return {"status": public.status, "body": json.dumps({"gitVersion": "v1.36.3"})}

    public = type("Public", (), {"status": 200, "seen": seen})
    skew.__salt__["kcm_api.probe"] = probe
    skew.__opts__ = {"cachedir": str(tmp_path)}
    skew.__pillar__ = {
        "kcm": {
            "version": "v1.37.2",
            "apiserver": "https://10.0.0.1:6443",
            "pki": {"ca_cert": "-----BEGIN CERTIFICATE-----\nCA\n"},
        }
    }
    return public


def test_a_first_install_reads_the_public_version_with_the_pillars_ca_and_is_refused_when_newer(skew, public, tmp_path):
    got = skew.check("v1.37.2", str(tmp_path / "absent.kubeconfig"), "")

    assert got["allowed"] is False and "newer than the kube-apiserver (v1.36.3)" in got["comment"]
    [(url, ca, scratch)] = public.seen
    assert (url, ca) == ("https://10.0.0.1:6443/version", "-----BEGIN CERTIFICATE-----\nCA\n")
    assert not Path(scratch).exists()  # the CA's copy is gone with its private directory


def test_a_first_install_where_anonymous_requests_are_off_goes_ahead_with_a_warning(skew, public, tmp_path):
    public.status = 401
    got = skew.check("v1.37.2", str(tmp_path / "absent.kubeconfig"), "")

    assert got["allowed"] is True and "(first install) without a skew check" in got["comment"]
    assert "HTTP 401 to a client without credentials" in got["comment"]


def test_an_apiserver_version_that_is_not_a_release_counts_as_unreadable(skew, apiserver):
    allowed, comment, _ = decided(skew, apiserver, "v1.37.2", "devel", deployed="v1.36.3")
    assert allowed is False
    assert "could not be read (malformed: /version gitVersion 'devel' is not understood" in comment


def test_a_stated_reason_overrides_a_refusal_and_is_quoted(skew, apiserver):
    reason = "apiservers upgraded out of band, CHG-1234"
    allowed, comment, warnings = decided(skew, apiserver, "v1.37.2", "v1.36.3", deployed="v1.36.3", reason=reason)
    assert (allowed, comment) == (True, f"{NEWER}; allowed by kcm:skew:override_reason: {reason}")
    assert warnings == [comment]
    allowed, comment, _ = decided(skew, apiserver, "v1.37.2", None, deployed="v1.36.3", reason=reason)
    assert (allowed, comment) == (True, f"{UNREADABLE}; allowed by kcm:skew:override_reason: {reason}")


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_an_empty_reason_overrides_nothing(skew, apiserver, reason):
    assert decided(skew, apiserver, "v1.37.2", "v1.36.3", deployed="v1.36.3", reason=reason)[0] is False


def test_defaults_come_from_pillar_and_a_bad_version_names_the_key(skew, apiserver):
    apiserver.version = "v1.36.3"
    assert skew.check(kubeconfig=skew.kubeconfig)["facts"]["version"] == "v1.37.2"
    # merged as map.jinja merges: kcm, then kcm:lookup, then the formula's defaults.yaml
    skew.__pillar__ = {"kcm": {"lookup": {"version": "1.35.4", "skew": {"override_reason": "CHG-9"}}}}
    assert {k: skew.check(kubeconfig=skew.kubeconfig)["facts"][k] for k in ("version", "override_reason")} == {
        "version": "v1.35.4",
        "override_reason": "CHG-9",
    }
    skew.__pillar__ = {}
    default = yaml.safe_load((formula.REPO / "formula/kcm/defaults.yaml").read_text())["kcm"]["version"]
    assert skew.check(kubeconfig=skew.kubeconfig)["facts"]["version"] == default
    with pytest.raises(CommandExecutionError, match=r"^kcm:version: 'v2' is not a Kubernetes release"):
        skew.check("v2", skew.kubeconfig)


def test_the_oldest_apiserver_is_the_one_compared_against():
    oldest = formula.utils()["kcm_skew.oldest"]
    # the skew policy counts minors: between two of the same minor, the first by source
    assert oldest([("v1.37.2", 37, "master-1"), ("v1.36.1", 36, "master-3"), ("v1.36.3", 36, "master-2")]) == (
        "v1.36.3",
        36,
        "master-2",
    )
    assert oldest([]) is None
