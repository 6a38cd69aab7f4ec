#!/usr/bin/env python3
"""Benchmark a rolling config change (a restart of every KCM) on three masters:
`orch.kcm.upgrade` versus a plain `salt 'master-*' state.apply kcm` of all masters at once
(systemd restarts each KCM through `watch` as soon as its unit changed). Not a test.

A LabCluster (kcmlab): three systemd machines on their own bridge, each a real salt-minion
service, a real salt-master, etcd and kube-apiserver on the host's bridge address; KCM runs
under systemd at the lab's short leader-election timings (``kcmlab.cluster.SHORT_ELECTION``).
A thread polls the Lease every 0.2 s.

Prints, per method (medians over --runs): leader changes (leaseTransitions), the longest
window without a live leader (no holder, or its renewal older than the lease duration),
the fewest KCMs answering /healthz at any poll, and the wall time until all three are
healthy under a live leader; then the lab's timings (boot, first apply, first leader).
Goal: one leader change and no window longer than one lease duration.

    python bench/rolling.py [--runs 3]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from common import k8s_bin, lab_timings, machine, median

from kcmlab.cluster import NODES, SHORT_ELECTION, LabCluster
from kcmlab.formula import runner_settings
from kcmlab.leasewatch import LeaseWatch

LEASE = float(SHORT_ELECTION["lease_duration"].rstrip("s"))


def settled(cluster, timeout=120):
    """Wait until all three are healthy under a live leader."""
    cluster.wait_healthy(timeout=timeout)
    cluster.wait_for_leader(timeout)


def one_change(cluster, verbosity, method):
    cluster.change_pillar(verbosity=verbosity)
    holder = cluster.holder()
    nodes = {
        name: SimpleNamespace(healthy=lambda name=name: cluster.healthz(name, timeout=1)) for name in cluster.nodes
    }
    with LeaseWatch(cluster.cp, nodes=nodes) as watch:
        begin = time.monotonic()
        if method == "orchestration":
            code, out = cluster.master.run("state.orchestrate", "orch.kcm.upgrade")
            if code != 0:
                raise SystemExit(f"orch.kcm.upgrade failed ({code}): {json.dumps(out)[:3000]}")
        else:
            cluster.apply("kcm")
        settled(cluster)
        # Every KCM restarted: the old process's lock must have been taken over.
        watch.wait_for_live_holder_other_than(holder, 60)
        elapsed = time.monotonic() - begin
        time.sleep(LEASE)  # a late takeover still counts
    watch.assert_sound()
    return {
        "changes": watch.transitions,
        "gap": watch.longest_gap,
        "seconds": elapsed,
        "holders": len(watch.holders),
        "min_healthy": watch.min_healthy,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bindir = k8s_bin()
    version = bindir.name
    results = {"orchestration": [], "plain apply": []}
    with (
        tempfile.TemporaryDirectory(prefix="kcmb-", dir="/tmp") as tmp,
        LabCluster(
            bindir,
            Path(tmp),
            suite="bench-roll",
            election=SHORT_ELECTION,
            master_config=runner_settings(masters=list(NODES)),
        ) as cluster,
    ):
        cluster.deploy()
        verbosity = 2
        for _ in range(args.runs):
            for method in results:
                verbosity = 3 if verbosity != 3 else 4
                results[method].append(one_change(cluster, verbosity, method))
        timings = dict(cluster.timings)
    print(
        f"# bench/rolling: a config change restarting 3 KCMs, {args.runs} run(s) each, KCM {version},"
        f" lease {SHORT_ELECTION['lease_duration']} / renew {SHORT_ELECTION['renew_deadline']}"
        f" / retry {SHORT_ELECTION['retry_period']}"
    )
    print(f"# {machine()}; KCM under systemd on 3 machines (kcmlab)")
    print(
        f"{'method':<16}{'leader changes':>16}{'max no-leader s':>17}{'min healthy':>13}{'wall s':>9}"
        "   per run (changes/gap/min healthy)"
    )
    for method, rows in results.items():
        per_run = ", ".join(f"{r['changes']}/{r['gap']:.1f}/{r['min_healthy']}" for r in rows)
        print(
            f"{method:<16}{median([r['changes'] for r in rows]):>16.1f}{median([r['gap'] for r in rows]):>17.1f}"
            f"{min(r['min_healthy'] for r in rows):>13}{median([r['seconds'] for r in rows]):>9.1f}   {per_run}"
        )
    orch = results["orchestration"]
    met = all(r["changes"] == 1 and r["gap"] <= LEASE for r in orch)
    print(
        f"goal (orchestration): 1 leader change and no window > {LEASE:.0f} s without a live leader:"
        f" {'met' if met else 'MISSED'}"
    )
    print(
        f"anchor: one lease duration = {LEASE:g} s; measured before (KCM run by the test harness, no systemd):"
        " 1 change, about 1 s without a live leader, min healthy 2; plain apply min healthy 0"
    )
    lab_timings(timings)


if __name__ == "__main__":
    main()
