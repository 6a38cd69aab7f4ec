"""`scripts/demo` end to end, as a newcomer runs it: up, status, failover, down.

Everything is real (etcd, kube-apiserver, Alertmanager, a salt-master, three salt-minions,
three KCMs); the sandbox is a pytest temp dir (KCM_DEMO_DIR), the venv is the one running
the tests (KCM_VENV) and the binaries are the e2e tier's (KCM_K8S_BIN). The assertions read
what the demo prints, which is what a user sees.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo"
NODES = ("master-1", "master-2", "master-3")
# Upper bounds for a command to finish, never speed claims.
TIMEOUT = {"up": 900, "status": 120, "failover": 300, "down": 120}


def run_demo(command: str, sandbox: Path, k8s_bin: Path) -> str:
    env = dict(os.environ, KCM_DEMO_DIR=str(sandbox), KCM_VENV=sys.prefix, KCM_K8S_BIN=str(k8s_bin))
    proc = subprocess.run([str(DEMO), command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=TIMEOUT[command], env=env, check=False)
    print(f"----- scripts/demo {command} (exit {proc.returncode})\n{proc.stdout}")
    assert proc.returncode == 0, f"scripts/demo {command} exited {proc.returncode}:\n{proc.stdout[-4000:]}"
    return proc.stdout


def status_rows(output: str) -> list[dict]:
    """Rows of the `kcm.status --out=table` tables in ``output`` (one table per minion)."""
    rows, header = [], None
    for line in output.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if "Minion" in cells:
            header = cells
        elif header:
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def block_after(output: str, heading: str) -> str:
    """The '    | '-prefixed lines that follow the line containing ``heading``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if heading in line) + 1
    body = []
    for line in lines[start:]:
        if not line.startswith("    | "):
            break
        body.append(line[len("    | "):])
    return "\n".join(body)


def check_failover(output: str) -> tuple[str, str]:
    """The drill in ``output`` names old and new leader, the event and the alert agree with it."""
    moved = re.search(r"leader: (master-\d) -> (master-\d) \(new leader", output)
    assert moved, "no 'leader: <old> -> <new>' line in the failover output"
    old, new = moved.groups()
    assert old != new

    event_text = block_after(output, "event on the master bus")
    tag, _, data = event_text.partition("\n")
    assert tag == "tag: kcm/alert/changed"
    event = json.loads(data)
    assert event["action"] == "fire" and event["kind"] == "changed"
    assert [(a["labels"]["old_node"], a["labels"]["new_node"]) for a in event["alerts"]] == [(old, new)]
    assert all(error is None for error in event["receivers"].values()), event["receivers"]

    alerts = json.loads(block_after(output, "the alert as Alertmanager holds it"))
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    assert alert["labels"]["alertname"] == "KCMLeaderChanged"
    assert (alert["labels"]["old_node"], alert["labels"]["new_node"]) == (old, new)
    assert alert["status"]["state"] == "active"
    assert f"from {old} to {new}" in alert["annotations"]["summary"]
    assert f"restarted kcm@{old}: it rejoins as a standby" in output
    return old, new


def check_one_leader(output: str) -> str:
    rows = status_rows(output)
    assert sorted(row["Minion"] for row in rows) == list(NODES), rows
    leaders = [row["Minion"] for row in rows if row["Leader"] == "yes"]
    assert len(leaders) == 1, rows
    assert all(row["Healthy"] == "True" and row["Errors"] == "" for row in rows), rows
    assert {row["Holder"].rpartition("_")[0] for row in rows} == set(leaders), rows
    return leaders[0]


def live_processes_mentioning(text: str) -> list[str]:
    """Command lines of live (non-zombie) processes whose argv contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def live_in_sessions(sessions: set[int]) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[3]) in sessions:
            found.append(entry.name)
    return found


def keep_logs(sandbox: Path) -> None:
    """Copy the demo's logs beside the sandbox: `down` removes the sandbox, a failure needs them."""
    logs = sandbox / "logs"
    if logs.is_dir():
        kept = sandbox.parent / "logs"
        shutil.copytree(logs, kept, symlinks=False, ignore_dangling_symlinks=True, dirs_exist_ok=True)
        print(f"demo logs kept in {kept}")


# Up to 900s for `up` on a loaded machine, then three more commands.
@pytest.mark.timeout(1800)
def test_demo_up_status_failover_down(k8s_bin, tmp_path_factory):
    # A short path: Salt's unix sockets live in the sandbox (107-byte limit).
    sandbox = tmp_path_factory.mktemp("demo") / "sb"
    sessions: set[int] = set()
    try:
        up = run_demo("up", sandbox, k8s_bin)
        state = json.loads((sandbox / "demo.json").read_text())
        sessions = {record["sid"] for record in state["processes"].values()}
        assert {"etcd", "kube-apiserver", "alertmanager", "salt-master"} <= set(state["processes"])
        assert {f"kcm@{n}" for n in NODES} | {f"salt-minion@{n}" for n in NODES} <= set(state["processes"])
        for node in NODES:
            assert re.search(rf"{node}: \d+ states succeeded", up), f"no state.apply kcm summary for {node}"
        assert "no systemd" in up
        check_one_leader(up)
        check_failover(up)

        status = run_demo("status", sandbox, k8s_bin)
        leader = check_one_leader(status)
        assert f"holder {leader}_" in status

        check_failover(run_demo("failover", sandbox, k8s_bin))
        check_one_leader(run_demo("status", sandbox, k8s_bin))
    finally:
        keep_logs(sandbox)
        if sandbox.exists():
            down = run_demo("down", sandbox, k8s_bin)
            assert "removed" in down
    assert not sandbox.exists()
    assert live_in_sessions(sessions) == []
    assert live_processes_mentioning(str(sandbox)) == []
