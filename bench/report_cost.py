#!/usr/bin/env python3
"""Where the formula's share of the Salt master's CPU goes, per genuine report.

The ``kcm_alert`` runner's ``handle_batch`` (what the kcm_alert engine calls with a batch of
beacon events) runs in this process on a storm of C clusters x 3 masters: each master's
``kcm_leader`` failover reports (the beacon's own ``step()``, kcmlab/fleet.py), signed with its
own key as the beacons sign, verified against the master's accepted keys, posted to a real
Alertmanager, once per batch size (``--batches``): the engine hands the runner what arrived
within its ``batch_wait``, so a storm comes in large batches and a quiet day in batches of
one. cProfile then splits the CPU by where it is spent: the formula's runner and utils, the store's JSON and
files, the RSA verification, the HTTP post, Salt, the rest.

Not in this process: Salt's own share before the engine (the request server decrypting each
``_minion_event``, the event bus): bench/fleet.py measures the whole master, this names the
formula's part of it. The follow-up events the runner fires (``kcm/alert/*``) go to a recorder,
as in bench/refusal.py (no master bus here).

    python bench/report_cost.py [--clusters 300] [--batches 1,5,50] [--top 12]
"""

import argparse
import collections
import cProfile
import logging
import os
import pstats
import sys
import time

from common import machine, scratch_dir

from kcmlab.alertmanager import Alertmanager
from kcmlab.fleet import failover_events, new_cluster_id
from kcmlab.formula import load, master_conf, utils

MASTERS = ("master-1", "master-2", "master-3")
# cProfile's file name -> the part of the path a report takes there.
PARTS = (
    (
        "formula: store and files",
        ("kcm_state_file", "kcm_outbox", "json/", "fcntl", "posix.", "tempfile", "io.open", "_io."),
    ),
    ("formula: signature check", ("kcm_trust", "cryptography", "hazmat", "RSAPublicKey", "load_pem")),
    ("formula: decisions", ("kcm_alert_decide", "kcm_alert_rules", "kcm_time")),
    ("formula: receivers (HTTP)", ("kcm_receiver", "urllib3", "requests", "http/", "socket", "ssl", "_thread.lock")),
    ("formula: runner", ("_runners",)),
    ("Salt", ("salt/",)),
)


def _keys(root):
    """Each master's Salt key: its private key where its minion signs, its public key where
    the Salt master keeps accepted keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    (root / "master-pki" / "minions").mkdir(parents=True)
    signers = {}
    for minion in MASTERS:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pki = root / minion / "pki"
        pki.mkdir(parents=True)
        (pki / "minion.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        )
        (root / "master-pki" / "minions" / minion).write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        signers[minion] = {"id": minion, "pki_dir": str(pki), "cachedir": str(root / minion)}
    return signers


def _storm(signers, clusters):
    """The storm's beacon events in the order the masters send them: every master of every
    cluster reports the failover, each signed by its master (counters in send order)."""
    util = utils()
    out = []
    for _ in range(clusters):
        events = failover_events("kubernetes", new_cluster_id())
        for minion, opts in signers.items():
            for event in util["kcm_trust.sign_events"](
                opts, [dict(e) for e in events], util["kcm_state_file.read_json"], util["kcm_state_file.write_json"]
            ):
                tail = event.pop("tag")
                out.append((f"salt/beacon/{minion}/kcm_leader/{tail}", event))
    return out


def _runner(root, alertmanager_url):
    import salt.config

    runner = load("_runners", "kcm_alert")
    runner.__utils__ = utils()
    opts = dict(
        salt.config.DEFAULT_MASTER_OPTS,
        __role="master",
        cachedir=str(root / "master-cache"),
        pki_dir=str(root / "master-pki"),
        sock_dir=str(root / "sock"),
    )
    opts["kcm_alert"] = master_conf(
        masters=list(MASTERS), alertmanager_urls=[alertmanager_url], labels={"env": "bench"}
    )["kcm_alert"]
    runner.__opts__ = opts
    fired = collections.Counter()
    runner._fire = lambda tag, data: fired.update([tag])
    return runner, fired


def _where(stats):
    """CPU seconds per part of the path (each function's own time, by its file)."""
    totals = collections.Counter()
    for (filename, _, function), (_, _, own, _, _) in stats.stats.items():
        where = f"{filename} {function}"  # a builtin's file is "~": its name says whose it is
        part = next((name for name, marks in PARTS if any(m in where for m in marks)), "the rest (stdlib)")
        totals[part] += own
    return totals


def run(root, am, clusters, batch, profile=None):
    """One storm through ``handle_batch`` on a fresh store: (reports, alerts, follow-ups, CPU s)."""
    work = root / f"c{clusters}-b{batch}{'-profiled' if profile else ''}"
    signers = _keys(work)
    events = _storm(signers, clusters)
    runner, fired = _runner(work, am.url)
    cpu0 = time.process_time()
    if profile:
        profile.enable()
    for start in range(0, len(events), batch):
        runner.handle_batch(events[start : start + batch])
    if profile:
        profile.disable()
    cpu = time.process_time() - cpu0
    wanted = {data["cluster_id"] for _, data in events}
    alerts = [a for a in am.active(alertname="KCMLeaderChanged") if a["labels"].get("cluster_id") in wanted]
    return len(events), len(alerts), dict(fired), cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=300)
    parser.add_argument("--batches", default="1,5,50", help="events per handle_batch call, one storm each")
    parser.add_argument("--top", type=int, default=12, help="functions to list by their own time")
    args = parser.parse_args()
    logging.basicConfig(stream=open(os.devnull, "w"), level=logging.WARNING)  # noqa: SIM115
    print(f"# bench/report_cost.py on {machine()}")
    batches = [int(b) for b in args.batches.split(",")]
    costs = {}
    with scratch_dir("kcm-bench-report-cost-") as root:
        am = Alertmanager(root / "am").start()
        try:
            for batch in batches:
                reports, alerts, fired, cpu = run(root, am, args.clusters, batch)
                costs[batch] = cpu / reports * 1000
                print(
                    f"batches of {batch}: {reports} reports, {alerts} alerts in Alertmanager (of"
                    f" {args.clusters}), follow-ups {fired}: {cpu:.2f} s CPU, {costs[batch]:.2f} ms per report"
                )
            profile = cProfile.Profile()
            reports, _, _, _ = run(root, am, args.clusters, batches[-1], profile)
        finally:
            am.stop()
    stats = pstats.Stats(profile, stream=sys.stdout)
    totals = _where(stats)
    whole = sum(totals.values()) or 1
    print(f"\nwhere the CPU goes in batches of {batches[-1]} (profiled, cProfile's overhead included):")
    print("| where | CPU s | ms per report | share |")
    print("|---|---:|---:|---:|")
    for part, seconds in totals.most_common():
        print(f"| {part} | {seconds:.2f} | {seconds / reports * 1000:.2f} | {seconds / whole:.0%} |")
    if args.top:
        print(f"\nthe {args.top} functions with the most own time:")
        stats.sort_stats("tottime").print_stats(args.top)
    print(
        f"the formula's CPU per report at {args.clusters} clusters: "
        + ", ".join(f"batches of {b}: {ms:.2f} ms" for b, ms in costs.items())
        + " (goal for the whole salt-master, Salt's share included: 1.5 ms per report, issue #29)"
    )


if __name__ == "__main__":
    main()
