"""The lab cleans up after itself: no machine, cgroup, veth, bridge or directory is left
behind, also when the code using it fails half-way."""

from __future__ import annotations

import subprocess

import pytest

from kcmlab.machines import Lab, leftovers


def test_a_failing_user_of_the_lab_leaves_nothing_behind():
    with pytest.raises(RuntimeError, match="boom"):
        with Lab("e2e-clean") as lab:
            first, second = lab.boot_many(["clean-1", "clean-2"])
            assert first.run(["hostname"]).stdout.strip() == "clean-1"
            reach = first.run(["bash", "-c", f"exec 3<>/dev/tcp/{second.address}/9"], check=False)
            assert "Connection refused" in reach.stderr, "machine -> machine must route (refused, not unreachable)"
            second.power_off()
            assert lab.machines["clean-1"].running
            assert leftovers("e2e-clean", ["clean-1"]), "a running lab must be visible to leftovers()"
            raise RuntimeError("boom")
    assert leftovers("e2e-clean", ["clean-1", "clean-2"]) == []
    assert subprocess.run(["pgrep", "-f", "hostname=clean-"], capture_output=True).returncode == 1


def test_a_machine_cut_off_cannot_be_reached_and_is_back_when_restored():
    with Lab("e2e-link") as lab:
        machine = lab.boot("link-1")

        def reach():
            return machine.run(
                ["bash", "-c", f"timeout 2 bash -c 'exec 3<>/dev/tcp/{lab.host_ip}/9'"], check=False
            ).stderr

        assert "Connection refused" in reach()
        machine.cut_link()
        assert "Connection refused" not in reach()
        machine.restore_link()
        assert "Connection refused" in reach()
    assert leftovers("e2e-link", ["link-1"]) == []
