"""The atomic JSON state files (_utils/kcm_state_file.py)."""

import os
import stat

import pytest
import salt.utils.atomicfile

from kcmlab import formula


@pytest.fixture
def state_file():
    utils = formula.utils()
    return lambda name: utils[f"kcm_state_file.{name}"]


def test_write_never_changes_the_mode_through_a_link_swapped_in(state_file, tmp_path, monkeypatch):
    # L10: write_json renamed, then chmod(path) followed a symlink swapped in meanwhile
    victim = tmp_path / "root-only"
    victim.write_text("secret")
    victim.chmod(0o600)
    path = tmp_path / "stamp.json"

    def swapping(rename):
        def run(src, dst):
            rename(src, dst)
            # the writer of the directory replaces the new file by a link right after the rename
            os.unlink(dst)
            os.symlink(victim, dst)

        return run

    monkeypatch.setattr(os, "replace", swapping(os.replace))
    monkeypatch.setattr(salt.utils.atomicfile, "atomic_rename", swapping(os.rename))
    state_file("write_json")(str(path), {"a": 1}, mode=0o644)

    assert stat.S_IMODE(victim.stat().st_mode) == 0o600 and victim.read_text() == "secret"


def test_write_replaces_atomically_with_the_mode_asked(state_file, tmp_path):
    path = tmp_path / "stamp.json"
    path.symlink_to(tmp_path / "elsewhere")
    state_file("write_json")(str(path), {"a": 1}, mode=0o644)
    assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert state_file("read_json")(str(path)) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["stamp.json"]
