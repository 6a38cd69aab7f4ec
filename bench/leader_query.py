#!/usr/bin/env python3
"""Cost of one "who leads?" question: ``kcm.leader`` in-process (warm session) versus
``kubectl get lease kube-controller-manager -n kube-system -o json`` as a subprocess,
against the same real kube-apiserver (started here with etcd, on loopback).

Prints the median wall time and CPU time (user + sys; for kubectl, of the child process)
per call, and the CPU ratio. Goal: kcm.leader >= 20x cheaper in CPU once warm.

    python bench/leader_query.py [-n 30] [--bin-dir DIR] [--kubectl PATH]

--bin-dir defaults to the output of scripts/k8s-binaries (built once, then cached).
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from kcmlab.controlplane import ControlPlane  # noqa: E402
from kcmlab.formula import load, utils  # noqa: E402

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
GOAL = 20.0


def k8s_bin_dir():
    proc = subprocess.run([str(REPO / "scripts" / "k8s-binaries")], stdout=subprocess.PIPE, text=True, check=True)
    return Path(proc.stdout.strip())


def real_kubectl(path):
    """A version dispatcher (gcloud's kubectl) would add its own start-up: use the newest real one."""
    path = shutil.which(path) or path
    version = subprocess.run([path, "version", "--client"], capture_output=True, text=True, check=False).stdout
    if "dispatcher" not in version:
        return path
    siblings = sorted(
        Path(os.path.realpath(path)).parent.glob("kubectl.1.*"), key=lambda p: int(p.name.rsplit(".", 1)[1])
    )
    if not siblings:
        sys.exit(f"{path} is a version dispatcher and no kubectl.1.N is beside it; pass --kubectl")
    return str(siblings[-1])


def create_lease(cp):
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "kube-controller-manager", "namespace": "kube-system"},
        "spec": {
            "holderIdentity": "bench-node_6f1c2d3e-0000-4000-8000-000000000001",
            "leaseDurationSeconds": 3600,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": 0,
        },
    }
    reply = cp.request("POST", LEASES, json=body)
    if reply.status_code not in (201, 409):
        sys.exit(f"creating the Lease failed: HTTP {reply.status_code} {reply.text[:200]}")


def kcm_module(kubeconfig):
    kcm_api, kcm = load("_modules", "kcm_api"), load("_modules", "kcm")
    kcm_api.__salt__, kcm_api.__utils__ = {}, utils()
    kcm.__salt__ = {
        "kcm_api.get": kcm_api.get,
        # The facts name no release: KCM's default lock (a Lease) is read.
        "kcm_release.lock": load("_modules", "kcm_release").lock,
        "kcm_config.deployed": lambda: {"files": {"kubeconfig": str(kubeconfig)}},
    }
    kcm.__utils__ = utils()
    kcm.__opts__ = {"id": "bench", "file_client": "local"}
    kcm.__grains__ = {"id": "bench"}
    kcm.__pillar__ = {}
    kcm.__context__ = {}
    return kcm


def measure_in_process(func, n):
    walls, cpus = [], []
    for _ in range(n):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = func()
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
        if "error" in result:
            sys.exit(f"kcm.leader failed: {result}")
    return walls, cpus


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_subprocess(argv, n):
    walls, cpus = [], []
    for _ in range(n):
        cpu0, self0, wall0 = children_cpu(), time.process_time(), time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - wall0)
        # The child's own CPU plus what this process spent forking and waiting for it.
        cpus.append(children_cpu() - cpu0 + time.process_time() - self0)
        if proc.returncode != 0:
            sys.exit(f"{argv[0]} failed: {proc.stderr[-500:]}")
        json.loads(proc.stdout)
    return walls, cpus


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="calls per method (default 30)")
    parser.add_argument("--bin-dir", type=Path, help="etcd + kube-apiserver (default: scripts/k8s-binaries)")
    parser.add_argument("--kubectl", default="kubectl", help="kubectl to compare with (default: from PATH)")
    opts = parser.parse_args()
    kubectl = real_kubectl(opts.kubectl)
    bin_dir = opts.bin_dir or k8s_bin_dir()

    with tempfile.TemporaryDirectory(prefix="kcm-bench-") as tmp, ControlPlane(bin_dir, tmp) as cp:
        create_lease(cp)
        kubeconfig = cp.admin_kubeconfig
        kcm = kcm_module(kubeconfig)
        argv = [
            kubectl,
            f"--kubeconfig={kubeconfig}",
            f"--cache-dir={tmp}/kube-cache",
            "get",
            "lease",
            "kube-controller-manager",
            "-n",
            "kube-system",
            "-o",
            "json",
        ]

        # Warm both: the session and TLS connection; kubectl's discovery cache and page cache.
        holder = kcm.leader()["holder"]
        subprocess.run(argv, capture_output=True, check=True)
        kcm_wall, kcm_cpu = measure_in_process(kcm.leader, opts.n)
        ctl_wall, ctl_cpu = measure_subprocess(argv, opts.n)
        version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True).stdout.split("\n")[0]

    rows = [
        ("kcm.leader (in-process, warm)", kcm_wall, kcm_cpu),
        (f"kubectl subprocess [{version}]", ctl_wall, ctl_cpu),
    ]
    print(f"lease holder: {holder}; {opts.n} calls each; medians per call")
    print(f"{'method':50} {'wall ms':>10} {'cpu ms':>10}")
    for name, wall, cpu in rows:
        print(f"{name:50} {statistics.median(wall) * 1e3:10.2f} {statistics.median(cpu) * 1e3:10.2f}")
    ratio_cpu = statistics.median(ctl_cpu) / max(statistics.median(kcm_cpu), 1e-9)
    ratio_wall = statistics.median(ctl_wall) / max(statistics.median(kcm_wall), 1e-9)
    verdict = "meets" if ratio_cpu >= GOAL else "MISSES"
    print(
        f"CPU ratio kubectl/kcm.leader: {ratio_cpu:.1f}x ({verdict} the {GOAL:.0f}x goal); wall ratio {ratio_wall:.1f}x"
    )
    return 0 if ratio_cpu >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
