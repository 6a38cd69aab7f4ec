"""systemd runs KCM: started by ``service.running``, healed by ``Restart=always``, stopped by
``systemctl``, logging to the machine's journal, restarted into a changed unit by ``watch``
(daemon-reload included), under a sandbox that ``systemd-analyze security`` rates <= 1.5."""

from __future__ import annotations

import re
import time

from kcmlab.cluster import UNIT
from kcmlab.controlplane import parse_exec_start, wait_until

SECURITY_BOUND = 1.5


def test_kcm_status_reports_service_active_from_systemd(kcm_cluster):
    # The leader of the moment kcm.status ran: read around it, again if the Lease moved.
    leader, _, _, rows = kcm_cluster.consistent(lambda: kcm_cluster.salt("kcm.status"))

    assert sorted(rows) == sorted(kcm_cluster.nodes), rows
    for name, [row] in rows.items():
        assert row["service_active"] == "active", row
        assert row["healthy"] is True, row
        assert row["leader"] == ("yes" if name == leader else "no"), row
    enabled = {
        n: kcm_cluster.machine(n).systemctl("is-enabled", UNIT, check=False).stdout.strip() for n in kcm_cluster.nodes
    }
    assert set(enabled.values()) == {"enabled"}, enabled


def test_kill_9_of_a_standby_is_healed_by_systemd_and_it_rejoins_as_standby(kcm_cluster, record_timing):
    leader, holder, _, _ = kcm_cluster.consistent()
    name = next(n for n in kcm_cluster.nodes if n != leader)
    restarts = kcm_cluster.restarts(name)

    began = time.monotonic()
    killed = kcm_cluster.kill(name)
    wait_until(
        lambda: kcm_cluster.restarts(name) == restarts + 1 and kcm_cluster.main_pid(name) not in (0, killed),
        30,
        f"systemd restarting KCM on {name}",
    )
    kcm_cluster.wait_healthy([name], timeout=60)
    record_timing("kill -9 of a standby's KCM -> healthy again under systemd", time.monotonic() - began)

    assert kcm_cluster.active(name) == "active"
    moved = kcm_cluster.lease_log.summary()
    assert kcm_cluster.holder() == holder, f"a standby's crash must not move the Lease ({moved})"


def test_systemctl_stop_on_the_leader_is_a_failover(kcm_cluster, record_timing):
    old = kcm_cluster.renewing_leader()
    began = time.monotonic()
    kcm_cluster.stop(old)
    new = kcm_cluster.wait_for_leader(kcm_cluster.failover_bound + 5, exclude={old})
    record_timing("systemctl stop on the leader -> new leader", time.monotonic() - began)

    assert new in kcm_cluster.nodes
    assert kcm_cluster.active(old) == "inactive", "Restart=always must not undo a systemctl stop"
    assert "Stopped kube-controller-manager.service" in kcm_cluster.machine(old).journal(UNIT, 30)


def test_kcm_logs_are_in_the_machines_journal(kcm_cluster):
    leader, _, _, text = kcm_cluster.consistent(
        lambda: (
            kcm_cluster.machine(kcm_cluster.leader()).run(["journalctl", "--no-pager", "-o", "cat", "-u", UNIT]).stdout
        )
    )
    assert 'Successfully acquired lease" lock="kube-system/kube-controller-manager"' in text, text[-2000:]
    standby = next(n for n in kcm_cluster.nodes if n != leader)
    standby_log = kcm_cluster.machine(standby).run(["journalctl", "--no-pager", "-o", "cat", "-u", UNIT]).stdout
    assert 'Attempting to acquire leader lease..." lock="kube-system/kube-controller-manager"' in standby_log


def test_a_changed_flag_is_live_after_one_apply(kcm_cluster):
    before = {name: kcm_cluster.cmdline(name) for name in kcm_cluster.nodes}
    assert all("--v=2" in argv for argv in before.values()), before
    since = time.time()
    kcm_cluster.change_pillar(verbosity=3)
    try:
        kcm_cluster.apply("kcm")
        kcm_cluster.wait_healthy(timeout=90)
        for name in kcm_cluster.nodes:
            running = kcm_cluster.cmdline(name)
            rendered = parse_exec_start(kcm_cluster.machine(name).read_file(f"/usr/lib/systemd/system/{UNIT}.service"))
            assert running == rendered, f"{name}: systemd runs another command line than the unit on disk"
            assert "--v=3" in running and "--v=2" not in running, running
            assert kcm_cluster.starts_since(name, since) == 1, f"{name}: restarted other than once"
    finally:
        kcm_cluster.change_pillar(verbosity=2)
        kcm_cluster.apply("kcm")


def test_the_unit_sandbox_scores_at_most_1_5_while_kcm_works_under_it(kcm_cluster):
    for name in kcm_cluster.nodes:
        out = kcm_cluster.machine(name).run(["systemd-analyze", "security", "--no-pager", UNIT]).stdout
        score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out).group(1))
        print(f"{name}: systemd-analyze security exposure {score}")
        assert score <= SECURITY_BOUND, f"{name}: exposure {score}\n{out[-3000:]}"
        user = kcm_cluster.machine(name).unit_property(UNIT, "User")
        assert user == "k8s"
        assert kcm_cluster.healthz(name)
    assert kcm_cluster.renewing_leader() in kcm_cluster.nodes


# Mount points of the kernel and of systemd's runtime state, and the system's temporary
# directories (sticky, everyone's): the only places the KCM user may own or write to.
OUTSIDE = ["/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp"]


def _find(machine, tests, user=None):
    prune = [arg for path in OUTSIDE for arg in ("-o", "-path", path)][1:]
    argv = ["find", "/", "-xdev", "(", *prune, ")", "-prune", "-o", "!", "-type", "l", *tests, "-print"]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    proc = machine.run(argv, check=False, timeout=300)
    # find exits 1 for the directories the user may not enter (they hold nothing it can write)
    others = [line for line in proc.stderr.splitlines() if not line.endswith("Permission denied")]
    assert proc.returncode in (0, 1) and others == [], proc.stderr[-2000:]
    return proc.stdout.split()


def test_the_kcm_user_owns_and_may_write_nothing_and_kcm_leads_on_its_credentials(kcm_cluster):
    # issue 24: after state.apply kcm, nothing outside /proc /sys /dev /run /tmp is the KCM user's
    kcm_cluster.apply("kcm")
    for name in kcm_cluster.nodes:
        machine = kcm_cluster.machine(name)
        # the same searches find what they look for: root's unit, and a file made the user's
        unit = "/usr/lib/systemd/system/kube-controller-manager.service"
        assert _find(machine, ["-user", "root", "-path", unit]) == [unit]
        machine.run(["install", "-o", "k8s", "-m", "0600", "/dev/null", "/var/lib/kcm-probe"])
        try:
            assert _find(machine, ["-user", "k8s"]) == ["/var/lib/kcm-probe"]
            assert _find(machine, ["-writable"], user="k8s") == ["/var/lib/kcm-probe"]
        finally:
            machine.run(["rm", "-f", "/var/lib/kcm-probe"])
        assert _find(machine, ["-user", "k8s"]) == [], name
        assert _find(machine, ["-writable"], user="k8s") == [], name
        argv = kcm_cluster.cmdline(name)
        assert (
            "--kubeconfig=/run/credentials/kube-controller-manager.service/kube-controller-manager.kubeconfig" in argv
        ), argv
        assert "--service-account-private-key-file=/run/credentials/kube-controller-manager.service/sa.key" in argv
        listed = machine.run(["ls", "/run/credentials/kube-controller-manager.service"]).stdout.split()
        assert sorted(listed) == sorted(
            ["kube-controller-manager.kubeconfig", "kube-controller-manager-key.pem", "sa.key", "ca-key.pem"]
        ), listed
        st = machine.run(
            [
                "stat",
                "-c",
                "%U:%G %a",
                "/etc/k8s/kubeconfig/kube-controller-manager.kubeconfig",
                "/etc/k8s/ssl/sa.key",
                "/usr/lib/systemd/system/kube-controller-manager.service",
            ]
        ).stdout
        assert st.split("\n")[:2] == ["root:root 600", "root:root 600"], st
    # the leader renews the Lease with the kubeconfig systemd handed it
    renewed = (kcm_cluster.lease() or {}).get("spec", {}).get("renewTime")
    wait_until(
        lambda: (kcm_cluster.lease() or {}).get("spec", {}).get("renewTime") != renewed,
        30,
        "the leader renewing the Lease",
    )
    assert kcm_cluster.renewing_leader() in kcm_cluster.nodes
    kcm_cluster.wait_healthy(timeout=30)
