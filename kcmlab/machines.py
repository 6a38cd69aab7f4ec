"""Systemd machines on their own network: ``systemd-nspawn -b`` on a host bridge.

A ``Lab`` owns one bridge (``kcm-<suite>``, host address ``<subnet>.1``) and boots machines
named like their minions, each with systemd as PID 1, its own hostname, a fixed address
(``<subnet>.11``, ``.12``, ...), a fresh overlay over the cached rootfs (``--volatile=overlay``:
nothing a machine writes survives it), and its own cgroup in both hierarchies of this
host's hybrid layout (else every machine would share nspawn's ``payload`` cgroup). The host
runs no systemd, hence ``--register=no --keep-unit``; commands run inside through
``nsenter`` into the machine's init (facts: ``shared/reference/machines.md``). The host side
(names, cgroups, the sweep, ``leftovers``) is ``kcmlab.hostside``.

``Lab.close()`` removes every machine, cgroup, veth and the bridge, also after a failure,
and ``leftovers(suite)`` lists whatever is still there (a test asserts it is empty).

    with Lab("e2e") as lab:
        m1 = lab.boot("master-1", salt={"master": lab.host_ip, "master_port": 4506, ...})
        m1.run(["systemctl", "is-active", "salt-minion"])
        m1.cut_link(); m1.restore_link(); m1.power_off()
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from kcmlab.hostside import (
    RUNTIME,
    addresses_in,
    bridge_name,
    cgroup_dirs,
    cgroup_empty,
    default_subnet,
    inside_argv,
    kill_cgroup,
    leftovers,
    machine_name,
    qualified,
    remove_cgroup_tree,
    sh,
    sweep,
)

# Importable from here too, as they were before the host side had its own module.
__all__ = [
    "Lab",
    "Machine",
    "bridge_name",
    "default_subnet",
    "host_tempdir",
    "inside_argv",
    "leftovers",
    "machine_name",
    "qualified",
    "sweep",
]

log = logging.getLogger(__name__)

NAME = re.compile(r"^[a-z][a-z0-9-]{0,11}$")
# systemctl verbs that can end or start a KCM, and so move its Lease (see Lab.marks).
DISTURBING = ("start", "stop", "restart", "kill", "try-restart", "reload-or-restart")
KCM_UNIT = "kube-controller-manager"


class Machine:
    """One booted machine: its nspawn process, its init's pid, its address."""

    def __init__(self, lab: Lab, name: str, address: str, process: subprocess.Popen, state_dir: Path):
        self.lab = lab
        self.name = name
        self.address = address
        self.process = process
        self.state_dir = state_dir
        self.init_pid: int | None = None
        self.boot_seconds: float | None = None

    @property
    def machine_name(self) -> str:
        return machine_name(self.lab.suite, self.name)

    @property
    def veth(self) -> str:
        """The host side of the machine's veth pair (nspawn names it vb-<machine name>)."""
        return f"vb-{self.machine_name}"

    @property
    def salt_dir(self) -> Path:
        """The machine's /etc/salt, kept on the host (minion keys and beacons.conf live there)."""
        return self.state_dir / "salt"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def _find_init(self) -> int | None:
        # nspawn forks the container's PID 1 as its direct child in a new PID namespace.
        own_ns = os.readlink("/proc/self/ns/pid")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid and os.readlink(entry / "ns/pid") != own_ns:
                    return int(entry.name)
            except (OSError, IndexError, ValueError):
                continue
        return None

    def wait_booted(self, timeout: float = 180.0) -> None:
        """Wait until systemd inside reports ``running`` (``degraded`` accepted)."""
        begin = time.monotonic()
        deadline = begin + timeout
        while self.init_pid is None:
            if not self.running:
                raise RuntimeError(
                    f"machine {self.name}: systemd-nspawn exited with {self.process.returncode}; see {self.console_log}"
                )
            self.init_pid = self._find_init()
            if time.monotonic() > deadline:
                raise TimeoutError(f"machine {self.name}: no init process after {timeout:.0f}s")
            time.sleep(0.05)
        state = ""
        while time.monotonic() < deadline:
            # Polled: "--wait" sits for seconds on a bus that is not up yet.
            state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded"):
                self.boot_seconds = time.monotonic() - self.lab_started
                return
            time.sleep(0.05)
        raise TimeoutError(f"machine {self.name}: systemd state {state!r} after {timeout:.0f}s")

    @property
    def console_log(self) -> Path:
        return (self.lab.log_dir or self.state_dir) / f"console-{self.name}.log"

    def run(
        self, argv, check: bool = True, timeout: float = 120.0, input: str | None = None, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the machine (all its namespaces, a clean environment)."""
        if self.init_pid is None:
            raise RuntimeError(f"machine {self.name} is not booted")
        full = inside_argv(self.init_pid, argv, env)
        proc = subprocess.run(full, text=True, capture_output=True, timeout=timeout, input=input, check=False)
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def systemctl(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        if self.lab.marks is not None and args and args[0] in DISTURBING and any(KCM_UNIT in a for a in args):
            self.lab.marks.mark(f"{self.name}: systemctl {' '.join(args)}")
        return self.run(["systemctl", *args], check=check)

    def unit_property(self, unit: str, prop: str) -> str:
        return self.run(["systemctl", "show", "-P", prop, unit]).stdout.strip()

    def journal(self, unit: str, lines: int = 50) -> str:
        return self.run(
            ["journalctl", "--no-pager", "-o", "short-precise", "-n", str(lines), "-u", unit], check=False
        ).stdout

    def read_file(self, path: str) -> str:
        return self.run(["cat", path]).stdout

    def set_minion_config(self, config: dict) -> None:
        """Replace the minion config the lab wrote at boot (it takes effect at the minion's
        next start): the file lives on the host, bound into the machine's /etc/salt."""
        path = self.salt_dir / "minion.d" / "00-lab.conf"
        text = json.dumps({"id": self.name, "enable_fqdns_grains": False, **config}, indent=2) + "\n"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    def cut_link(self) -> None:
        """Take the machine off the network (its veth down on the host side)."""
        if self.lab.marks is not None:
            self.lab.marks.open(f"link {self.name}", f"{self.name}: link cut")
        sh(["ip", "link", "set", self.veth, "down"])

    def restore_link(self, timeout: float = 10.0) -> float:
        """Put the machine back on the network; returns the seconds until its route is back
        (networkd inside drops the address with the carrier and configures it again)."""
        begin = time.monotonic()
        sh(["ip", "link", "set", self.veth, "up"])
        if self.lab.marks is not None:
            self.lab.marks.close(f"link {self.name}")
        while time.monotonic() - begin < timeout:
            if self.run(["ip", "route", "get", self.lab.host_ip], check=False).returncode == 0:
                return time.monotonic() - begin
            time.sleep(0.05)
        raise TimeoutError(f"machine {self.name}: no route to {self.lab.host_ip} {timeout:.0f}s after the link came up")

    def power_off(self) -> None:
        """Pull the plug: every process of the machine killed at once, no shutdown."""
        if self.lab.marks is not None and self.init_pid is not None:
            self.lab.marks.mark(f"{self.name}: powered off")
        for path in cgroup_dirs(self.lab.suite, self.name):
            if path.exists():
                kill_cgroup(path)
        try:
            self.process.kill()
        except ProcessLookupError:
            pass
        self._reap()

    def shutdown(self, timeout: float = 15.0) -> None:
        """A clean halt (SIGTERM to nspawn), then the hard way for whatever is left."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("machine %s did not halt in %.0fs; killing it", self.name, timeout)
        self.power_off()

    def _reap(self) -> None:
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.warning("systemd-nspawn of %s did not exit after SIGKILL", self.name)
        for path in cgroup_dirs(self.lab.suite, self.name):
            deadline = time.monotonic() + 10
            while path.exists() and not cgroup_empty(path) and time.monotonic() < deadline:
                time.sleep(0.05)
            remove_cgroup_tree(path)
        shutil.rmtree(Path("/run/systemd/nspawn/propagate") / self.machine_name, ignore_errors=True)
        sh(["ip", "link", "del", self.veth], check=False)
        self.init_pid = None


class Lab:
    """A bridge and the machines booted on it; a context manager that always cleans up."""

    def __init__(
        self,
        suite: str = "lab",
        subnet: str | None = None,
        rootfs: Path | None = None,
        binds_ro: dict | None = None,
        log_dir: Path | None = None,
    ):
        if not NAME.match(suite):
            raise ValueError(f"suite {suite!r}: use a short name of [a-z0-9-]")
        suite = qualified(suite)
        self.suite = suite
        self.network = ipaddress.ip_network(subnet or default_subnet(suite))
        self.host_ip = str(self.network.network_address + 1)
        self.bridge = bridge_name(suite)
        self.rootfs = rootfs
        self.binds_ro = dict(binds_ro or {})
        self.machines: dict[str, Machine] = {}
        # A LeaseLog (kcmlab.leasewatch) told of every stop, start, kill, cut and power-off.
        self.marks = None
        self.state_root = RUNTIME / suite
        # Console logs outlive the lab (a failed boot is read after the teardown).
        self.log_dir = Path(log_dir) if log_dir else None
        self._addresses: dict[str, str] = {}
        self._open = False

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> Lab:
        if self.rootfs is None:
            from kcmlab.rootfs import ensure_rootfs

            self.rootfs = ensure_rootfs()
        if leftovers(self.suite):
            log.warning("removing what an earlier lab %r left: %s", self.suite, leftovers(self.suite))
        self._sweep()
        taken = addresses_in(self.network)
        if taken:
            raise RuntimeError(
                f"lab {self.suite}: {self.network} is already in use on this host ({', '.join(taken)}); "
                "give the lab another subnet"
            )
        self._open = True
        sh(["ip", "link", "add", self.bridge, "type", "bridge"])
        sh(["ip", "addr", "add", f"{self.host_ip}/{self.network.prefixlen}", "dev", self.bridge])
        sh(["ip", "link", "set", self.bridge, "up"])
        self.state_root.mkdir(parents=True, exist_ok=True)
        for path in cgroup_dirs(self.suite):
            path.mkdir(parents=True, exist_ok=True)
        return self

    def close(self, halt_timeout: float = 1.0) -> None:
        """Halt every machine (all at once), power off what is left, remove the bridge.

        Nothing inside needs a clean halt (each boot is a fresh overlay), and a salt-minion
        takes seconds to stop: what has not halted after ``halt_timeout`` is powered off."""
        for machine in self.machines.values():
            if machine.running:
                machine.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + halt_timeout
        for machine in list(self.machines.values()):
            try:
                machine.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.debug("machine %s did not halt in %.0fs; powering it off", machine.name, halt_timeout)
            try:
                machine.power_off()
            except Exception:  # noqa: BLE001 - teardown goes on for the others
                log.exception("powering off %s", machine.name)
        self.machines.clear()
        self._sweep()
        self._open = False

    def _sweep(self) -> None:
        sweep(self.suite, self.machines)

    def __enter__(self) -> Lab:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    # -- machines ----------------------------------------------------------------------------

    def address_of(self, name: str) -> str:
        """The fixed address of machine ``name`` (.11 for the first one named, .12, ...)."""
        if name not in self._addresses:
            self._addresses[name] = str(self.network.network_address + 11 + len(self._addresses))
        return self._addresses[name]

    def add_host_address(self, offset: int = 2) -> str:
        """Give the host a second address on the bridge (``<subnet>.<offset>``), for a second
        daemon that must look like another host to the machines (a second salt-master);
        it goes with the bridge in ``close()``."""
        address = str(self.network.network_address + offset)
        if address == self.host_ip or address in self._addresses.values():
            raise ValueError(f"lab {self.suite}: {address} is taken")
        sh(["ip", "addr", "replace", f"{address}/{self.network.prefixlen}", "dev", self.bridge])
        return address

    def hosts_file(self) -> str:
        lines = ["127.0.0.1 localhost", f"{self.host_ip} lab-host"]
        lines += [f"{addr} {name}" for name, addr in self._addresses.items()]
        return "\n".join(lines) + "\n"

    def boot(self, name: str, salt: dict | None = None, wait: bool = True, binds_ro: dict | None = None) -> Machine:
        """Boot machine ``name``; ``salt`` is its minion config (written to /etc/salt/minion.d)."""
        if not self._open:
            raise RuntimeError("Lab.open() first")
        if not NAME.match(name):
            raise ValueError(f"machine name {name!r}: use a short name of [a-z0-9-]")
        if name in self.machines and self.machines[name].running:
            raise RuntimeError(f"machine {name} is already running")
        address = self.address_of(name)
        state = self.state_root / name
        network = state / "network"
        network.mkdir(parents=True, exist_ok=True)
        (network / "10-host0.network").write_text(
            "[Match]\nName=host0\n\n[Network]\n"
            f"Address={address}/{self.network.prefixlen}\nGateway={self.host_ip}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        (state / "hosts").write_text(self.hosts_file())
        minion_d = state / "salt" / "minion.d"
        minion_d.mkdir(parents=True, exist_ok=True)
        config = {"id": name, "enable_fqdns_grains": False, **(salt or {})}
        (minion_d / "00-lab.conf").write_text(json.dumps(config, indent=2) + "\n")
        sh(["ip", "link", "del", f"vb-{machine_name(self.suite, name)}"], check=False)  # a stale one blocks nspawn
        cgroups = cgroup_dirs(self.suite, name)
        for path in cgroups:
            path.mkdir(parents=True, exist_ok=True)
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            f"--directory={self.rootfs}",
            "--volatile=overlay",
            f"--machine={machine_name(self.suite, name)}",
            f"--hostname={name}",
            "--register=no",
            "--keep-unit",
            "--console=read-only",
            "--resolv-conf=off",
            "--timezone=off",
            f"--network-bridge={self.bridge}",
            f"--bind-ro={network}:/etc/systemd/network",
            f"--bind-ro={state / 'hosts'}:/etc/hosts",
            f"--bind={state / 'salt'}:/etc/salt",
        ]
        for host_path, inside in {**self.binds_ro, **(binds_ro or {})}.items():
            argv.append(f"--bind-ro={host_path}:{inside}")
        # The launcher moves itself into the machine's cgroups before it becomes nspawn.
        moves = " && ".join(f"echo $$ > {path}/cgroup.procs" for path in cgroups)
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        console = open((self.log_dir or state) / f"console-{name}.log", "ab")
        try:
            process = subprocess.Popen(
                ["sh", "-c", f'{moves} && exec "$@"', "nspawn", *argv],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            console.close()
        machine = Machine(self, name, address, process, state)
        machine.lab_started = time.monotonic()
        self.machines[name] = machine
        if wait:
            machine.wait_booted()
        return machine

    def boot_many(self, names, salt_for=None) -> list[Machine]:
        """Boot several machines at once; ``salt_for(name)`` gives each its minion config."""
        machines = [self.boot(n, salt_for(n) if salt_for else None, wait=False) for n in names]
        for machine in machines:
            machine.wait_booted()
        return machines

    def wait_for_port(self, machine: Machine, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if machine.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{machine.name}: nothing listens on port {port} after {timeout:.0f}s")


def host_tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
