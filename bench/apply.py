#!/usr/bin/env python3
"""Benchmark `salt <master> state.apply kcm` over the bus on fresh systemd machines: first
apply (install, unit, systemd starts KCM), idempotent re-apply, and a baseline
`state.apply` of an SLS with one test.nop on the same machine in the same run (medians).
Goal: the re-apply costs at most 1 s more than the baseline and changes nothing.

A LabCluster (kcmlab) with default paths and service:manage true; each run boots one more
machine, so every first apply starts from a machine that never saw the formula.

    python bench/apply.py [--runs 5]
"""

import argparse
import tempfile
import time
from pathlib import Path

from common import k8s_bin, lab_timings, machine, median

from kcmlab.cluster import LabCluster, changed_states


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    bindir = k8s_bin()
    version = bindir.name
    names = [f"apply-{i}" for i in range(1, args.runs + 1)]
    first, again, baseline, changed = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="kcm-bench-apply-", dir="/tmp") as tmp:
        states = Path(tmp) / "bench-states"
        states.mkdir()
        # One state that does nothing (an SLS without states is an error over the bus).
        (states / "noop.sls").write_text("bench-noop:\n  test.nop: []\n")
        with LabCluster(
            bindir, Path(tmp) / "lab", suite="bench-apply", nodes=names[:1], spares=names[1:], file_roots=[states]
        ) as cluster:
            for name in names:
                if name not in cluster.nodes:
                    cluster.boot(name)
                    cluster.master.wait_for_minions([name])
                cluster.salt("saltutil.sync_all", target=[name], timeout=300)
                t, _ = timed(cluster.apply, "kcm", target=[name])  # raises naming the failed states
                first.append(t)
                t, ret = timed(cluster.apply, "kcm", target=[name])
                again.append(t)
                changed += changed_states(ret[name])
                t, _ = timed(cluster.apply, "noop", target=[name])
                baseline.append(t)
                # One KCM at a time: the next run's machine gets the CPU this one would take.
                cluster.machine(name).shutdown()
            timings = dict(cluster.timings)
    print(
        f"# bench/apply: salt <machine> state.apply kcm over the bus, {args.runs} fresh systemd machines,"
        f" KCM {version} (real tarball)"
    )
    print(f"# {machine()}")
    print(f"{'measure':<34}{'median s':>10}")
    print(f"{'first apply':<34}{median(first):>10.2f}")
    print(f"{'idempotent re-apply':<34}{median(again):>10.2f}")
    print(f"{'baseline: one test.nop':<34}{median(baseline):>10.2f}")
    extra = median(again) - median(baseline)
    print(f"{'re-apply minus baseline':<34}{extra:>10.2f}   goal <= 1.00 s: {'met' if extra <= 1 else 'MISSED'}")
    print(f"{'states changed on re-apply':<34}{len(changed):>10}   goal 0: {'met' if not changed else changed}")
    lab_timings(timings)


if __name__ == "__main__":
    main()
