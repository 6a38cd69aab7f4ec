"""The e2e logs worth reading outlive pytest's base temp directory (issue #23)."""

import os
import shutil

from kcmlab.keptlogs import keep_logs


def _logs(tmp_path):
    one, two = tmp_path / "lab-short0" / "machines", tmp_path / "lab-faults0" / "machines"
    for directory in (one, two):
        directory.mkdir(parents=True)
        (directory / "master-3-kube-controller-manager.journal").write_text(f"from {directory.parent.name}\n")
    return [
        one / "master-3-kube-controller-manager.journal",
        two / "master-3-kube-controller-manager.journal",
        tmp_path / "never-written.log",
    ]


def test_the_kept_copies_stay_readable_after_pytest_removes_its_temp_directory(tmp_path):
    home = tmp_path / "cache" / "e2e-logs"
    sources = _logs(tmp_path / "basetemp")

    kept = keep_logs(sources, home=home)
    shutil.rmtree(tmp_path / "basetemp")

    assert len(kept) == 2, "two labs' journals of the same name are both kept; a missing file is not"
    assert sorted(path.read_text() for path in kept) == ["from lab-faults0\n", "from lab-short0\n"]
    assert all(path.is_relative_to(home) for path in kept)


def test_only_the_last_runs_are_kept(tmp_path):
    home = tmp_path / "e2e-logs"
    for stamp in ("20261201T000000", "20261202T000000", "20261203T000000"):
        (home / stamp / "1").mkdir(parents=True)
    sources = _logs(tmp_path / "basetemp")

    kept = keep_logs(sources, home=home, runs=2)

    runs = sorted(str(path.relative_to(home)) for path in home.glob("*/*"))
    assert runs == ["20261203T000000/1", str(kept[0].parent.relative_to(home))]
    assert sorted(os.listdir(home)) == ["20261203T000000", kept[0].parent.parent.name]
