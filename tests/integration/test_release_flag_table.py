"""The flag and feature-gate table the formula refuses by (``_utils/kcm_release_flags.py``)
agrees with every real kube-controller-manager binary in the build cache it was generated
from, the release ``scripts/k8s-binaries`` built for this tier (``KCM_K8S_BIN``) first."""

import os
from pathlib import Path

import pytest

from kcmlab import kcm_help


def tier_binary() -> Path:
    return Path(os.environ.get("KCM_K8S_BIN", kcm_help.K8S_CACHE / "v1.37.2")) / "kube-controller-manager"


def cached_binaries() -> list[Path]:
    """The tier's binary and every other cached one whose release the table was generated from
    (an older patch kept in the cache speaks for nothing)."""
    captured = {p.name.removesuffix(".help") for p in kcm_help.HELP_DIR.glob("*.help")}
    found = {b for b in kcm_help.K8S_CACHE.glob("*/kube-controller-manager") if b.parent.name in captured}
    return sorted(b for b in found | {tier_binary()} if b.is_file())


def test_the_tier_has_a_real_binary_to_judge_the_table_by():
    assert tier_binary().is_file(), f"{tier_binary()} is missing: run scripts/k8s-binaries"


@pytest.mark.parametrize("binary", cached_binaries(), ids=lambda b: b.parent.name)
def test_the_table_says_what_the_binary_says(binary):
    version = kcm_help.version_of(binary)
    captured = kcm_help.committed()
    assert version in captured, f"{version} is not captured: run python -m kcmlab.kcm_help capture {binary}"
    text, hidden_flags, hidden_gates = captured[version]
    assert kcm_help.listed(kcm_help.run(binary, "--help")) == kcm_help.listed(text)
    # What it parses unlisted, it still parses; what the table says it lacks, it refuses.
    assert all(kcm_help.parses_flag(binary, f) for f in hidden_flags)
    assert all(kcm_help.knows_gate(binary, g) for g in hidden_gates)
    all_flags, all_gates = kcm_help.candidates()
    flags, gates = kcm_help.listed(text)
    lacking_flags = sorted(all_flags - flags - hidden_flags)[:10]
    lacking_gates = sorted(all_gates - gates - hidden_gates)[:10]
    assert not [f for f in lacking_flags if kcm_help.parses_flag(binary, f)]
    assert not [g for g in lacking_gates if kcm_help.knows_gate(binary, g)]
