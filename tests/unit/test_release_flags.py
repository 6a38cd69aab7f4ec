"""A flag or feature gate the target release no longer has (or does not have yet) is refused
before anything is downloaded, naming the pillar key and the releases between which it went:
by the table generated from the real binaries' ``--help`` kept in kcmlab/kcm_help/."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kcmlab import kcm_help  # noqa: E402


def test_the_generated_table_is_what_the_committed_binaries_said():
    assert kcm_help.TABLE.read_text() == kcm_help.table_source(), (
        "_utils/kcm_release_flags.py is stale: run python -m kcmlab.kcm_help generate"
    )


def test_every_captured_binary_has_its_help_and_its_unlisted_names():
    captured = kcm_help.committed()
    assert {"v1.16.15", "v1.17.17", "v1.18.19", "v1.25.15", "v1.27.16", "v1.36.3", "v1.37.2", "v1.38.0-beta.0"} <= set(
        captured
    )
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


SAID = re.compile(
    r"(?P<what>--[\w-]+|feature gate \w+) (?P<verb>comes|was removed) (?:in v1\.(?P<in>\d+)|between"
    r" v1\.(?P<low>\d+) and v1\.(?P<high>\d+)) \((?P<has>v[\w.-]+)'s binary has it, (?P<lacks>v[\w.-]+)'s"
    r" does not\); (?P<version>v[\w.-]+) rejects it"
)


def bracket_holds(said, name, gate):
    """What a refusal says of two captured binaries is what their committed --help files say,
    and no captured binary lies between them: the releases named are the nearest there are."""
    captured = {
        v: kcm_help.listed(text)[1 if gate else 0] | (hidden_gates if gate else hidden_flags)
        for v, (text, hidden_flags, hidden_gates) in kcm_help.committed().items()
    }
    has, lacks = said["has"], said["lacks"]
    minor = {v: int(v.split(".")[1]) for v in captured}
    low, high = sorted((minor[has], minor[lacks]))
    between = [v for v in captured if low < minor[v] < high]
    return name in captured[has] and name not in captured[lacks] and not between


@pytest.mark.parametrize(
    "version, extra_args, key, name, verb",
    [
        # No hand-written row knows these: only the binaries do.
        (
            "v1.36.0",
            {"concurrent-disruption-syncs": 5},
            "kcm:extra_args:concurrent-disruption-syncs",
            "concurrent-disruption-syncs",
            "comes",
        ),
        (
            "v1.17.3",
            {"concurrent-job-syncs": 5},
            "kcm:extra_args:concurrent-job-syncs",
            "concurrent-job-syncs",
            "comes",
        ),
        ("v1.37.2", {"feature-gates": "NodeLease=true"}, "kcm:extra_args:feature-gates", "NodeLease", "was removed"),
        (
            "v1.37.2",
            {"feature-gates": ["APIServerIdentity=true", "kube:VolumeSnapshotDataSource=true"]},
            "kcm:extra_args:feature-gates",
            "VolumeSnapshotDataSource",
            "was removed",
        ),
        ("v1.18.19", {"feature-gates": "WatchList=true"}, "kcm:extra_args:feature-gates", "WatchList", "comes"),
        # v1.30 has no captured binary, but an older captured one already lacked it: gone for later minors too
        ("v1.30.0", {"feature-gates": "NodeLease=true"}, "kcm:extra_args:feature-gates", "NodeLease", "was removed"),
    ],
)
def test_a_flag_or_gate_the_release_lacks_is_refused_naming_the_key_and_the_releases(
    check, version, extra_args, key, name, verb
):
    problems = check(version=version, extra_args=extra_args)
    assert len(problems) == 1 and problems[0].startswith(f"{key}: "), problems
    said = SAID.search(problems[0])
    assert said and said["verb"] == verb and said["version"] == version, problems
    assert said["what"] in (f"--{name}", f"feature gate {name}"), problems
    assert bracket_holds(said, name, gate=said["what"].startswith("feature gate")), problems
    older, newer = sorted((int(said["has"].split(".")[1]), int(said["lacks"].split(".")[1])))
    # "in v1.N" when the two binaries are neighbours, else the range between them
    assert (said["in"], said["low"], said["high"]) == (
        (str(newer), None, None) if newer == older + 1 else (None, str(older + 1), str(newer))
    ), problems


def test_a_removal_names_the_key_and_both_releases_in_words_a_person_reads(check):
    # One exact sentence, with the binaries this repository has kept since v1.37.2 and v1.36.3.
    problems = check(version="v1.36.0", extra_args={"concurrent-disruption-syncs": 5})
    assert problems == [
        "kcm:extra_args:concurrent-disruption-syncs: --concurrent-disruption-syncs comes in v1.37"
        " (v1.37.2's binary has it, v1.36.3's does not); v1.36.0 rejects it"
    ]


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
