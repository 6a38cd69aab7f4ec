"""A fourth machine in the alerts lab (issue #25): a real salt-minion whose key the master
accepted, that is no KCM master (``kcm:master:masters`` is ``master-*``; it is ``intruder``),
with root on its own machine and the formula's modules synced, as any minion may sync them.
It claims the control-plane grain that 5f6804a's runner trusted (``role: k8s-master``), then
tries what the audit found: it reads pillar, signs reports of every kind with its own key in
its own name and in a KCM master's, replays a KCM master's genuine report, and answers the
fleet view. Each is refused: nothing reaches Alertmanager, no secret is in its pillar, the
fleet view of the KCM masters is unchanged. Everything runs for real: the salt-master with the
kcm_alert engine, the minions under systemd, Alertmanager. (This lab has no enrollment
reactor; a forged start is the integration tier's, tests/integration/test_forged_events.py.)
"""

from __future__ import annotations

import json
import time

import pytest

from kcmlab.controlplane import wait_until

from .conftest import WAIT, events, settled, wait_events

INTRUDER = "intruder"
# Run inside the intruder by the machine's own Salt: what its beacons would send, built with
# the formula's synced _utils (the signature is the intruder's key; the tag and id are as given).
FORGE = """
import json, sys
import salt.config, salt.loader, salt.utils.event
opts = salt.config.minion_config("/etc/salt/minion")
utils = salt.loader.utils(opts)
plan = json.load(sys.stdin)
returns = list(plan["raw"])
signed = utils["kcm_trust.sign_events"](opts, plan["sign"], utils["kcm_state_file.read_json"],
                                        utils["kcm_state_file.write_json"])
for event, (beacon, name) in zip(signed, plan["as"]):
    data = dict(event, id=name)
    returns.append({"tag": "salt/beacon/%s/%s/%s" % (name, beacon, data.pop("tag")), "data": data})
bus = salt.utils.event.get_event("minion", opts=opts, listen=False)
bus.fire_event({"beacons": returns}, "__beacons_return")
bus.destroy()
"""
# Facts no genuine report carries, so that anything built from a forgery is recognisable.
MARK = {"holder": "intruder_forged", "renew_time": "2030-01-01T00:00:00.000000Z", "transitions": 997}
CLUSTER = "kubernetes"  # the formula's default kcm:cluster, which the lab keeps


@pytest.fixture(scope="module")
def intruder(alert_cluster):
    """The intruder booted, its key accepted, the formula's modules synced on it, the grain
    claimed and in the master's cache; it is powered off and its key deleted when the module ends."""
    cluster = alert_cluster
    machine = cluster.lab.boot(INTRUDER, salt=cluster.master.minion_config(INTRUDER))
    try:
        cluster.master.wait_for_minions([INTRUDER])
        machine.run(["salt-call", "--retcode-passthrough", "saltutil.sync_all"], timeout=300)
        machine.run(["salt-call", "--retcode-passthrough", "grains.setval", "role", "k8s-master"])
        cluster.master.salt(INTRUDER, "saltutil.refresh_grains")
        assert cluster.master.salt(INTRUDER, "grains.get", "role")[INTRUDER] == "k8s-master"
        yield machine
    finally:
        machine.power_off()
        cluster.master.command("salt-key", "-y", "-d", INTRUDER)


def forge(machine, sign=(), raw=()) -> None:
    """One beacon return from the intruder: ``sign`` is [(beacon, name as, event)], signed
    with its key; ``raw`` is [{"tag", "data"}] as given."""
    plan = {
        "sign": [dict(event) for _, _, event in sign],
        "as": [[beacon, name] for beacon, name, _ in sign],
        "raw": list(raw),
    }
    machine.run(["/opt/saltstack/salt/bin/python3", "-c", FORGE], input=json.dumps(plan))


def sent_since(cluster, since: float) -> list[dict]:
    """What the runner sent (or resolved) since ``since``, not its refusals or duplicates."""
    return [
        e[2] for e in events(cluster, "kcm/alert/*", since) if e[1] not in ("kcm/alert/refused", "kcm/alert/duplicate")
    ]


def forged_in(alerts) -> list[dict]:
    text_of = json.dumps
    return [a for a in alerts if INTRUDER in text_of(a) or MARK["holder"] in text_of(a)]


def test_its_grain_claim_gets_it_no_secret_and_no_kcm(alert_cluster, intruder):
    cluster = alert_cluster
    # (Salt 3008 masks pillar values in its output: the keys tell.)
    pillar = cluster.master.salt(INTRUDER, "pillar.items")[INTRUDER]
    assert "kcm" not in pillar and "PRIVATE KEY" not in json.dumps(pillar), sorted(pillar)
    assert "key" in cluster.master.salt("master-1", "pillar.items")["master-1"]["kcm"]["pki"]  # a master's has it
    assert intruder.run(["systemctl", "cat", "kube-controller-manager"], check=False).returncode != 0
    assert intruder.run(["test", "-e", "/etc/k8s"], check=False).returncode != 0


def test_reports_it_signs_in_its_name_or_a_masters_alert_nobody(alert_cluster, alertmanager, intruder):
    cluster = alert_cluster
    settled(cluster)
    since = time.time()
    before = alertmanager.active()
    kinds = [
        (
            "kcm_leader",
            kind,
            dict(MARK, cluster=CLUSTER, node=INTRUDER, old_node="master-1", new_node=INTRUDER, condition="unreachable"),
        )
        for kind in ("changed", "no_leader", "stale", "unreachable", "acquired", "recovered")
    ]
    kinds.append(
        (
            "kcm_cert",
            "cert_expiring",
            {
                "cluster": CLUSTER,
                "fingerprint": "f0" * 32,
                "serial": "997",
                "threshold": 7,
                "days_left": 1,
                "minion": INTRUDER,
            },
        )
    )
    for name in (INTRUDER, "master-1"):
        forge(intruder, sign=[(beacon, name, dict(data, tag=kind)) for beacon, kind, data in kinds])
    refused = wait_events(cluster, "kcm/alert/refused", since, 1, "the runner refusing the intruder's reports")
    assert all(e[2]["reporter"] in (INTRUDER, "master-1") for e in refused), refused
    assert any("not a KCM master" in e[2]["reason"] or "comes from" in e[2]["reason"] for e in refused), refused
    time.sleep(5)  # the engine's batch and the runner's flush are well under this
    assert forged_in(sent_since(cluster, since)) == []
    assert forged_in(alertmanager.active()) == [] and len(alertmanager.active()) <= len(before)


def test_a_replay_of_a_masters_genuine_report_alerts_nobody_again(alert_cluster, alertmanager, intruder):
    cluster = alert_cluster
    old = settled(cluster)
    since = time.time()
    cluster.kill(old)
    new = cluster.wait_for_leader(WAIT, exclude=(old,))
    genuine = wait_events(
        cluster, "salt/beacon/*/kcm_leader/changed", since, len(cluster.nodes), "every master's report of the failover"
    )
    transitions = str(genuine[0][2]["transitions"])
    wait_until(
        lambda: alertmanager.active(alertname="KCMLeaderChanged", old_node=old, new_node=new, transitions=transitions),
        WAIT,
        "the genuine KCMLeaderChanged",
    )
    _, tag, data = genuine[0]

    replayed = time.time()
    forge(intruder, raw=[{"tag": tag, "data": data}])
    refused = wait_events(cluster, "kcm/alert/refused", replayed, 1, "the runner refusing the replay")
    assert any(INTRUDER in e[2]["reason"] or "replay" in e[2]["reason"] for e in refused), refused
    time.sleep(5)
    assert [e for e in sent_since(cluster, replayed) if e.get("kind") == "changed"] == []
    alerts = alertmanager.active(alertname="KCMLeaderChanged", old_node=old, new_node=new, transitions=transitions)
    assert len(alerts) == 1, alerts


def test_the_fleet_view_refuses_its_answer_and_lists_the_masters_unchanged(alert_cluster, intruder):
    cluster = alert_cluster
    _, everyone = cluster.master.run("kcm.status", "tgt=*", "timeout=20")
    rows = {row["minion"]: row for row in everyone["masters"]}
    assert rows[INTRUDER]["cluster"] == "(refused)", rows[INTRUDER]
    assert f"{INTRUDER} is not a KCM master" in json.dumps(rows[INTRUDER]["errors"]), rows[INTRUDER]
    code, masters = cluster.master.run("kcm.status", "timeout=20")
    assert code == 0, masters
    assert sorted(row["minion"] for row in masters["masters"]) == sorted(cluster.nodes)
    assert all(row["cluster"] != "(refused)" for row in masters["masters"]), masters
