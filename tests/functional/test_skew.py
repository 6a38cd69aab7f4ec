"""The version skew guard against a real kube-apiserver (issue 28): a master whose apiserver
is v1.36.3 is refused a KCM v1.37.2 before anything on disk changes, in test mode the same;
once the apiserver is upgraded (the order the skew policy wants) the same change is applied,
and a KCM v1.36.3, one minor older than a v1.37.2 apiserver, is applied too.

The apiserver is the real one the lab runs (kcmlab.controlplane: etcd + kube-apiserver on
loopback, built by scripts/k8s-binaries), reached through the kubeconfig the formula lays down
(TLS verified, KCM's own client certificate). KCM itself is the functional tier's stand-in
binary (tests/support/tarball.py): what the guard reads is the apiserver, not KCM."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from kcmlab.controlplane import ControlPlane
from tests.functional.test_apply import failed
from tests.support.pillar import REPO, sandbox_pillar
from tests.support.tarball import build_tarball

OLD, NEW = "v1.36.3", "v1.37.2"
VALIDATED = "kcm-config-validated"
REFUSED = (
    "Refused by the version skew guard, nothing was changed:\n"
    f"- kcm:version: {NEW} is newer than the kube-apiserver ({OLD}); the skew policy allows KCM at most one minor"
    " older than the apiserver, never newer: upgrade the apiservers first"
    " (or set kcm:skew:override_reason to a reason to override)"
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the formula's trust checks want root's files")


def k8s_binaries(version: str) -> Path:
    """The directory of etcd and kube-apiserver at ``version`` (built once, then cached)."""
    proc = subprocess.run(
        [str(REPO / "scripts" / "k8s-binaries"), version], stdout=subprocess.PIPE, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/k8s-binaries {version} failed (exit {proc.returncode}); this test needs the real kube-apiserver",
            pytrace=False,
        )
    return Path(proc.stdout.strip())


@pytest.fixture(scope="module")
def binaries():
    return {version: k8s_binaries(version) for version in (OLD, NEW)}


@pytest.fixture(scope="module")
def control_plane(binaries, tmp_path_factory):
    cp = ControlPlane(binaries[OLD], tmp_path_factory.mktemp("skew-cp"))
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


def serving(cp, binaries, version):
    """The control plane with its apiserver at ``version`` (restarted in place when it is not)."""
    if cp.get_json("/version")["gitVersion"] != version:
        cp.replace_apiserver(binaries[version])
    assert cp.get_json("/version")["gitVersion"] == version
    return cp


@pytest.fixture
def fresh_master(minion_opts):
    """This test's master has no deployed record yet (the module's minion shares one cachedir)."""
    deployed = Path(minion_opts["cachedir"]) / "kcm" / "deployed.json"
    deployed.unlink(missing_ok=True)
    yield deployed
    deployed.unlink(missing_ok=True)


def pillar_for(root, cp, version):
    """The sandbox pillar against ``cp``, the guard on (no override)."""
    tarball = build_tarball(root / "dl", version)
    return sandbox_pillar(
        root, tarball, version, cp.kcm_pki(), apiserver=cp.apiserver_url, skew={"override_reason": ""}
    )


def on_disk(pillar):
    """What a user would see change: every file under the sandbox with its content hash or
    link target, and the deployed record."""
    fs = Path(pillar["kcm"]["paths"]["install"]).parents[3]
    out = {}
    for path in sorted(fs.rglob("*")):
        if path.is_symlink():
            out[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            st = path.stat()
            out[str(path)] = (st.st_size, st.st_mtime_ns, st.st_mode)
        else:
            out[str(path)] = "dir"
    return out


def by_id(ret):
    return {r.id: r for r in ret}


def test_a_kcm_newer_than_the_apiserver_is_refused_before_anything_changes(
    state, open_tmp, control_plane, binaries, fresh_master
):
    cp = serving(control_plane, binaries, OLD)
    old = pillar_for(open_tmp, cp, OLD)
    first = state.apply("kcm", pillar=old)
    assert not failed(first), failed(first)
    again = by_id(state.apply("kcm", pillar=old))
    # the guard read the real apiserver through the kubeconfig the first apply laid down
    assert again[VALIDATED].comment == (
        f"kcm config for {OLD} is valid; kcm:version: {OLD} is within the skew policy of the kube-apiserver ({OLD})"
    )
    before, deployed = on_disk(old), json.loads(fresh_master.read_text())

    new = pillar_for(open_tmp, cp, NEW)
    dry = by_id(state.apply("kcm", pillar=new, test=True))
    ret = by_id(state.apply("kcm", pillar=new))

    for run in (dry, ret):
        assert (run[VALIDATED].result, run[VALIDATED].comment) == (False, REFUSED)
        # every other state stood still behind the guard
        assert {sid: r.changes for sid, r in run.items() if r.changes} == {}
        assert {
            sid: r.comment
            for sid, r in run.items()
            if r.result is True and "was not run" not in r.comment and "requisite" not in r.comment
        } == {}
    after = on_disk(old)
    # no new version directory, no download, the same unit and active link, the same deployed record
    assert after == before
    assert not Path(f"{new['kcm']['paths']['install']}/versions/{NEW}").exists()
    assert json.loads(fresh_master.read_text()) == deployed
    # and KCM was not restarted: the restart the formula asks for (kcm-service-restarted) never ran
    assert "kcm-service-restarted" in ret and ret["kcm-service-restarted"].changes == {}


def test_a_first_install_newer_than_the_apiserver_is_refused_too(
    state, open_tmp, control_plane, binaries, fresh_master
):
    # No kubeconfig yet: the guard reads /version as anyone may, verified against the pillar's CA.
    cp = serving(control_plane, binaries, OLD)
    new = pillar_for(open_tmp, cp, NEW)

    ret = by_id(state.apply("kcm", pillar=new))

    assert (ret[VALIDATED].result, ret[VALIDATED].comment) == (False, REFUSED)
    assert {sid: r.changes for sid, r in ret.items() if r.changes} == {}
    assert not fresh_master.exists()
    assert not Path(new["kcm"]["paths"]["install"]).exists()


def test_after_the_apiserver_upgrade_the_change_is_applied_and_an_older_kcm_too(
    state, open_tmp, control_plane, binaries, fresh_master
):
    cp = serving(control_plane, binaries, OLD)
    old = pillar_for(open_tmp, cp, OLD)
    assert not failed(state.apply("kcm", pillar=old))
    # the apiservers first, as the skew policy wants
    serving(cp, binaries, NEW)

    new = pillar_for(open_tmp, cp, NEW)
    up = by_id(state.apply("kcm", pillar=new))

    assert not failed(up.values()), failed(up.values())
    assert up[VALIDATED].comment == (
        f"kcm config for {NEW} is valid; kcm:version: {NEW} is within the skew policy of the kube-apiserver ({NEW})"
    )
    assert up["kcm-service-restarted"].changes == {"restart": "needed"}
    versions = Path(new["kcm"]["paths"]["install"]) / "versions"
    assert sorted(p.name for p in versions.iterdir()) == [OLD, NEW]

    # KCM one minor older than the apiserver (v1.36.3 on v1.37.2): applied, the kept release active again
    back = by_id(state.apply("kcm", pillar=old))

    assert not failed(back.values()), failed(back.values())
    assert back[VALIDATED].comment == (
        f"kcm config for {OLD} is valid; kcm:version: {OLD} is within the skew policy of the kube-apiserver ({NEW})"
    )
    link = Path(old["kcm"]["paths"]["bin"]) / "kube-controller-manager"
    assert os.readlink(link) == str(versions / OLD / "kube-controller-manager")
    assert json.loads(fresh_master.read_text())["version"] == OLD


def test_a_stated_reason_lets_the_change_through_and_the_state_says_so(
    state, open_tmp, control_plane, binaries, fresh_master
):
    cp = serving(control_plane, binaries, OLD)
    assert not failed(state.apply("kcm", pillar=pillar_for(open_tmp, cp, OLD)))
    new = pillar_for(open_tmp, cp, NEW)
    reason = "apiserver v1.37 rollout paused on this site, CHG-1234"
    new["kcm"]["skew"]["override_reason"] = reason

    ret = by_id(state.apply("kcm", pillar=new))

    assert not failed(ret.values()), failed(ret.values())
    refusal = REFUSED.split("- ", 1)[1].split(" (or set")[0]
    assert ret[VALIDATED].comment == (
        f"kcm config for {NEW} is valid; {refusal}; allowed by kcm:skew:override_reason: {reason}"
    )
    assert ret[VALIDATED].warnings == [f"{refusal}; allowed by kcm:skew:override_reason: {reason}"]
    assert json.loads(fresh_master.read_text())["version"] == NEW
