"""Taking a demo down: its machines by the lab's suite name, its host processes by session
(also those an interrupted ``up`` never recorded), tier by tier."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kcmdemo import NODES, STATE_NAME, STOP_ORDER, SUITE
from kcmdemo.say import say
from kcmdemo.state import alive, proc_stat
from kcmlab.machines import leftovers, sweep


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
            found.append(
                {"name": f"{tool} (not in {STATE_NAME})", "pid": pid, "sid": pid, "start": stat["start"], "log": ""}
            )
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
        say.line(
            f"machines of lab {suite!r} halted and removed with their cgroups, veths and bridge "
            f"({time.monotonic() - begin:.1f}s)"
        )
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
