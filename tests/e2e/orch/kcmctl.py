#!/usr/bin/env python3
"""Stand-in for systemd in the orchestration tests: ``kcm:service:control_cmd``.

    kcmctl.py --unit UNIT --node NODE --run-dir DIR {start,stop,restart}

``start`` launches a small supervisor, detached from the caller (the salt-minion's
``cmd.run_all``), that runs KCM from exactly the unit's ``ExecStart=`` under hostname NODE
(``kcmlab.controlplane.KcmProcess``, read afresh at every start, so a restart picks
up a changed unit), and starts it again one second after it exits, as ``Restart=always``
does (KCM exits when it loses the lease). ``stop`` sends SIGTERM to the supervisor, which
stops KCM the way systemd does (SIGTERM, SIGKILL after 10 s). Every KCM start is appended
to ``<run-dir>/starts.log`` so a test can count restarts.

Exit status 0 on success, 1 with a message on stderr otherwise.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from kcmlab.controlplane import KcmProcess  # noqa: E402

RESTART_SEC = 1.0
WAIT = 20.0


def _pid(run_dir):
    """The running supervisor's pid, or None."""
    try:
        pid = int((run_dir / "supervisor.pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    # A reused pid would belong to some other program: check it is ours.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return pid if b"supervise" in cmdline and str(run_dir).encode() in cmdline else None


def start(args):
    if _pid(args.run_dir):
        return 0
    args.run_dir.mkdir(parents=True, exist_ok=True)
    (args.run_dir / "supervisor.pid").unlink(missing_ok=True)
    with open(args.run_dir / "supervisor.log", "ab") as out:
        subprocess.Popen(
            [sys.executable, __file__, "--unit", str(args.unit), "--node", args.node,
             "--run-dir", str(args.run_dir), "supervise"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if _pid(args.run_dir) and (args.run_dir / "starts.log").exists():
            return 0
        time.sleep(0.05)
    print(f"kcmctl: supervisor for {args.node} did not start; see {args.run_dir}/supervisor.log", file=sys.stderr)
    return 1


def stop(args):
    pid = _pid(args.run_dir)
    if pid is None:
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if _pid(args.run_dir) is None:
            return 0
        time.sleep(0.05)
    print(f"kcmctl: supervisor {pid} for {args.node} did not stop within {WAIT:.0f}s", file=sys.stderr)
    return 1


def supervise(args):
    (args.run_dir / "supervisor.pid").write_text(str(os.getpid()))
    stopping = []
    current = []

    def on_term(signum, frame):  # pylint: disable=unused-argument
        # Only signal here: waiting inside a handler would re-enter Popen.wait.
        stopping.append(True)
        if current and current[0].running:
            os.killpg(current[0].pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    while not stopping:
        kcm = KcmProcess(args.unit, args.node, args.run_dir / "kcm.log").start()
        current[:] = [kcm]
        with open(args.run_dir / "starts.log", "a", encoding="utf-8") as log:
            log.write(f"{time.time():.3f} {kcm.pid}\n")
        code = kcm.proc.wait()
        if not stopping:
            print(f"kcmctl: KCM pid {kcm.pid} exited with {code}; starting it again", flush=True)
            time.sleep(RESTART_SEC)
    if current:
        current[0].stop()
    (args.run_dir / "supervisor.pid").unlink(missing_ok=True)
    return 0


def restart(args):
    return stop(args) or start(args)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit", type=Path, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("action", choices=("start", "stop", "restart", "supervise"))
    args = parser.parse_args()
    return {"start": start, "stop": stop, "restart": restart, "supervise": supervise}[args.action](args)


if __name__ == "__main__":
    sys.exit(main())
