"""kcm.* and the kcm states without a cluster: leader records written from the documented
Lease and Endpoints formats, expiry edges, holder parsing, identity, the errors raised, the
preflight against a stand-in binary, and the status row.

The modules are loaded the way Salt's loader shows them: ``_modules/kcm.py`` and
``_modules/kcm_local.py`` both under ``kcm.``, with their dunders from pytest-salt-factories'
``configure_loader_modules``."""

import datetime
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from salt.exceptions import CommandExecutionError

from kcmlab import formula
from kcmlab.controlplane import parse_exec_start

REPO = formula.REPO

CASES = yaml.safe_load((Path(__file__).parent / "cases" / "kcm_leader_records.yaml").read_text())
DEFAULTS = yaml.safe_load((REPO / "formula/kcm/defaults.yaml").read_text())["kcm"]
LEASE = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager"
ENDPOINTS = "/api/v1/namespaces/kube-system/endpoints/kube-controller-manager"
NAMESPACE = "/api/v1/namespaces/kube-system"
UID = "5f0c6e2a-7d3b-4c1e-9a8f-2b6d4e8c1a07"
NOW = datetime.datetime(2026, 11, 26, 18, 40, 5, tzinfo=datetime.timezone.utc)

UTILS = formula.utils()
KCM = formula.load("_modules", "kcm")
KCM_LOCAL = formula.load("_modules", "kcm_local")
KCM_PKI = formula.load("_modules", "kcm_pki")
KCM_RELEASE = formula.load("_modules", "kcm_release")
KCM_STATES = formula.load("_states", "kcm")


def at(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def lease(node="master-2", renew="2026-11-26T18:40:00.000000Z", duration=15, transitions=4):
    return {
        "kind": "Lease",
        "spec": {
            "holderIdentity": f"{node}_105bfb92-3c68-4a29-ae9e-fc42f78982dd" if node else "",
            "leaseDurationSeconds": duration,
            "acquireTime": "2026-11-26T18:31:12.004512Z",
            "renewTime": renew,
            "leaseTransitions": transitions,
        },
    }


def api_error(reason, detail, status=None):
    """What kcm_api raises: a CommandExecutionError with the reason (and status) in info."""
    return UTILS["kcm_error.failure"](reason, detail, status=status)


def raised(func, *args, **kwargs):
    """``(reason, detail)`` of the CommandExecutionError a call raises; its text is one line."""
    with pytest.raises(CommandExecutionError) as excinfo:
        func(*args, **kwargs)
    exc = excinfo.value
    assert str(exc) == f"{exc.info['reason']}: {exc.error}" and "\n" not in str(exc)
    return exc.info["reason"], exc.error


class FakeAPI:
    """Stands in for kcm_api.get: answers by path, or raises its real errors."""

    def __init__(self):
        self.routes = {}
        self.calls = []

    def fail(self, path, reason, status=None):
        self.routes[path] = api_error(reason, f"GET https://127.0.0.1:6443{path}: x", status)

    def __call__(self, path, kubeconfig, timeout=None):
        self.calls.append((path, kubeconfig))
        answer = self.routes.get(path)
        if answer is None:
            answer = api_error("not_found", f"GET {path}: HTTP 404", 404)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Loaded:
    """``kcm.*`` as the loader merges it (both files), with the dunders the tests look at."""

    def __init__(self, salt, context, opts, pillar):
        self.__salt__, self.__context__, self.__opts__, self.__pillar__ = salt, context, opts, pillar

    def __getattr__(self, name):
        return self.__salt__[f"kcm.{name}"]


@pytest.fixture
def deployed(tmp_path):
    return {
        **DEFAULTS,
        "version": "v1.37.2",
        "user": "root",  # the stand-in binary lives in tmp_path
        "identity": "",
        "cluster": "prod",
        "secure_port": 10257,
        "bind_address": "0.0.0.0",
        "service": {"name": "kube-controller-manager"},
        "files": {
            "kubeconfig": "/etc/k8s/kubeconfig/kube-controller-manager.kubeconfig",
            "ca_cert": "/etc/k8s/ssl/ca.pem",
            "cert": str(tmp_path / "kcm.pem"),
            "key": str(tmp_path / "kcm-key.pem"),
            "signer_cert": "/etc/k8s/ssl/ca.pem",
            "signer_key": "/etc/k8s/ssl/ca-key.pem",
            "service_account_key": "/etc/k8s/ssl/sa.key",
            "binary": str(tmp_path / "kube-controller-manager"),
        },
    }


@pytest.fixture
def api():
    return FakeAPI()


@pytest.fixture
def salt_functions(api, deployed, kcm_flags):
    # The lock comes from the module the release hook asks, with the real flag table.
    KCM_RELEASE.__salt__ = {"kcm_flags.minor": kcm_flags.minor}
    functions = {
        "kcm_release.lock": KCM_RELEASE.lock,
        "kcm_api.get": api,
        "kcm_api.probe": lambda url, ca_cert, timeout=None: {"status": 200, "body": "ok"},
        "kcm_config.deployed": lambda: deployed,
        "kcm_pki.certificate": KCM_PKI.certificate,
    }
    for module in (KCM, KCM_LOCAL):
        functions.update(
            {
                f"kcm.{name}": getattr(module, name)
                for name in dir(module)
                if not name.startswith("_")
                and callable(getattr(module, name))
                and getattr(getattr(module, name), "__module__", None) == module.__name__
            }
        )
    return functions


@pytest.fixture
def configure_loader_modules(salt_functions, monkeypatch):
    monkeypatch.setattr(KCM, "_utcnow", lambda: NOW)
    monkeypatch.setattr(KCM_PKI, "_now", lambda: NOW)
    monkeypatch.setattr(KCM.socket, "gethostname", lambda: "host-a")
    KCM._CLUSTER_IDS.clear()
    dunders = {
        "__salt__": salt_functions,
        "__opts__": {"id": "master-1", "file_client": "local"},
        "__grains__": {"id": "master-1"},
        "__pillar__": {},
        "__context__": {},
        "__utils__": UTILS,
    }
    states = {"__salt__": salt_functions, "__opts__": {"test": False}, "__context__": dunders["__context__"]}
    return {KCM: dunders, KCM_LOCAL: dunders, KCM_PKI: dunders, KCM_STATES: states}


@pytest.fixture
def kcm(configure_loader_modules):
    dunders = configure_loader_modules[KCM]
    return Loaded(dunders["__salt__"], dunders["__context__"], dunders["__opts__"], dunders["__pillar__"])


# ---------------------------------------------------------------------------------------------
# Leader records from the documented formats


def in_lock(api, deployed, case):
    """Serve a case's object where its release keeps the lock: the Endpoints up to v1.16."""
    if case["kind"] != "lease":
        deployed["version"] = "v1.16.15"
    api.routes[LEASE if case["kind"] == "lease" else ENDPOINTS] = case["object"]


@pytest.mark.parametrize("case", CASES["valid"], ids=[c["name"] for c in CASES["valid"]])
def test_leader_reports_each_documented_record(kcm, api, deployed, monkeypatch, case):
    monkeypatch.setattr(KCM, "_utcnow", lambda: at(case["now"]))
    in_lock(api, deployed, case)

    result = kcm.leader()

    assert {key: result[key] for key in case["expect"]} == case["expect"]
    assert "retcode" not in kcm.__context__


@pytest.mark.parametrize("case", CASES["malformed"], ids=[c["name"] for c in CASES["malformed"]])
def test_malformed_records_are_an_error_naming_the_field(kcm, api, deployed, case):
    in_lock(api, deployed, case)

    reason, detail = raised(kcm.leader)

    assert reason == "malformed"
    assert case["error"] in detail


def test_parsers_are_pure_functions_of_the_object():
    parse_time = UTILS["kcm_time.parse_rfc3339"]
    record = UTILS["kcm_lease.parse_lease"](lease(), parse_time)
    assert record == {
        "holder": "master-2_105bfb92-3c68-4a29-ae9e-fc42f78982dd",
        "acquire_time": "2026-11-26T18:31:12.004512Z",
        "renew_time": "2026-11-26T18:40:00.000000Z",
        "lease_duration_seconds": 15,
        "transitions": 4,
        "source": "lease",
    }
    with pytest.raises(LookupError):
        UTILS["kcm_lease.parse_endpoints"](
            {"kind": "Endpoints", "metadata": {"name": "kube-controller-manager"}}, parse_time
        )


def test_the_lease_wins_over_a_stale_endpoints_record(kcm, api):
    api.routes[LEASE] = lease("master-3")
    api.routes[ENDPOINTS] = {
        "metadata": {
            "annotations": {"control-plane.alpha.kubernetes.io/leader": json.dumps({"holderIdentity": "old-node_1"})}
        }
    }

    assert kcm.leader()["node"] == "master-3"
    assert [path for path, _ in api.calls] == [LEASE]


def test_no_lock_at_all_is_not_found(kcm, api):
    assert raised(kcm.leader) == (
        "not_found",
        "no lease kube-system/kube-controller-manager exists (no KCM has run leader election with this lock)",
    )
    assert "retcode" not in kcm.__context__


def test_a_custom_lock_in_extra_args_is_read_where_kcm_and_the_release_hook_find_it(kcm, api, deployed):
    # 5f6804a read kube-system/kube-controller-manager whatever extra_args said, while the
    # release hook honoured them: the beacons raised KCMApiserverUnreachable for a lock that
    # does not exist.
    deployed["extra_args"] = {"leader-elect-resource-namespace": "kcm-ha", "leader-elect-resource-name": "kcm-prod"}
    custom = "/apis/coordination.k8s.io/v1/namespaces/kcm-ha/leases/kcm-prod"
    api.routes[custom] = lease("master-3")
    api.routes[LEASE] = lease("someone-else")

    assert kcm.leader()["node"] == "master-3"
    assert [path for path, _ in api.calls] == [custom]
    hook = KCM_RELEASE.lock(deployed)
    assert (hook["namespace"], hook["name"]) == ("kcm-ha", "kcm-prod")


def test_a_configmaps_lock_of_v1_18_is_read_from_its_configmap(kcm, api, deployed):
    deployed.update(version="v1.18.20", extra_args={"leader-elect-resource-lock": "configmaps"})
    api.routes["/api/v1/namespaces/kube-system/configmaps/kube-controller-manager"] = {
        "metadata": {
            "annotations": {
                "control-plane.alpha.kubernetes.io/leader": json.dumps(
                    {
                        "holderIdentity": "master-2_1",
                        "leaseDurationSeconds": 15,
                        "acquireTime": "2026-11-26T18:31:12Z",
                        "renewTime": "2026-11-26T18:40:00Z",
                        "leaderTransitions": 2,
                    }
                )
            }
        }
    }

    result = kcm.leader()

    assert (result["node"], result["source"], result["transitions"]) == ("master-2", "configmap", 2)
    assert api.calls[0][0] == "/api/v1/namespaces/kube-system/configmaps/kube-controller-manager"


def test_facts_that_name_only_a_kubeconfig_read_kcms_default_lock(kcm, api, deployed):
    # What a hand-made or partial deployed.json holds: the lock still has its one answer.
    for key in [k for k in deployed if k not in ("files", "cluster")]:
        del deployed[key]
    api.routes[LEASE] = lease("master-2")

    assert kcm.leader()["node"] == "master-2"


def test_leader_election_off_has_no_lock_to_read(kcm, api, deployed):
    deployed["extra_args"] = {"leader-elect": False}

    reason, detail = raised(kcm.leader)

    assert reason == "not_found" and "leader election is off" in detail
    assert api.calls == []


def test_endpoints_without_the_annotation_is_not_found(kcm, api, deployed):
    deployed["version"] = "v1.16.15"
    api.routes[ENDPOINTS] = {"kind": "Endpoints", "metadata": {"name": "kube-controller-manager"}}

    reason, detail = raised(kcm.leader)

    assert reason == "not_found"
    assert "control-plane.alpha.kubernetes.io/leader" in detail


@pytest.mark.parametrize("reason", ["unauthorized", "forbidden", "unreachable", "timeout", "tls", "malformed"])
def test_api_failures_are_raised_with_their_reason_without_fallback(kcm, api, reason):
    api.fail(LEASE, reason)

    assert raised(kcm.leader)[0] == reason
    assert [path for path, _ in api.calls] == [LEASE]


def test_kubeconfig_and_timeout_can_be_overridden(kcm, api):
    api.routes[LEASE] = lease()

    kcm.leader(kubeconfig="/root/.kube/config")

    assert api.calls == [(LEASE, "/root/.kube/config")]


def test_not_deployed_and_no_kubeconfig_says_what_to_do(kcm):
    kcm.__salt__["kcm_config.deployed"] = lambda: {}

    reason, detail = raised(kcm.leader)

    assert reason == "not_deployed"
    assert "kubeconfig=" in detail and "state.apply kcm" in detail


# ---------------------------------------------------------------------------------------------
# Identity: which minion leads, is it me


@pytest.mark.parametrize("node", ["host-a", "master-1"])
def test_my_hostname_or_my_minion_id_is_me(kcm, api, node):
    api.routes[LEASE] = lease(node)

    assert kcm.leader()["minion"] == "master-1"
    assert kcm.is_leader() is True


def test_another_node_is_not_me_and_maps_to_its_node_name_without_a_mine(kcm, api):
    api.routes[LEASE] = lease("master-2")

    assert kcm.leader()["minion"] == "master-2"
    assert kcm.is_leader() is False


def test_an_expired_lease_on_my_node_is_not_leadership(kcm, api):
    api.routes[LEASE] = lease("master-1", renew="2026-11-26T18:39:40.000000Z")

    assert kcm.leader()["expired"] is True
    assert kcm.is_leader() is False


def test_a_configured_identity_replaces_hostname_and_minion_id(kcm, api, deployed):
    deployed["identity"] = "k8s-01"
    api.routes[LEASE] = lease("master-1")
    assert kcm.identity() == "k8s-01"
    assert kcm.is_leader() is False

    api.routes[LEASE] = lease("k8s-01")
    assert kcm.is_leader() is True
    assert kcm.leader()["minion"] == "master-1"


def test_identity_precedence(kcm, deployed):
    kcm.__pillar__["kcm"] = {"identity": "from-pillar"}
    assert kcm.identity(identity="from-kwarg") == "from-kwarg"
    assert kcm.identity() == "from-pillar"
    deployed["identity"] = "from-deployed"
    assert kcm.identity() == "from-deployed"
    deployed["identity"] = ""
    kcm.__pillar__.clear()
    assert kcm.identity() == "host-a"


def test_a_mined_identity_never_names_the_leaders_minion(kcm, api):
    # L7: any minion can mine-publish another node's identity; kcm.leader reads no mine.
    kcm.__opts__["file_client"] = "remote"
    kcm.__salt__["mine.get"] = lambda tgt, fun: {"web-7": "k8s-02", "m-b.example.org": "k8s-02"}
    api.routes[LEASE] = lease("k8s-02")

    assert kcm.leader()["minion"] == "k8s-02"


def test_a_failing_mine_does_not_fail_leader(kcm, api):
    def broken(tgt, fun):
        raise RuntimeError("master is not answering")

    kcm.__opts__["file_client"] = "remote"
    kcm.__salt__["mine.get"] = broken
    api.routes[LEASE] = lease("k8s-02")

    result = kcm.leader()

    assert result["minion"] == "k8s-02"
    assert "retcode" not in kcm.__context__


def test_no_holder_means_no_leader_minion(kcm, api):
    api.routes[LEASE] = lease(None)

    result = kcm.leader()

    assert (result["holder"], result["node"], result["minion"], result["expired"]) == (None, None, None, True)
    assert kcm.is_leader() is False


def test_is_leader_raises_when_the_lock_cannot_be_read(kcm, api):
    api.fail(LEASE, "forbidden", 403)

    assert raised(kcm.is_leader)[0] == "forbidden"


# ---------------------------------------------------------------------------------------------
# health


VERBOSE_OK = "[+]leaderElection ok\n[+]serviceaccount-token-controller ok\nhealthz check passed\n"
VERBOSE_FAILED = (
    "[+]serviceaccount-token-controller ok\n[-]leaderElection failed: reason withheld\nhealthz check failed\n"
)


def _probe(kcm, status, body):
    seen = []

    def probe(url, ca_cert, timeout=None):
        seen.append((url, ca_cert))
        return {"status": status, "body": body}

    kcm.__salt__["kcm_api.probe"] = probe
    return seen


def test_health_parses_each_check(kcm):
    seen = _probe(kcm, 200, VERBOSE_OK)

    result = kcm.health()

    assert result == {
        "healthy": True,
        "status": 200,
        "checks": {"leaderElection": "ok", "serviceaccount-token-controller": "ok"},
        "url": "https://127.0.0.1:10257/healthz?verbose",
    }
    assert seen == [("https://127.0.0.1:10257/healthz?verbose", "/etc/k8s/ssl/ca.pem")]
    assert "retcode" not in kcm.__context__


def test_a_failed_check_is_unhealthy_and_exits_non_zero(kcm):
    _probe(kcm, 500, VERBOSE_FAILED)

    result = kcm.health()

    assert result["healthy"] is False
    assert result["checks"]["leaderElection"] == "failed: reason withheld"
    assert kcm.__context__["retcode"] == 1


@pytest.mark.parametrize(
    "bind, url",
    [
        ("10.10.10.21", "https://10.10.10.21:10257/healthz?verbose"),
        ("::", "https://[::1]:10257/healthz?verbose"),
        ("fd00::21", "https://[fd00::21]:10257/healthz?verbose"),
    ],
)
def test_health_probes_the_bound_address(kcm, deployed, bind, url):
    deployed["bind_address"] = bind
    seen = _probe(kcm, 200, "ok")

    assert kcm.health()["url"] == url
    assert seen[0][0] == url


def test_health_port_and_ca_can_be_overridden(kcm):
    seen = _probe(kcm, 200, "ok")

    kcm.health(secure_port=20257, ca_cert="/tmp/ca.pem", bind_address="127.0.0.2")

    assert seen == [("https://127.0.0.2:20257/healthz?verbose", "/tmp/ca.pem")]


def test_health_of_an_unreachable_kcm_is_an_error(kcm):
    def probe(url, ca_cert, timeout=None):
        raise api_error("unreachable", f"GET {url}: Connection refused")

    kcm.__salt__["kcm_api.probe"] = probe

    assert raised(kcm.health) == ("unreachable", "GET https://127.0.0.1:10257/healthz?verbose: Connection refused")


# ---------------------------------------------------------------------------------------------
# version, args, preflight against a stand-in binary

FAKE_KCM = r"""#!/bin/sh
# Stand-in for kube-controller-manager's flag parsing: records its argv, refuses --bogus-*
# the way cobra does (usage text first, the error line last).
for arg in "$@"; do printf '%s\n' "$arg" >> "$0.argv"; done
for arg in "$@"; do
  case "$arg" in
    --*) ;;
    *) printf 'Error: "kube-controller-manager" does not take any arguments, got ["%s"]\n' "$arg" >&2; exit 1 ;;
  esac
  case "$arg" in
    --bogus-*) name="${arg%%=*}"
      printf 'Usage:\n  kube-controller-manager [flags]\n\nDebugging flags:\n\n' >&2
      printf '      --contention-profiling   Enable block profiling\n\nError: unknown flag: %s\n' "$name" >&2
      exit 1 ;;
  esac
done
for arg in "$@"; do [ "$arg" = --version ] && { echo "Kubernetes v1.37.2"; exit 0; }; done
echo "would run" >&2
exit 3
"""


@pytest.fixture
def fake_binary(deployed):
    path = Path(deployed["files"]["binary"])
    path.write_text(FAKE_KCM)
    path.chmod(0o755)
    return path


@pytest.fixture
def resolved(kcm_config, tmp_path):
    # user root: the fake binary records its argv in tmp_path (root's 0700)
    config = dict(DEFAULTS, user="root", paths=dict(DEFAULTS["paths"], bin=str(tmp_path)))
    return kcm_config.resolve(config, opts={"cachedir": str(tmp_path / "cache")})


@pytest.fixture
def with_flags(kcm, kcm_flags):
    kcm.__salt__["kcm_flags.render"] = kcm_flags.render
    kcm.__salt__["kcm_flags.exec_start"] = kcm_flags.exec_start
    return kcm


def test_version_of_the_deployed_binary(kcm, fake_binary):
    assert kcm.version() == "v1.37.2"


def test_version_of_a_missing_binary_is_an_error(kcm, tmp_path):
    assert raised(kcm.version, binary=str(tmp_path / "nope")) == ("binary", f"{tmp_path / 'nope'} does not exist")


def test_version_reads_what_the_binary_prints_and_refuses_a_binary_that_prints_none(kcm, tmp_path):
    # The install state asks the same function: one reading of --version for the formula.
    liar = tmp_path / "liar"
    liar.write_text("#!/bin/sh\necho 'Kubernetes v1.30.0-rc.1+abc'\n")
    liar.chmod(0o755)
    assert kcm.version(binary=str(liar)) == "v1.30.0-rc.1+abc"
    liar.write_text("#!/bin/sh\necho 'hello'\n")
    reason, detail = raised(kcm.version, binary=str(liar))
    assert reason == "binary" and detail.startswith(f"{liar} --version: ")


def test_args_is_the_flag_renderer_of_the_unit(with_flags, kcm_flags, resolved, deployed):
    assert with_flags.args(config=resolved) == kcm_flags.render(resolved)
    assert "--secure-port=10257" in with_flags.args(config=resolved)
    deployed.clear()
    assert raised(with_flags.args)[0] == "not_deployed"


def test_preflight_accepts_the_rendered_flags(with_flags, kcm_flags, resolved):
    binary = Path(resolved["files"]["binary"])
    binary.write_text(FAKE_KCM)
    binary.chmod(0o755)

    result = with_flags.preflight(config=resolved)

    assert result == {"ok": True, "version": "v1.37.2", "binary": str(binary)}
    argv = Path(f"{binary}.argv").read_text().splitlines()
    assert argv == [*kcm_flags.render(resolved), "--version"]


def test_preflight_passes_values_as_argv_not_through_a_shell(with_flags, resolved, fake_binary):
    config = dict(resolved, extra_args={"feature-gates": "A=true; touch /tmp/pwned $(id)"})

    assert with_flags.preflight(binary=str(fake_binary), config=config)["ok"] is True
    assert "--feature-gates=A=true; touch /tmp/pwned $(id)" in Path(f"{fake_binary}.argv").read_text().splitlines()


UNIT_TEMPLATE = REPO / "formula" / "kcm" / "files" / "default" / "kube-controller-manager.service.jinja"


def rendered_unit(kcm_flags, config):
    """The unit as the formula writes it (its template, the context kcm.service.unit gives)."""
    import jinja2

    template = jinja2.Template(UNIT_TEMPLATE.read_text(), keep_trailing_newline=True)
    return template.render(
        binary=config["files"]["binary"],
        exec_start=kcm_flags.exec_start(config),
        user="k8s",
        group="k8s",
        version=config["version"],
        log_dir="",
    )


@pytest.mark.parametrize("value", ["A=true B=false", "100%", "$HOME", "a'b\"c", "x;y", "#x"])
def test_preflight_runs_the_argv_systemd_builds_from_the_unit(with_flags, kcm_flags, resolved, fake_binary, value):
    config = dict(resolved, extra_args={"feature-gates": value})

    assert with_flags.preflight(binary=str(fake_binary), config=config)["ok"] is True

    systemd_argv = parse_exec_start(rendered_unit(kcm_flags, config))
    recorded = Path(f"{fake_binary}.argv").read_text().splitlines()
    assert [str(fake_binary), *recorded] == [*systemd_argv, "--version"]
    assert f"--feature-gates={value}" in recorded


def test_preflight_refuses_a_line_that_systemd_would_split(with_flags, resolved, fake_binary):
    # The unit line of f1aab12's template: flags pasted unquoted. systemd splits the value
    # at the space; a preflight given the flag list would have passed it as one argument.
    def naive(config, binary=None):
        return " ".join([binary or config["files"]["binary"], *with_flags.__salt__["kcm_flags.render"](config)])

    with_flags.__salt__["kcm_flags.exec_start"] = naive
    config = dict(resolved, extra_args={"feature-gates": "A=true B=false"})

    result = with_flags.preflight(binary=str(fake_binary), config=config)

    assert result["ok"] is False
    assert 'does not take any arguments, got ["B=false"]' in result["error"]


def test_preflight_returns_the_binarys_own_error_without_usage(with_flags, resolved, fake_binary):
    config = dict(resolved, extra_args={"bogus-flag": "1"})

    result = with_flags.preflight(binary=str(fake_binary), config=config)

    assert result == {"ok": False, "error": "Error: unknown flag: --bogus-flag", "binary": str(fake_binary)}
    assert with_flags.__context__["retcode"] == 1


def test_preflight_of_a_missing_binary_is_an_error(with_flags, resolved, tmp_path):
    reason, detail = raised(with_flags.preflight, binary=str(tmp_path / "missing"), config=resolved)

    assert reason == "binary"
    assert "does not exist" in detail


# ---------------------------------------------------------------------------------------------
# status row


ROW_KEYS = [
    "minion",
    "cluster",
    "cluster_id",
    "version",
    "service_active",
    "healthy",
    "leader",
    "holder",
    "lease_age_seconds",
    "cert_days_left",
    "errors",
]


@pytest.fixture
def cert_file(deployed):
    """The KCM certificate, expiring 29.5 days after NOW."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "system:kube-controller-manager")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=29, hours=12))
        .sign(key, hashes.SHA256())
    )
    Path(deployed["files"]["cert"]).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_status_is_one_flat_row(kcm, api, fake_binary, cert_file, monkeypatch):
    monkeypatch.setattr(KCM.shutil, "which", lambda name: None)  # no systemctl here
    api.routes[LEASE] = lease("master-1", renew="2026-11-26T18:40:00.000000Z")
    _probe(kcm, 200, VERBOSE_OK)

    api.routes[NAMESPACE] = {"kind": "Namespace", "metadata": {"name": "kube-system", "uid": UID}}

    [row] = kcm.status()

    assert list(row) == ROW_KEYS
    assert row == {
        "minion": "master-1",
        "cluster": "prod",
        "cluster_id": UID,
        "version": "v1.37.2",
        "service_active": "unknown",
        "healthy": True,
        "leader": "yes",
        "holder": "master-1_105bfb92-3c68-4a29-ae9e-fc42f78982dd",
        "lease_age_seconds": 5.0,
        "cert_days_left": 29.5,  # kcm_pki's figure, the one the beacon's alert names
        "errors": "",
    }
    assert all(not isinstance(v, (dict, list)) for v in row.values())
    assert "retcode" not in kcm.__context__


def test_status_keeps_the_row_when_parts_fail(kcm, api, fake_binary, cert_file, monkeypatch):
    monkeypatch.setattr(KCM.shutil, "which", lambda name: None)
    api.fail(LEASE, "unreachable")
    api.routes[NAMESPACE] = {"metadata": {"uid": UID}}
    _probe(kcm, 500, VERBOSE_FAILED)

    [row] = kcm.status()

    assert (row["leader"], row["holder"], row["healthy"], row["version"]) == ("unknown", None, False, "v1.37.2")
    assert row["errors"] == "leader: unreachable"
    assert kcm.__context__["retcode"] == 1


# ---------------------------------------------------------------------------------------------
# restarts: what systemd says of the service


@pytest.fixture
def systemd(monkeypatch):
    """systemctl and journalctl answering from ``outputs`` (by program); records each argv."""
    calls, outputs = [], {}

    def run(argv, **kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, outputs[argv[0]], "")

    monkeypatch.setattr(KCM.os.path, "isdir", lambda path: path == "/run/systemd/system")
    monkeypatch.setattr(KCM.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(KCM.subprocess, "run", run)
    return calls, outputs


def test_restarts_says_what_systemd_counted_and_the_journals_last_error_line(kcm, systemd):
    calls, outputs = systemd
    outputs["systemctl"] = "ActiveState=activating\nNRestarts=4\nExecMainStatus=1\n"
    error = (
        'E1207 06:32:36.223029 2119 run.go:72] "command failed" err="Get https://kcm:s3cr3t@10.0.0.1:6443/api:'
        " x509: certificate signed by unknown authority\x1b[31m" + "x" * 300 + '"'
    )
    outputs["journalctl"] = (
        f"Started kube-controller-manager.service.\n{error}\nkube-controller-manager.service: "
        "Main process exited, code=exited, status=1/FAILURE\n"
    )

    assert kcm.restarts() == {
        "unit": "kube-controller-manager",
        "active": "activating",
        "restarts": 4,
        "exit_status": 1,
    }
    assert calls == [
        ["systemctl", "show", "--property=ActiveState,NRestarts,ExecMainStatus", "--", "kube-controller-manager"]
    ]
    line = kcm.restarts(last_error=True)["last_error"]

    assert line.startswith(
        'E1207 06:32:36.223029 2119 run.go:72] "command failed" err="Get https://[filtered]@10.0.0.1'
    )
    assert "s3cr3t" not in line and "\x1b" not in line and "\\x1b[31m" in line and len(line) == 200
    assert calls[-1] == ["journalctl", "--no-pager", "-o", "cat", "-n", "300", "-u", "kube-controller-manager"]


def test_a_running_kcm_has_no_exit_status_yet(kcm, systemd):
    _, outputs = systemd
    outputs["systemctl"] = "ActiveState=active\nNRestarts=4\nExecMainStatus=0\n"
    assert kcm.restarts()["exit_status"] is None


def test_restarts_without_systemd_is_unknown_not_an_error(kcm, monkeypatch):
    monkeypatch.setattr(KCM.shutil, "which", lambda name: None)
    assert kcm.restarts(last_error=True, service="kcm-test") == {
        "unit": "kcm-test",
        "active": "unknown",
        "restarts": None,
        "exit_status": None,
        "last_error": None,
    }


# ---------------------------------------------------------------------------------------------
# cluster identity


@pytest.fixture
def kubeconfig_file(kcm, deployed, tmp_path):
    path = tmp_path / "kcm.kubeconfig"
    path.write_text("apiVersion: v1\n")
    deployed["files"]["kubeconfig"] = str(path)
    kcm.__opts__["cachedir"] = str(tmp_path / "cache")
    return path


def test_cluster_id_is_the_kube_system_uid_asked_once(kcm, api, kubeconfig_file):
    api.routes[NAMESPACE] = {"metadata": {"name": "kube-system", "uid": UID}}

    assert [kcm.cluster_id() for _ in range(3)] == [UID] * 3
    assert [path for path, _ in api.calls] == [NAMESPACE]


def test_cluster_id_survives_a_restart_and_an_unreachable_apiserver(kcm, api, kubeconfig_file):
    api.routes[NAMESPACE] = {"metadata": {"uid": UID}}
    assert kcm.cluster_id() == UID
    KCM._CLUSTER_IDS.clear()  # a new minion process
    api.fail(NAMESPACE, "unreachable")

    assert kcm.cluster_id() == UID
    assert "retcode" not in kcm.__context__


def test_a_rewritten_kubeconfig_asks_again(kcm, api, kubeconfig_file):
    import os

    api.routes[NAMESPACE] = {"metadata": {"uid": UID}}
    assert kcm.cluster_id() == UID
    api.routes[NAMESPACE] = {"metadata": {"uid": "another-cluster"}}
    stat = kubeconfig_file.stat()
    os.utime(kubeconfig_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))

    assert kcm.cluster_id() == "another-cluster"


def test_cluster_id_without_an_answer_is_an_error(kcm, api, kubeconfig_file):
    api.fail(NAMESPACE, "forbidden", 403)
    assert raised(kcm.cluster_id)[0] == "forbidden"

    api.routes[NAMESPACE] = {"metadata": {}}
    assert raised(kcm.cluster_id) == ("malformed", "namespace kube-system has no metadata.uid")


# ---------------------------------------------------------------------------------------------
# states


@pytest.fixture
def states(kcm):
    return KCM_STATES


def test_leader_elected_waits_for_a_live_leader(states, kcm, api, monkeypatch):
    sequence = iter([None, "released", "live"])

    def next_answer(*args, **kwargs):
        step = next(sequence, "live")
        if step is None:
            api.fail(LEASE, "unreachable")
        elif step == "released":
            api.routes[LEASE] = lease(None)
        else:
            api.routes[LEASE] = lease("master-3")
        return real_leader(*args, **kwargs)

    real_leader = kcm.leader
    states.__salt__["kcm.leader"] = next_answer
    monkeypatch.setattr(states.time, "sleep", lambda s: None)

    ret = states.leader_elected("kube-controller-manager", timeout=30, interval=1)

    assert ret["result"] is True
    assert "master-3_" in ret["comment"]
    assert ret["changes"] == {}
    assert "retcode" not in states.__context__


def test_leader_elected_fails_after_the_timeout(states, api, monkeypatch):
    api.routes[LEASE] = lease(None)
    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr(states.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(states.time, "sleep", lambda s: None)

    ret = states.leader_elected("kcm", timeout=20)

    assert ret["result"] is False
    assert ret["comment"] == "no live KCM leader after 20 s: no leader (the lock is released or empty)"


def test_leader_elected_in_test_mode_reports_without_waiting(states, api, monkeypatch):
    states.__opts__["test"] = True
    api.fail(LEASE, "unreachable")
    monkeypatch.setattr(states.time, "sleep", lambda s: pytest.fail("test mode must not wait"))

    ret = states.leader_elected("kcm", timeout=60)

    assert ret["result"] is None
    assert "unreachable" in ret["comment"] and "would wait up to 60 s" in ret["comment"]


@pytest.fixture
def shared_dir():
    """A directory the KCM user (nobody) can enter: tmp_path is root's 0700."""
    path = Path(tempfile.mkdtemp(prefix="kcm-runas-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_the_binary_runs_as_the_kcm_user_never_as_root(kcm, with_flags, resolved, shared_dir):
    # H3 a/b: kcm.status (every reconcile) and the preflight ran the KCM user's binary as root
    spy = shared_dir / "kube-controller-manager"
    spy.write_text('#!/bin/sh\n[ "$(id -u)" = 0 ] && { echo "ran as root" >&2; exit 1; }\necho "Kubernetes v1.37.2"\n')
    spy.chmod(0o755)
    assert kcm.version(binary=str(spy), runas="nobody") == "v1.37.2"
    assert with_flags.preflight(binary=str(spy), config=dict(resolved, user="nobody"))["ok"] is True
    with pytest.raises(CommandExecutionError, match="ran as root"):
        kcm.version(binary=str(spy), runas="root")
