#!/usr/bin/env python3
"""Benchmark of the kcm_leader beacon against a real control plane (not a test).

Prints:
  * the cost of one beacon poll: CPU ms (median), wall ms (median), HTTP requests and
    new TCP connections per poll (goal: 1 request, 0 new connections once warm);
  * the beacon's memory: process RSS after 10 polls and after 1,000 polls;
  * with --latency: detection latency after SIGKILL of the leader's KCM, with the lease
    settings used: kill -> `stale` -> new leader's acquireTime -> `changed` -> alert
    visible in a real Alertmanager (the runner is called in-process, so the hop over
    the master's event bus is not included; it is ~1 s, see salt-api-notes section 4).
    Goals: stale before acquireTime; changed <= interval + 1 s after acquireTime; the
    alert <= 1 s after its event.

The beacon and kcm.* run in this process through Salt's loader, with the config of a
sandboxed minion on which `state.apply kcm` ran, so the poll is exactly what a minion does.

Usage:
  python bench/beacon.py [--polls 1000] [--latency] [--election short|default]
"""

import argparse
import datetime
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import requests  # noqa: E402
import salt.config  # noqa: E402
import salt.loader  # noqa: E402
import urllib3.connectionpool  # noqa: E402

from kcmlab.controlplane import ControlPlane, free_port, wait_until  # noqa: E402
from tests.e2e.conftest import SHORT_ELECTION, build_cluster  # noqa: E402

ELECTIONS = {"short": SHORT_ELECTION, "default": None}
INTERVAL = {"short": 1.0, "default": 2.0}


class Counters:
    """Counts HTTP requests and new TCP connections made through requests/urllib3."""

    def __init__(self):
        self.requests = 0
        self.connections = 0
        send = requests.adapters.HTTPAdapter.send
        new_conn = urllib3.connectionpool.HTTPSConnectionPool._new_conn
        counters = self

        def counted_send(self, *args, **kwargs):
            counters.requests += 1
            return send(self, *args, **kwargs)

        def counted_new_conn(self, *args, **kwargs):
            counters.connections += 1
            return new_conn(self, *args, **kwargs)

        requests.adapters.HTTPAdapter.send = counted_send
        urllib3.connectionpool.HTTPSConnectionPool._new_conn = counted_new_conn


def rss_kib():
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def k8s_bin():
    out = subprocess.run([str(REPO / "scripts" / "k8s-binaries")], stdout=subprocess.PIPE, text=True, check=True)
    return Path(out.stdout.strip())


def load_beacon(node):
    """The kcm_leader beacon function, loaded by Salt's loader with this minion's config."""
    opts = salt.config.minion_config(str(node.minion.config_dir / "minion"))
    opts["grains"] = {"id": node.name, "host": node.name}
    opts["pillar"] = {}
    opts["file_client"] = "local"
    mods = salt.loader.minion_mods(opts)
    beacons = salt.loader.beacons(opts, mods)
    return beacons["kcm_leader.beacon"]


def load_runner(workdir, alertmanager_url):
    spec = importlib.util.spec_from_file_location("kcm_alert_bench", REPO / "_runners" / "kcm_alert.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    runner.__opts__ = {"cachedir": str(workdir), "sock_dir": str(workdir),
                       "kcm_alert": {"alertmanager_urls": [alertmanager_url]}}
    runner._fire = lambda tag, data: None  # no master bus in this process
    # This measures detection latency; who may report (signed, KCM masters) is unit-tested.
    runner.refusal = lambda tag, data, cfg=None, now=None: None
    return runner


def poll_cost(beacon, config, polls):
    counters = Counters()
    for _ in range(10):
        beacon(config)
    rss_10 = rss_kib()
    cpu, wall = [], []
    req0, conn0 = counters.requests, counters.connections
    for _ in range(polls - 10):
        c0, w0 = time.process_time(), time.perf_counter()
        beacon(config)
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
    rss_n = rss_kib()
    n = polls - 10
    print(f"poll cost over {n} warm polls: CPU median {statistics.median(cpu):.2f} ms "
          f"(p90 {sorted(cpu)[int(n * 0.9)]:.2f}), wall median {statistics.median(wall):.2f} ms")
    print(f"  HTTP requests per poll: {(counters.requests - req0) / n:.2f}; "
          f"new TCP connections in {n} polls: {counters.connections - conn0}")
    print(f"  RSS after 10 polls: {rss_10} KiB; after {polls} polls: {rss_n} KiB "
          f"(ratio {rss_n / rss_10:.3f})")


def start_alertmanager(workdir):
    port = free_port()
    config = workdir / "am.yml"
    config.write_text("route: {receiver: 'null', group_wait: 1s}\nreceivers: [{name: 'null'}]\n")
    proc = subprocess.Popen(["/usr/bin/prometheus-alertmanager", f"--config.file={config}",
                             f"--storage.path={workdir / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(url + "/-/ready", timeout=2).ok, 30, "alertmanager")
    return proc, url


def epoch(rfc3339):
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def latency(cluster, beacon, config, interval, runner, am_url):
    old = cluster.wait_for_leader(60)
    seen = {}
    stop = threading.Event()

    def poll_loop():
        while not stop.is_set():
            t0 = time.time()
            for event in beacon(config):
                seen.setdefault(event["tag"], time.time())
                if event["tag"] == "changed":
                    runner.handle("salt/beacon/bench/kcm_leader/changed", dict(event, id="bench"))
                    seen["sent"] = time.time()
            stop.wait(max(0.0, interval - (time.time() - t0)))

    thread = threading.Thread(target=poll_loop, daemon=True)
    thread.start()
    time.sleep(3 * interval)
    killed = time.time()
    cluster.kill(old)
    new = cluster.wait_for_leader(60, exclude=(old,))

    def alert_visible():
        reply = requests.get(am_url + "/api/v2/alerts", params={"filter": f'new_node="{new}"'}, timeout=2)
        return reply.json() or None

    wait_until(alert_visible, 60, "alert in Alertmanager", interval=0.05)
    visible = time.time()
    stop.set()
    thread.join(10)
    acquired = epoch(cluster.control_plane.lease()["spec"]["acquireTime"])
    e = cluster.election
    print(f"detection latency (lease {e['lease_duration']:g}s / renew {e['renew_deadline']:g}s / "
          f"retry {e['retry_period']:g}s, beacon interval {interval:g}s, stale_after 3):")
    print(f"  SIGKILL {old} -> stale event:        {seen.get('stale', float('nan')) - killed:6.2f} s")
    print(f"  SIGKILL -> new leader acquireTime:   {acquired - killed:6.2f} s  ({new})")
    print(f"  acquireTime -> changed event:        {seen['changed'] - acquired:6.2f} s (goal <= {interval + 1:g})")
    print(f"  changed event -> alert visible:      {visible - seen['changed']:6.2f} s (goal <= 1)")
    print(f"  stale before acquireTime: {'yes' if seen.get('stale', 1e18) < acquired else 'NO'}")
    cluster.start_all()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--election", choices=sorted(ELECTIONS), default="short")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="kcm-bench-beacon-"))
    cp = ControlPlane(k8s_bin(), workdir / "cp").start()
    cluster = am = None
    try:
        cluster = build_cluster(cp, workdir / "kcm", ELECTIONS[args.election], "bench")
        node = cluster.nodes["master-1"]
        beacon = load_beacon(node)
        config = [{"debounce": 2}, {"stale_after": 3}, {"_beacon_name": "kcm_leader"}]
        poll_cost(beacon, config, args.polls)
        if args.latency:
            am, am_url = start_alertmanager(workdir)
            latency(cluster, beacon, config, INTERVAL[args.election], load_runner(workdir, am_url), am_url)
    finally:
        if am is not None:
            am.terminate()
        if cluster is not None:
            cluster.stop_all()
        cp.stop()
        if not os.environ.get("KCM_KEEP_TMP"):
            subprocess.run(["rm", "-rf", str(workdir)], check=False)


if __name__ == "__main__":
    main()
