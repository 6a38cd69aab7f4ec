"""The release record (docs/releases.md) against today's flag table: a proof cannot drift."""

import re
import subprocess

import pytest

from kcmlab import formula, releases

RECORD = releases.parse(releases.RECORD.read_text())
PENDING = releases.pending(releases.RECORD.read_text())
PINNED = re.search(
    r'K8S_VERSION="\$\{1:-\$\{KCM_K8S_VERSION:-(v1\.\d+\.\d+)\}\}"', (formula.REPO / "scripts/k8s-binaries").read_text()
).group(1)


def test_every_proven_release_still_gets_the_flag_set_its_binary_ran_with():
    # except the minors the record lists as awaiting a re-proof, each with the change that moved it
    assert releases.drift(RECORD, PENDING) == []


@pytest.mark.parametrize("minor", sorted(PENDING), ids=str)
def test_a_release_listed_as_pending_really_drifted_and_says_why(minor):
    assert RECORD[minor].proven, f"{minor} is listed as pending a re-proof but was never proven"
    assert releases.drift({minor: RECORD[minor]}) != [], (
        f"{minor} gets the flag set its binary was proven with again: take it off the pending list"
    )
    assert len(PENDING[minor]) > 20, PENDING[minor]


def test_the_pending_list_excuses_only_what_it_names():
    text = f"{releases.PENDING}\n- v1.30: a reason long enough to say what changed\n{releases.PENDING_END}"
    assert releases.pending(text) == {"v1.30": "a reason long enough to say what changed"}
    stale = {m: releases.Row(**{**vars(r), "flags_sha256": "0" * 64}) for m, r in RECORD.items() if r.proven}
    assert [m.split(":")[0] for m in releases.drift(stale, releases.pending(text))] == [
        r.release for r in sorted(stale.values(), key=lambda r: releases.minor_key(r.minor)) if r.minor != "v1.30"
    ]


def test_a_changed_flag_set_names_the_release_to_re_prove(kcm_flags):
    proven = [row for row in RECORD.values() if row.proven]
    assert proven, "docs/releases.md proves no release"
    row = proven[0]
    stale = {row.minor: releases.Row(**{**vars(row), "flags_sha256": "0" * 64})}
    [message] = releases.drift(stale)
    assert message.startswith(f"{row.release}: ") and f"scripts/prove-releases {row.minor}" in message


def test_the_hash_follows_the_flags_a_release_gets():
    # v1.21 opens the insecure port unless told --port=0; v1.22 serves no insecure port.
    assert "--port=0" in releases.reference_flags("v1.21.14")
    assert "--port=0" not in releases.reference_flags("v1.22.17")
    assert releases.flagset_sha256("v1.21.14") != releases.flagset_sha256("v1.22.17")
    assert releases.flagset_sha256("v1.22.17") == releases.flagset_sha256("v1.22.0")


def test_the_record_has_a_row_for_every_minor_the_formula_supports(kcm_flags):
    newest = kcm_flags.minor(PINNED)
    assert sorted(RECORD, key=releases.minor_key) == [f"v1.{m}" for m in range(kcm_flags.OLDEST_MINOR, newest + 1)]


@pytest.mark.parametrize("row", [r for r in RECORD.values() if r.proven], ids=lambda r: r.minor)
def test_a_proven_row_is_a_patch_of_its_minor_and_says_what_ran(row):
    assert re.fullmatch(rf"{re.escape(row.minor)}\.\d+", row.release)
    assert row.kcm_version == f"Kubernetes {row.release}"
    assert re.fullmatch(r"[0-9a-f]{64}", row.binary_sha256) and row.go.startswith("go1.")
    assert row.build.startswith("ok")


OLDER = [r for r in RECORD.values() if r.proven and "not the newest patch" in r.build]


@pytest.mark.parametrize("row", OLDER, ids=lambda r: r.minor)
def test_a_row_proving_an_older_patch_names_the_newest_and_why_it_did_not_build(row):
    # The record's rule is the newest patch of each minor; an older one stands in only for a newest
    # that does not build, and the row must say which and why.
    said = re.search(r"; not the newest patch: (v1\.(\d+)\.(\d+)) does not build: (.+)$", row.build)
    assert said, row.build
    assert f"v1.{said.group(2)}" == row.minor
    assert int(said.group(3)) > int(row.release.rsplit(".", 1)[1])
    assert said.group(4).strip()


def test_rows_survive_a_rewrite_with_pipes_in_their_notes():
    rows = dict(RECORD)
    rows["v1.14"] = releases.Row("v1.14", notes="a | b")
    again = releases.parse(releases.rewrite(releases.RECORD.read_text(), rows))
    assert again == rows


@pytest.fixture
def prove(tmp_path, monkeypatch):
    module = formula.load("scripts", "prove_releases")
    monkeypatch.setattr(module, "WORK", tmp_path)
    # The unit tier needs no Go: build_failure only asks it its version.
    monkeypatch.setattr(module, "go", lambda *args, **kw: subprocess.CompletedProcess(args, 0, "go1.26.8\n", ""))
    return module


def failed_build(work, version, log):
    (work / version).mkdir()
    (work / version / "build.rc").write_text("1\n")
    (work / version / "build.log").write_text(log)


def test_an_older_patch_is_refused_while_the_newest_is_not_known_to_fail(prove, tmp_path):
    with pytest.raises(SystemExit, match=r"v1\.31\.13: not the newest patch of its minor \(v1\.31\.14\)"):
        prove.older_patch("v1.31.13", "v1.31.14")
    (tmp_path / "v1.31.14").mkdir()
    (tmp_path / "v1.31.14" / "build.rc").write_text("0\n")
    with pytest.raises(SystemExit, match="prove v1.31.14 first"):
        prove.older_patch("v1.31.13", "v1.31.14")


def test_an_older_patch_names_the_newest_and_the_module_the_proxy_refused(prove, tmp_path):
    failed_build(
        tmp_path,
        "v1.31.14",
        "go: k8s.io/kube-controller-manager@v0.31.14: reading "
        "https://proxy.golang.org/k8s.io/kube-controller-manager/@v/v0.31.14.zip: 403 Forbidden\n",
    )
    said = prove.older_patch("v1.31.13", "v1.31.14")
    assert said == (
        "not the newest patch: v1.31.14 does not build: the Go module proxy refuses "
        "k8s.io/kube-controller-manager@v0.31.14 (403: this module version is not available)"
    )
    # what the record test above demands of such a row
    assert re.search(r"not the newest patch: (v1\.31\.14) does not build: (.+)$", f"ok, 894 s; {said}")


def test_wrapper_fixes_of_a_godeps_release_are_only_what_changed_after_its_own_pins(prove, tmp_path, monkeypatch):
    src = tmp_path / "src" / "kubernetes-v1.14.2"
    src.mkdir(parents=True)
    pins = (
        "replace (\n\tgolang.org/x/net => golang.org/x/net v0.0.0-20190206173232-65e2d4e15006\n"
        "\tgithub.com/modern-go/reflect2 => github.com/modern-go/reflect2 v1.0.1\n"
        "\tk8s.io/api => ./staging/api\n)\n"
    )
    (src / "go.mod.godeps").write_text(pins)
    (src / "go.mod").write_text(pins.replace("reflect2 v1.0.1", "reflect2 v1.0.2"))
    monkeypatch.setattr(prove, "CACHE", tmp_path)
    assert prove.wrapper_fixes("v1.14.2") == ["github.com/modern-go/reflect2 => github.com/modern-go/reflect2 v1.0.2"]
    # a release with a go.mod of its own: every replace beyond the staging ones is a fix
    (src / "go.mod.godeps").unlink()
    assert len(prove.wrapper_fixes("v1.14.2")) == 2
