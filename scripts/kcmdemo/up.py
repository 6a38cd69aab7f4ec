"""``scripts/demo up``: the sandbox checked, Alertmanager, the lab (control plane, salt-master,
machines), the formula applied over the bus, the beacon, the status and the first failover."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

from kcmdemo import BEACON, ELECTION, NODES, REPO, SOCKET_PATH_MAX, STATE_NAME, SUITE, UNIT, WAIT, DemoError
from kcmdemo.running import Demo
from kcmdemo.say import say
from kcmdemo.state import alive, load_state, record_of, save_state
from kcmdemo.teardown import take_down
from kcmlab.machines import leftovers


def check_sandbox(sandbox: Path) -> None:
    """Refuse to start over a running demo; clear the remains of a dead one."""
    state = load_state(sandbox)
    running = [name for name, record in (state or {}).get("processes", {}).items() if alive(record)]
    running += [name for name, m in (state or {}).get("machines", {}).items() if alive(m["nspawn"])]
    if running:
        raise DemoError(
            f"a demo is already running in {sandbox} ({', '.join(sorted(running))}); "
            "use scripts/demo status, or scripts/demo down first"
        )
    if state is None and sandbox.is_dir() and any(sandbox.iterdir()) and not (sandbox / "lab").exists():
        raise DemoError(
            f"{sandbox} is not empty and holds no demo ({STATE_NAME}): left untouched; "
            "set KCM_DEMO_DIR to another directory"
        )
    if sandbox.exists() or leftovers(SUITE, NODES):
        say.line(f"removing the remains of an earlier demo ({sandbox}, lab {SUITE!r})")
        take_down(sandbox, state, quiet=True)
        shutil.rmtree(sandbox, ignore_errors=True)
    longest = len(str(sandbox / "lab" / "salt" / "root" / "run" / "master_event_pull.ipc"))
    if longest > SOCKET_PATH_MAX:
        raise DemoError(
            f"KCM_DEMO_DIR={sandbox} is too long: the salt-master's unix sockets under it would need "
            f"{longest} bytes (limit {SOCKET_PATH_MAX}); use a shorter directory"
        )


def apply_master_config(sandbox: Path, conf_dir: Path, alertmanager_url: str) -> None:
    """The formula's kcm.master (reactor + kcm_alert) into the salt-master's master.d, applied
    with salt-call --local as on a master host, before the master first starts."""
    from kcmlab.cluster import failed_states
    from kcmlab.masterless import MasterlessMinion

    pillar = {
        "kcm": {
            "master": {
                "config_dir": str(conf_dir / "master.d"),
                "alertmanager_urls": [alertmanager_url],
                "allow_http": True,
                "masters": "master-*",
                "labels": {"env": "demo"},
                "sync_runners": False,
            }
        }
    }
    host_root = sandbox / "kcm-master"
    log_path = host_root / "salt" / "salt-call.log"
    ret = MasterlessMinion(host_root, "demo-salt-master", pillar, extra_config={"log_file": str(log_path)}).apply(
        "kcm.master"
    )
    failed = failed_states(ret)
    if failed:
        raise DemoError(
            "salt-call --local state.apply kcm.master failed:\n" + "\n".join(failed) + f"\n(log {log_path})"
        )
    say.line(f"kcm.master applied with salt-call --local: {conf_dir / 'master.d' / 'kcm.conf'}", detail=True)


def demo_pillar(cluster, name: str) -> dict:
    """pillar.example with the lab's facts in place of the install guide's."""
    import yaml

    from kcmlab.cluster import merge

    example = yaml.safe_load((REPO / "pillar.example").read_text())["kcm"]
    example.pop("master", None)  # the Salt master's own settings, not a KCM master's
    lab = cluster.pillar_for(name)["kcm"]  # version, source, apiserver, pki, leader election
    kcm = merge(example, {key: value for key, value in lab.items() if key != "pki"})
    kcm.update(
        {
            "pki": lab["pki"],
            "bind_address": cluster.lab.address_of(name),
            "bind_interface": "",
            "beacon": dict(example.get("beacon") or {}, **BEACON),
            "service": dict(example.get("service") or {}, manage=True),
        }
    )
    return {"kcm": kcm}


def apply(demo: Demo, sls: str) -> None:
    """``salt 'master*' state.apply <sls>`` over the bus; one summary line for the masters
    (with --verbose, one per master with its state run's time)."""
    from kcmlab.cluster import failed_states

    say.line("$ " + demo.shown("salt", "master*", "state.apply", sls))
    begin = time.monotonic()
    returns = demo.master.salt("master*", "state.apply", sls, timeout=WAIT["apply"] + 60, job_timeout=WAIT["apply"])
    problems, summary = [], []
    for name in NODES:
        ret = returns.get(name)
        failed = failed_states(ret)
        if failed:
            problems.append(f"{name}:\n  " + "\n  ".join(failed))
            continue
        changed = sum(1 for st in ret.values() if st.get("changes"))
        seconds = sum(float(st.get("duration") or 0) for st in ret.values()) / 1000
        summary.append(f"{name}: {len(ret)} states succeeded, {changed} changed")
        say.line(f"{summary[-1]} ({seconds:.1f}s of state run)", detail=True)
    if problems:
        raise DemoError(
            f"state.apply {sls} failed:\n"
            + "\n".join(problems)
            + "\n(scripts/demo shell <master> journalctl -u salt-minion)"
        )
    wall = f"{time.monotonic() - begin:.1f}s wall"
    say.line(f"state.apply {sls}: {wall}" if say.verbose else "; ".join(summary) + f" ({wall})")


def start_lab(sandbox: Path, k8s_bin: Path, alertmanager):
    """The LabCluster (control plane, salt-master, machines) with the demo's pillar written."""
    from kcmlab.cluster import LabCluster
    from kcmlab.formula import defaults

    # Certificates as long-lived as the formula issues its own (kcm:pki:days_valid): the lab's
    # week-long ones would raise KCMCertExpiring for every certificate, which is not this story.
    cluster = LabCluster(
        k8s_bin, sandbox / "lab", suite=SUITE, nodes=NODES, election=ELECTION, cert_days=defaults()["pki"]["days_valid"]
    )
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
        name: {
            "address": machine.address,
            "nspawn": record_of(f"nspawn {name}", machine.process.pid, machine.console_log),
            "init": record_of(f"init {name}", machine.init_pid, machine.console_log),
        }
        for name, machine in cluster.lab.machines.items()
    }
    state["salt"] = {"root": str(cluster.master.root), "interface": cluster.master.interface}
    state["controlplane"] = {
        "apiserver_url": cp.apiserver_url,
        "ca": str(cp.ca_path),
        "admin_cert": str(cp.admin_cert_path),
        "admin_key": str(cp.admin_key_path),
        "admin_kubeconfig": str(cp.admin_kubeconfig),
    }
    state["secure_port"] = cluster.pillars[NODES[0]]["kcm"]["secure_port"]
    save_state(sandbox, state)


def cmd_up(sandbox: Path) -> int:
    from kcmlab.alertmanager import Alertmanager
    from kcmlab.rootfs import ensure_rootfs, rootfs_dir

    k8s_bin = os.environ.get("KCM_K8S_BIN")
    if not k8s_bin:
        raise DemoError("KCM_K8S_BIN is not set: run the demo through scripts/demo, which builds the binaries")
    state = {
        "sandbox": str(sandbox),
        "python": sys.executable,
        "suite": SUITE,
        "started_at": time.time(),
        "processes": {},
        "machines": {},
    }
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
        say.line(
            f"kube-apiserver at {cluster.cp.apiserver_url} (serving certificate for {cluster.lab.host_ip})", detail=True
        )
        say.line(
            f"salt-master on {cluster.lab.host_ip}:{cluster.master.ret_port} (log {cluster.master.log_path})",
            detail=True,
        )
        for name, machine in cluster.lab.machines.items() if say.verbose else ():
            say.line(
                f"{name}: {machine.address}, systemd up in {machine.boot_seconds:.1f}s, "
                f"salt-minion.service {machine.systemctl('is-active', 'salt-minion', check=False).stdout.strip()}"
            )
        say.done("the lab is up: " + ", ".join(f"{k} {v:.1f}s" for k, v in cluster.timings.items()))

        say.step(5, "applying the formula over the bus (pillar.example + the lab's facts, service:manage true)")
        say.line("$ " + demo.shown("salt", "master*", "saltutil.sync_all"), detail=True)
        synced = demo.master.salt("master*", "saltutil.sync_all", timeout=300, job_timeout=120)
        if sorted(synced) != list(NODES):
            raise DemoError(f"saltutil.sync_all answered for {sorted(synced)}, not {list(NODES)}")
        apply(demo, "kcm")
        demo.wait(lambda: all(demo.healthy(n) for n in NODES), WAIT["kcm"], "KCM /healthz on every master")
        leader = demo.wait(demo.leader, WAIT["leader"], "a KCM leader in the Lease")
        say.done(f"systemd runs KCM on master-1..3; {leader} holds the lease")

        say.step(6, "the kcm_leader and kcm_cert beacons, then the fleet view")
        say.line(
            "(installed once a leader exists, so its first look is a healthy Lease, not a 'no leader')", detail=True
        )
        apply(demo, "kcm.beacon")
        demo.print_status()

        state["last_failover"] = demo.failover(number=7)
        save_state(sandbox, state)
        print("\n\033[1m==> the demo keeps running; explore it\033[0m", flush=True)
        demo.print_explore()
        print(
            f"\n`demo up` finished in {say.elapsed():.1f}s (after the install step); everything keeps running.",
            flush=True,
        )
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
        print(
            f"\n`demo up` failed: stopping what it started; logs are kept in {sandbox} "
            "(scripts/demo down removes them)",
            file=sys.stderr,
            flush=True,
        )
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
