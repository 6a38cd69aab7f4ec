"""A Kubernetes control plane with its masters as systemd machines, driven through Salt.

``LabCluster`` puts together what a platform team has: etcd and kube-apiserver on the host's
bridge address (serving certificate for that IP), a real salt-master on the host, and one
systemd machine per master running a real ``salt-minion`` service. The formula is applied the
way a user applies it (``salt 'master-*' state.apply kcm`` over the bus) with the default
paths (``/usr/lib/systemd/system``, ``/data/apps/k8s/...``, ``/etc/k8s/...``) and
``service:manage: true``: systemd starts, restarts and stops KCM, nobody else.

    with LabCluster(k8s_bin, workdir, suite="e2e") as cluster:
        cluster.apply("kcm")
        cluster.wait_for_leader(30)
        cluster.machine("master-1").systemctl("stop", "kube-controller-manager")
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

from kcmlab.controlplane import ControlPlane, failover_bound, node_of, wait_until
from kcmlab.formula import REPO, load
from kcmlab.leasewatch import LeaseLog, is_live
from kcmlab.machines import Lab
from kcmlab.pki import DAYS
from kcmlab.saltmaster import SaltMaster

log = logging.getLogger(__name__)

NODES = ("master-1", "master-2", "master-3")


def _election(text: str | None) -> dict:
    """``8s/6s/1s`` (lease duration / renew deadline / retry period) as the pillar has it."""
    lease, renew, retry = (text or "8s/6s/1s").split("/")
    return {"lease_duration": lease, "renew_deadline": renew, "retry_period": retry}


# Short enough that a failover test waits seconds (8 s at most for an expiry, the defaults'
# 15 s halved), with room on a busy 2-core machine: a leader gives up when it could not
# renew for renew_deadline (6 s, twice 4s/3s/1s's), and lease_duration exceeds
# renew_deadline + retry_period, so a leader cut off stops before a standby may take the
# Lease (at 4s/3s/1s both come at the same moment). KCM_LAB_ELECTION overrides it;
# `scripts/flake-hunt --soak 300 --load --election 4s/3s/1s,8s/6s/1s` compares timings.
SHORT_ELECTION = _election(os.environ.get("KCM_LAB_ELECTION"))
UNIT = "kube-controller-manager"
RESTART_SEC = 5  # the unit's RestartSec=
# The kcm_leader beacon of the labs with an alert path: a poll a second, so a test (or a
# campaign) waits seconds for a report.
BEACON = {"interval": 1, "debounce": 2, "stale_after": 3, "timeout": 2, "healthy_for": 10}
BEACON_STATE = "/var/cache/salt/minion/kcm/beacon-kcm_leader.json"


class Snapshot(NamedTuple):
    """What ``LabCluster.consistent`` read, and the Lease that held still around it."""

    leader: str
    holder: str
    spec: dict
    value: Any


K8S_CACHE = Path(os.environ.get("KCM_CACHE", Path.home() / ".cache" / "kcm-formula")) / "k8s"
INSIDE_K8S = "/srv/k8s"  # where the machines see the build cache (read-only)


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def failed_states(ret) -> list[str]:
    """'<state id>: <comment>' for each state of one minion's return that did not succeed."""
    if not isinstance(ret, dict) or not ret:
        return [f"no state results: {str(ret)[:1500]}"]
    return [
        f"{sid}: {(st or {}).get('comment')}"
        for sid, st in ret.items()
        if not isinstance(st, dict) or st.get("result") is not True
    ]


def changed_states(ret) -> list[str]:
    """IDs of the states of one minion's return that changed something."""
    return sorted(
        st.get("__id__", sid) for sid, st in (ret or {}).items() if isinstance(st, dict) and st.get("changes")
    )


class LabCluster:
    """The control plane, the salt-master and the machines; ``close()`` removes all of it."""

    def __init__(
        self,
        k8s_bin: Path,
        workdir: Path,
        *,
        suite: str = "e2e",
        nodes=NODES,
        subnet: str | None = None,
        version: str | None = None,
        election: dict | None = None,
        kcm: dict | None = None,
        master_config: dict | None = None,
        file_roots=(),
        spares=(),
        rootfs: Path | None = None,
        cert_days: int = DAYS,
    ):
        self.k8s_bin = Path(k8s_bin)
        self.workdir = Path(workdir)
        self.nodes = tuple(nodes)
        # Masters that join later (``boot``): their addresses, certificate SANs and pillar exist
        # from the start, as a platform team prepares them before the machine arrives.
        self.spares = tuple(spares)
        self.file_roots = tuple(file_roots)
        self.version = version or self.k8s_bin.name
        self.election = dict(election or {})
        self.kcm_overrides = dict(kcm or {})
        self.cert_days = cert_days
        # The machines' rootfs (kcmlab.rootfs.ensure_rootfs): bookworm unless given.
        self.lab = Lab(
            suite, subnet, rootfs=rootfs, binds_ro={K8S_CACHE: INSIDE_K8S}, log_dir=self.workdir / "machines"
        )
        self.master_config = dict(master_config or {})
        self.cp: ControlPlane | None = None
        self.master: SaltMaster | None = None
        # Further salt-masters of a multi-master setup (``add_master``), after ``master``.
        self.more_masters: list[SaltMaster] = []
        self.pillars: dict[str, dict] = {}
        self.timings: dict[str, float] = {}
        self.label = suite
        self.lease_log: LeaseLog | None = None

    @property
    def election_seconds(self) -> dict[str, float]:
        """The leader election in seconds: ``election`` (pillar strings) over the formula's
        defaults (``formula/kcm/defaults.yaml``), for waits and bounds; the pillar keeps the strings."""
        import yaml

        defaults = yaml.safe_load((REPO / "formula" / "kcm" / "defaults.yaml").read_text())["kcm"]["leader_election"]
        parse = load("_utils", "kcm_time").parse_duration
        return {
            key: parse(value)
            for key, value in dict(defaults, **self.election).items()
            if key in ("lease_duration", "renew_deadline", "retry_period")
        }

    @property
    def failover_bound(self) -> float:
        """Upper bound for a new leader after the leader's KCM is killed, at these timings."""
        election = self.election_seconds
        return failover_bound(election["lease_duration"], election["retry_period"])

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> LabCluster:
        begin = time.monotonic()
        try:
            self.lab.open()
            for name in self.all_names:
                self.lab.address_of(name)
            self.cp = ControlPlane(
                self.k8s_bin,
                self.workdir / "controlplane",
                nodes=self.nodes,
                host=self.lab.host_ip,
                cert_days=self.cert_days,
            ).start()
            self.timings["control plane ready"] = self.cp.timings["apiserver_ready"]
            # A new leader after a disturbance: one failover, after KCM's restart at worst.
            self.lease_log = LeaseLog(self.cp, grace=self.failover_bound + RESTART_SEC + 2).start()
            self.lab.marks = self.cp.etcd.marks = self.cp.apiserver.marks = self.lease_log
            self.master = SaltMaster(
                self.workdir / "salt", self.lab.host_ip, config=self.master_config, file_roots=self.file_roots
            )
            self.master.marks = self.lease_log
            self.master.start()
            # The formula's runners (kcm_orch, kcm_alert, ...) on the master, as a user syncs them.
            code, synced = self.master.run("saltutil.sync_all")
            if code != 0:
                raise RuntimeError(f"salt-run saltutil.sync_all exited {code}: {synced}")
            self.pillars = {name: self.pillar_for(name) for name in self.all_names}
            self.master.write_pillar(self.pillars)
            booted = time.monotonic()
            self.lab.boot_many(self.nodes, salt_for=self.master.minion_config)
            self.timings["machines booted"] = time.monotonic() - booted
            self.timings["minions answering"] = self.master.wait_for_minions(self.nodes)
        except BaseException:
            self.close()
            raise
        self.timings["cluster up (no KCM yet)"] = time.monotonic() - begin
        return self

    def deploy(self) -> LabCluster:
        """What a user does first: ``saltutil.sync_all`` and ``state.apply kcm`` on every master
        over the bus, then every KCM healthy under systemd and a leader (timings recorded)."""
        sync = self.salt("saltutil.sync_all", timeout=300)
        if sorted(sync) != sorted(self.nodes):
            raise RuntimeError(f"saltutil.sync_all answered for {sorted(sync)}, not {sorted(self.nodes)}: {sync}")
        begin = time.monotonic()
        self.apply("kcm")
        self.timings[f"salt state.apply kcm on {len(self.nodes)} machines"] = time.monotonic() - begin
        begin = time.monotonic()
        self.wait_healthy(timeout=120)
        self.wait_for_leader(60)
        self.timings["first leader after the apply"] = time.monotonic() - begin
        return self

    def close(self) -> None:
        if self.lease_log is not None:
            self.lease_log.stop()
        self.lab.close()
        for master in self.masters:
            master.stop()
        if self.cp is not None:
            self.cp.stop()

    @property
    def all_names(self) -> tuple[str, ...]:
        return (*self.nodes, *(n for n in self.spares if n not in self.nodes))

    def boot(self, name: str, grains: dict | None = None):
        """Boot spare master ``name`` (its minion config carries ``grains``); it joins ``nodes``."""
        if name not in self.spares:
            raise ValueError(f"{name} is not one of this lab's spares {self.spares}")
        config = self.minion_config(name) | ({"grains": dict(grains)} if grains else {})
        machine = self.lab.boot(name, salt=config)
        if name not in self.nodes:
            self.nodes = (*self.nodes, name)
        return machine

    def power_on(self, name: str, timeout: float = 120.0) -> None:
        """Boot master ``name`` again after a power-off and redeploy it over the bus: each boot
        is a fresh overlay, as a reinstalled master would be (its minion key is kept)."""
        self.lab.boot(name, salt=self.minion_config(name))
        for master in self.masters:
            master.wait_for_minions([name], timeout=timeout)
        self.salt("saltutil.sync_all", target=[name], timeout=300)
        self.apply("kcm", target=[name])
        self.wait_healthy([name], timeout=timeout)

    def __enter__(self) -> LabCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def log_paths(self) -> list[Path]:
        paths = list(self.cp.log_paths()) if self.cp else []
        return paths + [master.log_path for master in self.masters]

    # -- pillar -------------------------------------------------------------------------------

    def tarball(self, version: str | None = None) -> tuple[str, str]:
        """(url, hash url) of a built release's server tarball as the machines see it."""
        version = version or self.version
        name = f"kubernetes-server-{version}-linux-amd64.tar.gz"
        if not (K8S_CACHE / version / name).is_file():
            raise FileNotFoundError(f"{K8S_CACHE / version / name} is missing: scripts/k8s-binaries {version}")
        url = f"file://{INSIDE_K8S}/{version}/{name}"
        return url, f"{url}.sha512"

    def pillar_for(self, name: str, version: str | None = None) -> dict:
        """The pillar of master ``name``: defaults everywhere but what this lab decides."""
        url, hash_url = self.tarball(version)
        addresses = [self.lab.address_of(n) for n in self.all_names]
        kcm = {
            "version": version or self.version,
            "source": {"type": "tarball", "url": url, "hash": hash_url},
            "apiserver": self.cp.apiserver_url,
            "pki": dict(self.cp.kcm_pki([*self.all_names, *addresses]), mode="pillar"),
        }
        if self.election:
            kcm["leader_election"] = dict(self.election)
        return {"kcm": merge(kcm, self.kcm_overrides)}

    def change_pillar(self, names=None, **kcm) -> None:
        """Edit the pillar of ``names`` (all masters by default) on the salt-master."""
        for name in names or self.nodes:
            self.pillars[name] = merge(self.pillars[name], {"kcm": kcm})
        for master in self.masters:
            master.write_pillar(self.pillars)

    # -- Salt ---------------------------------------------------------------------------------

    @property
    def masters(self) -> list[SaltMaster]:
        return [m for m in (self.master, *self.more_masters) if m is not None]

    def minion_config(self, name: str) -> dict:
        """The minion config of machine ``name``: every salt-master of the lab."""
        if self.more_masters:
            return self.master.multi_master_config(name, self.more_masters)
        return self.master.minion_config(name)

    def add_master(self, offset: int = 2, master_id: str = "kcm-salt-master-2") -> SaltMaster:
        """A second salt-master, as Salt's multi-master has it: on a second host address of
        the bridge (to the machines another host) with the first one's ports, key pair,
        config (reactor, kcm_alert), file roots, runners and pillar; then every minion is
        restarted connected to both, and both see every minion answer."""
        address = self.lab.add_host_address(offset)
        second = SaltMaster(
            self.workdir / f"salt-{len(self.masters) + 1}",
            address,
            master_id=master_id,
            config=self.master_config,
            file_roots=self.file_roots,
            ports=(self.master.ret_port, self.master.publish_port),
        )
        second.share_key(self.master)
        second.marks = self.lease_log
        self.more_masters.append(second)
        second.start()
        code, synced = second.run("saltutil.sync_all")
        if code != 0:
            raise RuntimeError(f"{master_id}: salt-run saltutil.sync_all exited {code}: {synced}")
        second.write_pillar(self.pillars)
        for name in self.nodes:
            self.machine(name).set_minion_config(self.minion_config(name))
        self.restart_minions()
        for master in self.masters:
            master.wait_for_minions(self.nodes)
        return second

    def restart_minions(self, names=None) -> None:
        """``systemctl restart salt-minion`` on machines ``names`` (default: every node): what a
        minion held for a master it could not reach is gone; returns once each old one exited."""
        for name in names or self.nodes:
            self.machine(name).systemctl("restart", "salt-minion")

    @property
    def target(self) -> list[str]:
        return list(self.nodes)

    def salt(self, fun: str, *args, target=None, **kwargs) -> dict:
        return self.master.salt(target or self.target, fun, *args, **kwargs)

    def apply(self, sls: str = "kcm", target=None, timeout: float = 900, **kwargs) -> dict:
        """``salt <masters> state.apply sls``; raises listing the failed states per minion."""
        target = target or self.target
        returns = self.master.salt(target, "state.apply", sls, timeout=timeout, job_timeout=int(timeout), **kwargs)
        problems = []
        for name in target:
            failed = failed_states(returns.get(name))
            if failed:
                problems.append(f"{name}:\n  " + "\n  ".join(failed))
        if problems:
            raise AssertionError(f"state.apply {sls} failed:\n" + "\n".join(problems))
        return returns

    # -- machines and KCM ---------------------------------------------------------------------

    def machine(self, name: str):
        return self.lab.machines[name]

    def main_pid(self, name: str) -> int:
        """KCM's main PID inside machine ``name`` as systemd reports it (0 when not running)."""
        return int(self.machine(name).unit_property(UNIT, "MainPID") or 0)

    def cmdline(self, name: str) -> list[str]:
        """The argv of the running KCM on ``name`` (what systemd really started)."""
        pid = self.main_pid(name)
        if not pid:
            raise RuntimeError(f"{name}: {UNIT} is not running")
        return self.machine(name).read_file(f"/proc/{pid}/cmdline").rstrip("\0").split("\0")

    def restarts(self, name: str) -> int:
        return int(self.machine(name).unit_property(UNIT, "NRestarts") or 0)

    def active(self, name: str) -> str:
        return self.machine(name).systemctl("is-active", UNIT, check=False).stdout.strip()

    def kcm_https(self, name: str, path: str, cert: tuple | None = None, timeout: float = 3.0) -> dict:
        """GET ``path`` from KCM's secure port on machine ``name``, TLS verified against the
        cluster CA, from inside the machine (its loopback, where the formula's default
        ``bind_address: 127.0.0.1`` puts the port): ``{"status", "text", "cert"}`` or ``{"error"}``."""
        import json
        import subprocess
        import sys

        kcm = self.pillars[name]["kcm"]
        port = kcm.get("secure_port", 10257)
        address = kcm.get("bind_address") or "127.0.0.1"
        host = "127.0.0.1" if address in ("127.0.0.1", "0.0.0.0") else address
        argv = [
            "nsenter",
            "-t",
            str(self.machine(name).init_pid),
            "-n",
            sys.executable,
            "-m",
            "kcmlab.inside_https",
            f"https://{host}:{port}{path}",
            str(self.cp.ca_path),
            *[str(p) for p in cert or ()],
            "--timeout",
            str(timeout),
        ]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=timeout + 20, check=False)
        except subprocess.TimeoutExpired:
            return {"error": "timeout"}
        try:
            return json.loads(proc.stdout)
        except ValueError:
            return {"error": (proc.stderr or proc.stdout).strip()[-300:]}

    def healthz(self, name: str, timeout: float = 3.0) -> bool:
        """GET /healthz of KCM on ``name`` from inside the machine (see :meth:`kcm_https`)."""
        reply = self.kcm_https(name, "/healthz", timeout=timeout)
        return reply.get("status") == 200 and str(reply.get("text", "")).strip() == "ok"

    def wait_healthy(self, names=None, timeout: float = 90.0) -> None:
        names = list(names or self.nodes)
        wait_until(
            lambda: all(self.healthz(n) for n in names), timeout, f"KCM /healthz on {', '.join(names)}", interval=0.3
        )

    def lease(self) -> dict | None:
        return self.cp.lease()

    def leader(self) -> str | None:
        return self.cp.leader()

    def holder(self) -> str | None:
        lease = self.lease() or {}
        return (lease.get("spec") or {}).get("holderIdentity") or None

    def wait_for_leader(self, timeout: float, exclude=()) -> str:
        return self.cp.wait_for_leader(timeout, exclude=exclude)

    def wait_for_new_holder(self, old_holder: str | None, timeout: float) -> str:
        """Until the Lease names a holder other than ``old_holder`` (a new process counts)."""

        def other():
            holder = self.holder()
            return holder if holder and holder != old_holder else None

        return wait_until(other, timeout, f"a Lease holder other than {old_holder}", interval=0.1)

    def node_of(self, holder: str | None) -> str | None:
        return node_of(holder)

    # -- operations on KCM, all through systemd -----------------------------------------------

    def kill(self, name: str) -> int:
        """``kill -9`` of KCM's main PID on ``name`` (a crash: systemd restarts it); returns the PID."""
        pid = self.main_pid(name)
        if not pid:
            raise RuntimeError(f"{name}: {UNIT} has no main PID to kill")
        if self.lease_log is not None:
            self.lease_log.mark(f"{name}: kill -9 of KCM")
        self.machine(name).run(["kill", "-9", str(pid)])
        return pid

    def stop(self, name: str) -> None:
        self.machine(name).systemctl("stop", UNIT)

    def start_unit(self, name: str) -> None:
        self.machine(name).systemctl("start", UNIT)

    def running(self) -> list[str]:
        return [name for name in self.nodes if self.active(name) == "active"]

    def ensure_running(self, timeout: float = 90.0) -> str:
        """Every KCM active and healthy (started where it is not), and a leader that renews
        (not the record a dead process left); returns the leader's node."""
        for name in self.nodes:
            if self.active(name) != "active":
                self.start_unit(name)
        self.wait_healthy(timeout=timeout)
        return self.renewing_leader(timeout)

    # -- reading the leader and something else at one moment ---------------------------------

    def lease_spec(self) -> dict:
        return (self.lease() or {}).get("spec") or {}

    def consistent(self, read=lambda: None, timeout: float = 90.0) -> Snapshot:
        """``read()`` taken while one live KCM held the Lease throughout, and that leader.

        The Lease is read before ``read()`` and after it until its holder renews it: the
        same process (holderIdentity, leaseTransitions) renewing after the read held it
        during the read. When the Lease moved, or its holder is a dead process that no
        longer renews, everything is read again, until ``timeout``. Compare what ``read()``
        returns with ``leader``/``holder``, never with a leader read at another moment.
        """
        election = self.election_seconds
        renewal = election["renew_deadline"] + election["retry_period"]

        def attempt():
            before = self.lease_spec()
            if not before.get("holderIdentity"):
                return None
            value = read()
            deadline = time.monotonic() + renewal
            while time.monotonic() < deadline:
                after = self.lease_spec()
                if after.get("renewTime") != before.get("renewTime") or after.get("holderIdentity") != before.get(
                    "holderIdentity"
                ):
                    break
                time.sleep(0.1)
            else:
                return None
            keys = ("holderIdentity", "leaseTransitions")
            if [after.get(k) for k in keys] != [before.get(k) for k in keys] or not is_live(after):
                log.info(
                    "the Lease moved during a read (%s -> %s): reading again",
                    before.get("holderIdentity"),
                    after.get("holderIdentity"),
                )
                return None
            return Snapshot(node_of(after["holderIdentity"]), after["holderIdentity"], after, value)

        return wait_until(attempt, timeout, "a read while one renewing KCM held the Lease throughout", interval=0.2)

    def renewing_leader(self, timeout: float = 90.0) -> str:
        """The node of a leader that renews the Lease now (not a dead process's record)."""
        return self.consistent(timeout=timeout).leader

    def deployed(self, name: str) -> dict:
        """What the formula recorded as deployed on ``name`` (paths, version, flags)."""
        import json

        return json.loads(self.machine(name).read_file("/var/cache/salt/minion/kcm/deployed.json"))

    def starts_since(self, name: str, since: float) -> int:
        """How many times systemd started KCM on ``name`` since the epoch time ``since``."""
        out = (
            self.machine(name)
            .run(["journalctl", "--no-pager", "-o", "cat", "--since", f"@{since:.3f}", "-u", UNIT], check=False)
            .stdout
        )
        return sum(1 for line in out.splitlines() if line.startswith(f"Started {UNIT}.service"))
