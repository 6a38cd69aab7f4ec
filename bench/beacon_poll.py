"""Run inside a master (bench/beacon.py pipes it to the machine's Salt Python): the cost of
kcm_leader beacon polls, loaded by Salt's loader with that minion's own config, modules and
grains, so a poll is exactly what its salt-minion does. Prints one JSON object."""

import json
import statistics
import sys
import time

import requests
import salt.config
import salt.loader
import urllib3.connectionpool


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


def main():
    polls = int(sys.argv[1])
    opts = salt.config.minion_config("/etc/salt/minion")
    opts["grains"] = salt.loader.grains(opts)
    opts["pillar"] = {}
    beacon = salt.loader.beacons(opts, salt.loader.minion_mods(opts))["kcm_leader.beacon"]
    config = [{"debounce": 2}, {"stale_after": 3}, {"_beacon_name": "kcm_leader"}]
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
    n = polls - 10
    print(
        json.dumps(
            {
                "polls": n,
                "cpu_median": statistics.median(cpu),
                "cpu_p90": sorted(cpu)[int(n * 0.9)],
                "wall_median": statistics.median(wall),
                "requests_per_poll": (counters.requests - req0) / n,
                "new_connections": counters.connections - conn0,
                "rss_10": rss_10,
                "rss_n": rss_kib(),
            }
        )
    )


if __name__ == "__main__":
    main()
