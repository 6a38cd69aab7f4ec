#!/usr/bin/env python3
"""The flake hunt behind ``scripts/flake-hunt`` (its usage is there).

Each tier run is ``scripts/test tests/e2e`` under ``flock /tmp/kcm-lab.lock`` with
``KCM_LEASE_REPORT`` set: tests/e2e/conftest.py writes there, per lab cluster, the Lease
transitions and those that fell in no window of the lab's own disturbances (spontaneous).
``--soak`` starts one lab cluster (kcmlab.LabCluster, the e2e timings or ``--election``),
leaves it idle and counts the same, to compare timings without a whole tier.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = "/tmp/kcm-lab.lock"
OUT = Path(os.environ.get("KCM_FLAKE_DIR", Path.home() / ".cache" / "kcm-formula" / "flake-hunt"))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class LoadSampler:
    """The machine's 1-minute load average every ``interval`` s during a ``with``: what else
    ran beside a tier run is recorded with it, not assumed."""

    def __init__(self, interval: float = 15.0):
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.samples.append(float(load_average().split()[0]))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def summary(self) -> dict:
        if not self.samples:
            return {}
        ordered = sorted(self.samples)
        return {"loadavg_median": ordered[len(ordered) // 2], "loadavg_max": ordered[-1]}


class Load:
    """``stress-ng --cpu N`` for the duration of a ``with`` (installed with apt-get when missing)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.proc = None

    def __enter__(self):
        if not self.workers:
            return self
        if not shutil.which("stress-ng"):
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "stress-ng"],
                check=True,
                env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
            )
        self.proc = subprocess.Popen(
            ["stress-ng", "--cpu", str(self.workers), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(30)

    @property
    def label(self) -> str:
        return f"stress-ng --cpu {self.workers}" if self.workers else "none"


def tier_run(number: int, pytest_args: list[str], load: int, election: str | None) -> dict:
    report = OUT / f"lease-{os.getpid()}-{number}.json"
    timing = OUT / f"time-{os.getpid()}-{number}"
    report.unlink(missing_ok=True)
    timing.unlink(missing_ok=True)
    env = dict(os.environ, KCM_LEASE_REPORT=str(report), KCM_FLAKE_TIMING=str(timing), CI=os.environ.get("CI", "true"))
    if election:
        env["KCM_LAB_ELECTION"] = election
    log = OUT / f"run-{datetime.datetime.now():%Y%m%d-%H%M%S}-{number}.log"
    print(f"run {number}: {' '.join(pytest_args)} (load: {Load(load).label}), log {log}", flush=True)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    with open(log, "w") as out, LoadSampler() as sampler:
        # The lab lock first, then the load: another session's lab never runs under our stress.
        argv = [
            "flock",
            LOCK,
            sys.executable,
            __file__,
            "_locked",
            "--load",
            str(load),
            "--",
            str(REPO / "scripts" / "test"),
            *pytest_args,
        ]
        begin = time.monotonic()
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, check=False).returncode
        waited = time.monotonic() - begin
    # The run's own time, from inside the lock (waiting for another session's lab is not it).
    seconds = float(timing.read_text()) if timing.exists() else waited
    counts = json.loads(report.read_text()) if report.exists() else {}
    tail = log.read_text().splitlines()[-1:] or [""]
    return {
        "run": number,
        "started": started,
        "args": pytest_args,
        "load": Load(load).label,
        **sampler.summary,
        "election": election or "default",
        "seconds": round(seconds),
        "waited_for_lock": round(waited - seconds),
        "exit": code,
        "result": tail[0][-200:],
        "spontaneous": sum(c["spontaneous"] for c in counts.values()) if counts else None,
        "transitions": sum(c["transitions"] for c in counts.values()) if counts else None,
        "per_cluster": counts,
        "log": str(log),
    }


def soak(seconds: float, load: int, elections: list[str]) -> list[dict]:
    """One lab cluster per election (``8s/6s/1s``), deployed, then all idle together for
    ``seconds`` (under ``load``): the same machine and moment for each; their spontaneous
    transitions."""
    sys.path.insert(0, str(REPO))
    from kcmlab.cluster import SHORT_ELECTION, LabCluster, _election

    k8s = Path(
        subprocess.run(
            [str(REPO / "scripts" / "k8s-binaries")], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    with tempfile.TemporaryDirectory(prefix="kcm-soak-") as tmp, contextlib.ExitStack() as stack:
        clusters = []
        for number, text in enumerate(elections or ["/".join(SHORT_ELECTION.values())], 1):
            cluster = stack.enter_context(
                LabCluster(k8s, Path(tmp) / str(number), suite=f"soak-{number}", election=_election(text))
            )
            cluster.deploy()
            clusters.append((text, cluster))
        for _, cluster in clusters:
            cluster.ensure_running()
        begin = time.time()
        with Load(load):
            time.sleep(seconds)
            loadavg = load_average()
        out = []
        for text, cluster in clusters:
            found = [t for t in cluster.lease_log.classified() if t.at >= begin]
            out.append(
                {
                    "soak": round(seconds),
                    "load": Load(load).label,
                    "loadavg": loadavg,
                    "election": text,
                    "clusters": len(clusters),
                    "spontaneous": sum(t.count for t in found if t.cause is None),
                    "transitions": sum(t.count for t in found),
                    "which": [str(t) for t in found if t.cause is None],
                }
            )
        return out


def table(rows: list[dict]) -> str:
    # loadavg: the 1-minute load average's median/max over the run (sampled every 15 s).
    lines = [
        f"{'run':>3} {'load':<18} {'loadavg':>9} {'election':<9} {'time':>7} {'exit':>4} {'spont.':>6} "
        f"{'trans.':>6}  result"
    ]
    for r in rows:
        minutes = f"{r['seconds'] // 60}m{r['seconds'] % 60:02d}s"
        spont = "?" if r["spontaneous"] is None else r["spontaneous"]
        trans = "?" if r["transitions"] is None else r["transitions"]
        loadavg = f"{r['loadavg_median']}/{r['loadavg_max']}" if "loadavg_max" in r else "?"
        lines.append(
            f"{r['run']:>3} {r['load']:<18} {loadavg:>9} {r['election']:<9} {minutes:>7} {r['exit']:>4} "
            f"{spont:>6} {trans:>6}  {r['result']}"
        )
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_locked":  # inside flock: the load, then the tier
        args = sys.argv[2:]
        load, command = int(args[1]), args[3:]
        begin = time.monotonic()
        with Load(load):
            code = subprocess.run(command, check=False).returncode
        if os.environ.get("KCM_FLAKE_TIMING"):
            Path(os.environ["KCM_FLAKE_TIMING"]).write_text(f"{time.monotonic() - begin:.1f}")
        return code
    parser = argparse.ArgumentParser(description="run the e2e tier again and again; count spontaneous Lease moves")
    parser.add_argument("-n", "--runs", type=int, default=5)
    parser.add_argument("--load", action="store_true", help="one more run under stress-ng --cpu 2")
    parser.add_argument("--soak", type=float, help="seconds of one idle lab cluster instead of tier runs")
    parser.add_argument(
        "--election",
        help="lease/renew/retry of the lab clusters, e.g. 4s/3s/1s; "
        "with --soak a comma-separated list: one cluster each, side by side",
    )
    parser.add_argument("pytest_args", nargs="*", default=None)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / "runs.jsonl"
    if args.soak:
        env_args = [
            "flock",
            LOCK,
            sys.executable,
            __file__,
            "_soak",
            str(args.soak),
            str(2 if args.load else 0),
            args.election or "",
        ]
        return subprocess.run(env_args, check=False).returncode
    pytest_args = args.pytest_args or ["tests/e2e", "-q", "-p", "no:cacheprovider"]
    rows = []
    plan = [0] * args.runs + ([2] if args.load else [])
    for number, load in enumerate(plan, 1):
        row = tier_run(number, pytest_args, load, args.election)
        rows.append(row)
        with open(results, "a") as out:
            out.write(json.dumps(row) + "\n")
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\n# flake hunt on {os.uname().nodename}, {os.cpu_count()} cpus; results appended to {results}")
    print(table(rows))
    # Every run green; without load, no spontaneous transition either (the loaded run reports it).
    green = all(r["exit"] == 0 for r in rows)
    quiet = all(r["spontaneous"] in (0, None) for r in rows if r["load"] == "none")  # None: no lab cluster ran
    return 0 if green and quiet else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_soak":
        seconds, load, elections = float(sys.argv[2]), int(sys.argv[3]), [e for e in sys.argv[4].split(",") if e]
        results = soak(seconds, load, elections)
        OUT.mkdir(parents=True, exist_ok=True)
        with open(OUT / "soaks.jsonl", "a") as out:
            for result in results:
                out.write(json.dumps(result) + "\n")
        for result in results:
            print(
                f"soak {result['soak']} s, {result['clusters']} lab clusters side by side, load {result['load']} "
                f"(loadavg {result['loadavg']}), election {result['election']}: {result['spontaneous']} "
                f"spontaneous of {result['transitions']} Lease transitions {result['which'] or ''}"
            )
        sys.exit(0)
    sys.exit(main())
