"""Root owns what root runs (issue 24, audit findings H3, M6): after `state.apply kcm` with an
unprivileged KCM user, the user owns nothing and can write nothing the formula laid down; its
secrets reach it through systemd credentials (or, before systemd 247, as its group)."""

import hashlib
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.functional.test_apply import exec_start, failed
from tests.support.pillar import sandbox_pillar
from tests.support.tarball import build_tarball

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns files to nobody (the tests run as root in CI)")

VERSION = "v1.37.2"
NOBODY = {"user": "nobody", "group": "nogroup"}
SECRETS = ["kube-controller-manager.kubeconfig", "kube-controller-manager-key.pem", "sa.key", "ca-key.pem"]


def apply(state, pillar):
    ret = state.apply("kcm", pillar=pillar)
    assert not failed(ret), failed(ret)
    return ret


def kcm_writable(path, st, uid, gid):
    """Whether the user uid (group gid) may change what is at path."""
    if stat.S_ISLNK(st.st_mode):
        return st.st_uid == uid
    mode = st.st_mode
    return st.st_uid == uid or bool(mode & 0o002) or (st.st_gid == gid and bool(mode & 0o020))


def nobody():
    import pwd  # noqa: PLC0415

    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def test_the_kcm_user_owns_nothing_and_can_write_nothing(state, open_tmp, test_pki):
    # H3: the install root, sbin/, versions/ (and the binary), the PKI and kubeconfig dirs were the KCM user's
    pillar = sandbox_pillar(open_tmp, build_tarball(open_tmp / "dl", VERSION), VERSION, test_pki, **NOBODY)
    apply(state, pillar)
    uid, gid = nobody()
    fs = open_tmp / "fs"
    found = [fs, *fs.rglob("*")]
    assert len(found) > 20
    bad = [
        f"{p} {p.lstat().st_uid}:{p.lstat().st_gid} {stat.S_IMODE(p.lstat().st_mode):04o}"
        for p in found
        if p.lstat().st_uid != 0 or kcm_writable(p, p.lstat(), uid, gid)
    ]
    assert bad == []
    # every directory the formula made, the ones above its own included, is root:root 0755 (the cache 0700)
    paths = pillar["kcm"]["paths"]
    cache = Path(paths["cache"])
    dirs = {p: stat.S_IMODE(p.lstat().st_mode) for p in found if p.is_dir() and not p.is_symlink()}
    assert {p: m for p, m in dirs.items() if m != (0o700 if p == cache else 0o755)} == {}
    pki, kubeconfig = Path(paths["pki"]), Path(paths["kubeconfig"]) / "kube-controller-manager.kubeconfig"
    for path in [kubeconfig, *(pki / n for n in ("kube-controller-manager-key.pem", "sa.key", "ca-key.pem"))]:
        st = path.lstat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600), path

    unit = (Path(paths["unit"]) / "kube-controller-manager.service").read_text()
    sources = {"kube-controller-manager.kubeconfig": kubeconfig}
    sources.update({n: pki / n for n in SECRETS[1:]})
    assert [line for line in unit.splitlines() if line.startswith("LoadCredential=")] == [
        f"LoadCredential={n}:{sources[n]}" for n in SECRETS
    ]
    flags = dict(a[2:].split("=", 1) for a in exec_start(unit)[1:])
    credentials = "/run/credentials/kube-controller-manager.service"
    assert flags["kubeconfig"] == f"{credentials}/kube-controller-manager.kubeconfig"
    assert flags["tls-private-key-file"] == f"{credentials}/kube-controller-manager-key.pem"
    assert flags["service-account-private-key-file"] == f"{credentials}/sa.key"
    assert flags["cluster-signing-key-file"] == f"{credentials}/ca-key.pem"
    assert "ReadWritePaths=" not in unit and "User=nobody" in unit


def old_layout(pillar, uid, gid):
    """What 5f6804a left: every formula directory (and those above it that it made) the KCM user's."""
    paths = pillar["kcm"]["paths"]
    for key in ("install", "bin", "conf", "pki", "kubeconfig"):
        Path(paths[key]).mkdir(parents=True, exist_ok=True)
    for directory in {Path(paths[k]) for k in ("install", "bin", "conf", "pki", "kubeconfig")} | {
        Path(paths["install"]).parent,
        Path(paths["install"]) / "versions",
    }:
        directory.mkdir(exist_ok=True)
        os.chown(directory, uid, gid)


def test_a_link_the_kcm_user_planted_is_replaced_never_followed(state, open_tmp, test_pki):
    # H3 d: ln -sfn <a root-owned file> ssl/ca-key.pem; state.apply kcm chowned the target to the KCM user
    pillar = sandbox_pillar(open_tmp, build_tarball(open_tmp / "dl", VERSION), VERSION, test_pki, **NOBODY)
    uid, gid = nobody()
    old_layout(pillar, uid, gid)
    victim = open_tmp / "root-only"
    victim.write_text("root's own\n")
    victim.chmod(0o640)
    pki = Path(pillar["kcm"]["paths"]["pki"])
    for name in ("ca-key.pem", "kube-controller-manager.pem"):
        (pki / name).symlink_to(victim)
        os.lchown(pki / name, uid, gid)

    apply(state, pillar)

    st = victim.stat()
    assert (victim.read_text(), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == ("root's own\n", 0, 0, 0o640)
    for name, mode in (("ca-key.pem", 0o600), ("kube-controller-manager.pem", 0o644)):
        st = (pki / name).lstat()
        assert stat.S_ISREG(st.st_mode) and (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, mode), name
    assert (pki / "ca-key.pem").read_text() == test_pki["ca_key"]
    assert pki.stat().st_uid == 0 and Path(pillar["kcm"]["paths"]["install"]).parent.stat().st_uid == 0


def test_a_binary_replaced_after_its_install_is_installed_again(state, open_tmp, test_pki):
    # H3 b: the install stamp did not notice a replaced binary, and the preflight ran it as root
    tarball = build_tarball(open_tmp / "dl", VERSION)
    pillar = sandbox_pillar(open_tmp, tarball, VERSION, test_pki, **NOBODY)
    apply(state, pillar)
    installed = Path(pillar["kcm"]["paths"]["install"]) / "versions" / VERSION / "kube-controller-manager"
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("kubernetes/server/bin/kube-controller-manager").read()
    assert hashlib.sha256(installed.read_bytes()).digest() == hashlib.sha256(member).digest()
    stamp = os.stat(installed)
    installed.write_text("#!/bin/sh\necho Kubernetes v1.37.2\n")  # same size class, same mtime kept below
    os.utime(installed, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))

    ret = apply(state, pillar)

    assert "kcm-install-binary" in [r.id for r in ret if r.changes]
    assert installed.read_bytes() == member and installed.stat().st_uid == 0


def test_a_directory_of_another_user_is_refused_and_left_alone(state, open_tmp, test_pki):
    # M6: paths:* naming an existing directory chowned it (and the parents it made) to the KCM user
    shared = open_tmp / "fs" / "srv-shared"
    shared.mkdir(parents=True)
    os.chown(shared, 4242, 4242)
    paths = {"install": str(shared), "bin": str(shared / "sbin")}
    pillar = sandbox_pillar(open_tmp, build_tarball(open_tmp / "dl", VERSION), VERSION, test_pki, paths=paths, **NOBODY)
    ret = state.apply("kcm", pillar=pillar)
    refusal = next(r for r in ret if r.id == "kcm-install-directories")
    assert refusal.result is False
    assert f"kcm:paths:install: {shared} is owned by uid 4242, not root" in refusal.comment
    assert (shared.stat().st_uid, list(shared.iterdir())) == (4242, [])


@pytest.fixture
def old_systemd(loaders):
    """The minion's systemd grain says 239 (RHEL 8), in the grains the state run renders with
    (the loaders' grains and the module loader's opts: Salt 3006 renders with the latter)."""
    grains = [loaders.grains, loaders.modules.opts["grains"]]
    saved = [g.get("systemd") for g in grains]
    for each in grains:
        each["systemd"] = {"version": "239", "features": ""}
    yield
    for each, value in zip(grains, saved):
        each["systemd"] = value


def test_before_systemd_247_the_kcm_group_reads_root_owned_secrets(state, open_tmp, test_pki, old_systemd):
    # RHEL 8 (systemd 239) has no LoadCredential=: root-owned, readable by the KCM group, in root's directories
    pillar = sandbox_pillar(open_tmp, build_tarball(open_tmp / "dl", VERSION), VERSION, test_pki, **NOBODY)
    apply(state, pillar)
    paths = pillar["kcm"]["paths"]
    nogroup = nobody()[1]
    kubeconfig = Path(paths["kubeconfig"]) / "kube-controller-manager.kubeconfig"
    owners = {
        p.name: (p.lstat().st_uid, p.lstat().st_gid, stat.S_IMODE(p.lstat().st_mode))
        for p in [kubeconfig, *(Path(paths["pki"]) / n for n in SECRETS[1:])]
    }
    assert owners == {n: (0, nogroup, 0o640) for n in SECRETS}
    unit_path = Path(paths["unit"]) / "kube-controller-manager.service"
    unit = unit_path.read_text()
    assert "LoadCredential=" not in unit
    flags = dict(a[2:].split("=", 1) for a in exec_start(unit)[1:])
    assert flags["kubeconfig"] == str(kubeconfig)
    assert flags["service-account-private-key-file"] == f"{paths['pki']}/sa.key"
    verify = subprocess.run(["systemd-analyze", "verify", str(unit_path)], capture_output=True, text=True)
    complaints = [
        line
        for line in verify.stderr.splitlines()
        if "kube-controller-manager.service" in line and "Special user nobody" not in line
    ]
    assert verify.returncode == 0 and complaints == [], verify.stderr


def test_log_to_file_writes_only_to_the_units_logs_directory(state, open_tmp, test_pki):
    version = "v1.25.0"
    pillar = sandbox_pillar(
        open_tmp, build_tarball(open_tmp / "dl", version), version, test_pki, log_to_file=True, **NOBODY
    )
    apply(state, pillar)
    unit = (Path(pillar["kcm"]["paths"]["unit"]) / "kube-controller-manager.service").read_text()
    assert "LogsDirectory=kube-controller-manager" in unit.splitlines() and "ReadWritePaths" not in unit
    flags = dict(a[2:].split("=", 1) for a in exec_start(unit)[1:])
    assert flags["log-dir"] == "/var/log/kube-controller-manager"
    assert not (Path(pillar["kcm"]["paths"]["logs"]) / "kube-controller-manager").exists()
