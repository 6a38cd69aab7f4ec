"""The atomic JSON state files (_utils/kcm_state_file.py)."""

import os
import stat

import pytest

from kcmlab import formula


@pytest.fixture
def state_file():
    utils = formula.utils()
    return lambda name: utils[f"kcm_state_file.{name}"]


def test_write_sets_the_mode_on_its_own_file_never_through_a_link(state_file, tmp_path):
    # L10: write_json renamed, then chmod(path) followed whatever had been put at path
    victim = tmp_path / "root-only"
    victim.write_text("secret")
    victim.chmod(0o600)
    path = tmp_path / "stamp.json"
    path.symlink_to(victim)

    state_file("write_json")(str(path), {"a": 1}, mode=0o644)

    assert stat.S_IMODE(victim.stat().st_mode) == 0o600 and victim.read_text() == "secret"
    assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert state_file("read_json")(str(path)) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["root-only", "stamp.json"]
