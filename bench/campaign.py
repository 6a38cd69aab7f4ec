#!/usr/bin/env python3
"""Long randomized fault campaigns on the lab (issue #30; not a test: CI runs a short one in
tests/e2e/faults/test_campaign.py).

The lab: three systemd machines running KCM from this formula over a real salt-master whose
kcm_alert engine posts to a real Alertmanager on the host, real etcd and kube-apiserver, the
kcm_leader beacon polling every second. For each seed, ``kcmlab.campaign`` draws ``--count``
faults (SIGKILL, stop, restart, link cut, freeze past the lease, apiserver / etcd down,
salt-master and Alertmanager restarts), injects them overlapping and checks the history
(``kcmlab.history``: overlaps, gaps against their bounds, one alert per Lease transition).
Each seed's report is printed, and the whole as one table; a seed replays its plan.

Usage (as root):
  python bench/campaign.py [--seeds 1,2,3] [--count 70] [--election 4s/3s/1s]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import k8s_bin, lab_timings, machine

from kcmlab.alertmanager import Alertmanager, AlertWatch
from kcmlab.campaign import Campaign, summary
from kcmlab.cluster import BEACON, BEACON_STATE, LabCluster, _election
from kcmlab.controlplane import wait_until
from kcmlab.masterless import kcm_master_config


def lab(workdir, alertmanager, election):
    conf = kcm_master_config(
        workdir / "master-host",
        {
            "alertmanager_urls": [alertmanager.url],
            "allow_http": True,
            "labels": {"env": "campaign"},
            "masters": "master-*",
            "reconcile_interval": 5,
            "flush_interval": 2,
            "receiver_backoff": 0.2,
        },
    )
    return LabCluster(
        k8s_bin(), workdir, suite="bench-campaign", election=election, kcm={"beacon": BEACON}, master_config=conf
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--count", type=int, default=70, help="faults per seed")
    parser.add_argument("--election", default="4s/3s/1s", help="lease duration / renew deadline / retry period")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    reports = []
    with tempfile.TemporaryDirectory(prefix="kcmcamp-", dir="/tmp") as tmp:
        workdir = Path(tmp)
        am = Alertmanager(workdir / "alertmanager").start()
        try:
            with lab(workdir, am, _election(args.election)) as cluster:
                cluster.deploy()
                cluster.apply("kcm.beacon")
                for name in cluster.nodes:
                    wait_until(
                        lambda n=name: (
                            cluster.machine(n).run(["test", "-s", BEACON_STATE], check=False).returncode == 0
                        ),
                        90,
                        f"{name}: the first beacon poll",
                    )
                watch = AlertWatch(am.url).start()
                try:
                    for seed in seeds:
                        begin = time.time()
                        report = Campaign(cluster, am, seed, watch=watch).run(args.count)
                        reports.append((report, time.time() - begin))
                        print("\n".join(summary(report)), flush=True)
                        print(file=sys.stderr, flush=True)
                finally:
                    watch.stop()
                timings = dict(cluster.timings)
        finally:
            am.stop()
    print(f"\n# bench/campaign.py on {machine()}; election {args.election}")
    print(
        "| seed | faults | overlaps | longest overlap s | gaps | worst gap s | transitions | alerts fired"
        " | missing | doubled | unexplained | violations | minutes |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for report, seconds in reports:
        a = report.alerts
        print(
            f"| {report.seed} | {len(report.faults)} | {len(report.overlaps)}"
            f" | {max((o.seconds for o in report.overlaps), default=0):.3f} | {len(report.gaps)}"
            f" | {max((g.seconds for g in report.gaps), default=0):.2f} | {a['expected']} | {a['fired']}"
            f" | {a['missing']} | {a['doubled']} | {a['unexplained']} | {len(report.violations)}"
            f" | {seconds / 60:.1f} |"
        )
    lab_timings(timings)


if __name__ == "__main__":
    main()
