"""The demo behind ``scripts/demo``: the whole story of kcm-formula on real systemd machines.

``up`` starts etcd + kube-apiserver on a host bridge (``kcmlab``, suite ``demo``), Alertmanager
on the host's loopback, a real salt-master with the formula's ``kcm.master`` config (reactor +
kcm_alert), and three systemd machines master-1..3, each running ``salt-minion`` under
systemd. It applies the formula over the bus (``salt 'master*' state.apply kcm``, pillar from
``pillar.example`` with the lab's facts, default paths, ``service:manage: true``), then the
``kcm.beacon``, prints ``kcm.status``, and drives a failover with ``systemctl stop`` of the
leader's service: the new leader, the ``kcm/alert/changed`` event on the master's bus and the
``KCMLeaderChanged`` alert in Alertmanager. Everything keeps running after ``up`` returns:
``status``, ``failover`` and ``shell`` work on it, ``down`` removes it.

The host processes (etcd, kube-apiserver, Alertmanager, salt-master) are recorded in
``<sandbox>/demo.json`` with pid, session and start time, so ``down`` stops exactly those and
whatever they spawned in their session. The machines are ``kcmlab``'s: ``down`` removes them,
their cgroups, veths and the bridge by the lab's suite name, with or without ``demo.json``.
``down`` and ``shell`` need only the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kcmlab.machines import inside_argv, leftovers, sweep  # noqa: E402 - stdlib only, down needs no venv

STATE_NAME = "demo.json"
NODES = ("master-1", "master-2", "master-3")
SUITE = os.environ.get("KCM_DEMO_SUITE") or "demo"
UNIT = "kube-controller-manager"
# Short timings so the failover fits in seconds (lease / renew deadline / retry period).
ELECTION = {"lease_duration": "4s", "renew_deadline": "3s", "retry_period": "1s"}
# Beacon settings for the demo: poll every second (minion loop_interval 1).
BEACON = {"interval": 1, "debounce": 2, "stale_after": 3, "timeout": 2}
BEACON_STATE = "/var/cache/salt/minion/kcm/beacon-kcm_leader.json"
# AF_UNIX socket paths are limited to 107 bytes; the master's live in its root_dir.
SOCKET_PATH_MAX = 107
# Upper bounds for things that must happen; exceeding one is an error naming the part.
WAIT = {"apply": 900, "kcm": 120, "leader": 60, "beacon": 60, "alert": 60}
# Stop order of the host processes: the watchers before the watched, the control plane last.
STOP_ORDER = ("salt-master", "alertmanager", "kube-apiserver", "etcd")
TOTAL_STEPS = 7


class DemoError(RuntimeError):
    """Something did not come up; the message names it and its log."""


# ---------------------------------------------------------------------------------------------
# Output


class Say:
    """Short progress lines with the time since the command started."""

    def __init__(self):
        self.begin = time.monotonic()
        self.step_begin = self.begin

    def elapsed(self) -> float:
        return time.monotonic() - self.begin

    def step(self, number, text: str) -> None:
        self.step_begin = time.monotonic()
        print(f"\n\033[1m==> [{number}/{TOTAL_STEPS}] {text}\033[0m  (t={self.elapsed():.1f}s)", flush=True)

    def line(self, text: str) -> None:
        print(f"    {text}", flush=True)

    def done(self, text: str) -> None:
        print(f"    ok: {text} ({time.monotonic() - self.step_begin:.1f}s)", flush=True)

    def block(self, text: str, indent: str = "    | ") -> None:
        for row in text.rstrip("\n").splitlines():
            print(indent + row, flush=True)


say = Say()


# ---------------------------------------------------------------------------------------------
# The sandbox and its state file


def sandbox_dir() -> Path:
    raw = os.environ.get("KCM_DEMO_DIR") or str(REPO / ".demo")
    return Path(raw).expanduser().resolve()


def load_state(sandbox: Path) -> dict | None:
    try:
        return json.loads((sandbox / STATE_NAME).read_text())
    except (FileNotFoundError, ValueError):
        return None


def save_state(sandbox: Path, state: dict) -> None:
    """Write demo.json atomically: a Ctrl-C between two writes leaves the previous one."""
    tmp = sandbox / f".{STATE_NAME}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, sandbox / STATE_NAME)


# ---------------------------------------------------------------------------------------------
# Host processes: identity from /proc, stop by session


def proc_stat(pid: int) -> dict | None:
    """state, session and start time (clock ticks) of ``pid``; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces or ')': split after its last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    return {"state": fields[0], "session": int(fields[3]), "start": int(fields[19])}


def record_of(name: str, pid: int, log_path) -> dict:
    stat = proc_stat(pid)
    if stat is None:
        raise DemoError(f"{name} (pid {pid}) is gone; log {log_path}")
    return {"name": name, "pid": pid, "sid": stat["session"], "start": stat["start"], "log": str(log_path)}


def alive(record: dict) -> bool:
    """The recorded process itself still runs (same pid and start time, not a zombie)."""
    stat = proc_stat(record["pid"])
    return bool(stat and stat["start"] == record["start"] and stat["state"] != "Z")


def _live_pids():
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat and stat["state"] != "Z":
                yield int(entry.name), stat


def session_members(record: dict) -> list[int]:
    """Live processes of the recorded process's session started no earlier than it (the
    start-time floor keeps a reused session id from matching)."""
    return [pid for pid, stat in _live_pids() if stat["session"] == record["sid"] and stat["start"] >= record["start"]]


def orphan_sessions(sandbox: Path) -> list[dict]:
    """Session leaders whose command line names the sandbox: the demo's host daemons, found
    without demo.json (an `up` killed before it wrote it). Daemons lead their own session;
    a user's `less <sandbox>/logs/...` does not."""
    found = []
    needle = str(sandbox) + "/"
    for pid, stat in _live_pids():
        if stat["session"] != pid or pid == os.getpid():
            continue
        try:
            # Split on blanks too: salt-master rewrites its argv into one title string.
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if any(needle in arg for arg in argv):
            # Named like a recorded one (salt-master runs as "python3 .../salt-master"), so
            # that it is stopped in its tier.
            tool = next((t for t in STOP_ORDER if any(Path(a).name.endswith(t) for a in argv[:2])), Path(argv[0]).name)
            found.append({"name": f"{tool} (not in {STATE_NAME})", "pid": pid, "sid": pid, "start": stat["start"],
                          "log": ""})
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_record(record: dict, timeout: float = 10.0) -> int:
    """SIGTERM every process of the record's session, SIGKILL what is left after ``timeout``;
    returns how many processes were signalled."""
    members = session_members(record)
    for pid in members:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and session_members(record):
        time.sleep(0.1)
    for pid in session_members(record):
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and session_members(record):
        time.sleep(0.1)
    return len(members)


def halt_machines(state: dict, timeout: float = 1.0) -> None:
    """SIGTERM to each recorded systemd-nspawn (a clean halt), all at once; what is left after
    ``timeout`` the suite's sweep kills through its cgroups (a thrown-away machine's orderly
    shutdown takes seconds and buys nothing, as in ``Lab.close``)."""
    records = [m["nspawn"] for m in (state or {}).get("machines", {}).values() if alive(m["nspawn"])]
    for record in records:
        _signal(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(r) for r in records):
        time.sleep(0.1)


def take_down(sandbox: Path, state: dict | None, quiet: bool = False) -> list[str]:
    """Stop the machines and the host processes of a demo; returns what is still there."""
    suite = (state or {}).get("suite") or SUITE
    begin = time.monotonic()
    halt_machines(state)
    sweep(suite, NODES)
    if not quiet:
        say.line(f"machines of lab {suite!r} halted and removed with their cgroups, veths and bridge "
                 f"({time.monotonic() - begin:.1f}s)")
    processes = dict((state or {}).get("processes", {}))
    for orphan in orphan_sessions(sandbox):
        if not any(r["sid"] == orphan["sid"] for r in processes.values()):
            key = orphan["name"] if orphan["name"] not in processes else f"{orphan['name']} #{orphan['pid']}"
            processes[key] = orphan

    def rank(name):
        return next((i for i, prefix in enumerate(STOP_ORDER) if name.startswith(prefix)), -1)

    def stop(name):
        begin = time.monotonic()
        # The apiserver's graceful drain of open watches (about 10 s) buys nothing here.
        count = stop_record(processes[name], timeout=3.0)
        if count and not quiet:
            extra = f", +{count - 1} in its session" if count > 1 else ""
            say.line(f"stopped {name} (pid {processes[name]['pid']}{extra}) in {time.monotonic() - begin:.1f}s")

    # Tier by tier (STOP_ORDER), the members of a tier at once.
    for tier in sorted({rank(name) for name in processes}):
        names = [name for name in processes if rank(name) == tier]
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(stop, names))
    left = leftovers(suite, NODES)
    left += [f"process {name}" for name, record in processes.items() if session_members(record)]
    return left


# ---------------------------------------------------------------------------------------------
# The running demo, as any later command sees it


class DemoMachine:
    """A machine of the running demo: commands run inside through nsenter into its init."""

    def __init__(self, name: str, record: dict):
        self.name = name
        self.address = record["address"]
        self.init = record["init"]

    def check(self) -> None:
        if not alive(self.init):
            raise DemoError(f"machine {self.name} is not running (its init, pid {self.init['pid']}, is gone); "
                            "scripts/demo down, then up")

    def run(self, argv, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        self.check()
        proc = subprocess.run(inside_argv(self.init["pid"], argv), capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise DemoError(f"{self.name}: {' '.join(map(str, argv))} exited {proc.returncode}: "
                            f"{proc.stdout[-800:]}{proc.stderr[-800:]}")
        return proc

    def systemctl(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["systemctl", *args], check=check)

    def active(self) -> str:
        return self.systemctl("is-active", UNIT, check=False).stdout.strip()

    def shell_command(self) -> str:
        return f"nsenter -t {self.init['pid']} -a env -i TERM=xterm bash -l"


class Demo:
    """The demo that ``up`` left: its salt-master, machines, Lease and Alertmanager."""

    def __init__(self, sandbox: Path, state: dict):
        from kcmlab.saltmaster import SaltMaster

        self.sandbox = sandbox
        self.state = state
        self.master = SaltMaster.attach(Path(state["salt"]["root"]), state["salt"]["interface"])
        self.machines = {name: DemoMachine(name, record) for name, record in state["machines"].items()}

    def salt_text(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.master.command("salt", *args, timeout=timeout)

    def shown(self, tool: str, *args) -> str:
        return self.master.shown(tool, *map(shlex.quote, args))

    def lease(self) -> dict | None:
        """The KCM Lease as the admin reads it (TLS verified against the demo's CA)."""
        from kcmlab.controlplane import LEASE_PATH, https_session

        cp = self.state["controlplane"]
        with https_session(cp["ca"], (cp["admin_cert"], cp["admin_key"])) as session:
            reply = session.get(cp["apiserver_url"] + LEASE_PATH, timeout=5)
        if reply.status_code == 404:
            return None
        reply.raise_for_status()
        return reply.json()

    def leader(self) -> str | None:
        from kcmlab.controlplane import node_of

        return node_of(((self.lease() or {}).get("spec") or {}).get("holderIdentity"))

    def healthy(self, name: str) -> bool:
        """GET https://<machine>:10257/healthz from the host, TLS verified."""
        from kcmlab.controlplane import https_session

        with https_session(self.state["controlplane"]["ca"]) as session:
            reply = session.get(f"https://{self.machines[name].address}:{self.state['secure_port']}/healthz",
                                timeout=3)
        return reply.status_code == 200 and reply.text.strip() == "ok"

    def wait(self, predicate, timeout: float, what: str, interval: float = 0.2):
        from kcmlab.controlplane import wait_until

        try:
            return wait_until(predicate, timeout, what, interval=interval)
        except TimeoutError as exc:
            raise DemoError(f"{exc}; logs in {self.sandbox / 'lab'} and the machines' journals "
                            f"(scripts/demo shell master-1 journalctl -u {UNIT})") from None

    def ensure_running(self) -> list[str]:
        """Start KCM where it is not active; wait until all are healthy with a leader."""
        started = []
        for name, machine in self.machines.items():
            if machine.active() != "active":
                machine.systemctl("start", UNIT)
                started.append(name)
        self.wait(lambda: all(self.healthy(n) for n in self.machines), WAIT["kcm"], "KCM /healthz on every master")
        self.wait(self.leader, WAIT["leader"], "a KCM leader in the Lease")
        return started

    def print_status(self) -> None:
        say.line("$ " + self.shown("salt", "master*", "kcm.status", "--out=table"))
        proc = self.salt_text("--out=table", "--static", "--timeout=30", "master*", "kcm.status", timeout=90)
        say.block(proc.stdout or proc.stderr, indent="    ")
        if proc.returncode != 0:
            say.line(f"(kcm.status exited {proc.returncode}: a master reports errors in the table above)")

    def failover(self, number=None) -> dict:
        """``systemctl stop`` of the leader's KCM: the new leader, the alert event, the alert;
        then ``systemctl start`` it again (it rejoins as a standby)."""
        from kcmlab.alertmanager import active_alerts

        if number is not None:
            say.step(number, "failover drill: systemctl stop kube-controller-manager on the leader")
        started = self.ensure_running()
        if started:
            say.line(f"started KCM again where it was stopped: {', '.join(started)}")
        for name, machine in self.machines.items():
            self.wait(lambda m=machine: m.run(["test", "-e", BEACON_STATE], check=False).returncode == 0,
                      WAIT["beacon"], f"{name}: the kcm_leader beacon's first poll")
        old = self.leader()
        timings = {}
        with self.master.events() as bus:
            if not bus.connect_pub(timeout=10):
                raise DemoError(f"cannot listen on the salt-master's event bus ({self.master.conf_dir})")
            watch = self.shown("salt-run", "state.event", "tagmatch=kcm/alert/*")
            say.line(f"listening on the master bus for kcm/alert/* (as `{watch}` would)")
            say.line(f"leader is {old}: $ scripts/demo shell {old} systemctl stop {UNIT}")
            begin = time.monotonic()
            self.machines[old].systemctl("stop", UNIT)
            timings["stopped"] = time.monotonic() - begin
            new = self.wait(lambda: (lambda n: n if n and n != old else None)(self.leader()),
                            WAIT["leader"], f"a new KCM leader other than {old}", interval=0.1)
            timings["new_leader"] = time.monotonic() - begin
            say.line(f"leader: {old} -> {new} (new leader {timings['new_leader']:.1f}s after systemctl stop, "
                     f"which itself took {timings['stopped']:.1f}s)")
            say.line(f"{old}: systemctl is-active {UNIT} -> {self.machines[old].active()}")
            event, others = self.alert_event(bus, begin)
            timings["alert_event"] = time.monotonic() - begin
        for seen in others:
            say.line(f"(also on the bus: {seen})")
        say.line(f"event on the master bus {timings['alert_event']:.1f}s after the stop:")
        data = {k: v for k, v in event["data"].items() if k != "_stamp"}
        say.block(f"tag: {event['tag']}\n" + json.dumps(data, indent=2, sort_keys=True))
        url = self.state["alertmanager_url"]
        alerts = self.wait(lambda: active_alerts(url, alertname="KCMLeaderChanged", old_node=old, new_node=new),
                           WAIT["alert"], "the KCMLeaderChanged alert in Alertmanager", interval=0.5)
        timings["alert_in_alertmanager"] = time.monotonic() - begin
        say.line(f"the alert as Alertmanager holds it (GET {url}/api/v2/alerts):")
        keep = ("labels", "annotations", "startsAt", "endsAt", "status")
        say.block(json.dumps([{k: a[k] for k in keep if k in a} for a in alerts], indent=2, sort_keys=True))
        self.machines[old].systemctl("start", UNIT)
        self.wait(lambda: self.healthy(old), WAIT["kcm"], f"KCM /healthz on {old}")
        say.line(f"systemctl start {UNIT} on {old}: it rejoins as a standby (leader: {self.leader()})")
        say.line(f"timings: stop -> new leader {timings['new_leader']:.1f}s, -> kcm/alert event "
                 f"{timings['alert_event']:.1f}s, -> alert in Alertmanager {timings['alert_in_alertmanager']:.1f}s")
        return {"old": old, "new": new, **timings}

    def alert_event(self, bus, begin: float):
        """The first kcm/alert/changed event (dedupe sends one); other kcm/alert/* tags seen on the way."""
        others = []
        deadline = begin + WAIT["alert"]
        while time.monotonic() < deadline:
            event = bus.get_event(wait=1, tag="kcm/alert/", full=True)
            if not event:
                continue
            if event["tag"] == "kcm/alert/changed":
                return event, others
            others.append(f"{event['tag']} at +{time.monotonic() - begin:.1f}s")
        raise DemoError(f"no kcm/alert/changed event within {WAIT['alert']}s of the stop (seen: {others or 'none'}); "
                        f"see {self.master.log_path}")

    def print_explore(self) -> None:
        cp = self.state["controlplane"]
        shells = "\n".join(f"{m.shell_command():<60} a shell in {m.name} ({m.address})"
                           for m in self.machines.values())
        say.block(f"""export PATH={Path(self.state['python']).parent}:$PATH   # the demo's Salt
scripts/demo status              the kcm.status table and the Lease holder
scripts/demo failover            systemctl stop the leader's KCM again: the event and the alert
scripts/demo shell master-1      a shell in master-1 (or: scripts/demo shell master-1 journalctl -u {UNIT})
scripts/demo down                remove the machines, stop everything, remove {self.sandbox}
{shells}
{self.shown('salt', 'master*', 'kcm.leader')}
{self.shown('salt', 'master*', 'kcm.status', '--out=table')}
{self.shown('salt', 'master*', 'cmd.run', f'systemctl status {UNIT}')}
{self.shown('salt-run', 'state.event', 'tagmatch=kcm/alert/*')}
kubectl --kubeconfig {cp['admin_kubeconfig']} -n kube-system get lease kube-controller-manager -o yaml
curl -s {self.state['alertmanager_url']}/api/v2/alerts
logs: {self.sandbox}/lab (control plane, salt-master, machine consoles), journals inside the machines""",
                  indent="    ")


# ---------------------------------------------------------------------------------------------
# up


def check_sandbox(sandbox: Path) -> None:
    """Refuse to start over a running demo; clear the remains of a dead one."""
    state = load_state(sandbox)
    running = [name for name, record in (state or {}).get("processes", {}).items() if alive(record)]
    running += [name for name, m in (state or {}).get("machines", {}).items() if alive(m["nspawn"])]
    if running:
        raise DemoError(f"a demo is already running in {sandbox} ({', '.join(sorted(running))}); "
                        "use scripts/demo status, or scripts/demo down first")
    if state is None and sandbox.is_dir() and any(sandbox.iterdir()) and not (sandbox / "lab").exists():
        raise DemoError(f"{sandbox} is not empty and holds no demo ({STATE_NAME}): left untouched; "
                        "set KCM_DEMO_DIR to another directory")
    if sandbox.exists() or leftovers(SUITE, NODES):
        say.line(f"removing the remains of an earlier demo ({sandbox}, lab {SUITE!r})")
        take_down(sandbox, state, quiet=True)
        shutil.rmtree(sandbox, ignore_errors=True)
    longest = len(str(sandbox / "lab" / "salt" / "root" / "run" / "master_event_pull.ipc"))
    if longest > SOCKET_PATH_MAX:
        raise DemoError(f"KCM_DEMO_DIR={sandbox} is too long: the salt-master's unix sockets under it would need "
                        f"{longest} bytes (limit {SOCKET_PATH_MAX}); use a shorter directory")


def apply_master_config(sandbox: Path, conf_dir: Path, alertmanager_url: str) -> None:
    """The formula's kcm.master (reactor + kcm_alert) into the salt-master's master.d, applied
    with salt-call --local as on a master host, before the master first starts."""
    from kcmlab.cluster import failed_states
    from kcmlab.masterless import MasterlessMinion

    pillar = {"kcm": {"master": {"config_dir": str(conf_dir / "master.d"), "alertmanager_urls": [alertmanager_url],
                                 "allow_http": True, "reporters": {"tgt": "master-*", "tgt_type": "glob"},
                                 "labels": {"env": "demo"}, "sync_runners": False}}}
    host_root = sandbox / "kcm-master"
    log_path = host_root / "salt" / "salt-call.log"
    ret = MasterlessMinion(host_root, "demo-salt-master", pillar, extra_config={"log_file": str(log_path)}).apply(
        "kcm.master")
    failed = failed_states(ret)
    if failed:
        raise DemoError("salt-call --local state.apply kcm.master failed:\n" + "\n".join(failed)
                        + f"\n(log {log_path})")
    say.line(f"kcm.master applied with salt-call --local: {conf_dir / 'master.d' / 'kcm.conf'}")


def demo_pillar(cluster, name: str) -> dict:
    """pillar.example with the lab's facts in place of the install guide's."""
    import yaml

    from kcmlab.cluster import merge

    example = yaml.safe_load((REPO / "pillar.example").read_text())["kcm"]
    example.pop("master", None)  # the Salt master's own settings, not a KCM master's
    lab = cluster.pillar_for(name)["kcm"]  # version, source, apiserver, pki, leader election
    kcm = merge(example, {key: value for key, value in lab.items() if key != "pki"})
    kcm.update({
        "pki": lab["pki"],
        "bind_address": cluster.lab.address_of(name), "bind_interface": "",
        "beacon": dict(example.get("beacon") or {}, **BEACON),
        "service": dict(example.get("service") or {}, manage=True),
    })
    return {"kcm": kcm}


def apply(demo: Demo, sls: str) -> None:
    """``salt 'master*' state.apply <sls>`` over the bus; one summary line per minion."""
    from kcmlab.cluster import failed_states

    say.line("$ " + demo.shown("salt", "master*", "state.apply", sls))
    begin = time.monotonic()
    returns = demo.master.salt("master*", "state.apply", sls, timeout=WAIT["apply"] + 60, job_timeout=WAIT["apply"])
    problems = []
    for name in NODES:
        ret = returns.get(name)
        failed = failed_states(ret)
        if failed:
            problems.append(f"{name}:\n  " + "\n  ".join(failed))
            continue
        changed = sum(1 for st in ret.values() if st.get("changes"))
        seconds = sum(float(st.get("duration") or 0) for st in ret.values()) / 1000
        say.line(f"{name}: {len(ret)} states succeeded, {changed} changed ({seconds:.1f}s of state run)")
    if problems:
        raise DemoError(f"state.apply {sls} failed:\n" + "\n".join(problems)
                        + "\n(scripts/demo shell <master> journalctl -u salt-minion)")
    say.line(f"state.apply {sls}: {time.monotonic() - begin:.1f}s wall")


def start_lab(sandbox: Path, k8s_bin: Path, alertmanager):
    """The LabCluster (control plane, salt-master, machines) with the demo's pillar written."""
    from kcmlab.cluster import LabCluster

    cluster = LabCluster(k8s_bin, sandbox / "lab", suite=SUITE, nodes=NODES, election=ELECTION)
    apply_master_config(sandbox, sandbox / "lab" / "salt" / "conf", alertmanager.url)
    cluster.start()
    cluster.pillars = {name: demo_pillar(cluster, name) for name in NODES}
    cluster.master.write_pillar(cluster.pillars)
    return cluster


def record_lab(sandbox: Path, state: dict, cluster) -> None:
    cp = cluster.cp
    for daemon in (cp.etcd, cp.apiserver, cluster.master.daemon):
        state["processes"][daemon.name] = record_of(daemon.name, daemon.pid, daemon.log_path)
    state["machines"] = {
        name: {"address": machine.address,
               "nspawn": record_of(f"nspawn {name}", machine.process.pid, machine.console_log),
               "init": record_of(f"init {name}", machine.init_pid, machine.console_log)}
        for name, machine in cluster.lab.machines.items()}
    state["salt"] = {"root": str(cluster.master.root), "interface": cluster.master.interface}
    state["controlplane"] = {
        "apiserver_url": cp.apiserver_url, "ca": str(cp.ca_path), "admin_cert": str(cp.admin_cert_path),
        "admin_key": str(cp.admin_key_path), "admin_kubeconfig": str(cp.admin_kubeconfig)}
    state["secure_port"] = cluster.pillars[NODES[0]]["kcm"]["secure_port"]
    save_state(sandbox, state)


def cmd_up(sandbox: Path) -> int:
    from kcmlab.alertmanager import Alertmanager
    from kcmlab.rootfs import ensure_rootfs, rootfs_dir

    k8s_bin = os.environ.get("KCM_K8S_BIN")
    if not k8s_bin:
        raise DemoError("KCM_K8S_BIN is not set: run the demo through scripts/demo, which builds the binaries")
    state = {"sandbox": str(sandbox), "python": sys.executable, "suite": SUITE, "started_at": time.time(),
             "processes": {}, "machines": {}}
    say.step(2, f"the machines' root filesystem and the sandbox {sandbox}")
    check_sandbox(sandbox)
    cluster = alertmanager = None
    try:
        if not (rootfs_dir() / ".kcmlab-complete").exists():
            say.line("building the machines' rootfs with mmdebstrap (once, about 1.5 minutes)")
        try:
            rootfs = ensure_rootfs()
        except RuntimeError as exc:
            raise DemoError(f"the machines' rootfs: {exc}") from None
        sandbox.mkdir(parents=True, mode=0o700)
        save_state(sandbox, state)
        say.done(f"rootfs {rootfs} (Debian bookworm, systemd, Salt); state in {sandbox / STATE_NAME}")

        say.step(3, "Alertmanager on the host; the salt-master's kcm.master config")
        alertmanager = Alertmanager(sandbox / "alertmanager")
        alertmanager.start()
        state["processes"]["alertmanager"] = record_of("alertmanager", alertmanager.pid, alertmanager.log_path)
        state["alertmanager_url"] = alertmanager.url
        save_state(sandbox, state)
        say.line(f"Alertmanager at {alertmanager.url} (log {alertmanager.log_path})")

        say.step(4, f"etcd + kube-apiserver on the bridge kcm-{SUITE}, a salt-master, machines master-1..3")
        cluster = start_lab(sandbox, Path(k8s_bin), alertmanager)
        record_lab(sandbox, state, cluster)
        demo = Demo(sandbox, state)
        say.line(f"kube-apiserver at {cluster.cp.apiserver_url} (serving certificate for {cluster.lab.host_ip})")
        say.line(f"salt-master on {cluster.lab.host_ip}:{cluster.master.ret_port} (log {cluster.master.log_path})")
        for name, machine in cluster.lab.machines.items():
            say.line(f"{name}: {machine.address}, systemd up in {machine.boot_seconds:.1f}s, "
                     f"salt-minion.service {machine.systemctl('is-active', 'salt-minion', check=False).stdout.strip()}")
        say.done("the lab is up: " + ", ".join(f"{k} {v:.1f}s" for k, v in cluster.timings.items()))

        say.step(5, "applying the formula over the bus (pillar.example + the lab's facts, service:manage true)")
        say.line("$ " + demo.shown("salt", "master*", "saltutil.sync_all"))
        synced = demo.master.salt("master*", "saltutil.sync_all", timeout=300, job_timeout=120)
        if sorted(synced) != list(NODES):
            raise DemoError(f"saltutil.sync_all answered for {sorted(synced)}, not {list(NODES)}")
        apply(demo, "kcm")
        demo.wait(lambda: all(demo.healthy(n) for n in NODES), WAIT["kcm"], "KCM /healthz on every master")
        leader = demo.wait(demo.leader, WAIT["leader"], "a KCM leader in the Lease")
        say.done(f"systemd runs KCM on master-1..3; {leader} holds the lease")

        say.step(6, "the kcm_leader beacon, then every master's status")
        say.line("(installed once a leader exists, so its first look is a healthy Lease, not a 'no leader')")
        apply(demo, "kcm.beacon")
        demo.print_status()

        state["last_failover"] = demo.failover(number=7)
        save_state(sandbox, state)
        print("\n\033[1m==> the demo keeps running; explore it\033[0m", flush=True)
        demo.print_explore()
        print(f"\n`demo up` finished in {say.elapsed():.1f}s (after the install step); everything keeps running.",
              flush=True)
        return 0
    except KeyboardInterrupt:
        # A second Ctrl-C must not cut the teardown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\ninterrupted: tearing everything down", flush=True)
        _close(cluster, alertmanager)
        take_down(sandbox, load_state(sandbox) or state, quiet=True)
        shutil.rmtree(sandbox, ignore_errors=True)
        return 130
    except BaseException:
        print(f"\n`demo up` failed: stopping what it started; logs are kept in {sandbox} "
              "(scripts/demo down removes them)", file=sys.stderr, flush=True)
        _keep_journals(sandbox, cluster)
        _close(cluster, alertmanager)
        raise


def _close(cluster, alertmanager) -> None:
    if cluster is not None:
        cluster.close()
    if alertmanager is not None:
        alertmanager.stop()


def _keep_journals(sandbox: Path, cluster) -> None:
    """The machines' KCM and salt-minion journals beside the other logs (the machines go)."""
    for name, machine in list(getattr(getattr(cluster, "lab", None), "machines", {}).items()):
        for unit in (UNIT, "salt-minion"):
            try:
                (sandbox / f"{name}-{unit}.journal").write_text(machine.journal(unit, lines=400))
            except Exception:  # noqa: BLE001, S112 - best effort: the teardown must go on
                continue


# ---------------------------------------------------------------------------------------------
# status, failover, shell, down


def require_demo(sandbox: Path) -> Demo:
    state = load_state(sandbox)
    if state is None:
        raise DemoError(f"no demo in {sandbox} (scripts/demo up starts one)")
    if "salt" not in state or "last_failover" not in state:
        raise DemoError(f"the demo in {sandbox} did not finish starting; scripts/demo down removes it")
    return Demo(sandbox, state)


def cmd_status(sandbox: Path) -> int:
    demo = require_demo(sandbox)
    for name, record in sorted(demo.state["processes"].items()):
        if not alive(record):
            say.line(f"{name} is not running (log {record['log']})")
    for machine in demo.machines.values():
        machine.check()
        say.line(f"{machine.name} ({machine.address}): systemctl is-active {UNIT} -> {machine.active()}")
    demo.print_status()
    spec = (demo.lease() or {}).get("spec") or {}
    say.line(f"Lease kube-system/kube-controller-manager: holder {spec.get('holderIdentity')}, "
             f"renewed {spec.get('renewTime')}, transitions {spec.get('leaseTransitions')}")
    return 0


def cmd_failover(sandbox: Path) -> int:
    demo = require_demo(sandbox)
    demo.state["last_failover"] = demo.failover()
    save_state(sandbox, demo.state)
    return 0


def cmd_shell(sandbox: Path, name: str, command: list[str]) -> int:
    state = load_state(sandbox)
    if state is None or name not in state.get("machines", {}):
        known = ", ".join(sorted((state or {}).get("machines", {}))) or "none: scripts/demo up starts them"
        raise DemoError(f"no machine {name!r} in the demo in {sandbox} (machines: {known})")
    machine = DemoMachine(name, state["machines"][name])
    machine.check()
    argv = inside_argv(machine.init["pid"], command or ["bash", "-l"], {"TERM": os.environ.get("TERM", "xterm")})
    os.execvp(argv[0], argv)
    return 0  # not reached


def cmd_down(sandbox: Path) -> int:
    state = load_state(sandbox)
    if state is None and sandbox.exists() and any(sandbox.iterdir()):
        if not (sandbox / "lab").exists():
            raise DemoError(f"{sandbox} has no {STATE_NAME} and no lab/: not a demo sandbox, left untouched")
        say.line(f"{sandbox} has no {STATE_NAME}: removing lab {SUITE!r} by its name")
    say.line(f"taking down the demo in {sandbox} (lab {(state or {}).get('suite') or SUITE!r})")
    left = take_down(sandbox, state)
    if left:
        raise DemoError("still there after the teardown: " + "; ".join(left) + f"; {sandbox} kept")
    if sandbox.exists():
        shutil.rmtree(sandbox)
        say.line(f"removed {sandbox}")
    say.line("nothing of the demo is left on this host")
    return 0


def _interrupt(signum, frame):
    """A SIGTERM (a CI timeout, `kill`) tears down like Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "status", "failover", "down"):
        sub.add_parser(name)
    shell = sub.add_parser("shell", help="a shell (or a command) inside a master")
    shell.add_argument("machine", choices=NODES)
    shell.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    sandbox = sandbox_dir()
    signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C tears `up` down even when started from a shell that ignores SIGINT in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.command == "shell":
            return cmd_shell(sandbox, args.machine, args.argv)
        return {"up": cmd_up, "status": cmd_status, "failover": cmd_failover, "down": cmd_down}[args.command](sandbox)
    except DemoError as exc:
        print(f"\033[31mdemo {args.command}: {exc}\033[0m", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
