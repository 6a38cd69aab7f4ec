"""The install guide's own system, by its real binaries: three masters of Kubernetes v1.14.2
(kube-apiserver and kube-controller-manager built by ``scripts/k8s-binaries v1.14.2``, the lab's
etcd) deployed by this formula under systemd, then what the guide's users live through:

1. the Endpoints lock (v1.14 has no Lease lock): ``kcm.leader`` on every master names one
   holder, ``source: endpoints``;
2. the kcm_leader beacon and a salt-master configured by ``kcm.master``: stopping the leader's
   KCM hands over to another master and gives one ``KCMLeaderChanged`` in a real Alertmanager;
3. the upgrade to v1.15 the way the skew policy wants it: the kube-apiserver first, then
   ``state.apply kcm`` with ``kcm:version: v1.15.12`` on every master; a live leader after.

Run on demand (about 5 minutes warm; root, for the lab's machines):

    scripts/prove-guide

It prints one line per step and exits non-zero at the first that fails; everything it starts
is removed at the end, even on failure.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kcmlab.alertmanager import Alertmanager  # noqa: E402
from kcmlab.cluster import K8S_CACHE, LabCluster  # noqa: E402
from kcmlab.controlplane import wait_until  # noqa: E402
from kcmlab.masterless import kcm_master_config  # noqa: E402

GUIDE, NEXT = "v1.14.2", "v1.15.12"
# The lab's short election: the guide's 15s/10s/2s would only make each wait longer.
ELECTION = {"lease_duration": "4s", "renew_deadline": "3s", "retry_period": "1s"}
BEACON = {"interval": 1, "debounce": 2}


def say(text: str) -> None:
    print(f"[prove-guide {time.strftime('%H:%M:%S')}] {text}", flush=True)


def binaries(version: str) -> Path:
    path = K8S_CACHE / version
    for name in ("kube-apiserver", "kube-controller-manager", "etcd"):
        if not (path / name).exists():
            raise SystemExit(f"{path / name} is missing: run scripts/k8s-binaries {version}")
    return path


def leaders(cluster: LabCluster) -> dict:
    """What ``kcm.leader`` answers on every master: {minion: (node, source)}."""
    answers = cluster.salt("kcm.leader")
    return {
        m: (a.get("node"), a.get("source")) if isinstance(a, dict) else ("error", str(a)[:200])
        for m, a in answers.items()
    }


def agreed(cluster: LabCluster, source: str) -> str:
    """The node every master names as the holder of a ``source`` lock (retried while they differ)."""

    def one():
        seen = set(leaders(cluster).values())
        return next(iter(seen))[0] if len(seen) == 1 and next(iter(seen))[1] == source else None

    return wait_until(one, 60, f"every master naming one holder of the {source} lock", interval=1)


def main() -> int:
    guide, later = binaries(GUIDE), binaries(NEXT)
    workdir = Path(tempfile.mkdtemp(prefix="kcm-guide-"))
    alertmanager = Alertmanager(workdir / "alertmanager").start()
    cluster = None
    try:
        conf = kcm_master_config(
            workdir / "master-host",
            {"alertmanager_urls": [alertmanager.url], "allow_http": True, "masters": "master-*"},
        )
        cluster = LabCluster(
            guide,
            workdir / "lab",
            suite="guide",
            version=GUIDE,
            election=ELECTION,
            kcm={"beacon": BEACON},
            master_config=conf,
        )
        cluster.start()
        cluster.deploy()
        say(f"3 masters at {GUIDE} under systemd; leader {cluster.leader()}; timings {cluster.timings}")

        leader = agreed(cluster, "endpoints")
        say(f"1. the Endpoints lock: every master's kcm.leader names {leader} (source endpoints)")

        cluster.apply("kcm.beacon")
        time.sleep(5)  # the beacons' first polls: they announce changes, not the state they find
        since = time.time()
        cluster.stop(leader)
        new = cluster.wait_for_leader(60, exclude=(leader,))
        wait_until(
            lambda: alertmanager.active(alertname="KCMLeaderChanged", old_node=leader, new_node=new),
            60,
            f"KCMLeaderChanged {leader} -> {new} in Alertmanager",
            interval=0.5,
        )
        time.sleep(3)
        changed = alertmanager.active(alertname="KCMLeaderChanged")
        assert len(changed) == 1, changed
        say(
            f"2. failover: {leader} stopped, {new} leads after {time.time() - since:.1f} s;"
            f" one KCMLeaderChanged {leader} -> {new}"
        )
        cluster.start_unit(leader)

        took = cluster.cp.replace_apiserver(later)
        say(f"3. kube-apiserver upgraded to {NEXT} first ({took:.1f} s)")
        for name in cluster.nodes:
            cluster.pillars[name]["kcm"]["source"] = dict(zip(("url", "hash"), cluster.tarball(NEXT)), type="tarball")
        cluster.change_pillar(version=NEXT)
        cluster.apply("kcm")
        versions = cluster.salt("kcm.version")
        assert set(versions.values()) == {NEXT}, versions
        cluster.wait_healthy(timeout=120)
        leader = agreed(cluster, "endpoints")
        say(f"   then the KCMs: state.apply kcm to {NEXT} on every master: {versions}; leader {leader}")
        say("the guide's system ran: Endpoints lock, beacon, failover and its one alert, upgrade to v1.15")
        return 0
    finally:
        if cluster is not None:
            cluster.close()
        alertmanager.stop()


if __name__ == "__main__":
    sys.exit(main())
