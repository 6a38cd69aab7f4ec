"""`scripts/demo` end to end, as a newcomer runs it: up, status, failover, shell, down.

Everything is real: etcd + kube-apiserver on a lab bridge, Alertmanager, a salt-master with
the formula's kcm.master config, three systemd machines running salt-minion and, after
`state.apply kcm` over the bus, KCM under systemd. The sandbox is a pytest temp dir
(KCM_DEMO_DIR), the lab is suite "demo-test" (KCM_DEMO_SUITE: a running `scripts/demo` of a
user keeps its own), the venv is the one running the tests (KCM_VENV) and the binaries are
the e2e tier's (KCM_K8S_BIN). The assertions read what the demo prints, which is what a user
sees, and check Alertmanager, the processes and the host's links and cgroups themselves.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kcmlab.alertmanager import active_alerts
from kcmlab.machines import leftovers

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo"
NODES = ("master-1", "master-2", "master-3")
SUITE = "demo-test"
# Upper bounds for a command to finish, never speed claims.
TIMEOUT = {"up": 900, "status": 120, "failover": 300, "down": 180, "shell": 60}


def run_demo(command: str, sandbox: Path, k8s_bin: Path, *args: str) -> str:
    env = dict(os.environ, KCM_DEMO_DIR=str(sandbox), KCM_VENV=sys.prefix, KCM_K8S_BIN=str(k8s_bin),
               KCM_DEMO_SUITE=SUITE)
    proc = subprocess.run([str(DEMO), command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=TIMEOUT[command], env=env, check=False, stdin=subprocess.DEVNULL)
    print(f"----- scripts/demo {command} {' '.join(args)} (exit {proc.returncode})\n{proc.stdout}")
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
    assert f"systemctl start kube-controller-manager on {old}: it rejoins as a standby" in output
    return old, new


def check_masters(output: str) -> list[dict]:
    rows = status_rows(output)
    assert sorted(row["Minion"] for row in rows) == list(NODES), rows
    assert all(row["Healthy"] == "True" and row["Errors"] == "" for row in rows), rows
    # systemd runs KCM on every master, and kcm.status reads that from systemd.
    assert [row["Service Active"] for row in rows] == ["active"] * len(NODES), rows
    return rows


def one_leader(rows: list[dict]) -> str | None:
    """The leader every row agrees on (each master read the Lease itself; None when they read
    it at moments with different holders)."""
    leaders = [row["Minion"] for row in rows if row["Leader"] == "yes"]
    holders = {row["Holder"].rpartition("_")[0] for row in rows}
    return leaders[0] if len(leaders) == 1 and holders == set(leaders) else None


def check_one_leader(output: str, sandbox: Path, k8s_bin: Path, tries: int = 3, holder_line: bool = False) -> str:
    """The one leader of a status table: every master's row names the same holder, the only
    one that says ``Leader: yes`` (and, with ``holder_line``, the Lease's holder the status
    command prints). The masters read the Lease one after the other: when it moved in
    between, ``scripts/demo status`` is asked again (``tries`` times in all)."""
    for _ in range(tries):
        rows = check_masters(output)
        leader = one_leader(rows)
        if leader and (not holder_line or f"holder {leader}_" in output):
            return leader
        output = run_demo("status", sandbox, k8s_bin)
    raise AssertionError(f"{tries} status tables without one leader all masters agree on: {rows}")


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


def keep_logs(sandbox: Path, k8s_bin: Path) -> None:
    """Copy the demo's logs and the machines' journals beside the sandbox: `down` removes
    both, a failure needs them."""
    kept = sandbox.parent / "logs"
    for path in sandbox.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".journal", ".stdout"):
            target = kept / path.relative_to(sandbox)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    if (sandbox / "demo.json").exists():
        for node in NODES:
            for unit in ("kube-controller-manager", "salt-minion"):
                env = dict(os.environ, KCM_DEMO_DIR=str(sandbox), KCM_DEMO_SUITE=SUITE)
                proc = subprocess.run([str(DEMO), "shell", node, "journalctl", "--no-pager", "-n", "400", "-u", unit],
                                      capture_output=True, text=True, timeout=60, env=env, check=False)
                kept.mkdir(parents=True, exist_ok=True)
                (kept / f"{node}-{unit}.journal").write_text(proc.stdout + proc.stderr)
    print(f"demo logs kept in {kept}")


def alerts_in_alertmanager(output: str, old: str, new: str) -> list[dict]:
    """KCMLeaderChanged old -> new as Alertmanager's API returns it (asked by the test itself)."""
    url = re.search(r"GET (http://127\.0\.0\.1:\d+)/api/v2/alerts", output).group(1)
    return active_alerts(url, alertname="KCMLeaderChanged", old_node=old, new_node=new)


def check_gone(sandbox: Path, sessions: set[int]) -> None:
    """Nothing of the demo on the host: machines, cgroups, veths, bridge, processes, sandbox."""
    assert leftovers(SUITE, NODES) == []
    assert not sandbox.exists()
    assert live_in_sessions(sessions) == []
    assert live_processes_mentioning(str(sandbox)) == []


def demo_sessions(sandbox: Path) -> set[int]:
    state = json.loads((sandbox / "demo.json").read_text())
    records = [*state["processes"].values(), *(m["nspawn"] for m in state["machines"].values())]
    assert {"etcd", "kube-apiserver", "alertmanager", "salt-master"} <= set(state["processes"])
    assert sorted(state["machines"]) == list(NODES)
    return {record["sid"] for record in records}


# Up to 900s for `up` on a loaded machine, then the other commands.
@pytest.mark.timeout(1800)
def test_demo_up_status_failover_shell_down(k8s_bin, tmp_path_factory):
    sandbox = tmp_path_factory.mktemp("demo") / "sb"
    sessions: set[int] = set()
    try:
        up = run_demo("up", sandbox, k8s_bin)
        sessions = demo_sessions(sandbox)
        for node in NODES:
            assert re.search(rf"{node}: \d+ states succeeded", up), f"no state.apply kcm summary for {node}"
            assert re.search(rf"nsenter -t \d+ -a .* a shell in {node} ", up), f"no shell command for {node}"
        check_one_leader(up, sandbox, k8s_bin)
        old, new = check_failover(up)
        assert len(alerts_in_alertmanager(up, old, new)) == 1

        # `up` has exited: the machines and KCM under systemd live on.
        status = run_demo("status", sandbox, k8s_bin)
        leader = check_one_leader(status, sandbox, k8s_bin, holder_line=True)
        for node in NODES:
            assert f"{node} (" in status and "kube-controller-manager -> active" in status
        shell = run_demo("shell", sandbox, k8s_bin, leader, "sh", "-c", "hostname; systemctl is-active "
                         "kube-controller-manager; systemctl show -P MainPID kube-controller-manager")
        name, active, main_pid = shell.strip().splitlines()[-3:]
        assert (name, active) == (leader, "active") and int(main_pid) > 0, shell

        failover = run_demo("failover", sandbox, k8s_bin)
        # The leader it stopped is the one of that moment (the alert must name it: check_failover),
        # not necessarily the one a status command found earlier.
        old, new = check_failover(failover)
        assert len(alerts_in_alertmanager(failover, old, new)) == 1
        check_one_leader(run_demo("status", sandbox, k8s_bin), sandbox, k8s_bin)
    finally:
        keep_logs(sandbox, k8s_bin)
        if sandbox.exists():
            down = run_demo("down", sandbox, k8s_bin)
            assert "nothing of the demo is left on this host" in down
    check_gone(sandbox, sessions)


@pytest.mark.timeout(1200)
def test_down_without_the_state_file_removes_everything(k8s_bin, tmp_path_factory):
    """A lost demo.json (deleted, or an `up` killed before it wrote it) still leaves nothing."""
    sandbox = tmp_path_factory.mktemp("demo-lost") / "sb"
    try:
        run_demo("up", sandbox, k8s_bin)
        sessions = demo_sessions(sandbox)
        (sandbox / "demo.json").unlink()
        assert leftovers(SUITE, NODES) != [], "the machines should be running before down"
        down = run_demo("down", sandbox, k8s_bin)
        assert "has no demo.json" in down
        check_gone(sandbox, sessions)
    finally:
        if sandbox.exists():
            run_demo("down", sandbox, k8s_bin)
