"""kcmlab.rootfs: one cache entry per Debian suite, bookworm's where it always was, and the
trixie build's parts that run without a chroot (the e2e tier builds and boots the real one:
tests/e2e/trixie)."""

import subprocess
import sys
from importlib.metadata import distributions

import pytest

from kcmlab import rootfs


def test_each_suite_has_its_own_cache_entry_and_bookworm_keeps_its_path():
    bookworm, trixie = rootfs.rootfs_dir("3008"), rootfs.rootfs_dir("3008", suite="trixie")
    assert bookworm == rootfs.rootfs_dir("3008", suite="bookworm")
    assert bookworm.name.startswith("rootfs-3008-") and "trixie" not in bookworm.name
    assert trixie.name.startswith("rootfs-trixie-3008-") and trixie.parent == bookworm.parent
    # bookworm's old-entry sweep (rootfs-3008-*) never takes trixie's
    assert not trixie.match("rootfs-3008-*")


def test_what_trixie_needs_never_moves_bookworms_cache(monkeypatch):
    before = rootfs.rootfs_dir("3008")
    trixie_before = rootfs.rootfs_dir("3008", suite="trixie")
    monkeypatch.setitem(rootfs.SUITES, "trixie", dict(rootfs.SUITES["trixie"], sdists=("timelib", "other")))
    assert rootfs.rootfs_dir("3008") == before
    assert rootfs.rootfs_dir("3008", suite="trixie") != trixie_before


def test_an_unknown_suite_is_refused_with_the_ones_the_lab_builds():
    with pytest.raises(ValueError, match="'sid'.*bookworm, trixie"):
        rootfs.ensure_rootfs("3008", suite="sid")


def test_the_trixie_chroot_compiles_the_sdists_then_purges_the_compiler():
    hooks = rootfs._hooks(rootfs.CACHE / "wheels", "3008", "trixie")
    install = next(i for i, h in enumerate(hooks) if "pip install" in h)
    purge = next(i for i, h in enumerate(hooks) if "apt-get purge" in h)
    removed = next(i for i, h in enumerate(hooks) if 'rm -rf "$1/tmp/wheels"' in h)
    assert install < purge < removed
    assert all(package in hooks[purge] for package in rootfs.SUITES["trixie"]["build"])
    assert not [h for h in rootfs._hooks(rootfs.CACHE / "wheels", "3008") if "apt-get" in h]


def test_a_stand_in_wheel_is_a_wheel_pip_installs_with_the_sdists_name_and_version(tmp_path):
    wheel = rootfs._stand_in_wheel(tmp_path, "timelib", "0.3.0")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    [dist] = distributions(path=[str(target)])
    assert (dist.metadata["Name"], dist.version) == ("timelib", "0.3.0")
