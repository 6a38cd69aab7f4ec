"""
`state.apply kcm test=True` tells the truth: no failure, nothing written, and the states it
predicts to change are the ones the real run then changes (fresh root, re-apply, version
bump, PKI rotation).
"""

import pytest

from tests.functional.test_apply import failed, tree_digest
from tests.support import pki as testpki
from tests.support.pillar import sandbox_pillar
from tests.support.tarball import build_tarball


def predicted(ret):
    # Changes shown, or None ("would run"; Salt's module.run says so for the mine). The
    # preflight of a binary this very run installs is a check that cannot run yet: None,
    # and nothing it would change.
    return sorted({r.id for r in ret if r.changes or (r.result is None and r.id != "kcm-service-unit-accepted")})


def applied(ret):
    return sorted({r.id for r in ret if r.changes})


def dry_then_real(state, root, pillar):
    before = tree_digest(root / "fs")
    dry = state.apply("kcm", pillar=pillar, test=True)
    assert not failed(dry), failed(dry)
    assert tree_digest(root / "fs") == before, "test=True wrote to the target tree"
    real = state.apply("kcm", pillar=pillar)
    assert not failed(real), failed(real)
    return predicted(dry), applied(real)


@pytest.fixture
def pillars(tmp_path, test_pki):
    tarballs = {}

    def make(version, pki=None):
        if version not in tarballs:
            tarballs[version] = build_tarball(tmp_path / "dl", version)
        return sandbox_pillar(tmp_path, tarballs[version], version, pki or test_pki)

    return make


def test_dry_run_on_a_fresh_root(state, tmp_path, pillars):
    dry, real = dry_then_real(state, tmp_path, pillars("v1.34.3"))
    assert dry == real, (sorted(set(dry) - set(real)), sorted(set(real) - set(dry)))
    assert "kcm-install-binary" in real and "kcm-kubeconfig-file" in real


def test_dry_run_after_an_apply_predicts_nothing(state, tmp_path, pillars):
    pillar = pillars("v1.34.3")
    assert not failed(state.apply("kcm", pillar=pillar))
    dry, real = dry_then_real(state, tmp_path, pillar)
    assert dry == real == []


def test_dry_run_before_a_version_bump(state, tmp_path, pillars):
    assert not failed(state.apply("kcm", pillar=pillars("v1.34.3")))
    dry, real = dry_then_real(state, tmp_path, pillars("v1.35.0"))
    assert dry == real, (sorted(set(dry) - set(real)), sorted(set(real) - set(dry)))
    assert "kcm-install-active-link" in real and "kcm-service-unit" in real


def test_dry_run_before_a_pki_rotation(state, tmp_path, pillars):
    assert not failed(state.apply("kcm", pillar=pillars("v1.34.3")))
    dry, real = dry_then_real(state, tmp_path, pillars("v1.34.3", pki=testpki.kcm_pki()))
    assert dry == real, (sorted(set(dry) - set(real)), sorted(set(real) - set(dry)))
    assert "kcm-kubeconfig-file" in real and "kcm-pki-cert" in real
