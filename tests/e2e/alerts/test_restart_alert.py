"""A crash loop on the lab (issue #27, item 3): a standby's KCM that exits on start (a flag
its binary refuses, slipped past the formula in a hand-made drop-in) is restarted by systemd
again and again; its beacon reports it once, Alertmanager holds one KCMRestarting for that
master with the exit status and the flag error, and the repair resolves it. The exit on a
lost Lease (every other test's kill -9) raises none."""

from __future__ import annotations

import time

from kcmlab.controlplane import wait_until
from kcmlab.formula import utils

from .conftest import BEACON, WAIT, events, settled

UNIT = "kube-controller-manager"
DROP_IN = f"/run/systemd/system/{UNIT}.service.d/50-test-bad-flag.conf"
BAD_FLAG = "--no-such-flag"


def _exits_on_start(machine) -> None:
    """The unit's own ExecStart= plus a flag the binary refuses, in a runtime drop-in, and a
    restart: from then on KCM prints its usage and the flag error, and exits 1."""
    unit_text = machine.run(["systemctl", "cat", UNIT]).stdout
    exec_start = dict(utils()["kcm_systemd.service_directives"](unit_text))["ExecStart"]
    machine.run(["mkdir", "-p", DROP_IN.rpartition("/")[0]])
    machine.run(["tee", DROP_IN], input=f"[Service]\nExecStart=\nExecStart={exec_start} {BAD_FLAG}\n")
    machine.systemctl("daemon-reload")
    machine.systemctl("restart", UNIT)


def _repair(cluster, name: str) -> None:
    machine = cluster.machine(name)
    machine.run(["rm", "-f", DROP_IN])
    machine.systemctl("daemon-reload")
    machine.systemctl("restart", UNIT)
    cluster.wait_healthy([name], timeout=WAIT)


def test_a_kcm_that_exits_on_start_raises_one_kcm_restarting_and_its_repair_resolves_it(
    alert_cluster, alertmanager, record_timing
):
    cluster = alert_cluster
    leader = settled(cluster)
    name = next(n for n in cluster.nodes if n != leader)  # a standby: no failover on top of it
    since = time.time()
    try:
        _exits_on_start(cluster.machine(name))
        firing = wait_until(
            lambda: alertmanager.active(alertname="KCMRestarting"), WAIT, "KCMRestarting in Alertmanager"
        )
        record_timing("alerts: a KCM exiting on start -> KCMRestarting in Alertmanager", time.time() - since)
        assert [a["labels"]["minion"] for a in firing] == [name], firing
        assert firing[0]["labels"]["severity"] == "warning" and firing[0]["labels"]["env"] == "e2e"
        description = firing[0]["annotations"]["description"]
        assert "last exit status 1;" in description, description
        assert f"last error: Error: unknown flag: {BAD_FLAG}" in description, description
        assert firing[0]["annotations"]["runbook_url"].endswith("#kcmrestarting")
        # it goes on looping past the beacon's next read of systemd: two restarts, RestartSec=5 each,
        # outlast its 10 s between reads
        looped = cluster.restarts(name)
        wait_until(lambda: cluster.restarts(name) >= looped + 2, WAIT, f"{name}: two more restarts")
    finally:
        repaired = time.time()
        _repair(cluster, name)

    def ended():
        found = events(cluster, f"salt/beacon/{name}/kcm_leader/recovered", since)
        return [e for e in found if e[2]["condition"] == "restarting"]

    wait_until(lambda: alertmanager.active(alertname="KCMRestarting") == [], WAIT, "KCMRestarting resolved")
    record_timing(
        f"alerts: KCM repaired -> KCMRestarting resolved (healthy_for {BEACON['healthy_for']}s)", time.time() - repaired
    )
    assert len(wait_until(ended, WAIT, f"{name}'s recovered report")) == 1
    # A minion's reports arrive in order: all it said of the loop came before its recovered.
    assert [e[2]["id"] for e in events(cluster, "salt/beacon/*/kcm_leader/restarting", since)] == [name]
    assert len(events(cluster, "kcm/alert/restarting", since)) == 1
