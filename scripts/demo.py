"""The demo behind ``scripts/demo``: the whole story of kcm-formula on one machine.

``up`` starts, inside one sandbox directory, a real etcd + kube-apiserver, Alertmanager, a
salt-master and three salt-minions (master-1..3), applies the formula over the bus from a
pillar derived from ``pillar.example``, starts the three KCMs from the units it rendered,
prints ``kcm.status``, then kills the leader and shows the alert event and the alert. It
returns leaving everything running; ``status`` and ``failover`` work on what it left, and
``down`` stops every process it started and removes the sandbox.

Every process is recorded in ``<sandbox>/demo.json`` with its pid, session id and start
time, so a later ``down`` stops exactly those processes (and whatever they spawned in their
session), never anything that merely looks similar. ``down`` needs only the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATE_NAME = "demo.json"
NODES = ("master-1", "master-2", "master-3")
# Short timings so the failover fits in seconds (lease / renew deadline / retry period).
ELECTION = {"lease_duration": "4s", "renew_deadline": "3s", "retry_period": "1s"}
# Beacon settings for the demo: poll every second (minion loop_interval 1).
BEACON = {"interval": 1, "debounce": 2, "stale_after": 3, "timeout": 2}
ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")
# AF_UNIX socket paths are limited to 107 bytes; the longest Salt makes is the minion's
# "<sock_dir>/minion_event_<10 hex>_pull.ipc".
SOCKET_PATH_MAX = 107
# Upper bounds for things that must happen; exceeding one is an error naming the part.
WAIT = {"daemon": 60, "minions": 120, "apply": 900, "kcm": 90, "leader": 60, "beacon": 60, "alert": 60}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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

    def step(self, number, total, text: str) -> None:
        self.step_begin = time.monotonic()
        print(f"\n\033[1m==> [{number}/{total}] {text}\033[0m  (t={self.elapsed():.1f}s)", flush=True)

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
    except FileNotFoundError:
        return None


def save_state(sandbox: Path, state: dict) -> None:
    """Write demo.json atomically: a Ctrl-C between two writes leaves the previous one."""
    tmp = sandbox / f".{STATE_NAME}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, sandbox / STATE_NAME)


# ---------------------------------------------------------------------------------------------
# Processes: identity from /proc, stop by session


def proc_stat(pid: int) -> dict | None:
    """state, session and start time (clock ticks) of ``pid``; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces or ')': split after its last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    return {"state": fields[0], "pgrp": int(fields[2]), "session": int(fields[3]), "start": int(fields[19])}


def alive(record: dict) -> bool:
    """The recorded process itself still runs (same pid and start time, not a zombie)."""
    stat = proc_stat(record["pid"])
    return bool(stat and stat["start"] == record["start"] and stat["state"] != "Z")


def session_members(record: dict) -> list[int]:
    """Live processes of the recorded process's session started no earlier than it.

    Salt daemons fork workers and KCM runs under unshare/sh: they all share the session the
    recorded process opened. The start-time floor keeps a reused session id from matching.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = proc_stat(int(entry.name))
        if stat and stat["session"] == record["sid"] and stat["start"] >= record["start"] \
                and stat["state"] != "Z":
            pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def deferred_interrupts():
    """Hold Ctrl-C / SIGTERM until the block ends: starting a process and recording it is
    one step, or an interrupt in between leaves a daemon nobody knows about."""
    pending = []

    def defer(signum, frame):
        pending.append(signum)

    previous = {sig: signal.signal(sig, defer) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            raise KeyboardInterrupt


def record_of(name: str, pid: int, log_path: Path) -> dict:
    stat = proc_stat(pid)
    if stat is None:
        raise DemoError(f"{name} (pid {pid}) exited right after it started; log {log_path}:\n{tail_of(log_path)}")
    return {"name": name, "pid": pid, "sid": stat["session"], "start": stat["start"], "log": str(log_path)}


def stop_record(record: dict, timeout: float = 10.0) -> int:
    """SIGTERM every process of the record's session, SIGKILL what is left after ``timeout``.

    Returns how many processes were signalled.
    """
    members = session_members(record)
    if not members:
        return 0
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


def kill_record(record: dict) -> None:
    """SIGKILL every process of the record's session at once (the failover drill)."""
    for pid in session_members(record):
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def tail_of(path, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


# Stop order: the watchers before the watched, the control plane last.
STOP_ORDER = ("kcm@", "salt-minion@", "salt-master", "alertmanager", "kube-apiserver", "etcd")


def adopt_pidfiles(state: dict) -> None:
    """Record Salt daemons whose pidfile exists but whose start was never recorded.

    An interrupt can land between `salt-master -d` forking and the demo reading its pidfile;
    the pidfile (checked against the process's command line) still names the daemon.
    """
    sandbox = Path(state["sandbox"])
    for pidfile in sorted(sandbox.glob("salt/*/salt-*.pid")):
        text = pidfile.read_text().strip()
        if not text.isdigit():
            continue
        pid = int(text)
        known = {record["pid"] for record in state["processes"].values()}
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if pid in known or str(sandbox) not in cmdline:
            continue
        tool = pidfile.stem
        name = tool if tool == "salt-master" else f"{tool}@{pidfile.parent.name}"
        stat = proc_stat(pid)
        if stat:
            state["processes"][name] = {"name": name, "pid": pid, "sid": stat["session"],
                                        "start": stat["start"], "log": str(pidfile.parent)}


def stop_all(state: dict, quiet: bool = False) -> int:
    """Stop every recorded process, tier by tier (STOP_ORDER), the members of a tier at once."""
    from concurrent.futures import ThreadPoolExecutor

    adopt_pidfiles(state)

    def rank(name):
        return next((i for i, prefix in enumerate(STOP_ORDER) if name.startswith(prefix)), len(STOP_ORDER))

    processes = state.get("processes", {})
    stopped = 0
    for tier in sorted({rank(name) for name in processes}):
        names = sorted(name for name in processes if rank(name) == tier)
        begin = time.monotonic()
        with ThreadPoolExecutor(len(names)) as pool:
            counts = list(pool.map(lambda n: stop_record(processes[n]), names))
        stopped += sum(counts)
        for name, count in zip(names, counts, strict=True):
            if count and not quiet:
                extra = f", +{count - 1} in its session" if count > 1 else ""
                say.line(f"stopped {name} (pid {processes[name]['pid']}{extra}) "
                         f"in {time.monotonic() - begin:.1f}s")
    return stopped


# ---------------------------------------------------------------------------------------------
# Helpers shared by up / status / failover (they need the venv: Salt, requests)


def daemon_env() -> dict:
    """The demo's environment for Salt: loopback never goes through a proxy."""
    env = dict(os.environ)
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY") or env.get("no_proxy"), "127.0.0.1", "localhost"]))
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def salt_tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def run_salt(state: dict, tool: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run salt / salt-run / salt-key against the demo's master config."""
    argv = [salt_tool(tool), f"--config-dir={state['salt']['master_conf']}", *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=daemon_env(), check=False)
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"{tool} {' '.join(args)} gave no answer in {timeout:.0f}s; master log "
                        f"{state['salt']['master_log']}") from exc


def shown_command(state: dict, tool: str, *args) -> str:
    quoted = " ".join(f"'{a}'" if "*" in a else a for a in args)
    return f"{tool} -c {state['salt']['master_conf']} {quoted}"


def lease(state: dict) -> dict | None:
    """The KCM Lease as the admin reads it (TLS verified against the demo CA)."""
    from kcmlab.controlplane import LEASE_PATH, https_session

    cp = state["controlplane"]
    with https_session(cp["ca"], (cp["admin_cert"], cp["admin_key"])) as session:
        reply = session.get(cp["apiserver_url"] + LEASE_PATH, timeout=5)
    if reply.status_code == 404:
        return None
    reply.raise_for_status()
    return reply.json()


def leader_node(state: dict) -> str | None:
    from kcmlab.controlplane import node_of

    record = lease(state)
    return node_of(((record or {}).get("spec") or {}).get("holderIdentity")) if record else None


def wait_for(predicate, timeout: float, what: str, where: str, interval: float = 0.2):
    """Poll ``predicate`` until truthy; a timeout is a DemoError naming ``what`` and ``where``."""
    from kcmlab.controlplane import wait_until

    try:
        return wait_until(predicate, timeout, what, interval=interval)
    except TimeoutError as exc:
        raise DemoError(f"{exc}; see {where}") from None


def kcm_process(state: dict, node: str):
    from kcmlab.controlplane import KcmProcess

    info = state["nodes"][node]
    return KcmProcess(info["unit"], node, info["kcm_log"])


def kcm_healthy(state: dict, node: str) -> bool:
    from kcmlab.controlplane import https_session

    info = state["nodes"][node]
    with https_session(info["ca"]) as session:
        reply = session.get(f"https://127.0.0.1:{info['secure_port']}/healthz", timeout=2)
    return reply.status_code == 200 and reply.text.strip() == "ok"


def start_kcm(sandbox: Path, state: dict, node: str) -> None:
    """Start ``node``'s KCM from the unit the formula rendered (no systemd: its ExecStart)."""
    with deferred_interrupts():
        process = kcm_process(state, node).start()
        state["processes"][f"kcm@{node}"] = record_of(f"kcm@{node}", process.pid, process.log_path)
        save_state(sandbox, state)


def ensure_kcms_running(sandbox: Path, state: dict) -> list[str]:
    """Start every KCM that is not running (KCM exits when it loses its lease); wait healthy."""
    started = []
    for node in NODES:
        record = state["processes"].get(f"kcm@{node}")
        if record is None or not alive(record):
            start_kcm(sandbox, state, node)
            started.append(node)
    for node in NODES:
        wait_for(lambda n=node: kcm_healthy(state, n), WAIT["kcm"], f"kcm@{node} /healthz",
                 state["nodes"][node]["kcm_log"])
    return started


# ---------------------------------------------------------------------------------------------
# up: the steps


TOTAL_STEPS = 9


def check_sandbox(sandbox: Path) -> None:
    """Refuse a directory that is not ours or a demo that still runs; clear a dead one."""
    if not sandbox.exists():
        return
    state = load_state(sandbox)
    if state is None:
        if any(sandbox.iterdir()):
            raise DemoError(f"{sandbox} exists and is not a demo sandbox (no {STATE_NAME}); "
                            "choose another KCM_DEMO_DIR or empty it")
        return
    running = [name for name, rec in state.get("processes", {}).items() if alive(rec)]
    if running:
        raise DemoError(f"a demo is already running in {sandbox} ({', '.join(sorted(running))}); "
                        "use scripts/demo status, or scripts/demo down first")
    say.line(f"removing the remains of an earlier demo in {sandbox}")
    stop_all(state, quiet=True)
    shutil.rmtree(sandbox)


def check_socket_room(sandbox: Path) -> None:
    longest = len(str(sandbox / "salt" / "master-1" / "run" / "minion_event_0123456789_pull.ipc"))
    if longest > SOCKET_PATH_MAX:
        raise DemoError(f"KCM_DEMO_DIR={sandbox} is too long: Salt's unix sockets under it would need "
                        f"{longest} bytes (limit {SOCKET_PATH_MAX}); use a shorter directory")


def step_sandbox(sandbox: Path, k8s_bin: Path) -> dict:
    say.step(2, TOTAL_STEPS, f"creating the sandbox {sandbox}")
    check_sandbox(sandbox)
    check_socket_room(sandbox)
    sandbox.mkdir(parents=True, exist_ok=True, mode=0o700)
    tarballs = sorted(k8s_bin.glob("kubernetes-server-v*-linux-amd64.tar.gz"))
    if len(tarballs) != 1 or not Path(f"{tarballs[0]}.sha512").is_file():
        raise DemoError(f"{k8s_bin} should hold one kubernetes-server-v*-linux-amd64.tar.gz and its .sha512 "
                        "(scripts/k8s-binaries makes them)")
    tarball = tarballs[0]
    state = {
        "sandbox": str(sandbox),
        "python": sys.executable,
        "k8s_bin": str(k8s_bin),
        "tarball": str(tarball),
        "version": tarball.name[len("kubernetes-server-"):-len("-linux-amd64.tar.gz")],
        "started_at": time.time(),
        "processes": {},
        "nodes": {},
    }
    for sub in ("logs", "pillar", "salt"):
        (sandbox / sub).mkdir(exist_ok=True)
    save_state(sandbox, state)
    say.done(f"sandbox ready; everything the demo writes goes below it (state: {sandbox / STATE_NAME})")
    return state


def step_control_plane(sandbox: Path, state: dict):
    from kcmlab.controlplane import ControlPlane

    say.step(3, TOTAL_STEPS, "starting etcd + kube-apiserver, Alertmanager, a salt-master and three salt-minions")
    cp = ControlPlane(state["k8s_bin"], sandbox / "controlplane", nodes=NODES)
    try:
        cp.start()
    finally:
        # Recorded even when the start failed half-way, so a teardown finds what did start.
        for daemon in (cp.etcd, cp.apiserver):
            if daemon is not None and daemon.running:
                state["processes"][daemon.name] = record_of(daemon.name, daemon.pid, daemon.log_path)
        save_state(sandbox, state)
    state["controlplane"] = {
        "apiserver_url": cp.apiserver_url,
        "ca": str(cp.ca_path),
        "admin_cert": str(cp.admin_cert_path),
        "admin_key": str(cp.admin_key_path),
        "admin_kubeconfig": str(cp.admin_kubeconfig),
        "logs": [str(p) for p in cp.log_paths()],
    }
    save_state(sandbox, state)
    say.line(f"etcd ready after {cp.timings['etcd_ready']:.1f}s, kube-apiserver at {cp.apiserver_url} "
             f"ready after {cp.timings['apiserver_ready']:.1f}s (logs in {cp.log_dir})")
    return cp


def step_alertmanager(sandbox: Path, state: dict) -> None:
    import requests
    import yaml

    from kcmlab.controlplane import Daemon, free_port

    if not ALERTMANAGER.exists():
        raise DemoError(f"{ALERTMANAGER} is missing: apt-get install prometheus-alertmanager")
    port = free_port()
    config = sandbox / "am.yml"
    # One receiver that sends nowhere: the demo reads the alerts back over the API.
    config.write_text(yaml.safe_dump({
        "route": {"receiver": "null", "group_wait": "1s", "group_interval": "1s"},
        "receivers": [{"name": "null"}],
    }))
    with deferred_interrupts():
        daemon = Daemon("alertmanager", [
            ALERTMANAGER, f"--config.file={config}", f"--storage.path={sandbox / 'am'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
        ], sandbox / "logs" / "alertmanager.log", cwd=sandbox).start()
        state["processes"]["alertmanager"] = record_of("alertmanager", daemon.pid, daemon.log_path)
        state["alertmanager_url"] = f"http://127.0.0.1:{port}"
        save_state(sandbox, state)

    def ready():
        daemon.check_alive()
        with requests.Session() as session:
            session.trust_env = False
            return session.get(f"{state['alertmanager_url']}/-/ready", timeout=2).ok

    wait_for(ready, WAIT["daemon"], "alertmanager /-/ready", daemon.log_path)
    say.line(f"Alertmanager at {state['alertmanager_url']} (log {daemon.log_path})")


def master_config(sandbox: Path, state: dict, ports: dict) -> Path:
    """The salt-master's config dir, with kcm.master's master.d/kcm.conf in place."""
    import yaml

    from tests.support.masterless import MasterlessMinion

    conf_dir = sandbox / "salt" / "master-conf"
    root = sandbox / "salt" / "master"
    conf_dir.mkdir(parents=True)
    config = {
        "id": "demo-salt-master",
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "root_dir": str(root),
        "pidfile": str(root / "salt-master.pid"),
        # Relative, so Salt puts it under root_dir: an absolute sock_dir longer than its
        # default cachedir + 10 is silently moved to <cachedir>/.salt-unix, which can push
        # the minion's event sockets past the 107-byte limit.
        "sock_dir": "run",
        # Salt puts root_dir in front of any path outside it: the log lives in root_dir
        # and logs/ links to it.
        "log_file": str(root / "salt-master.log"),
        "log_level_logfile": "info",
        "interface": "127.0.0.1",
        "publish_port": ports["publish"],
        "ret_port": ports["ret"],
        "auto_accept": True,
        "file_roots": {"base": [str(REPO / "formula")]},
        "pillar_roots": {"base": [str(sandbox / "pillar")]},
        "fileserver_list_cache_time": 0,
        "features": {"x509_v2": True},
        # The kcm_alert engine kcm.master configures, found without a sync and a restart.
        "engines_dirs": [str(REPO / "_engines")],
    }
    (conf_dir / "master").write_text(yaml.safe_dump(config))
    link_log(sandbox, "salt-master.log", Path(config["log_file"]))
    # The formula's own kcm.master state writes master.d/kcm.conf (kcm_alert engine +
    # kcm_alert receivers), applied with salt-call --local before the master first starts.
    pillar = {"kcm": {"master": {"config_dir": str(conf_dir / "master.d"),
                                 "alertmanager_urls": [state["alertmanager_url"]], "allow_http": True,
                                 "reporters": {"tgt": "master-*", "tgt_type": "glob"},
                                 "labels": {"env": "demo"}, "sync_runners": False}}}
    host_root = sandbox / "salt" / "master-host"
    host_log = host_root / "salt" / "salt-call.log"
    link_log(sandbox, "salt-call-kcm.master.log", host_log)
    host = MasterlessMinion(host_root, "demo-salt-master", pillar, extra_config={"log_file": str(host_log)})
    ret = host.apply("kcm.master")
    failed = failed_states(ret)
    if failed:
        raise DemoError("salt-call --local state.apply kcm.master failed:\n" + "\n".join(failed)
                        + f"\n(log {host_log})")
    say.line(f"kcm.master applied with salt-call --local: {conf_dir / 'master.d' / 'kcm.conf'}")
    return conf_dir


def minion_config(sandbox: Path, node: str, ports: dict) -> Path:
    import yaml

    conf_dir = sandbox / "salt" / f"{node}-conf"
    root = sandbox / "salt" / node
    conf_dir.mkdir(parents=True)
    config = {
        "id": node,
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "root_dir": str(root),
        "pidfile": str(root / "salt-minion.pid"),
        "sock_dir": "run",  # see master_config
        "log_file": str(root / "salt-minion.log"),
        "log_level_logfile": "info",
        "master": "127.0.0.1",
        "master_port": ports["ret"],
        "publish_port": ports["publish"],
        # Beacon intervals are counted in loop_interval units: 1 makes them seconds.
        "loop_interval": 1,
        "acceptance_wait_time": 1,
        "random_reauth_delay": 0,
        "features": {"x509_v2": True},
    }
    (conf_dir / "minion").write_text(yaml.safe_dump(config))
    link_log(sandbox, f"salt-minion-{node}.log", Path(config["log_file"]))
    return conf_dir


def link_log(sandbox: Path, name: str, target: Path) -> None:
    """logs/<name> -> target, so every log of the demo is found in one directory."""
    link = sandbox / "logs" / name
    if not link.is_symlink():
        link.symlink_to(os.path.relpath(target, link.parent))


def port_open(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_salt_daemon(sandbox: Path, state: dict, name: str, tool: str, conf_dir: Path, pidfile: Path,
                      log_path: Path) -> None:
    """``<tool> -d``: Salt forks into the background; its pidfile names the daemon."""

    def pid():
        text = pidfile.read_text().strip() if pidfile.exists() else ""
        return int(text) if text.isdigit() else None

    with deferred_interrupts(), open(sandbox / "logs" / f"{name}.stdout", "ab") as out:
        # Its own session from the start: a Ctrl-C in the terminal is the demo's to handle.
        proc = subprocess.run([salt_tool(tool), f"--config-dir={conf_dir}", "-d"], stdin=subprocess.DEVNULL,
                              stdout=out, stderr=subprocess.STDOUT, env=daemon_env(), timeout=60, check=False,
                              start_new_session=True)
        if proc.returncode != 0:
            raise DemoError(f"{tool} -d exited {proc.returncode}; log {log_path}:\n{tail_of(log_path)}")
        daemon_pid = wait_for(pid, WAIT["daemon"], f"{name} pidfile {pidfile}", log_path)
        state["processes"][name] = record_of(name, daemon_pid, log_path)
        save_state(sandbox, state)


def step_salt(sandbox: Path, state: dict) -> None:
    from kcmlab.controlplane import free_port

    ports = {"publish": free_port(), "ret": free_port()}
    conf_dir = master_config(sandbox, state, ports)
    state["salt"] = {"master_conf": str(conf_dir), "master_log": str(sandbox / "logs" / "salt-master.log"),
                     "ports": ports, "minion_conf": {}}
    start_salt_daemon(sandbox, state, "salt-master", "salt-master", conf_dir,
                      sandbox / "salt" / "master" / "salt-master.pid", Path(state["salt"]["master_log"]))
    for port in (ports["ret"], ports["publish"]):
        wait_for(lambda p=port: port_open(p), WAIT["daemon"], f"salt-master listening on 127.0.0.1:{port}",
                 state["salt"]["master_log"])
    say.line(f"salt-master -d: publish 127.0.0.1:{ports['publish']}, ret 127.0.0.1:{ports['ret']} "
             f"(log {state['salt']['master_log']})")
    for node in NODES:
        mconf = minion_config(sandbox, node, ports)
        state["salt"]["minion_conf"][node] = str(mconf)
        start_salt_daemon(sandbox, state, f"salt-minion@{node}", "salt-minion", mconf,
                          sandbox / "salt" / node / "salt-minion.pid",
                          sandbox / "logs" / f"salt-minion-{node}.log")
    say.line("salt-minion -d x3 (master-1..3); the master auto-accepts their keys")

    def all_answer():
        proc = run_salt(state, "salt", "--out=json", "--static", "--timeout=5", "master*", "test.ping")
        try:
            answers = json.loads(proc.stdout or "{}")
        except ValueError:
            return None
        return sorted(answers) == list(NODES) and all(v is True for v in answers.values())

    wait_for(all_answer, WAIT["minions"], "the three minions answering test.ping", sandbox / "logs",
             interval=1.0)
    say.done("salt-master and master-1..3 connected")


def demo_pillar(sandbox: Path, state: dict, cp, node: str, secure_port: int) -> dict:
    """pillar.example with the sandbox's facts in place of the install guide's."""
    import yaml

    from tests.support.pillar import sandbox_paths

    kcm = yaml.safe_load((REPO / "pillar.example").read_text())["kcm"]
    tarball = state["tarball"]
    kcm.update({
        "version": state["version"],
        "source": {"type": "tarball", "url": f"file://{tarball}", "hash": f"file://{tarball}.sha512",
                   "arch": "amd64"},
        "user": "root", "group": "root", "create_user": False,
        "paths": sandbox_paths(sandbox / "nodes" / node),
        "apiserver": cp.apiserver_url,
        "bind_address": "127.0.0.1", "bind_interface": "",
        "secure_port": secure_port,
        "leader_election": dict(ELECTION),
        "pki": dict(cp.kcm_pki(NODES), mode="pillar"),
        "service": dict(kcm.get("service") or {}, manage=False),
        "beacon": dict(BEACON),
    })
    return {"kcm": kcm}


def step_pillar(sandbox: Path, state: dict, cp) -> None:
    from kcmlab.controlplane import free_port

    say.step(4, TOTAL_STEPS, "writing the demo pillar (pillar.example + sandbox paths, demo PKI, free ports)")
    top = ["base:"]
    for node in NODES:
        port = free_port()
        pillar = demo_pillar(sandbox, state, cp, node, port)
        sls = node.replace("-", "_")
        path = sandbox / "pillar" / f"{sls}.sls"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(pillar, handle, indent=2)
        top += [f"  '{node}':", f"    - {sls}"]
        paths = pillar["kcm"]["paths"]
        state["nodes"][node] = {
            "secure_port": port,
            "unit": str(Path(paths["unit"]) / f"{pillar['kcm']['service']['name']}.service"),
            "ca": str(Path(paths["pki"]) / "ca.pem"),
            "kcm_log": str(sandbox / "logs" / f"kcm-{node}.log"),
            "pillar": str(path),
        }
    (sandbox / "pillar" / "top.sls").write_text("\n".join(top) + "\n")
    save_state(sandbox, state)
    say.line(f"version {state['version']} from {state['tarball']}")
    say.line("user/group root, service.manage false, bind 127.0.0.1, leader election "
             f"{ELECTION['lease_duration']}/{ELECTION['renew_deadline']}/{ELECTION['retry_period']}, "
             f"secure ports {', '.join(str(state['nodes'][n]['secure_port']) for n in NODES)}")
    say.done(f"pillar in {sandbox / 'pillar'} (one file per minion, mode 0600: it holds keys)")


def failed_states(ret) -> list[str]:
    if not isinstance(ret, dict) or not ret:
        return [f"no state results: {str(ret)[:1500]}"]
    return [f"{sid}: {(st or {}).get('comment')}" for sid, st in ret.items()
            if not isinstance(st, dict) or st.get("result") is not True]


def apply_states(state: dict, sls: str) -> None:
    """``salt 'master*' state.apply <sls>`` over the bus; one summary line per minion."""
    say.line("$ " + shown_command(state, "salt", "master*", "state.apply", sls))
    begin = time.monotonic()
    proc = run_salt(state, "salt", "--out=json", "--static", f"--timeout={WAIT['apply']}", "master*",
                    "state.apply", sls, timeout=WAIT["apply"] + 60)
    try:
        returns = json.loads(proc.stdout)
    except ValueError:
        raise DemoError(f"state.apply {sls} gave no JSON (exit {proc.returncode}):\n{proc.stdout[-1500:]}"
                        f"{proc.stderr[-1500:]}") from None
    problems = []
    for node in NODES:
        ret = returns.get(node)
        failed = failed_states(ret)
        if failed:
            problems.append(f"{node}:\n  " + "\n  ".join(failed))
            continue
        changed = sum(1 for st in ret.values() if st.get("changes"))
        seconds = sum(float(st.get("duration") or 0) for st in ret.values()) / 1000
        say.line(f"{node}: {len(ret)} states succeeded, {changed} changed ({seconds:.1f}s of state run)")
    if problems:
        raise DemoError(f"state.apply {sls} failed:\n" + "\n".join(problems)
                        + f"\n(minion logs in {Path(state['sandbox']) / 'logs'})")
    say.line(f"state.apply {sls}: {time.monotonic() - begin:.1f}s wall")


def step_apply(sandbox: Path, state: dict) -> None:
    say.step(5, TOTAL_STEPS, "applying the formula over the bus")
    say.line("$ " + shown_command(state, "salt", "master*", "saltutil.sync_all"))
    proc = run_salt(state, "salt", "--out=json", "--static", "--timeout=120", "master*", "saltutil.sync_all",
                    timeout=180)
    if proc.returncode != 0:
        raise DemoError(f"saltutil.sync_all failed (exit {proc.returncode}):\n"
                        f"{proc.stdout[-1500:]}{proc.stderr[-800:]}")
    apply_states(state, "kcm")
    say.line("$ " + shown_command(state, "salt-run", "saltutil.sync_runners"))
    proc = run_salt(state, "salt-run", "--out=json", "saltutil.sync_runners", timeout=120)
    if proc.returncode != 0 or "runners.kcm_alert" not in proc.stdout:
        raise DemoError(f"salt-run saltutil.sync_runners failed:\n{proc.stdout[-800:]}{proc.stderr[-800:]}")
    say.done("the formula laid down binary, PKI, kubeconfig and unit on master-1..3")


def step_start_kcms(sandbox: Path, state: dict) -> None:
    say.step(6, TOTAL_STEPS, "starting kube-controller-manager on master-1..3")
    say.line("no systemd runs here, so the demo starts each rendered unit's ExecStart= itself")
    say.line(f"(under unshare --uts with hostname = the minion id), e.g. {state['nodes']['master-1']['unit']}")
    for node in NODES:
        start_kcm(sandbox, state, node)
    for node in NODES:
        wait_for(lambda n=node: kcm_healthy(state, n), WAIT["kcm"], f"kcm@{node} /healthz",
                 state["nodes"][node]["kcm_log"])
    leader = wait_for(lambda: leader_node(state), WAIT["leader"], "a KCM leader in the Lease",
                      sandbox / "logs")
    say.done(f"three KCMs healthy; {leader} holds the lease")


def beacon_state_file(state: dict, node: str) -> Path:
    return Path(state["sandbox"]) / "salt" / node / "var/cache/salt/minion/kcm/beacon-kcm_leader.json"


def step_beacon(sandbox: Path, state: dict) -> None:
    say.step(7, TOTAL_STEPS, "installing the kcm_leader beacon, then asking every master for its status")
    say.line("(installed once a leader exists, so its first look is a healthy Lease, not a 'no leader')")
    apply_states(state, "kcm.beacon")
    for node in NODES:
        wait_for(beacon_state_file(state, node).exists, WAIT["beacon"], f"{node}: the beacon's first poll",
                 sandbox / "logs" / f"salt-minion-{node}.log")
    print_status(state)


def print_status(state: dict) -> None:
    say.line("$ " + shown_command(state, "salt", "master*", "kcm.status", "--out=table"))
    proc = run_salt(state, "salt", "--out=table", "--static", "--timeout=30", "master*", "kcm.status", timeout=90)
    say.block(proc.stdout or proc.stderr, indent="    ")
    if proc.returncode != 0:
        say.line(f"(kcm.status exited {proc.returncode}: a master reports errors in the table above)")


# ---------------------------------------------------------------------------------------------
# The failover drill (up's step 8, and `failover`)


def alert_summary(alert: dict) -> dict:
    keep = ("labels", "annotations", "startsAt", "endsAt", "status")
    return {key: alert[key] for key in keep if key in alert}


def failover(sandbox: Path, state: dict, number=None) -> dict:
    """Kill the leader's KCM, show the new leader, the alert event and the alert; rejoin it."""
    import requests
    import salt.config
    import salt.utils.event

    from kcmlab.controlplane import failover_bound

    if number is not None:
        say.step(number, TOTAL_STEPS, "failover drill: SIGKILL the leader's KCM")
    restarted = ensure_kcms_running(sandbox, state)
    if restarted:
        say.line(f"restarted KCM(s) that had exited: {', '.join(restarted)}")
    old = wait_for(lambda: leader_node(state), WAIT["leader"], "a KCM leader in the Lease", sandbox / "logs")
    for node in NODES:
        wait_for(beacon_state_file(state, node).exists, WAIT["beacon"], f"{node}: the beacon's first poll",
                 sandbox / "logs" / f"salt-minion-{node}.log")
    opts = salt.config.master_config(str(Path(state["salt"]["master_conf"]) / "master"))
    timings = {}
    with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True) as bus:
        if not bus.connect_pub(timeout=10):
            raise DemoError(f"cannot listen on the master event bus in {opts['sock_dir']}")
        watch = shown_command(state, "salt-run", "state.event", "tagmatch=kcm/alert/*")
        say.line(f"listening on the master bus for kcm/alert/* (as `{watch}` would)")
        record = state["processes"][f"kcm@{old}"]
        say.line(f"leader is {old}: kill -KILL {record['pid']} (kcm@{old})")
        begin = time.monotonic()
        kill_record(record)
        bound = failover_bound(float(ELECTION["lease_duration"].rstrip("s")),
                               float(ELECTION["retry_period"].rstrip("s"))) + 20
        new = wait_for(lambda: (lambda n: n if n and n != old else None)(leader_node(state)), bound,
                       f"a new KCM leader other than {old}", sandbox / "logs", interval=0.1)
        timings["new_leader"] = time.monotonic() - begin
        say.line(f"leader: {old} -> {new} (new leader {timings['new_leader']:.1f}s after the kill)")
        event, others = wait_alert_event(bus, begin, sandbox)
        timings["alert_event"] = time.monotonic() - begin
    for seen in others:
        say.line(f"(also on the bus: {seen})")
    say.line(f"event on the master bus {timings['alert_event']:.1f}s after the kill:")
    say.block(f"tag: {event['tag']}\n" + json.dumps(strip_stamp(event["data"]), indent=2, sort_keys=True))

    def in_alertmanager():
        filters = [("filter", f'{k}="{v}"') for k, v in
                   (("alertname", "KCMLeaderChanged"), ("old_node", old), ("new_node", new))]
        with requests.Session() as session:
            session.trust_env = False
            reply = session.get(f"{state['alertmanager_url']}/api/v2/alerts", params=filters, timeout=5)
        reply.raise_for_status()
        return reply.json()

    alerts = wait_for(in_alertmanager, WAIT["alert"], "the KCMLeaderChanged alert in Alertmanager",
                      sandbox / "logs" / "alertmanager.log", interval=0.5)
    timings["alert_in_alertmanager"] = time.monotonic() - begin
    say.line(f"the alert as Alertmanager holds it (GET {state['alertmanager_url']}/api/v2/alerts):")
    say.block(json.dumps([alert_summary(a) for a in alerts], indent=2, sort_keys=True))
    start_kcm(sandbox, state, old)
    wait_for(lambda: kcm_healthy(state, old), WAIT["kcm"], f"kcm@{old} /healthz", state["nodes"][old]["kcm_log"])
    now_leader = leader_node(state)
    say.line(f"restarted kcm@{old}: it rejoins as a standby (leader: {now_leader})")
    say.line(f"timings: kill -> new leader {timings['new_leader']:.1f}s, -> kcm/alert event "
             f"{timings['alert_event']:.1f}s, -> alert in Alertmanager {timings['alert_in_alertmanager']:.1f}s")
    return {"old": old, "new": new, **timings}


def strip_stamp(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "_stamp"}


def wait_alert_event(bus, begin: float, sandbox: Path):
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
    raise DemoError(f"no kcm/alert/changed event within {WAIT['alert']}s of the kill (seen: {others or 'none'}); "
                    f"see {sandbox / 'logs' / 'salt-master.log'} and the minion logs beside it")


# ---------------------------------------------------------------------------------------------
# Commands


def print_explore(state: dict) -> None:
    sandbox = state["sandbox"]
    conf = state["salt"]["master_conf"]
    say.step(9, TOTAL_STEPS, "the demo keeps running; explore it")
    say.block(f"""export PATH={Path(state['python']).parent}:$PATH   # the demo's Salt
scripts/demo status        the kcm.status table and the Lease holder
scripts/demo failover      kill the leader again, see the event and the alert
scripts/demo down          stop everything and remove {sandbox}
salt -c {conf} 'master*' kcm.leader
salt -c {conf} 'master*' kcm.status --out=table
salt-run -c {conf} state.event tagmatch='kcm/alert/*'
kubectl --kubeconfig {state['controlplane']['admin_kubeconfig']} -n kube-system get lease -o yaml
curl -s {state['alertmanager_url']}/api/v2/alerts
logs: {sandbox}/logs/""", indent="    ")


def cmd_up(sandbox: Path) -> int:
    k8s_bin = os.environ.get("KCM_K8S_BIN")
    if not k8s_bin:
        raise DemoError("KCM_K8S_BIN is not set: run the demo through scripts/demo, which builds the binaries")
    state = None
    try:
        state = step_sandbox(sandbox, Path(k8s_bin))
        cp = step_control_plane(sandbox, state)
        step_alertmanager(sandbox, state)
        step_salt(sandbox, state)
        step_pillar(sandbox, state, cp)
        step_apply(sandbox, state)
        step_start_kcms(sandbox, state)
        step_beacon(sandbox, state)
        result = failover(sandbox, state, number=8)
        state["last_failover"] = result
        save_state(sandbox, state)
        print_explore(state)
        print(f"\n`demo up` finished in {say.elapsed():.1f}s (after the install step); everything keeps running.")
        return 0
    except KeyboardInterrupt:
        # A second Ctrl-C must not cut the teardown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\ninterrupted: tearing everything down", flush=True)
        if state is not None:
            stop_all(state)
            shutil.rmtree(sandbox, ignore_errors=True)
        return 130
    except BaseException:
        if state is not None:
            print(f"\n`demo up` failed: stopping what it started; logs are kept in {sandbox}/logs "
                  "(scripts/demo down removes them)", file=sys.stderr, flush=True)
            stop_all(state, quiet=True)
        raise


def require_state(sandbox: Path) -> dict:
    state = load_state(sandbox)
    if state is None:
        raise DemoError(f"no demo in {sandbox} (scripts/demo up starts one)")
    return state


def cmd_status(sandbox: Path) -> int:
    state = require_state(sandbox)
    if "salt" not in state:
        raise DemoError(f"the demo in {sandbox} did not finish starting; scripts/demo down removes it")
    down = [name for name, rec in sorted(state["processes"].items()) if not alive(rec)]
    for name in down:
        say.line(f"{name} is not running (log {state['processes'][name]['log']})")
    if down and any(n.startswith("kcm@") for n in down):
        say.line("(KCM exits when it loses its lease; scripts/demo failover restarts stopped ones first)")
    print_status(state)
    record = lease(state) or {}
    spec = record.get("spec") or {}
    say.line(f"Lease kube-system/kube-controller-manager: holder {spec.get('holderIdentity')}, "
             f"renewed {spec.get('renewTime')}, transitions {spec.get('leaseTransitions')}")
    return 0


def cmd_failover(sandbox: Path) -> int:
    state = require_state(sandbox)
    if "salt" not in state or not state["nodes"]:
        raise DemoError(f"the demo in {sandbox} did not finish starting; scripts/demo down removes it")
    result = failover(sandbox, state)
    state["last_failover"] = result
    save_state(sandbox, state)
    return 0


def cmd_down(sandbox: Path) -> int:
    if not sandbox.exists():
        say.line(f"nothing to do: {sandbox} does not exist")
        return 0
    state = load_state(sandbox)
    if state is None:
        if any(sandbox.iterdir()):
            raise DemoError(f"{sandbox} has no {STATE_NAME}: not a demo sandbox, left untouched")
        sandbox.rmdir()
        return 0
    say.line(f"stopping the demo in {sandbox}")
    stop_all(state)
    left = [name for name, rec in state.get("processes", {}).items() if session_members(rec)]
    if left:
        raise DemoError(f"still running after SIGKILL: {', '.join(left)}; sandbox kept")
    shutil.rmtree(sandbox)
    say.line(f"removed {sandbox}")
    return 0


def _interrupt(signum, frame):
    """A SIGTERM (a CI timeout, `kill`) tears down like Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "status", "failover", "down"))
    args = parser.parse_args(argv)
    sandbox = sandbox_dir()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C tears `up` down even when started from a shell that ignores SIGINT in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    commands = {"up": cmd_up, "status": cmd_status, "failover": cmd_failover, "down": cmd_down}
    try:
        return commands[args.command](sandbox)
    except DemoError as exc:
        print(f"\033[31mdemo {args.command}: {exc}\033[0m", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
