"""Shared helpers for the benchmarks: medians, a machine line, the built binaries."""

import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def median(values):
    return statistics.median(values) if values else float("nan")


def machine():
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import salt.version

    return (
        f"{platform.node()}: {os.cpu_count()} cpu ({cpu}), {mem:.0f} GiB, Python {platform.python_version()},"
        f" Salt {salt.version.__version__}"
    )


def lab_timings(timings):
    """Print the lab's own timings (boot, minions answering, first apply, first leader): how
    loaded this machine was while the measures above were taken."""
    for name, value in timings.items():
        print(f"lab: {name}: {value:.2f} s")


def k8s_bin():
    env = os.environ.get("KCM_K8S_BIN")
    if env:
        return Path(env)
    out = subprocess.run([str(REPO / "scripts/k8s-binaries")], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@contextlib.contextmanager
def scratch_dir(prefix):
    """A temporary directory for one benchmark, removed afterwards unless KCM_KEEP_TMP is set."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if not os.environ.get("KCM_KEEP_TMP"):
            shutil.rmtree(path, ignore_errors=True)
