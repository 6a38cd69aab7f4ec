"""Upgrading a master that the previous formula release (5f6804a) installed: the KCM user
owned the install tree, the PKI and the kubeconfig then; after one `state.apply kcm` of this
release it owns nothing and the binary is the verified one again (issue 24)."""

import io
import os
import stat
import subprocess
import tarfile

import pytest
from saltfactories.utils.functional import Loaders

from tests.functional.conftest import local_minion_opts
from tests.functional.test_apply import failed
from tests.functional.test_ownership import NOBODY, kcm_writable, nobody
from tests.support.pillar import REPO, sandbox_pillar
from tests.support.tarball import build_tarball

PREVIOUS = "5f6804a"
VERSION = "v1.37.2"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns files to nobody (the tests run as root in CI)")


@pytest.fixture(scope="module")
def previous_tree(tmp_path_factory):
    """The formula as release 5f6804a shipped it (git archive of this repository)."""
    root = tmp_path_factory.mktemp("previous-formula")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS], capture_output=True, check=False)
    if archive.returncode != 0:
        pytest.fail(f"git archive {PREVIOUS} (a full clone is needed): {archive.stderr.decode()[-500:]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="tar")
    return root


@pytest.fixture(scope="module")
def previous_state(salt_factories, tmp_path_factory, previous_tree):
    pillar_root = tmp_path_factory.mktemp("previous-pillar")
    opts = local_minion_opts(salt_factories, "previous-minion", [previous_tree / "formula"], pillar_root)
    return Loaders(opts, loaded_base_name=f"{__name__}.previous").modules.state


def test_an_install_of_the_previous_release_is_taken_back_for_root(previous_state, state, open_tmp, test_pki):
    pillar = sandbox_pillar(open_tmp, build_tarball(open_tmp / "dl", VERSION), VERSION, test_pki, **NOBODY)
    # The previous release has no skew guard (kcm:skew is an unknown key there); the version stays.
    pillar["kcm"].pop("skew")
    old = previous_state.apply("kcm", pillar=pillar)
    assert not failed(old), failed(old)
    uid, gid = nobody()
    paths = pillar["kcm"]["paths"]
    # what the previous release left: the KCM user owned these (audit finding H3)
    assert [os.stat(paths[k]).st_uid for k in ("install", "bin", "pki", "kubeconfig")] == [uid] * 4

    ret = state.apply("kcm", pillar=pillar)

    assert not failed(ret), failed(ret)
    changed = [r.id for r in ret if r.changes]
    # the binary the KCM user could have replaced is installed again, and the unit changes once
    assert "kcm-install-binary" in changed and "kcm-service-unit" in changed
    fs = open_tmp / "fs"
    found = [fs, *fs.rglob("*")]
    bad = [
        f"{p} {p.lstat().st_uid}:{p.lstat().st_gid} {stat.S_IMODE(p.lstat().st_mode):04o}"
        for p in found
        if p.lstat().st_uid != 0 or kcm_writable(p, p.lstat(), uid, gid)
    ]
    assert bad == []
    again = state.apply("kcm", pillar=pillar)
    assert not failed(again) and [r.id for r in again if r.changes] == []
