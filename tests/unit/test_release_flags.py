"""A flag or feature gate the target release no longer has (or does not have yet) is refused
before anything is downloaded, naming the pillar key and the releases between which it went:
by the table generated from the real binaries' ``--help`` kept in kcmlab/kcm_help/."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kcmlab import kcm_help  # noqa: E402


def test_the_generated_table_is_what_the_committed_binaries_said():
    assert kcm_help.TABLE.read_text() == kcm_help.table_source(), (
        "_utils/kcm_release_flags.py is stale: run python -m kcmlab.kcm_help generate")


def test_every_captured_binary_has_its_help_and_its_unlisted_names():
    captured = kcm_help.committed()
    assert {"v1.16.15", "v1.17.17", "v1.18.19", "v1.25.10", "v1.36.3", "v1.37.2"} <= set(captured)
    for version, (text, _, _) in captured.items():
        flags, gates = kcm_help.listed(text)
        assert "leader-elect" in flags and "feature-gates" in flags, version
        assert "AllAlpha" in gates, version  # every release lists it with the gates
        assert (kcm_help.HELP_DIR / f"{version}.hidden").exists(), version


def test_the_hand_written_rows_agree_with_every_binary_captured(kcm_flags):
    spoken = kcm_flags.__utils__["kcm_release_flags.spoken"]
    disagree = []
    for minor in kcm_flags.__utils__["kcm_release_flags.minors"]():
        release, flags, _ = spoken(minor)
        for name, (added, removed, _) in kcm_flags.FLAG_HISTORY.items():
            table_says = (added is None or minor >= added) and (removed is None or minor < removed)
            if table_says != (name in flags):
                disagree.append(f"--{name}: the table says {table_says} for v1.{minor}, {release} {not table_says}")
    assert not disagree


@pytest.mark.parametrize(
    "version, extra_args, key, said",
    [
        # No hand-written row knows these: only the binaries do.
        ("v1.36.0", {"concurrent-disruption-syncs": 5}, "kcm:extra_args:concurrent-disruption-syncs",
         "--concurrent-disruption-syncs comes in v1.37 (v1.37.2's binary has it, v1.36.3's does not);"
         " v1.36.0 rejects it"),
        ("v1.17.3", {"concurrent-job-syncs": 5}, "kcm:extra_args:concurrent-job-syncs",
         "--concurrent-job-syncs comes between v1.26 and v1.36 (v1.36.3's binary has it, v1.25.10's does not)"),
        ("v1.37.2", {"feature-gates": "NodeLease=true"}, "kcm:extra_args:feature-gates",
         "feature gate NodeLease was removed between v1.19 and v1.25 (v1.18.19's binary has it, v1.25.10's"
         " does not); v1.37.2 rejects it"),
        ("v1.37.2", {"feature-gates": ["APIServerIdentity=true", "kube:VolumeSnapshotDataSource=true"]},
         "kcm:extra_args:feature-gates", "feature gate VolumeSnapshotDataSource was removed between v1.19 and v1.25"),
        ("v1.18.19", {"feature-gates": "WatchList=true"}, "kcm:extra_args:feature-gates",
         "feature gate WatchList comes between v1.26 and v1.36"),
        # v1.30 has no captured binary, but v1.25.10's already lacked it: gone for later minors too
        ("v1.30.0", {"feature-gates": "NodeLease=true"}, "kcm:extra_args:feature-gates",
         "feature gate NodeLease was removed between v1.19 and v1.25"),
    ],
)
def test_a_flag_or_gate_the_release_lacks_is_refused_naming_the_key_and_the_releases(check, version,
                                                                                    extra_args, key, said):
    problems = check(version=version, extra_args=extra_args)
    assert [p for p in problems if p.startswith(f"{key}: ")] == [p for p in problems], problems
    assert len(problems) == 1 and said in problems[0], problems


@pytest.mark.parametrize(
    "version, extra_args",
    [
        ("v1.37.2", {"feature-gates": "APIServerIdentity=true,wardle:NodeLease=true"}),  # another component's
        ("v1.37.2", {"feature-gates": "PodCertificateRequest=true"}),  # --help hides it, the binary knows it
        ("v1.18.19", {"feature-gates": "NodeLease=true"}),
        ("v1.18.19", {"horizontal-pod-autoscaler-use-rest-clients": True}),  # deprecated: unlisted, parsed
        ("v1.37.2", {"concurrent-disruption-syncs": 5}),
        # v1.22 has no captured binary: what v1.18.19 had and v1.25.10 lacks may still be there
        ("v1.22.0", {"feature-gates": "NodeLease=true"}),
        ("v1.30.0", {"no-flag-any-binary-lists": 1}),  # left to the binary's own preflight
    ],
)
def test_what_the_release_has_passes(check, version, extra_args):
    assert check(version=version, extra_args=extra_args) == []
