#!/usr/bin/env python3
"""Benchmark of a fleet on one Salt master (not a test): the alert storm and the fleet view.

How the load is made: a real salt-master (configured by the formula's kcm.master state:
kcm_alert engine -> kcm_alert runner), a real Alertmanager, and one real salt-minion standing in
for the 3 masters of every cluster. It fires exactly the events a kcm_leader beacon fires
on a failover (computed by the beacon's own step(), sent as beacon returns through the
running minion: kcmlab/fleet.py). These are not real KCMs. The master finds the
kcm_alert engine through `engines_dirs` (what kcm.master's sync_engines + a restart do).

For C = 10, 100, 300 clusters, each failover reported by 3 masters within one second:
  * alerts in Alertmanager (goal: exactly C, none duplicated, none lost);
  * event -> alert latency p50 / p99 / max (the first report of a cluster is fired ->
    Alertmanager's updatedAt of its alert); goals: C=100 p99 <= 5 s; C=300 nothing lost;
  * salt-master CPU seconds (all its processes) and peak RSS (their sum, sampled);
and the fleet view (`salt-run kcm.status`) over --fleet-masters real minions (each a
salt-minion whose kcm.status answers from deployed facts without an apiserver), against
`salt <tgt> kcm.status` (which also waits for the slowest master): goal within 2 s of it.
Then how the cost grows from 10 to 300.

With --forged-rate R (issue #25), every storm runs twice: once as above, once with a second
real salt-minion that is no KCM master (its id is not in kcm_alert:masters) firing R reports a
second for the whole storm, signed with its own key, half in its own name and half in the
stand-in's (a forged tag). Goal: the genuine alerts still exact, p99 within 10 % of the
run without them.

The kcm_alert engine is the only alert path (the reactor path of 5f6804a and before, one
runner job per event, is gone; its numbers are in docs/bench.md).

The two minions that make the load (the stand-in and the intruder) run at nice 19: they stand
in for other machines, so their own CPU here must not be counted against the master's latency.
--repeat N runs each storm N times (alternating with and without forged reports); the
comparison takes the median p99 of each kind. --profile C runs one more storm of C clusters
while py-spy samples every salt-master process, and prints where their CPU went
(bench/master_profile.py).

Usage:
  python bench/fleet.py [--clusters 10,100,300] [--fleet-masters 30] [--forged-rate 100] [--repeat 3]
                        [--profile 1000]
"""

import argparse
import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import master_profile
import yaml  # noqa: E402
from common import REPO, machine

from kcmlab.alertmanager import Alertmanager  # noqa: E402
from kcmlab.controlplane import free_port, wait_until  # noqa: E402
from kcmlab.fleet import (  # noqa: E402
    BeaconStandIn,
    failover_events,
    kcm_master_conf,
    new_cluster_id,
)

STAND_IN = "fleet-standin"
INTRUDER = "bench-intruder"  # no KCM master: not in kcm_alert:masters
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
WAIT = 180
# The minions that make the storm's load stand in for other machines.
LOAD_NICENESS = 19
# 30 salt-minions authenticating at once on 2 busy cores take minutes.
START_WAIT = 900


def tool(name):
    return str(Path(sys.executable).with_name(name))


def env():
    return dict(
        os.environ,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    )


# ---------------------------------------------------------------------------------------------
# processes of one session: CPU and memory


def session_of(pid):
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2 :].split()[3])


def session_usage(sid):
    """(CPU seconds, RSS KiB) summed over the live processes of session `sid`."""
    cpu, rss = 0, 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
            pages = int((entry / "statm").read_text().split()[1])
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[3]) != sid:
            continue
        # utime stime cutime cstime: a reaped child's time moved into its parent's c*time
        cpu += sum(int(f) for f in fields[11:15])
        rss += pages * PAGE_KIB
    return cpu / CLOCK_TICKS, rss


class Sampler(threading.Thread):
    def __init__(self, sid):
        super().__init__(daemon=True)
        self.sid, self.peak, self.running = sid, 0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, session_usage(self.sid)[1])
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# salt-master and salt-minions on 127.0.0.1


class Daemon:
    def __init__(self, argv, log_path, niceness=0):
        self.log_path = log_path
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env(),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
            )

    def signal(self, sig):
        # Only the process group this bench started (its own session).
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout):
        try:
            self.proc.wait(max(0.1, timeout))
            return True
        except subprocess.TimeoutExpired:
            return False


def stop_all(daemons, timeout=20):
    for daemon in daemons:
        daemon.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for daemon in daemons:
        if not daemon.wait(deadline - time.monotonic()):
            daemon.signal(signal.SIGKILL)
            daemon.wait(5)


def base_conf(root, name):
    return {
        "id": name,
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "root_dir": str(root),
        "sock_dir": "run",
        "log_file": str(root / f"{name}.log"),
        "log_level_logfile": "warning",
    }


class Salt:
    def __init__(self, sandbox, alertmanager):
        self.sandbox = sandbox
        self.ports = {"publish": free_port(), "ret": free_port()}
        conf = kcm_master_conf(
            sandbox / "host", alertmanager.url, {"env": "bench"}, allow_http=True, masters=[STAND_IN, "fleet-m*"]
        )
        self.master_dir = sandbox / "master-conf"
        self.master_dir.mkdir()
        root = sandbox / "master"
        master = dict(
            base_conf(root, "bench-master"),
            interface="127.0.0.1",
            publish_port=self.ports["publish"],
            ret_port=self.ports["ret"],
            auto_accept=True,
            file_roots={"base": [str(REPO / "formula")]},
            fileserver_list_cache_time=0,
            engines_dirs=[str(REPO / "_engines")],
            **conf,
        )
        (self.master_dir / "master").write_text(yaml.safe_dump(master))
        self.master = Daemon(
            [tool("salt-master"), f"--config-dir={self.master_dir}", "-l", "quiet"], sandbox / "master.out"
        )
        self.minions = {}
        import salt.config

        wait_until(lambda: (root / "run" / "master_event_pub.ipc").exists(), 60, "salt-master event socket")
        self.master_opts = salt.config.master_config(str(self.master_dir / "master"))

    def minion(self, name, grains=None, deployed=None, niceness=0):
        conf_dir = self.sandbox / f"{name}-conf"
        conf_dir.mkdir()
        root = self.sandbox / name
        conf = dict(
            base_conf(root, name),
            master="127.0.0.1",
            master_port=self.ports["ret"],
            publish_port=self.ports["publish"],
            acceptance_wait_time=1,
            random_reauth_delay=0,
            grains=grains or {},
        )
        (conf_dir / "minion").write_text(yaml.safe_dump(conf))
        if deployed is not None:
            path = root / "var" / "cache" / "salt" / "minion" / "kcm" / "deployed.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(deployed))
        self.minions[name] = (
            Daemon(
                [tool("salt-minion"), f"--config-dir={conf_dir}", "-l", "quiet"], self.sandbox / f"{name}.out", niceness
            ),
            conf_dir,
        )
        return conf_dir

    def cli(self, name, *args, timeout=300):
        start = time.monotonic()
        proc = subprocess.run(
            [tool(name), f"--config-dir={self.master_dir}", *args],
            capture_output=True,
            text=True,
            env=env(),
            timeout=timeout,
            check=False,
        )
        return proc, time.monotonic() - start

    def wait_minions(self, tgt, count):
        def answered():
            proc, _ = self.cli("salt", "--out=json", "--static", "--timeout=10", tgt, "test.ping")
            try:
                return len(json.loads(proc.stdout or "{}")) >= count
            except ValueError:
                return False

        wait_until(answered, START_WAIT, f"{count} minions answering test.ping ({tgt})", interval=5)

    def stop(self):
        stop_all([daemon for daemon, _ in self.minions.values()])
        stop_all([self.master])


class Followups(threading.Thread):
    """kcm/alert/* events on the master bus, with the time they were seen."""

    def __init__(self, opts):
        import salt.utils.event

        super().__init__(daemon=True)
        self.bus = salt.utils.event.get_event("master", opts=opts, listen=True)
        self.seen, self.running = [], True

    def run(self):
        while self.running:
            event = self.bus.get_event(wait=0.2, tag="kcm/alert/", full=True)
            if event:
                self.seen.append((time.time(), event["tag"], event["data"]))


# ---------------------------------------------------------------------------------------------
# the storm


def parse_time(text):
    import datetime

    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def quantile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


class Forger(threading.Thread):
    """Sends ``rate`` forged reports a second through the intruder's salt-minion until stopped."""

    def __init__(self, intruder, cluster_ids, rate):
        super().__init__(daemon=True)
        self.rate, self.running, self.sent = rate, True, 0
        # signed before the clock starts, as the genuine ones: the storm is the sending
        changed = [
            e
            for e in failover_events("kubernetes", cluster_ids[0], new=INTRUDER, transitions=9)
            if e["tag"] == "changed"
        ]
        own = intruder.returns(changed)
        forged_tag = [
            dict(r, tag=r["tag"].replace(f"/{INTRUDER}/", f"/{STAND_IN}/"), data=dict(r["data"], id=STAND_IN))
            for r in own
        ]
        self.batches = [own, forged_tag]
        self.intruder = intruder

    def run(self):
        begin = time.time()
        while self.running:
            delay = begin + self.sent / self.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            self.intruder.send(self.batches[self.sent % 2])
            self.sent += 1


def storm(salt, stand_in, followups, alertmanager, clusters, intruder=None, forged_rate=0, profile=None):
    ids = [new_cluster_id() for _ in range(clusters)]
    plan = [(cid, failover_events("kubernetes", cid)) for cid in ids for _ in range(3)]
    random.Random(clusters).shuffle(plan)
    # Signed (as the beacon signs) before the clock starts, the storm being the sending, and in
    # the order they are sent: the master's replay guard takes each signer's counters in order
    # (within a window of 64), as one beacon sends them. Signed first and shuffled after, most
    # of the stand-in's reports were refused as replays.
    reports = [(cid, stand_in.returns(events)) for cid, events in plan]
    sid = session_of(salt.master.proc.pid)
    cpu0, _ = session_usage(sid)
    sampler = Sampler(sid)
    sampler.start()
    seen_from = len(followups.seen)
    first_fired = {}
    forger = Forger(intruder, ids, forged_rate) if forged_rate else None
    sampling = contextlib.ExitStack()
    # py-spy over every salt-master process, from the first report to the last alert.
    profiler = sampling.enter_context(master_profile.Profile(salt.master.proc.pid, profile)) if profile else None
    if forger:
        forger.start()
    begin = time.time()
    for n, (cid, events) in enumerate(reports):
        # spread over one second, as 3 masters per cluster polling every 1-2 s would
        delay = begin + n / len(reports) - time.time()
        if delay > 0:
            time.sleep(delay)
        first_fired.setdefault(cid, time.time())
        stand_in.send(events)
    fired_in = time.time() - begin
    wanted = set(ids)

    def ours():
        found = alertmanager.active(alertname="KCMLeaderChanged")
        return [a for a in found if a["labels"].get("cluster_id") in wanted]

    def handled():
        return [e for e in followups.seen[seen_from:] if e[2].get("kind") == "changed"]

    deadline = time.time() + WAIT
    while time.time() < deadline and (len(handled()) < len(reports) or len(ours()) < clusters):
        time.sleep(0.5)
    sampling.close()
    sampler.running = False
    sampler.join()
    if forger:
        forger.running = False
        forger.join()
    cpu1, _ = session_usage(sid)
    alerts = ours()
    sent = [e for e in handled() if e[1] == "kcm/alert/changed"]
    latencies = [parse_time(a["updatedAt"]) - first_fired[a["labels"]["cluster_id"]] for a in alerts]
    per_cluster = {}
    for alert in alerts:
        per_cluster[alert["labels"]["cluster_id"]] = per_cluster.get(alert["labels"]["cluster_id"], 0) + 1
    return {
        "clusters": clusters,
        "forged": forger.sent if forger else 0,
        "forged_rate": forged_rate,
        "reports": len(reports),
        "fired_in": fired_in,
        "alerts": len(alerts),
        "sent": len(sent),
        "duplicates_sent": sum(1 for count in per_cluster.values() if count > 1) + max(0, len(sent) - clusters),
        "lost": len(wanted - set(per_cluster)),
        "handled": len(handled()),
        "failed": sum(1 for e in followups.seen[seen_from:] if e[1] == "kcm/alert/send_failed"),
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": quantile(latencies, 0.99) if latencies else float("nan"),
        "max": max(latencies) if latencies else float("nan"),
        "cpu": cpu1 - cpu0,
        "peak_rss_mib": sampler.peak / 1024,
        "profile": profiler.shares() if profiler else None,
    }


# ---------------------------------------------------------------------------------------------
# the fleet view


def fleet_view(salt, masters, runs=3):
    tgt = "fleet-m*"
    runner, plain = [], []
    for _ in range(runs):
        proc, took = salt.cli("salt", "--out=json", "--static", "--timeout=30", tgt, "kcm.status")
        answered = len(json.loads(proc.stdout or "{}"))
        plain.append(took)
        proc, took = salt.cli("salt-run", "--out=json", "kcm.status", f"tgt={tgt}", "timeout=30")
        data = json.loads(proc.stdout or "{}")
        runner.append(took)
    rows = len(data.get("masters") or [])
    return {
        "masters": masters,
        "answered": answered,
        "rows": rows,
        "groups": len(data.get("clusters") or []),
        "runner": statistics.median(runner),
        "plain": statistics.median(plain),
    }


def render_cost(clusters):
    """In-process cost of grouping and drawing C clusters x 3 rows (the runner's own work)."""
    from kcmlab.formula import load

    runner, outputter = load("_runners", "kcm"), load("_output", "kcm_fleet")
    rows = [
        {
            "minion": f"c{c:03d}-m{m}",
            "cluster": "kubernetes",
            "cluster_id": f"{c:08d}-uid",
            "version": "v1.37.2",
            "service_active": "active",
            "healthy": True,
            "leader": "yes" if m == 1 else "no",
            "holder": f"c{c:03d}-m1_x",
            "lease_age_seconds": 1.0,
            "cert_days_left": 300,
            "errors": "",
        }
        for c in range(clusters)
        for m in (1, 2, 3)
    ]
    start = time.process_time()
    for _ in range(5):
        outputter.render(runner._summarize(rows))
    return (time.process_time() - start) / 5


def progress(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", default="10,100,300")
    parser.add_argument("--fleet-masters", type=int, default=30)
    parser.add_argument(
        "--forged-rate",
        type=float,
        default=0,
        help="also run each storm with this many forged reports a second mixed in",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="C",
        help="also run one storm of C clusters under py-spy: where the master's CPU goes",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="storms of each kind per size; the comparisons take the median p99"
    )
    args = parser.parse_args()
    sizes = [int(c) for c in args.clusters.split(",")]
    print(f"# bench/fleet.py on {machine()}")
    print("load: one real salt-minion stands in for 3 masters per cluster, firing the kcm_leader beacon's own")
    print("      failover events (tag salt/beacon/<minion>/kcm_leader/changed, data from its step()); not real KCMs")
    sandbox = Path(tempfile.mkdtemp(prefix="kcmfleet-"))
    am = Alertmanager(sandbox).start()
    salt = Salt(sandbox, am)
    try:
        # The load's minions stand in for other machines (3 masters per cluster, the hostile one):
        # at nice 19 their own CPU here yields to the salt-master, the one thing measured.
        salt.minion(STAND_IN, niceness=LOAD_NICENESS)
        minions = args.fleet_masters + 1
        if args.forged_rate:
            salt.minion(INTRUDER, niceness=LOAD_NICENESS)
            minions += 1
        for n in range(args.fleet_masters):
            cluster = f"fleet-{n // 3:02d}"
            salt.minion(
                f"fleet-m{n:02d}",
                deployed={
                    "cluster": cluster,
                    "service": {"name": "kube-controller-manager"},
                    "secure_port": 10257,
                    "files": {
                        "kubeconfig": str(sandbox / "absent.kubeconfig"),
                        "binary": str(sandbox / "absent"),
                        "ca_cert": str(sandbox / "absent.pem"),
                        "cert": str(sandbox / "absent.pem"),
                    },
                },
            )
        progress(f"started salt-master, Alertmanager and {minions} salt-minions; waiting for them")
        salt.wait_minions("*", minions)
        progress("all minions answer")
        for fun in ("saltutil.sync_utils", "saltutil.sync_runners", "saltutil.sync_output"):
            proc, _ = salt.cli("salt-run", "--out=json", fun)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        # the fleet view asks kcm_beacon.answer, which signs with kcm_trust (a util)
        proc, _ = salt.cli("salt", "--timeout=60", "fleet-m*", "saltutil.sync_all")
        stand_in = BeaconStandIn(salt_minion_opts(salt, STAND_IN))
        intruder = BeaconStandIn(salt_minion_opts(salt, INTRUDER)) if args.forged_rate else None
        followups = Followups(salt.master_opts)
        followups.start()
        # the storms are measured one after another on the same master, like a day of them
        results = []
        for clusters in sizes:
            # With forged reports, plain and mixed storms alternate: both see the same drift of
            # the master's caches and store over the repeats.
            for _ in range(args.repeat):
                results.append(storm(salt, stand_in, followups, am, clusters))
                progress(f"storm of {clusters} clusters done")
                if intruder:
                    results.append(storm(salt, stand_in, followups, am, clusters, intruder, args.forged_rate))
                    progress(f"storm of {clusters} clusters with {args.forged_rate:g} forged reports/s done")
        if args.profile:
            profiled = storm(salt, stand_in, followups, am, args.profile, profile=sandbox / "master.pyspy")
            progress(f"storm of {args.profile} clusters under py-spy done")
        view = fleet_view(salt, args.fleet_masters)
        followups.running = False
        followups.join()
        followups.bus.destroy()
        stand_in.close()
        if intruder:
            intruder.close()
    finally:
        salt.stop()
        am.stop()
        shutil.rmtree(sandbox, ignore_errors=True)
    report(results, view, sizes, "engine")
    if args.profile:
        print(
            f"\nWhere the salt-master's CPU went in a storm of {args.profile} clusters ({profiled['reports']}"
            f" reports; {profiled['cpu']:.1f} CPU s by /proc, p99 {profiled['p99']:.2f} s under py-spy):"
        )
        print("\n".join(master_profile.table(profiled["profile"], profiled["reports"])))


def salt_minion_opts(salt, name):
    import salt.config as salt_config

    return salt_config.minion_config(str(salt.minions[name][1] / "minion"))


def plain_runs_of(results):
    return [r for r in results if not r["forged"]]


def report(results, view, sizes, path):
    print(
        "\n| clusters | reports | forged | alerts | duplicated | lost | p50 s | p99 s | max s | master CPU s"
        " | peak RSS MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['clusters']} | {r['reports']} (in {r['fired_in']:.2f} s) | {r['forged']} | {r['alerts']}"
            f" | {r['duplicates_sent']}"
            f" | {r['lost']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} | {r['cpu']:.1f}"
            f" | {r['peak_rss_mib']:.0f} |"
        )
    for r in plain_runs_of(results):
        exact = r["alerts"] == r["clusters"] and r["duplicates_sent"] == 0 and r["lost"] == 0
        goal = "p99 <= 5 s" if r["clusters"] == 100 else "nothing lost"
        met = exact and (r["p99"] <= 5 if r["clusters"] == 100 else True)
        print(
            f"storm C={r['clusters']} ({path}): {r['alerts']}/{r['clusters']} alerts,"
            f" {r['duplicates_sent']} duplicated, {r['lost']} lost, p99 {r['p99']:.2f} s"
            f" (goal: exactly C, {goal}): {'met' if met else 'NOT met'}"
        )
    for clusters in sorted({r["clusters"] for r in results if r["forged"]}):
        plain = [r for r in results if r["clusters"] == clusters and not r["forged"]]
        mixed = [r for r in results if r["clusters"] == clusters and r["forged"]]
        exact = all(r["alerts"] == clusters and r["duplicates_sent"] == 0 and r["lost"] == 0 for r in mixed)
        with_forged, without = statistics.median(r["p99"] for r in mixed), statistics.median(r["p99"] for r in plain)
        ratio = with_forged / max(without, 1e-9)
        print(
            f"storm C={clusters} with {statistics.median(r['forged'] for r in mixed):g} forged reports"
            f" ({mixed[0]['forged_rate']:g}/s), median of {len(mixed)} vs {len(plain)}: genuine exact in"
            f" {sum(r['alerts'] == clusters and r['lost'] == 0 for r in mixed)}/{len(mixed)},"
            f" p99 {with_forged:.2f} s vs {without:.2f} s without"
            f" (x{ratio:.2f}; goal: exact, within 10 %): {'met' if exact and ratio <= 1.1 else 'NOT met'}"
        )
    plain_runs = plain_runs_of(results)
    if len(plain_runs) >= 2:
        a, b = plain_runs[0], plain_runs[-1]
        scale = b["clusters"] / a["clusters"]
        cpu_growth = b["cpu"] / max(a["cpu"], 1e-9)
        print(
            f"growth {a['clusters']} -> {b['clusters']} clusters (x{scale:g}): CPU x{cpu_growth:.1f},"
            f" p99 x{b['p99'] / max(a['p99'], 1e-9):.1f}, CPU per report {a['cpu'] / a['reports'] * 1000:.0f} ms"
            f" -> {b['cpu'] / b['reports'] * 1000:.0f} ms"
        )
    over = view["runner"] - view["plain"]
    print(
        f"fleet view over {view['masters']} masters ({view['answered']} answered, {view['rows']} rows,"
        f" {view['groups']} groups): salt-run kcm.status {view['runner']:.2f} s vs salt kcm.status"
        f" {view['plain']:.2f} s: {over:+.2f} s (goal: within 2 s of the slowest answer):"
        f" {'met' if over <= 2 else 'NOT met'}"
    )
    costs = {c: render_cost(c) for c in sorted(set(sizes) | {10, 300})}
    print(
        "fleet view, grouping + table in the runner: "
        + ", ".join(f"{c} clusters {ms * 1000:.1f} ms" for c, ms in costs.items())
        + f" (x{costs[300] / max(costs[10], 1e-9):.0f} from 10 to 300)"
    )


if __name__ == "__main__":
    main()
