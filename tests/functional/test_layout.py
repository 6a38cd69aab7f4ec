"""
The SLS layout's promises, through Salt's loaders: `kcm.clean` leaves nothing the formula
created (files, directories, the accounts it made, the master-side files), a site's own unit
template replaces the formula's without a fork and is still checked against the binary, and
with `control_cmd` the restart is decided by the SLS's own watch.
"""

import os
import pwd
import shlex
import uuid
from pathlib import Path

import pytest

from tests.functional.conftest import local_minion_opts
from tests.functional.test_apply import failed
from tests.support import pki as testpki
from tests.support.pillar import REPO, sandbox_pillar
from tests.support.tarball import build_tarball

VERSION = "v1.37.2"
SITE_MARK = "# site-specific unit from the test file root"


@pytest.fixture(scope="module")
def site_root(tmp_path_factory):
    """A file root in front of the formula's, with this minion's own unit templates."""
    root = tmp_path_factory.mktemp("site-root")
    default = (REPO / "formula/kcm/files/default/kube-controller-manager.service.jinja").read_text()
    mine = root / "kcm" / "files" / "func-layout-minion"
    mine.mkdir(parents=True)
    (mine / "kube-controller-manager.service.jinja").write_text(SITE_MARK + "\n" + default)
    # Its own ExecStart=, with a flag no release has: the check must judge this line.
    bad = default.replace("ExecStart={{ exec_start }}", "ExecStart={{ exec_start }} --no-such-flag=site")
    (mine / "site-bad.service.jinja").write_text(bad)
    return root


@pytest.fixture(scope="module")
def minion_opts(salt_factories, tmp_path_factory, site_root):
    root = tmp_path_factory.mktemp("func-layout")
    opts = local_minion_opts(salt_factories, "func-layout-minion", [site_root, REPO / "formula"], root / "pillar")
    # kcm.pki_peer writes below the minion's config_dir: keep it inside the test.
    opts["config_dir"] = str(root / "etc-salt")
    return opts


def inventory(*roots):
    """Every path below ``roots`` (files, links and directories)."""
    return {str(p) for root in roots if Path(root).exists() for p in Path(root).rglob("*")}


def account_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture
def fresh_account():
    name = f"kcmt{uuid.uuid4().hex[:8]}"
    yield name
    # Whatever the test did, no account of it stays on this host.
    os.system(f"userdel {name} >/dev/null 2>&1; groupdel {name} >/dev/null 2>&1")  # noqa: S605


@pytest.fixture
def as_root():
    """These tests create and remove system accounts: root only. CI runs as root (CI=true):
    there a missing root is a failure, not a skip."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but not root: the account tests of kcm.clean cannot run", pytrace=False)
        pytest.skip("creates and removes a system account (root only; CI runs them)")


@pytest.mark.usefixtures("as_root")
def test_clean_leaves_nothing_the_formula_created(state, minion_opts, open_tmp, test_pki, fresh_account):
    tmp_path = open_tmp
    signer_cert, signer_key = testpki.make_ca("kcm-test-cluster-signer")
    pillar = sandbox_pillar(
        tmp_path,
        build_tarball(tmp_path / "dl", VERSION),
        VERSION,
        dict(test_pki, signer_cert=testpki.cert_pem(signer_cert), signer_key=testpki.key_pem(signer_key)),
        user=fresh_account,
        group=fresh_account,
        create_user=True,
        master={"config_dir": str(tmp_path / "master.d"), "sync_runners": False, "masters": "master-*"},
    )
    cache = Path(minion_opts["cachedir"]) / "kcm"
    conf = Path(minion_opts["config_dir"])
    before = inventory(tmp_path / "fs", cache, conf, tmp_path / "master.d")

    for sls in ("kcm", "kcm.master", "kcm.pki_peer"):
        ret = state.apply(sls, pillar=pillar)
        assert not failed(ret), failed(ret)
    pki = Path(pillar["kcm"]["paths"]["pki"])
    assert (pki / "cluster-signer-key.pem").exists() and (tmp_path / "master.d" / "kcm.conf").exists()
    assert (conf / "master.d" / "kcm-pki-peer.conf").exists() and account_exists(fresh_account)

    ret = state.apply("kcm.clean", pillar=pillar)
    assert not failed(ret), failed(ret)

    download_cache = Path(pillar["kcm"]["paths"]["cache"])
    left = inventory(tmp_path / "fs", cache, conf, tmp_path / "master.d") - before
    left = {p for p in left if not (p == str(download_cache) or p.startswith(str(download_cache) + "/"))}
    # Directories the formula writes into but that belong to the system (the unit directory,
    # the link directory, master.d) stay, empty; what makedirs made above the formula's own
    # directories (the sandbox's /data, /etc) is not the formula's either.
    shared = {
        pillar["kcm"]["paths"]["unit"],
        pillar["kcm"]["paths"]["link"],
        str(tmp_path / "master.d"),
        str(conf / "master.d"),
    }
    assert all(not any(Path(d).iterdir()) for d in shared if Path(d).exists())
    named = [str(v) for v in pillar["kcm"]["paths"].values() if v and str(v) not in shared | {str(download_cache)}]
    assert (
        sorted(
            p
            for p in left - shared
            if any(p == n or p.startswith(n + "/") for n in named)
            or p.startswith(str(cache) + "/")
            or "/master.d/" in p
        )
        == []
    ), left
    assert not account_exists(fresh_account), "the account the formula created is still there"
    assert any(download_cache.iterdir()), "the download cache is kept"


@pytest.mark.usefixtures("as_root")
def test_clean_keeps_an_account_that_was_there_before(state, open_tmp, test_pki, fresh_account):
    tmp_path = open_tmp
    assert os.system(f"groupadd -r {fresh_account} && useradd -r -g {fresh_account} {fresh_account}") == 0  # noqa: S605
    pillar = sandbox_pillar(
        tmp_path,
        build_tarball(tmp_path / "dl", VERSION),
        VERSION,
        test_pki,
        user=fresh_account,
        group=fresh_account,
        create_user=True,
    )
    assert not failed(state.apply("kcm", pillar=pillar))

    ret = state.apply("kcm.clean", pillar=pillar)

    assert not failed(ret), failed(ret)
    assert account_exists(fresh_account), "kcm.clean removed an account the formula did not create"


def test_a_site_unit_from_the_file_root_is_the_one_that_lands(state, tmp_path, test_pki):
    pillar = sandbox_pillar(tmp_path, build_tarball(tmp_path / "dl", VERSION), VERSION, test_pki)

    ret = state.apply("kcm", pillar=pillar)

    assert not failed(ret), failed(ret)
    unit = Path(pillar["kcm"]["paths"]["unit"]) / "kube-controller-manager.service"
    assert unit.read_text().startswith(SITE_MARK + "\n")
    accepted = next(r for r in ret if r.id == "kcm-service-unit-accepted")
    assert "salt://kcm/files/func-layout-minion/kube-controller-manager.service.jinja" in accepted.comment


def test_the_check_judges_the_execstart_of_the_site_unit(state, tmp_path, test_pki):
    good = sandbox_pillar(tmp_path, build_tarball(tmp_path / "dl", VERSION), VERSION, test_pki)
    assert not failed(state.apply("kcm", pillar=good))
    unit = Path(good["kcm"]["paths"]["unit"]) / "kube-controller-manager.service"
    before = unit.read_text()
    bad = sandbox_pillar(
        tmp_path,
        build_tarball(tmp_path / "dl", VERSION),
        VERSION,
        test_pki,
        tofs={"source_files": {"kcm-service-unit": ["site-bad.service.jinja"]}},
    )

    ret = state.apply("kcm", pillar=bad)

    accepted = next(r for r in ret if r.id == "kcm-service-unit-accepted")
    assert accepted.result is False and "unknown flag: --no-such-flag" in accepted.comment
    assert unit.read_text() == before, "a unit its binary refuses was laid down"


def test_a_bad_tofs_source_is_refused_naming_the_key(state, tmp_path, test_pki):
    bad = sandbox_pillar(
        tmp_path,
        build_tarball(tmp_path / "dl", VERSION),
        VERSION,
        test_pki,
        tofs={"source_files": {"kcm-service-unit": ["../../etc/shadow"]}},
    )

    ret = state.apply("kcm", pillar=bad)

    validated = next(r for r in ret if r.id == "kcm-config-validated")
    assert validated.result is False and "kcm:tofs:source_files:kcm-service-unit" in validated.comment
    assert not (tmp_path / "fs").exists()


def test_with_control_cmd_the_watch_restarts_kcm_and_nothing_else_does(state, tmp_path, test_pki):
    log = tmp_path / "control.log"
    control = tmp_path / "kcmctl"
    control.write_text(f'#!/bin/sh\necho "$1" >> {shlex.quote(str(log))}\n')
    control.chmod(0o755)
    tarball = build_tarball(tmp_path / "dl", VERSION)

    def apply(**over):
        pillar = sandbox_pillar(
            tmp_path,
            tarball,
            VERSION,
            test_pki,
            leader_election={"release_on_exit": False},
            service={"manage": False, "control_cmd": str(control)},
            **over,
        )
        ret = state.apply("kcm", pillar=pillar)
        assert not failed(ret), failed(ret)
        return next(r for r in ret if r.id == "kcm-service-restarted")

    first = apply()
    assert first.changes["restart"] == "done" and log.read_text().split() == ["stop", "start"]
    again = apply()
    assert again.changes == {} and log.read_text().split() == ["stop", "start"], "restarted with nothing changed"
    apply(verbosity=4)
    assert log.read_text().split() == ["stop", "start", "stop", "start"]


def test_without_control_cmd_a_needed_restart_is_reported_not_done(state, tmp_path, test_pki):
    pillar = sandbox_pillar(tmp_path, build_tarball(tmp_path / "dl", VERSION), VERSION, test_pki)

    ret = state.apply("kcm", pillar=pillar)

    restarted = next(r for r in ret if r.id == "kcm-service-restarted")
    assert restarted.result is True and restarted.changes == {"restart": "needed"}
    assert "restart it yourself" in restarted.comment


def test_the_preflight_installs_beside_and_runs_the_formulas_own_check(loaders, state, tmp_path, test_pki):
    old = sandbox_pillar(tmp_path, build_tarball(tmp_path / "dl", VERSION), VERSION, test_pki)
    assert not failed(state.apply("kcm", pillar=old))
    link = Path(old["kcm"]["paths"]["bin"]) / "kube-controller-manager"
    unit = Path(old["kcm"]["paths"]["unit"]) / "kube-controller-manager.service"
    before = (os.readlink(link), unit.read_text())
    new = sandbox_pillar(tmp_path, build_tarball(tmp_path / "dl", "v1.37.3"), "v1.37.3", test_pki)

    report = loaders.modules.kcm_orch.preflight(pillar=new)

    assert report["result"] is True, report
    assert (report["version"], report["deployed_version"]) == ("v1.37.3", VERSION)
    assert report["binary"].endswith("/versions/v1.37.3/kube-controller-manager")
    assert (os.readlink(link), unit.read_text()) == before, "the preflight moved the link or the unit"

    refused = loaders.modules.kcm_orch.preflight(
        pillar=sandbox_pillar(
            tmp_path, build_tarball(tmp_path / "dl", "v1.37.3"), "v1.37.3", test_pki, extra_args={"no-such-flag": "1"}
        )
    )
    assert refused["result"] is False and "unknown flag: --no-such-flag" in refused["comment"], refused
