"""Apply `kcm` through Salt's loaders into a temporary root, for every supported era."""

import base64
import hashlib
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.pillar import sandbox_pillar
from tests.support.tarball import build_tarball

VERSIONS = ["v1.14.2", "v1.19.16", "v1.23.17", "v1.24.0", "v1.25.0", "v1.27.16", "v1.28.15", "v1.34.3", "v1.37.2"]


def results(ret):
    return {r.id if hasattr(r, "id") else key: r for key, r in ret.items()} if isinstance(ret, dict) else ret


def failed(ret):
    return [f"{r.id}: {r.comment}" for r in ret if r.result is False]


def changed(ret):
    return [r.id for r in ret if r.changes]


def exec_start(unit_text):
    lines = unit_text.split("ExecStart=", 1)[1].split("\n")
    argv = []
    for line in lines:
        argv.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    return argv


@pytest.mark.parametrize("version", VERSIONS)
def test_apply_lays_down_a_working_kcm(state, tmp_path, test_pki, version):
    tarball = build_tarball(tmp_path / "dl", version)
    pillar = sandbox_pillar(tmp_path, tarball, version, test_pki)
    ret = state.apply("kcm", pillar=pillar)
    assert not failed(ret), failed(ret)
    paths = pillar["kcm"]["paths"]

    binary = Path(paths["bin"]) / "kube-controller-manager"
    assert binary.is_symlink()
    assert os.readlink(binary) == f"{paths['install']}/versions/{version}/kube-controller-manager"
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"Kubernetes {version}"
    assert (Path(paths["link"]) / "kube-controller-manager").resolve() == binary.resolve()
    # only the KCM member of the tarball is unpacked
    assert sorted(
        p.name
        for p in Path(f"{paths['install']}/versions/{version}").iterdir()
        if not p.name.startswith(".") and not p.name.endswith(".json")
    ) == ["kube-controller-manager"]

    pki = Path(paths["pki"])
    for name, mode in [
        ("ca.pem", 0o644),
        ("kube-controller-manager.pem", 0o644),
        ("ca-key.pem", 0o600),
        ("kube-controller-manager-key.pem", 0o600),
        ("sa.key", 0o600),
    ]:
        st = (pki / name).stat()
        assert stat.S_IMODE(st.st_mode) == mode, name
        assert st.st_uid == os.getuid()
    assert (pki / "kube-controller-manager-key.pem").read_text() == test_pki["key"]

    kubeconfig = Path(paths["kubeconfig"]) / "kube-controller-manager.kubeconfig"
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    view = subprocess.run(
        ["kubectl", "config", "view", "--raw", "-o", "yaml", "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc = yaml.safe_load(view)
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert "insecure-skip-tls-verify" not in view
    assert base64.b64decode(doc["users"][0]["user"]["client-key-data"]).decode() == test_pki["key"]

    unit = (Path(paths["unit"]) / "kube-controller-manager.service").read_text()
    argv = exec_start(unit)
    assert argv[0] == str(binary)
    flags = dict(a[2:].split("=", 1) for a in argv[1:])
    assert flags["secure-port"] == "10257"
    # KCM reads the kubeconfig through systemd's copy of the root-only file (LoadCredential=)
    credentials = "/run/credentials/kube-controller-manager.service"
    for name in ("kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig"):
        assert flags[name] == f"{credentials}/kube-controller-manager.kubeconfig"
    assert f"LoadCredential=kube-controller-manager.kubeconfig:{kubeconfig}" in unit.splitlines()
    minor = int(version.split(".")[1])
    # the insecure port is closed with --port=0 before v1.22; later releases reject or ignore it
    assert flags.get("port") == ("0" if minor < 22 else None)
    assert "Restart=always" in unit and "User=root" in unit
    # The Lease release step after every exit, for Lease locks (v1.20+); never for older locks.
    program = Path(paths["install"]) / "libexec" / "kcm-release-lease"
    assert stat.S_IMODE(program.stat().st_mode) == 0o755 and program.stat().st_uid == 0
    stop_post = release_line(unit)
    if minor >= 20:
        # '+': root runs it on the root-only kubeconfig (no credentials in ExecStopPost= on systemd 257)
        assert stop_post == [
            f"-+{sys.executable}",
            "-I",
            str(program),
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            "kube-system",
            "--name",
            "kube-controller-manager",
            "--budget",
            "2",
        ]
    else:
        assert stop_post is None
    unit_path = Path(paths["unit"]) / "kube-controller-manager.service"
    verify = subprocess.run(["systemd-analyze", "verify", str(unit_path)], capture_output=True, text=True)
    # systemd-analyze exits 0 on some bad lines and only warns: no warning about our unit may appear
    complaints = [line for line in verify.stderr.splitlines() if "kube-controller-manager.service" in line]
    assert verify.returncode == 0 and complaints == [], verify.stderr

    again = state.apply("kcm", pillar=pillar)
    assert not failed(again) and changed(again) == [], changed(again)


def release_line(unit_text):
    """The argv of the unit's one ExecStopPost= (its '-' prefix kept), or None."""
    lines = [line for line in unit_text.splitlines() if line.startswith("ExecStopPost=")]
    assert len(lines) <= 1, lines
    return shlex.split(lines[0][len("ExecStopPost=") :]) if lines else None


def test_release_on_exit_switch_adds_and_removes_the_stop_hook(state, tmp_path, test_pki):
    version = "v1.37.2"
    tarball = build_tarball(tmp_path / "dl", version)
    off = sandbox_pillar(
        tmp_path, tarball, version, test_pki, leader_election={"release_on_exit": False}, identity="k8s-01"
    )
    assert not failed(state.apply("kcm", pillar=off))
    unit_path = Path(off["kcm"]["paths"]["unit"]) / "kube-controller-manager.service"
    assert release_line(unit_path.read_text()) is None

    on = sandbox_pillar(tmp_path, tarball, version, test_pki, identity="k8s-01")
    ret = state.apply("kcm", pillar=on)
    assert not failed(ret) and "kcm-service-unit" in changed(ret)
    stop_post = release_line(unit_path.read_text())
    assert stop_post[0].startswith("-") and stop_post[-2:] == ["--identity", "k8s-01"]
    verify = subprocess.run(["systemd-analyze", "verify", str(unit_path)], capture_output=True, text=True)
    complaints = [line for line in verify.stderr.splitlines() if "kube-controller-manager.service" in line]
    assert verify.returncode == 0 and complaints == [], verify.stderr

    bad = sandbox_pillar(tmp_path, tarball, version, test_pki, leader_election={"release_on_exit": "sometimes"})
    ret = state.apply("kcm", pillar=bad)
    comment = next(r.comment for r in ret if r.id == "kcm-config-validated")
    assert "kcm:leader_election:release_on_exit: 'sometimes' is not a boolean (true or false)" in comment
    assert changed(ret) == []


def test_bad_pillar_changes_nothing(state, tmp_path, test_pki):
    version = "v1.34.3"
    tarball = build_tarball(tmp_path / "dl", version)
    good = sandbox_pillar(tmp_path, tarball, version, test_pki)
    assert not failed(state.apply("kcm", pillar=good))
    before = tree_digest(tmp_path / "fs")

    bad = sandbox_pillar(
        tmp_path,
        tarball,
        version,
        dict(test_pki, key=test_pki["ca_key"]),
        service_cluster_ip_range="10.254.0.0/33",
        leader_election={"lease_duration": "2s", "renew_deadline": "10s", "retry_period": "2s"},
        extra_args={"port": 0, "address": None},
        apiserver="http://10.0.0.1:8080",
    )
    bad["kcm"]["version"] = "v1.34"
    ret = state.apply("kcm", pillar=bad)
    comment = next(r.comment for r in ret if r.id == "kcm-config-validated")
    for fragment in [
        "kcm:service_cluster_ip_range:",
        "kcm:leader_election:",
        "kcm:pki:key: does not match",
        "kcm:apiserver:",
        "kcm:version:",
    ]:
        assert fragment in comment
    assert changed(ret) == []
    assert tree_digest(tmp_path / "fs") == before


def test_new_version_is_verified_before_the_link_moves(state, tmp_path, test_pki):
    old = "v1.34.3"
    pillar = sandbox_pillar(tmp_path, build_tarball(tmp_path / "dl", old), old, test_pki)
    assert not failed(state.apply("kcm", pillar=pillar))
    link = Path(pillar["kcm"]["paths"]["bin"]) / "kube-controller-manager"
    # a tarball named v1.35.0 whose binary reports another release: refused, old link kept
    liar = build_tarball(tmp_path / "liar", "v1.35.0", binary_bytes=b"#!/bin/sh\necho 'Kubernetes v1.30.0'\n")
    ret = state.apply("kcm", pillar=sandbox_pillar(tmp_path, liar, "v1.35.0", test_pki))
    assert any("reports v1.30.0, expected v1.35.0" in r.comment for r in ret if r.result is False)
    assert os.readlink(link).endswith(f"/versions/{old}/kube-controller-manager")


def test_upgrade_keeps_two_versions_and_clean_removes_everything(state, tmp_path, test_pki):
    versions = ["v1.33.1", "v1.34.3", "v1.35.0"]
    for v in versions:
        pillar = sandbox_pillar(tmp_path, build_tarball(tmp_path / "dl", v), v, test_pki)
        ret = state.apply("kcm", pillar=pillar)
        assert not failed(ret), failed(ret)
    vdir = Path(pillar["kcm"]["paths"]["install"]) / "versions"
    assert sorted(p.name for p in vdir.iterdir()) == ["v1.34.3", "v1.35.0"]
    ret = state.apply("kcm.clean", pillar=pillar)
    assert not failed(ret), failed(ret)
    assert not vdir.exists()
    assert not (Path(pillar["kcm"]["paths"]["pki"]) / "ca-key.pem").exists()
    assert list(Path(pillar["kcm"]["paths"]["cache"]).iterdir()), "the download cache is kept"


def test_a_rejected_flag_never_reaches_the_unit(state, tmp_path, test_pki):
    version = "v1.34.3"
    pillar = sandbox_pillar(tmp_path, build_tarball(tmp_path / "dl", version), version, test_pki)
    assert not failed(state.apply("kcm", pillar=pillar))
    unit = Path(pillar["kcm"]["paths"]["unit"]) / "kube-controller-manager.service"
    before = unit.read_text()
    bad = sandbox_pillar(
        tmp_path, build_tarball(tmp_path / "dl", version), version, test_pki, extra_args={"no-such-flag": "1"}
    )
    ret = state.apply("kcm", pillar=bad)
    assert any("unknown flag: --no-such-flag" in r.comment for r in ret if r.result is False)
    assert unit.read_text() == before


def tree_digest(root):
    h = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        h.update(str(path).encode())
        if path.is_symlink():
            h.update(os.readlink(path).encode())
        elif path.is_file():
            h.update(path.read_bytes())
            h.update(str(path.stat().st_mode).encode())
    return h.hexdigest()


def test_a_truncated_download_whose_hash_matches_fails_cleanly(state, tmp_path, test_pki):
    version = "v1.34.3"
    tarball = build_tarball(tmp_path / "dl", version, binary_bytes=os.urandom(200_000))
    data = tarball.read_bytes()
    tarball.write_bytes(data[: len(data) // 2])
    (tarball.parent / (tarball.name + ".sha512")).write_text(hashlib.sha512(tarball.read_bytes()).hexdigest() + "\n")

    ret = state.apply("kcm", pillar=sandbox_pillar(tmp_path, tarball, version, test_pki))

    install = next(r for r in ret if r.id == "kcm-install-binary")
    assert install.result is False
    assert "is truncated or corrupt" in install.comment and "Traceback" not in install.comment
    assert not (
        Path(sandbox_pillar(tmp_path, tarball, version, test_pki)["kcm"]["paths"]["bin"]) / "kube-controller-manager"
    ).exists()


@pytest.mark.parametrize("version", ["v1.14.2", VERSIONS[-1]])
def test_the_rendered_unit_is_sandboxed_to_an_exposure_of_at_most_1_5(state, open_tmp, test_pki, version):
    # An unprivileged owner, as on a real master (the sandbox pillar's root would be scored too).
    tmp_path = open_tmp
    tarball = build_tarball(tmp_path / "dl", version)
    pillar = sandbox_pillar(tmp_path, tarball, version, test_pki, user="nobody", group="nogroup")
    ret = state.apply("kcm", pillar=pillar)
    assert not failed(ret), failed(ret)
    unit_path = Path(pillar["kcm"]["paths"]["unit"]) / "kube-controller-manager.service"

    analyzed = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_path)],
        capture_output=True,
        text=True,
        cwd=unit_path.parent,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", analyzed.stdout)
    assert match, analyzed.stdout + analyzed.stderr
    print(f"systemd-analyze security exposure ({version}): {match.group(1)}")
    assert float(match.group(1)) <= 1.5, analyzed.stdout
    assert "User=nobody" in unit_path.read_text()
