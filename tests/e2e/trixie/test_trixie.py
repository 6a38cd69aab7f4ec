"""Masters on Debian trixie (systemd 257, Python 3.13, Salt 3008): one lab of three machines
built by the lab's rootfs code (``ensure_rootfs("3008", suite="trixie")``), the formula
applied over the bus, KCM under systemd with its ``LoadCredential=`` secrets, and the alert
path of tests/e2e/alerts (beacon -> kcm_alert engine -> runner -> Alertmanager).

What differs from bookworm's systemd 252 (``shared/reference/credentials-and-trixie.md``):
systemd's copy of a credential stays root's (0440 plus an ACL for the service user) instead
of being chowned to it, and ``$CREDENTIALS_DIRECTORY`` is unset in ``ExecStopPost=``, so the
Lease release hook (``ExecStopPost=-+``) reads the root-only source kubeconfig as root.
"""

from __future__ import annotations

import time

import pytest

from kcmlab.cluster import UNIT
from kcmlab.rootfs import ensure_rootfs
from tests.e2e.alerts.conftest import alert_lab, events, failover_alerted_once, running_alertmanager, settled
from tests.e2e.conftest import TIMINGS
from tests.e2e.test_release import wait_hook_line

CREDENTIALS = f"/run/credentials/{UNIT}.service"


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    yield from running_alertmanager(tmp_path_factory, "alertmanager-trixie")


@pytest.fixture(scope="module")
def trixie(k8s_bin, alertmanager, tmp_path_factory, request):
    """Three trixie masters running KCM from the formula, every beacon polling."""
    begin = time.monotonic()
    rootfs = ensure_rootfs("3008", suite="trixie")
    TIMINGS["trixie: rootfs (build or cache check)"] = time.monotonic() - begin
    yield from alert_lab(
        k8s_bin,
        alertmanager,
        tmp_path_factory.mktemp("lab-trixie"),
        request,
        "trixie",
        suite="e2e-trixie",
        rootfs=rootfs,
    )


def test_the_masters_run_trixie_with_systemd_257_and_salt_3008_on_python_3_13(trixie):
    grains = trixie.salt("grains.item", "oscodename", "pythonversion", "saltversioninfo")
    assert sorted(grains) == sorted(trixie.nodes), grains
    for name, item in grains.items():
        assert item["oscodename"] == "trixie", (name, item)
        assert item["pythonversion"][:2] == [3, 13], (name, item)
        assert item["saltversioninfo"][0] == 3008, (name, item)
        assert trixie.machine(name).run(["systemctl", "--version"]).stdout.startswith("systemd 257"), name


def test_kcm_reads_systemds_root_owned_copies_of_its_secrets(trixie):
    for name in trixie.nodes:
        machine = trixie.machine(name)
        deployed = trixie.deployed(name)
        user = deployed["user"]
        assert trixie.active(name) == "active", machine.journal(UNIT)
        kubeconfig = next(a.split("=", 1)[1] for a in trixie.cmdline(name) if a.startswith("--kubeconfig="))
        assert kubeconfig.startswith(f"{CREDENTIALS}/"), kubeconfig
        # systemd 257 keeps the copies root's and lets the service user read them by an ACL
        # ('+'); 252 chowns them to the service user (0400).
        listing = machine.run(["ls", "-ln", CREDENTIALS]).stdout.splitlines()[1:]
        assert listing, f"{name}: no credentials in {CREDENTIALS}"
        for line in listing:
            mode, _, uid, gid = line.split()[:4]
            assert (mode, uid, gid) == ("-r--r-----+", "0", "0"), (name, line)
        # The KCM user reads systemd's copy, not the root-only source it came from.
        source = deployed["files"]["kubeconfig"]
        group = deployed.get("group") or user
        as_user = ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", "head", "-c1"]
        assert machine.run([*as_user, source], check=False).returncode != 0, f"{name}: {user} reads {source}"
        assert machine.run(["stat", "-c", "%U:%G %a", source]).stdout.split() == ["root:root", "600"]


def test_a_stop_of_the_leader_hands_over_through_the_release_hook_and_alerts_once(trixie, alertmanager, record_timing):
    old = settled(trixie)
    holder = trixie.holder()
    since = time.time()
    trixie.stop(old)
    try:
        # ExecStopPost= runs without $CREDENTIALS_DIRECTORY on 257: the hook read the source.
        line = wait_hook_line(trixie, old, since)
        assert f"released Lease kube-system/kube-controller-manager held by {holder}" in line, line
        failover_alerted_once(trixie, alertmanager, old, since)
        record_timing("trixie: systemctl stop of the leader -> KCMLeaderChanged in Alertmanager", time.time() - since)
        # A released Lease is a handover: nobody was told there was no leader.
        assert events(trixie, "salt/beacon/*/kcm_leader/no_leader", since) == []
        assert alertmanager.active(alertname="KCMNoLeader") == []
    finally:
        trixie.ensure_running()
