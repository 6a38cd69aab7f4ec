"""Where a running salt-master's CPU goes (issue #29): py-spy samples every process of the
master's session while a storm runs, and the samples are summed by part of the path.

py-spy (the ``bench`` extra of setup.cfg) reads the processes' memory from outside: no code
of the master changes, and ``--nonblocking`` never stops them, so the storm's latency is
what it would be, less the sampler's own CPU on this machine. Only samples of threads that
are running count (py-spy leaves idle threads out), so each part's share is of CPU time.
"""

import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path

# A sample with the formula's code anywhere on its stack is the formula's (what it calls,
# cryptography or json, included).
FORMULA = (
    "formula: kcm_alert engine, runner and utils",
    (
        "kcm_alert",
        "kcm_trust",
        "kcm_outbox",
        "kcm_receiver",
        "kcm_state_file",
        "kcm_alert_decide",
        "kcm_alert_rules",
        "kcm_time",
        "kcm_shapes",
    ),
)
# Salt's parts, by the leaf-most frame of a sample that names one (in this order).
PARTS = (
    ("Salt: crypto (AES of each request, RSA of keys)", ("salt/crypt.py", "cryptography", "Crypto/", "Cryptodome")),
    ("Salt: serialization (msgpack)", ("salt/payload.py", "msgpack")),
    ("Salt: transport (ZeroMQ, IPC)", ("salt/transport/", "zmq/")),
    ("Salt: event bus (fire, match, publish)", ("salt/utils/event.py",)),
    ("Salt: request server (MWorker, AESFuncs)", ("salt/master.py", "salt/daemons/")),
    ("Salt: loader", ("salt/loader/",)),
    ("Salt: logging", ("logging/", "salt/_logging/")),
    ("tornado / asyncio loop", ("tornado/", "asyncio/")),
    ("Salt: other", ("salt/",)),
)
OTHER = "the rest (stdlib, interpreter)"


def available():
    """The py-spy command, or None."""
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


class Profile:
    """``with Profile(pid, path):`` samples ``pid`` and its children (``rate`` per second)."""

    def __init__(self, pid, path, rate=100):
        # --gil: only a thread holding the GIL is running Python; without it py-spy counts
        # threads blocked in ZeroMQ or epoll waits too (measured: twice the CPU /proc gives).
        self.argv = [
            available(),
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--nonblocking",
            "--gil",
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(path),
        ]
        self.path = Path(path)
        self.rate = rate
        self.proc = None

    def __enter__(self):
        if self.argv[0] is None:
            raise RuntimeError("py-spy is missing: pip install '.[bench]' (setup.cfg's bench extra)")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def __exit__(self, *exc):
        # SIGINT makes py-spy write what it sampled and exit.
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        if not self.path.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")

    def shares(self):
        """``{part: CPU seconds}`` of the samples (see :func:`shares`)."""
        return shares(self.path.read_text().splitlines(), self.rate)


def part_of(stack):
    """The part a sample's stack (frames root first, ``;``-separated) belongs to."""
    frames = stack.split(";")
    if any(mark in frame for frame in frames for mark in FORMULA[1]):
        return FORMULA[0]
    for frame in reversed(frames):
        for name, marks in PARTS:
            if any(mark in frame for mark in marks):
                return name
    return OTHER


def shares(lines, rate):
    """Sum py-spy's raw (collapsed) lines, ``<frames> <count>``, into CPU seconds per part."""
    totals = collections.Counter()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            totals[part_of(stack)] += int(count) / rate
    return totals


def table(totals, reports):
    """Lines of a Markdown table: each part's CPU seconds, its share, and ms per report."""
    whole = sum(totals.values()) or 1e-9
    lines = ["| part of the salt-master | CPU s | share | ms per report |", "|---|---:|---:|---:|"]
    for name, seconds in totals.most_common():
        lines.append(f"| {name} | {seconds:.2f} | {100 * seconds / whole:.0f} % | {1000 * seconds / reports:.2f} |")
    lines.append(f"| all sampled | {whole:.2f} | 100 % | {1000 * whole / reports:.2f} |")
    return lines
