#!/usr/bin/env python3
"""Benchmark a rolling config change (a restart of every KCM) on three masters:
`orch.kcm.upgrade` versus a plain apply of all masters at once (what
`salt 'master*' state.apply kcm` does with systemd: each master restarts as soon as its
unit changed; here `kcm_orch.apply`, the same apply plus the restart through
`kcm:service:control_cmd`). Not a test.

Real salt-master + 3 salt-minions (plain daemons on loopback), a real etcd +
kube-apiserver, three real KCMs at short leader-election timings (4s/3s/1s) run from the
rendered units by tests/e2e/orch/kcmctl.py. A thread polls the Lease every 0.2 s.

Prints, per method (medians over --runs): leader changes (leaseTransitions), the longest
window without a live leader (no holder, or its renewal older than the lease duration),
the fewest KCMs answering /healthz at any poll, and the wall time until all three are
healthy under a live leader.
Goal: one leader change and no window longer than one lease duration (4 s).

    python bench/rolling.py [--runs 3]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml  # noqa: E402
from common import REPO, k8s_bin, machine, median

from kcmlab.controlplane import ControlPlane, free_port  # noqa: E402
from tests.e2e.orch.harness import NODES, LeaseWatch, make_nodes  # noqa: E402
from tests.support.pillar import merge  # noqa: E402

BIN = Path(sys.executable).parent
LEASE = 4.0


class Salt:
    """A salt-master and one salt-minion per node as plain daemons under ``root``."""

    def __init__(self, root, nodes, pillar_dir):
        self.root = Path(root)
        self.conf = self.root / "master-conf"
        self.procs = []
        self.nodes = nodes
        publish, ret = free_port(), free_port()
        self._write(self.conf / "master", {
            "id": "bench-master", "root_dir": str(self.root / "master"), "user": "root",
            "interface": "127.0.0.1", "publish_port": publish, "ret_port": ret, "auto_accept": True,
            "file_roots": {"base": [str(REPO / "formula")]}, "pillar_roots": {"base": [str(pillar_dir)]},
            "fileserver_list_cache_time": 0, "features": {"x509_v2": True},
            "log_file": str(self.root / "master.log"), "log_level_logfile": "info",
        })
        for name in nodes:
            self._write(self.root / f"{name}-conf" / "minion", {
                "id": name, "root_dir": str(self.root / name), "user": "root",
                "master": "127.0.0.1", "master_port": ret, "publish_port": publish,
                "features": {"x509_v2": True}, "acceptance_wait_time": 1,
                "log_file": str(self.root / f"{name}.log"), "log_level_logfile": "info",
            })

    @staticmethod
    def _write(path, config):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))

    def _spawn(self, argv):
        log = open(self.root / "daemons.out", "ab")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def start(self, timeout=120):
        self._spawn([str(BIN / "salt-master"), "-c", str(self.conf)])
        time.sleep(3)
        for name in self.nodes:
            self._spawn([str(BIN / "salt-minion"), "-c", str(self.root / f"{name}-conf")])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answered = self.salt("test.ping", timeout=5)
            if sorted(answered) == sorted(self.nodes):
                return
            time.sleep(1)
        raise SystemExit(f"minions did not answer within {timeout}s; see {self.root}/*.log")

    def stop(self):
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _json(self, argv, timeout):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 60, check=False)
        try:
            return json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            return {"_raw": proc.stdout + proc.stderr}

    def salt(self, fun, *args, timeout=600):
        return self._json([str(BIN / "salt"), "-c", str(self.conf), "--out=json", "--static", "-t", str(timeout),
                           "master-*", fun, *args], timeout)

    def run(self, fun, *args, timeout=900):
        return self._json([str(BIN / "salt-run"), "-c", str(self.conf), "--out=json", fun, *args], timeout)


def write_pillar(pillar_dir, nodes):
    top = ["base:"]
    for name, node in nodes.items():
        sls = name.replace("-", "_")
        (pillar_dir / f"{sls}.sls").write_text(json.dumps(node.pillar))
        top += [f"  '{name}':", f"    - {sls}"]
    (pillar_dir / "top.sls").write_text("\n".join(top) + "\n")


def settled(salt, cp, timeout=120):
    """Wait until all three are healthy under a live leader."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = salt.salt("kcm.health", timeout=20)
        if all(isinstance(health.get(n), dict) and health[n].get("healthy") for n in NODES) and cp.leader():
            return
        time.sleep(0.5)
    raise SystemExit(f"the KCMs did not settle within {timeout}s: {health}")


def one_change(salt, cp, nodes, pillar_dir, verbosity, method):
    for node in nodes.values():
        node.pillar = merge(node.pillar, {"kcm": {"verbosity": verbosity}})
    write_pillar(pillar_dir, nodes)
    holder = cp.lease()["spec"]["holderIdentity"]
    with LeaseWatch(cp, nodes=nodes) as watch:
        begin = time.monotonic()
        if method == "orchestration":
            out = salt.run("state.orchestrate", "orch.kcm.upgrade")
            if out.get("retcode", 0) != 0:
                raise SystemExit(f"orch.kcm.upgrade failed: {json.dumps(out)[:3000]}")
        else:
            out = salt.salt("kcm_orch.apply", timeout=900)
            failed = {m: r for m, r in out.items() if not (isinstance(r, dict) and r.get("result"))}
            if failed or len(out) != len(nodes):
                raise SystemExit(f"kcm_orch.apply failed: {json.dumps(out)[:3000]}")
        settled(salt, cp)
        # Every KCM restarted: the old process's lock must have been taken over.
        watch.wait_for_live_holder_other_than(holder, 60)
        elapsed = time.monotonic() - begin
        time.sleep(LEASE)  # a late takeover still counts
    return {"changes": watch.transitions, "gap": watch.longest_gap, "seconds": elapsed,
            "holders": len(watch.holders), "min_healthy": watch.min_healthy}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bindir = k8s_bin()
    tarball = next(bindir.glob("kubernetes-server-*-linux-amd64.tar.gz"))
    version = tarball.name[len("kubernetes-server-"):-len("-linux-amd64.tar.gz")]
    results = {"orchestration": [], "plain apply": []}
    with tempfile.TemporaryDirectory(prefix="kcmb-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        cp = ControlPlane(bindir, tmp / "cp", nodes=NODES).start()
        nodes = make_nodes(cp, tmp / "nodes", tarball, version)
        pillar_dir = tmp / "pillar"
        pillar_dir.mkdir()
        write_pillar(pillar_dir, nodes)
        salt = Salt(tmp / "salt", nodes, pillar_dir)
        try:
            salt.start()
            salt.run("saltutil.sync_all")
            salt.salt("saltutil.sync_all")
            applied = salt.salt("state.apply", "kcm", timeout=900)
            bad = {m: [k for k, v in r.items() if not v.get("result")] if isinstance(r, dict) else r
                   for m, r in applied.items()}
            if len(applied) != len(NODES) or any(bad.values()):
                raise SystemExit(f"first state.apply kcm failed: {bad}")
            salt.salt("kcm_orch.start", timeout=120)
            settled(salt, cp)
            verbosity = 2
            for _ in range(args.runs):
                for method in results:
                    verbosity = 3 if verbosity != 3 else 4
                    results[method].append(one_change(salt, cp, nodes, pillar_dir, verbosity, method))
        finally:
            for node in nodes.values():
                node.kcmctl("stop")
            salt.stop()
            cp.stop()
    print(f"# bench/rolling: a config change restarting 3 KCMs, {args.runs} run(s) each, KCM {version},"
          f" lease 4s / renew 3s / retry 1s")
    print(f"# {machine()}")
    print(f"{'method':<16}{'leader changes':>16}{'max no-leader s':>17}{'min healthy':>13}{'wall s':>9}"
          "   per run (changes/gap/min healthy)")
    for method, rows in results.items():
        per_run = ", ".join(f"{r['changes']}/{r['gap']:.1f}/{r['min_healthy']}" for r in rows)
        print(f"{method:<16}{median([r['changes'] for r in rows]):>16.1f}{median([r['gap'] for r in rows]):>17.1f}"
              f"{min(r['min_healthy'] for r in rows):>13}{median([r['seconds'] for r in rows]):>9.1f}   {per_run}")
    orch = results["orchestration"]
    met = all(r["changes"] == 1 and r["gap"] <= LEASE for r in orch)
    print(f"goal (orchestration): 1 leader change and no window > {LEASE:.0f} s without a live leader:"
          f" {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
