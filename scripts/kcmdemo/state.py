"""The demo's sandbox, its state file ``demo.json``, and the records of the processes in it
(pid, session and start time from /proc, so a reused pid is never mistaken for ours)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kcmdemo import REPO, STATE_NAME, DemoError


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
    # The formula's own writer (salt.utils.atomicfile), so only the commands that run in the
    # demo's Salt venv (up, failover) write; down and shell only read.
    from kcmlab.formula import load

    load("_utils", "kcm_state_file").write_json(str(sandbox / STATE_NAME), state)


def proc_stat(pid: int) -> dict | None:
    """state, session and start time (clock ticks) of ``pid``; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces or ')': split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
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
