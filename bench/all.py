#!/usr/bin/env python3
"""Run every benchmark of the project, one after the other, and print one table of their
results (medians and ratios, each against its goal) with the machine it ran on.

    python bench/all.py            # or scripts/bench

Each benchmark is also a script of its own (bench/<name>.py --help); this gathers their
output: every line a benchmark prints with a 'goal' in it becomes a row of the summary.
"""

import subprocess
import sys
import time
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parent
BENCHES = [
    ("apply", ["apply.py", "--runs", "5"], "state.apply kcm over the bus: first, re-apply, no-op baseline"),
    ("leader query", ["leader_query.py", "-n", "30"], "kcm.leader vs kubectl get lease (wall, CPU)"),
    ("beacon poll", ["beacon.py", "--latency"], "one kcm_leader poll: CPU, requests, memory growth; detection latency"),
    ("rolling change", ["rolling.py"], "orch.kcm.upgrade vs plain state.apply: leader changes, leaderless window"),
    ("lease release", ["release.py", "--runs", "3"], "controller gap after the leader's exit, release on vs off"),
    ("release budget", ["release_budget.py"], "kcm-release-lease against a refused and a silent apiserver vs --budget"),
    ("fleet", ["fleet.py"], "alert storm of 10/100/300 clusters x 3 reports; the fleet view over 30 masters"),
    (
        "report cost",
        ["report_cost.py", "--top", "0"],
        "the formula's CPU per genuine report by batch size, and where it goes",
    ),
    ("refusal", ["refusal.py"], "CPU to refuse a forged report with 2,000 cached minions: 5f6804a vs now"),
]


def main():
    print(f"# kcm-formula benchmarks on {machine()}")
    summary = []
    failed = []
    for name, argv, what in BENCHES:
        print(f"\n## {name}: {what}\n", flush=True)
        start = time.monotonic()
        proc = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            failed.append(name)
            sys.stdout.write(proc.stderr[-3000:])
        summary += [(name, line.strip()) for line in proc.stdout.splitlines() if "goal" in line.lower()]
        print(f"({name}: {time.monotonic() - start:.0f} s, exit {proc.returncode})")
    print("\n## summary: every measure that has a goal\n")
    print(f"| {'benchmark':<15} | result |")
    print(f"|{'-' * 17}|--------|")
    for name, line in summary:
        print(f"| {name:<15} | {' '.join(line.split())} |")
    if failed:
        print(f"\nbenchmarks that failed to run: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
