"""
No private key in state arguments (L6 of the second audit: ``state.show_sls kcm.config``
printed three ``BEGIN PRIVATE KEY`` blocks, from ``config: {{ kcm | json }}``). What
``state.show_sls``, ``state.show_lowstate`` and the minion's log of the rendered SLS show is
read by whoever can run a job on the minion or read its log; the PEMs reach only the files
(``contents_pillar``) and the validate state, which reads them from pillar itself.
"""

import pytest

from tests.functional.test_apply import failed
from tests.support import pki as testpki
from tests.support.pillar import sandbox_pillar
from tests.support.tarball import build_tarball


@pytest.fixture
def pillar(tmp_path, test_pki):
    pki = dict(test_pki, signer_cert=test_pki["ca_cert"], signer_key=test_pki["ca_key"])
    return sandbox_pillar(tmp_path, tmp_path / "absent.tar.gz", "v1.34.3", pki)


def key_bodies(pillar):
    """A line of base64 from inside each private key of the pillar."""
    pki = pillar["kcm"]["pki"]
    return {
        k: pki[k].strip().splitlines()[2] for k in ("ca_key", "key", "service_account_key", "signer_key") if pki.get(k)
    }


def assert_no_key(text, pillar):
    assert "PRIVATE KEY" not in text
    leaked = [k for k, line in key_bodies(pillar).items() if line in text]
    assert leaked == [], f"key material of {leaked} is shown"


@pytest.mark.parametrize("sls", ["kcm", "kcm.config", "kcm.clean"])
def test_show_sls_and_show_lowstate_print_no_private_key(state, pillar, sls):
    high = state.show_sls(sls, pillar=pillar)
    assert isinstance(high, dict), high
    assert_no_key(repr(high), pillar)
    low = state.show_low_sls(sls, pillar=pillar)
    assert isinstance(low, list) and low, low
    assert_no_key(repr(low), pillar)


def test_the_validate_state_still_checks_the_pems_it_reads_from_pillar(state, pillar, test_pki):
    high = state.show_sls("kcm.config.validated", pillar=pillar)
    args = {
        k: v for item in high["kcm-config-validated"]["kcm_config"] if isinstance(item, dict) for k, v in item.items()
    }
    assert set(args["pems"]) == {"ca_cert", "ca_key", "cert", "key", "service_account_key", "signer_cert", "signer_key"}
    assert all(v.startswith("sha256:") for v in args["pems"].values())

    # A key that does not match its certificate is still refused: the state reads the PEMs.
    other = testpki.kcm_pki()
    bad = dict(pillar, kcm=dict(pillar["kcm"], pki=dict(pillar["kcm"]["pki"], key=other["key"])))
    ret = state.apply("kcm.config.validated", pillar=bad)
    comment = next(r.comment for r in ret if r.id == "kcm-config-validated")
    assert failed(ret) and "kcm:pki:key: does not match" in comment.replace("\n", " "), comment
    assert_no_key(comment, bad)


def test_a_real_apply_logs_and_returns_no_private_key(state, tmp_path, test_pki, caplog):
    tarball = build_tarball(tmp_path / "dl", "v1.34.3")
    pillar = sandbox_pillar(tmp_path, tarball, "v1.34.3", test_pki)
    caplog.set_level(1)  # TRACE and below: Salt logs the rendered SLS there
    ret = state.apply("kcm", pillar=pillar)
    assert not failed(ret), failed(ret)
    assert 'pems: {"ca_cert": "sha256:' in caplog.text, "the rendered SLS is not in the log at TRACE"
    assert_no_key(caplog.text, pillar)
    assert_no_key(repr([(r.id, r.comment, r.changes) for r in ret]), pillar)
