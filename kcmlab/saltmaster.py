"""A real salt-master on the host, for minions that run inside the lab's machines.

The master listens on the lab bridge's address (``interface``) with auto-accepted keys, serves
this repository's ``formula/`` as ``file_roots`` and a pillar directory the caller writes
(one JSON SLS per minion, 0600: it holds keys). Its CLIs are the Salt of the Python that runs
this code (the test venv): ``salt``, ``salt-run``, ``salt-key``, each with ``--out=json``.

    master = SaltMaster(workdir / "salt", "10.77.0.1").start()
    master.write_pillar({"master-1": {"kcm": {...}}})
    master.salt("master-*", "state.apply", "kcm")     # {minion id: return}
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from kcmlab.controlplane import Daemon, free_port, tail, wait_until

REPO = Path(__file__).resolve().parents[1]


def salt_tool(name: str) -> str:
    """The Salt command ``name`` installed beside this interpreter (the venv's)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run with the Python of a venv that has Salt")
    return str(path)


class SaltCommandError(RuntimeError):
    pass


class SaltMaster:
    """One salt-master process (foreground, in its own process group) and its CLIs."""

    def __init__(
        self,
        root: Path,
        interface: str,
        *,
        master_id: str = "kcm-salt-master",
        file_roots=(),
        config: dict | None = None,
        ports: tuple[int, int] | None = None,
    ):
        # ``ports``: (ret, publish); a second master of a multi-master pair on another
        # address takes the first one's, because the minions have one ``master_port``.
        self.root = Path(root)
        self.interface = interface
        self.id = master_id
        self.conf_dir = self.root / "conf"
        self.pillar_dir = self.root / "pillar"
        self.ret_port, self.publish_port = ports or (free_port(), free_port())
        self.file_roots = [str(REPO / "formula"), *map(str, file_roots)]
        self.extra = dict(config or {})
        self.daemon: Daemon | None = None
        # A LeaseLog (kcmlab.leasewatch) told of every state run (it may restart KCM).
        self.marks = None

    @classmethod
    def attach(cls, root: Path, interface: str) -> SaltMaster:
        """The master another process started under ``root``: its CLIs and its event bus (the
        ports are read back from its config; stopping it is that process's business)."""
        master = cls(root, interface)
        config = yaml.safe_load((master.conf_dir / "master").read_text())
        master.id, master.ret_port, master.publish_port = config["id"], config["ret_port"], config["publish_port"]
        return master

    @property
    def log_path(self) -> Path:
        # Inside root_dir: Salt prefixes root_dir to any log path outside it.
        return self.root / "root" / "master.log"

    @property
    def config(self) -> dict:
        return {
            "id": self.id,
            "user": "root",
            "root_dir": str(self.root / "root"),
            # Relative: Salt keeps it under root_dir (an absolute one too long moves silently).
            "sock_dir": "run",
            "log_file": str(self.log_path),
            "log_level_logfile": "info",
            "interface": self.interface,
            "ret_port": self.ret_port,
            "publish_port": self.publish_port,
            "auto_accept": True,
            "file_roots": {"base": self.file_roots},
            "pillar_roots": {"base": [str(self.pillar_dir)]},
            "fileserver_list_cache_time": 0,
            "features": {"x509_v2": True},
            # kcm.master's kcm_alert engine, found as a saltutil.sync_engines + restart would
            # put it in place (the lab syncs after the master started).
            "engines_dirs": [str(REPO / "_engines")],
            **self.extra,
        }

    @property
    def pki_dir(self) -> Path:
        return self.root / "root" / "etc" / "salt" / "pki" / "master"

    def share_key(self, other: SaltMaster) -> None:
        """Take ``other``'s master key pair before the first start: Salt's multi-master needs
        one key pair on every master, as minions cache a single master public key."""
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        for name, mode in (("master.pem", 0o600), ("master.pub", 0o644)):
            text = (other.pki_dir / name).read_bytes()
            fd = os.open(self.pki_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(text)

    @property
    def running(self) -> bool:
        return self.daemon is not None and self.daemon.running

    def minion_config(self, minion_id: str) -> dict:
        """The ``minion.d`` config a machine needs to join this master."""
        return {
            "id": minion_id,
            "master": self.interface,
            "master_port": self.ret_port,
            "publish_port": self.publish_port,
            # Beacon intervals count loop_interval units: 1 makes them seconds.
            "loop_interval": 1,
            "acceptance_wait_time": 1,
            "random_reauth_delay": 0,
            "features": {"x509_v2": True},
            "log_level_logfile": "info",
            # 2048-bit keys: a 4096-bit pair costs a booting machine over 5 s of CPU.
            "keysize": 2048,
        }

    def multi_master_config(self, minion_id: str, others) -> dict:
        """The ``minion.d`` config for Salt's multi-master: this master and ``others`` (on
        other addresses, same ports), all connected at once, each receiving every event."""
        others = list(others)
        for other in others:
            if (other.ret_port, other.publish_port) != (self.ret_port, self.publish_port):
                raise ValueError(
                    f"{other.id}: ports {other.ret_port}/{other.publish_port} differ from "
                    f"{self.id}'s {self.ret_port}/{self.publish_port}; a minion has one master_port"
                )
        return self.minion_config(minion_id) | {"master": [self.interface, *(o.interface for o in others)]}

    def start(self, timeout: float = 60.0) -> SaltMaster:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.pillar_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "master").write_text(yaml.safe_dump(self.config))
        self.daemon = Daemon(
            "salt-master",
            [salt_tool("salt-master"), f"--config-dir={self.conf_dir}", "--log-level=warning"],
            self.root / "master.stdout",
            cwd=self.root,
        ).start()

        def listening():
            with socket.socket() as sock:
                sock.settimeout(1)
                return sock.connect_ex((self.interface, self.ret_port)) == 0

        wait_until(
            listening, timeout, f"salt-master on {self.interface}:{self.ret_port}", alive=self.daemon.check_alive
        )
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop(timeout=15)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- pillar -------------------------------------------------------------------------------

    def write_pillar(self, pillars: dict) -> None:
        """One SLS per minion (JSON, 0600) and a top file mapping each minion to its own."""
        top = ["base:"]
        for minion_id, pillar in sorted(pillars.items()):
            sls = minion_id.replace("-", "_")
            path = self.pillar_dir / f"{sls}.sls"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(pillar, handle, indent=2)
            top += [f"  {json.dumps(minion_id)}:", f"    - {sls}"]
        (self.pillar_dir / "top.sls").write_text("\n".join(top) + "\n")

    # -- CLIs ---------------------------------------------------------------------------------

    def command(self, tool: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
        argv = [salt_tool(tool), f"--config-dir={self.conf_dir}", *map(str, args)]
        states = [arg for arg in map(str, args) if arg.startswith("state.")]
        window = (
            self.marks.during(f"{tool} {states[0]}") if self.marks is not None and states else contextlib.nullcontext()
        )
        with window:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
            )

    def shown(self, tool: str, *args) -> str:
        """The command line a user types for ``tool args`` against this master."""
        return " ".join([tool, "-c", str(self.conf_dir), *map(str, args)])

    def salt(
        self, target, fun: str, *args, tgt_type: str = "glob", timeout: float = 300, job_timeout: int = 60, **kwargs
    ) -> dict:
        """``salt TARGET FUN ARGS`` (JSON out): {minion id: return}. ``target`` may be a list."""
        if isinstance(target, (list, tuple)):
            target, tgt_type = ",".join(target), "list"
        args = [*args, *(f"{key}={json.dumps(value)}" for key, value in kwargs.items())]
        flags = {"glob": [], "list": ["-L"], "compound": ["-C"], "grain": ["-G"], "nodegroup": ["-N"]}[tgt_type]
        proc = self.command(
            "salt", "--out=json", "--static", f"--timeout={job_timeout}", *flags, target, fun, *args, timeout=timeout
        )
        try:
            return json.loads(proc.stdout or "{}")
        except ValueError as exc:
            raise SaltCommandError(
                f"salt {target} {fun}: exit {proc.returncode}, not JSON: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
            ) from exc

    def run(self, fun: str, *args, timeout: float = 900, **kwargs):
        """``salt-run FUN ARGS`` (JSON out); returns (exit code, parsed return)."""
        args = [*args, *(f"{key}={json.dumps(value)}" for key, value in kwargs.items())]
        proc = self.command("salt-run", "--out=json", fun, *args, timeout=timeout)
        return proc.returncode, _runner_return(proc.stdout)

    def wait_for_minions(self, minion_ids, timeout: float = 90.0) -> float:
        """Until every minion answers test.ping; returns the seconds it took."""
        begin = time.monotonic()

        def all_answer():
            try:
                answers = self.salt(list(minion_ids), "test.ping", job_timeout=5, timeout=30)
            except SaltCommandError:  # "No minions matched": keys not accepted yet
                return False
            except subprocess.TimeoutExpired:  # a salt CLI stuck on a busy host: ask again
                return False
            return all(answers.get(m) is True for m in minion_ids)

        try:
            wait_until(
                all_answer,
                timeout,
                f"minions {', '.join(minion_ids)} answering test.ping",
                interval=1.0,
                alive=self.daemon.check_alive,
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- {self.log_path}\n{tail(self.log_path, 20)}") from None
        return time.monotonic() - begin

    @contextlib.contextmanager
    def events(self):
        """The master's event bus, to read with ``bus.get_event(wait=..., full=True)``."""
        import salt.config
        import salt.utils.event

        opts = salt.config.master_config(str(self.conf_dir / "master"))
        bus = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True)
        try:
            yield bus
        finally:
            bus.destroy()


class EventRecorder:
    """Every event of a master's bus from ``start()`` on, with the host time it arrived.

    ``find("salt/beacon/*/kcm_leader/changed", since)`` -> [(time, tag, data)], oldest first.
    """

    def __init__(self, master: SaltMaster):
        self.master = master
        self.events: list[tuple[float, str, dict]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def _listen(self) -> None:
        with self.master.events() as bus:
            bus.connect_pub(timeout=10)
            self._ready.set()
            while not self._stop.is_set():
                event = bus.get_event(wait=0.5, full=True)
                if event:
                    with self._lock:
                        self.events.append((time.time(), event["tag"], event["data"]))

    def start(self) -> EventRecorder:
        """Listen (again, after ``stop()``: a master restart ends the old connection); the
        events recorded so far are kept."""
        self._stop.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._listen, name="salt-events", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise TimeoutError(f"no connection to the event bus of {self.master.id}")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def find(self, pattern: str, since: float = 0.0) -> list[tuple[float, str, dict]]:
        import fnmatch

        with self._lock:
            return [e for e in self.events if e[0] >= since and fnmatch.fnmatchcase(e[1], pattern)]


def _runner_return(stdout: str):
    """The JSON return in ``salt-run --out=json`` output (``None`` when empty); the progress
    lines a runner fires while it runs come before it. The text itself when it holds none."""
    lines = stdout.strip().splitlines()
    for first, line in enumerate(lines):
        if line.startswith(("{", "[", '"')) or first == 0:
            try:
                return json.loads("\n".join(lines[first:])) if lines else None
            except ValueError:
                continue
    return stdout if lines else None
