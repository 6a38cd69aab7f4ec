"""
CIS (cis-1.12) controller-manager checks on what a real ``state.apply kcm`` lays down with the
formula's defaults (only the PEMs, the apiserver and the sandbox's paths given), judged the
way kube-bench judges them: the flags of the unit's ``ExecStart=`` (1.3.1-1.3.7), the
unit's mode (1.1.3), the kubeconfig's mode (1.1.17) and the PKI files' modes (1.1.20, 1.1.21).
The owners (1.1.4, 1.1.18, 1.1.19) are the root-ownership tests' (issue #24); here everything
runs as root in a sandbox.
"""

import stat
from pathlib import Path

from tests.functional.test_apply import exec_start, failed
from tests.support.pillar import sandbox_pillar
from tests.support.tarball import build_tarball
from tests.unit.test_cis_flags import cis_failures
from tests.unit.test_flags import as_map


def test_the_defaults_lay_down_a_benchmark_clean_kcm(state, tmp_path, test_pki):
    tarball = build_tarball(tmp_path / "dl", "v1.34.3")
    pki = dict(test_pki, signer_cert=test_pki["ca_cert"], signer_key=test_pki["ca_key"])
    pillar = sandbox_pillar(tmp_path, tarball, "v1.34.3", pki)
    del pillar["kcm"]["bind_address"]  # the formula's default, not the sandbox's
    ret = state.apply("kcm", pillar=pillar)
    assert not failed(ret), failed(ret)
    paths = pillar["kcm"]["paths"]

    unit_file = Path(paths["unit"]) / "kube-controller-manager.service"
    assert stat.S_IMODE(unit_file.stat().st_mode) & 0o177 == 0, "1.1.3: unit file 600 or stricter"
    unit = unit_file.read_text()
    flags = as_map([word for word in exec_start(unit)[1:] if word.startswith("--")])
    assert cis_failures(flags) == []
    assert (flags["bind-address"], flags["profiling"], flags["terminated-pod-gc-threshold"]) == (
        "127.0.0.1",
        "false",
        "12500",
    )

    kubeconfig = Path(paths["kubeconfig"]) / "kube-controller-manager.kubeconfig"
    assert stat.S_IMODE(kubeconfig.stat().st_mode) & 0o177 == 0, "1.1.17: kubeconfig 600 or stricter"
    pki_dir = Path(paths["pki"])
    for path in sorted(pki_dir.iterdir()):
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.name.endswith(("key.pem", ".key")):
            assert mode & 0o177 == 0, f"1.1.21: {path.name} is {mode:o}"
        else:
            assert mode & 0o133 == 0, f"1.1.20: {path.name} is {mode:o}"
    keys = {"cluster-signer-key.pem", "sa.key", "kube-controller-manager-key.pem"}
    assert keys <= {p.name for p in pki_dir.iterdir()}
