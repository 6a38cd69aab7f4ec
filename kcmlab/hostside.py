"""The host side of a lab: the names a suite gets on this host (bridge, subnet, machine and
veth names, with ``$KCMLAB_SUITE_PREFIX``), its cgroups in both hierarchies, commands into a
machine through ``nsenter``, and the sweep that removes all of it from the suite name alone
(``leftovers`` lists what is still there). ``kcmlab.machines`` boots the machines on it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))
RUNTIME = Path("/run/kcmlab")
INSIDE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sh(argv, check=True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=check, text=True, capture_output=True, **kwargs)


def cgroup_dirs(suite: str, name: str | None = None) -> list[Path]:
    tail = f"kcmlab-{suite}" + (f"/{name}" if name else "")
    return [root / tail for root in CGROUP_ROOTS]


def remove_cgroup_tree(path: Path) -> None:
    """rmdir a cgroup directory and its children, deepest first (cgroupfs refuses rm -r)."""
    if not path.is_dir():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError as exc:
        log.warning("cgroup %s not removed: %s", path, exc)


def kill_cgroup(path: Path) -> None:
    """Kill every process in a cgroup tree (cgroup v2 ``cgroup.kill``, else one by one)."""
    kill = path / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
        return
    for procs in path.rglob("cgroup.procs"):
        for pid in procs.read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def cgroup_empty(path: Path) -> bool:
    return all(not procs.read_text().strip() for procs in path.rglob("cgroup.procs"))


def qualified(suite: str) -> str:
    """``suite`` with ``$KCMLAB_SUITE_PREFIX`` in front, so that two checkouts (two developers,
    or a developer and CI) can run the same test suite side by side without sharing a bridge,
    a subnet or machine names. Idempotent."""
    prefix = os.environ.get("KCMLAB_SUITE_PREFIX", "")
    if not re.fullmatch(r"[a-z0-9]{0,4}", prefix):
        raise ValueError(f"KCMLAB_SUITE_PREFIX={prefix!r}: use up to 4 characters of [a-z0-9]")
    return suite if suite.startswith(prefix) else prefix + suite


def bridge_name(suite: str) -> str:
    name = f"kcm-{suite}"
    if len(name) <= 15:
        return name
    import hashlib

    # Interface names stop at 15 characters; a cut would let two long suite names collide.
    return "kcm-" + hashlib.sha256(suite.encode()).hexdigest()[:11]


def default_subnet(suite: str) -> str:
    """A /24 in 10.64.0.0/10 derived from the suite name, so that labs of different suites
    (a test run, the demo, a benchmark) can run side by side."""
    import hashlib

    digest = hashlib.sha256(suite.encode()).digest()
    return f"10.{64 + digest[0] % 64}.{digest[1]}.0/24"


def addresses_in(network) -> list[str]:
    """Interfaces of this host that hold an address inside ``network``."""
    found = []
    for line in sh(["ip", "-o", "-4", "addr", "show"], check=False).stdout.splitlines():
        fields = line.split()
        address = ipaddress.ip_interface(fields[3])
        if address.ip in network:
            found.append(f"{fields[1]} {fields[3]}")
    return found


def machine_name(suite: str, name: str) -> str:
    """nspawn's name for machine ``name`` of lab ``suite``: unique on the host, because nspawn
    names the host side of its veth after it (vb-<name>, 15 characters at most) and two labs
    may both boot a master-1 (the hostname inside stays ``name``)."""
    import hashlib

    return "kl-" + hashlib.sha256(f"{suite}/{name}".encode()).hexdigest()[:8]


def leftovers(suite: str, names=()) -> list[str]:
    """What a lab of ``suite`` with machines ``names`` left on this host: processes, cgroups,
    the bridge, veths, directories."""
    suite = qualified(suite)
    veths = {f"vb-{machine_name(suite, name)}" for name in names}
    found = []
    for path in cgroup_dirs(suite):
        if path.exists():
            busy = "" if cgroup_empty(path) else " (with processes)"
            found.append(f"cgroup {path}{busy}")
    links = sh(["ip", "-o", "link", "show"], check=False).stdout
    for line in links.splitlines():
        link = line.split(": ")[1].split("@")[0] if ": " in line else ""
        # A veth outlives a killed machine until it is deleted.
        if link == bridge_name(suite) or link in veths:
            found.append(f"link {link}")
    if (RUNTIME / suite).exists():
        found.append(f"directory {RUNTIME / suite}")
    return found


def inside_argv(init_pid: int, argv, env: dict | None = None) -> list[str]:
    """The host command that runs ``argv`` inside the machine whose init is ``init_pid``: all its
    namespaces, a clean environment (the host's would leak in through nsenter)."""
    variables = [f"PATH={INSIDE_PATH}", "LANG=C.UTF-8", *(f"{k}={v}" for k, v in (env or {}).items())]
    return ["nsenter", "-t", str(init_pid), "-a", "env", "-i", *variables, *[str(a) for a in argv]]


def sweep(suite: str, names=()) -> None:
    """Remove whatever a lab of ``suite`` left, whoever started it: kill and remove its cgroups
    (its machines die with them), the veths of machines ``names``, the bridge, the runtime dir.
    Works from the suite name alone, so a lab whose owner has gone can still be taken down."""
    suite = qualified(suite)
    for path in cgroup_dirs(suite):
        if path.exists():
            kill_cgroup(path)
            deadline = time.monotonic() + 10
            while not cgroup_empty(path) and time.monotonic() < deadline:
                time.sleep(0.05)
            remove_cgroup_tree(path)
    sh(["ip", "link", "del", bridge_name(suite)], check=False)
    shutil.rmtree(RUNTIME / suite, ignore_errors=True)
    for name in names:
        sh(["ip", "link", "del", f"vb-{machine_name(suite, name)}"], check=False)
