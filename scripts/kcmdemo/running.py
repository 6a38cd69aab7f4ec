"""The running demo, as any command after ``up`` sees it: its machines, salt-master, Lease
and Alertmanager; the status table and the failover drill."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

from kcmdemo import BEACON_STATE, UNIT, WAIT, DemoError
from kcmdemo.say import say
from kcmdemo.state import alive
from kcmlab.machines import inside_argv


def alert_line(alert: dict) -> str:
    """One alert as a person reads it: its name, severity and summary."""
    labels = alert.get("labels") or {}
    return f"{labels.get('alertname')} ({labels.get('severity')}): {(alert.get('annotations') or {}).get('summary')}"


class DemoMachine:
    """A machine of the running demo: commands run inside through nsenter into its init."""

    def __init__(self, name: str, record: dict):
        self.name = name
        self.address = record["address"]
        self.init = record["init"]

    def check(self) -> None:
        if not alive(self.init):
            raise DemoError(
                f"machine {self.name} is not running (its init, pid {self.init['pid']}, is gone); "
                "scripts/demo down, then up"
            )

    def run(self, argv, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        self.check()
        proc = subprocess.run(
            inside_argv(self.init["pid"], argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise DemoError(
                f"{self.name}: {' '.join(map(str, argv))} exited {proc.returncode}: "
                f"{proc.stdout[-800:]}{proc.stderr[-800:]}"
            )
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
            reply = session.get(f"https://{self.machines[name].address}:{self.state['secure_port']}/healthz", timeout=3)
        return reply.status_code == 200 and reply.text.strip() == "ok"

    def wait(self, predicate, timeout: float, what: str, interval: float = 0.2):
        from kcmlab.controlplane import wait_until

        try:
            return wait_until(predicate, timeout, what, interval=interval)
        except TimeoutError as exc:
            raise DemoError(
                f"{exc}; logs in {self.sandbox / 'lab'} and the machines' journals "
                f"(scripts/demo shell master-1 journalctl -u {UNIT})"
            ) from None

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
        """The fleet view (``salt-run kcm.status``: one table, one row per master, the
        cluster's verdict); with --verbose also each master's own ``kcm.status`` table."""
        say.line("$ " + self.shown("salt-run", "kcm.status"))
        proc = self.master.command("salt-run", "kcm.status", timeout=90)
        say.block(proc.stdout or proc.stderr, indent="    ")
        if proc.returncode != 0:
            say.line(f"(salt-run kcm.status exited {proc.returncode}: the table above says what is wrong)")
        if say.verbose:
            say.line("$ " + self.shown("salt", "master*", "kcm.status", "--out=table"))
            proc = self.salt_text("--out=table", "--static", "--timeout=30", "master*", "kcm.status", timeout=90)
            say.block(proc.stdout or proc.stderr, indent="    ")

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
            self.wait(
                lambda m=machine: m.run(["test", "-e", BEACON_STATE], check=False).returncode == 0,
                WAIT["beacon"],
                f"{name}: the kcm_leader beacon's first poll",
            )
        old = self.leader()
        timings = {}
        with self.master.events() as bus:
            if not bus.connect_pub(timeout=10):
                raise DemoError(f"cannot listen on the salt-master's event bus ({self.master.conf_dir})")
            watch = self.shown("salt-run", "state.event", "tagmatch=kcm/alert/*")
            say.line(f"listening on the master bus for kcm/alert/* (as `{watch}` would)", detail=True)
            say.line(f"leader is {old}: $ scripts/demo shell {old} systemctl stop {UNIT}")
            begin = time.monotonic()
            self.machines[old].systemctl("stop", UNIT)
            timings["stopped"] = time.monotonic() - begin
            new = self.wait(
                lambda: (lambda n: n if n and n != old else None)(self.leader()),
                WAIT["leader"],
                f"a new KCM leader other than {old}",
                interval=0.1,
            )
            timings["new_leader"] = time.monotonic() - begin
            say.line(
                f"leader: {old} -> {new} (new leader {timings['new_leader']:.1f}s after systemctl stop, "
                f"which itself took {timings['stopped']:.1f}s)"
            )
            say.line(f"{old}: systemctl is-active {UNIT} -> {self.machines[old].active()}", detail=True)
            event, others = self.alert_event(bus, begin)
            timings["alert_event"] = time.monotonic() - begin
        for seen in others:
            say.line(f"(also on the bus: {seen})")
        data = {k: v for k, v in event["data"].items() if k != "_stamp"}
        receivers = data.get("receivers") or {}
        delivered = sum(1 for error in receivers.values() if error is None)
        say.line(
            f"event on the master bus {timings['alert_event']:.1f}s after the stop: {event['tag']} "
            f"({data.get('action')}, delivered to {delivered} of {len(receivers)} receivers)"
        )
        say.block(f"tag: {event['tag']}\n" + json.dumps(data, indent=2, sort_keys=True), detail=True)
        url = self.state["alertmanager_url"]
        alerts = self.wait(
            lambda: active_alerts(url, alertname="KCMLeaderChanged", old_node=old, new_node=new),
            WAIT["alert"],
            "the KCMLeaderChanged alert in Alertmanager",
            interval=0.5,
        )
        timings["alert_in_alertmanager"] = time.monotonic() - begin
        held = active_alerts(url)
        say.line(
            f"Alertmanager holds {len(held)} alert{'s' * (len(held) != 1)} "
            f"{timings['alert_in_alertmanager']:.1f}s after the stop (GET {url}/api/v2/alerts):"
        )
        say.block("\n".join(map(alert_line, held)))
        say.line("this failover's alert as Alertmanager holds it:", detail=True)
        keep = ("labels", "annotations", "startsAt", "endsAt", "status")
        say.block(
            json.dumps([{k: a[k] for k in keep if k in a} for a in alerts], indent=2, sort_keys=True), detail=True
        )
        self.machines[old].systemctl("start", UNIT)
        self.wait(lambda: self.healthy(old), WAIT["kcm"], f"KCM /healthz on {old}")
        say.line(f"systemctl start {UNIT} on {old}: it rejoins as a standby (leader: {self.leader()})")
        say.line(
            f"timings: stop -> new leader {timings['new_leader']:.1f}s, -> kcm/alert event "
            f"{timings['alert_event']:.1f}s, -> alert in Alertmanager {timings['alert_in_alertmanager']:.1f}s",
            detail=True,
        )
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
        raise DemoError(
            f"no kcm/alert/changed event within {WAIT['alert']}s of the stop (seen: {others or 'none'}); "
            f"see {self.master.log_path}"
        )

    def print_explore(self) -> None:
        cp = self.state["controlplane"]
        shells = "\n".join(f"{m.shell_command():<60} a shell in {m.name} ({m.address})" for m in self.machines.values())
        say.block(
            f"""export PATH={Path(self.state["python"]).parent}:$PATH   # the demo's Salt
scripts/demo status              the fleet table and the Lease holder (--verbose: each master's own table)
scripts/demo failover            systemctl stop the leader's KCM again: the event and the alert
scripts/demo shell master-1      a shell in master-1 (or: scripts/demo shell master-1 journalctl -u {UNIT})
scripts/demo down                remove the machines, stop everything, remove {self.sandbox}
{self.shown("salt", "master*", "kcm.leader")}
curl -s {self.state["alertmanager_url"]}/api/v2/alerts
logs: {self.sandbox}/lab (control plane, salt-master, machine consoles), journals inside the machines""",
            indent="    ",
        )
        say.block(
            f"""{shells}
{self.shown("salt", "master*", "kcm.status", "--out=table")}
{self.shown("salt", "master*", "cmd.run", f"systemctl status {UNIT}")}
{self.shown("salt-run", "state.event", "tagmatch=kcm/alert/*")}
kubectl --kubeconfig {cp["admin_kubeconfig"]} -n kube-system get lease kube-controller-manager -o yaml""",
            indent="    ",
            detail=True,
        )
