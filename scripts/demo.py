"""The command line of ``scripts/demo``: up, status, failover, shell, down (see ``kcmdemo``).

``down`` and ``shell`` run with the system's python3 and need only the standard library.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Below the path set-up: kcmlab lives at the repo's top. Standard library only, as down needs.
import kcmdemo  # noqa: E402
from kcmdemo import NODES, STATE_NAME, SUITE, UNIT, DemoError  # noqa: E402
from kcmdemo.running import Demo, DemoMachine  # noqa: E402
from kcmdemo.say import say  # noqa: E402
from kcmdemo.state import alive, load_state, sandbox_dir, save_state  # noqa: E402
from kcmdemo.teardown import take_down  # noqa: E402
from kcmdemo.up import cmd_up  # noqa: E402

from kcmlab.machines import inside_argv  # noqa: E402


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
        if say.verbose:
            say.line(f"{machine.name} ({machine.address}): systemctl is-active {UNIT} -> {machine.active()}")
    demo.print_status()
    spec = (demo.lease() or {}).get("spec") or {}
    say.line(
        f"Lease kube-system/kube-controller-manager: holder {spec.get('holderIdentity')}, "
        f"renewed {spec.get('renewTime')}, transitions {spec.get('leaseTransitions')}"
    )
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
    parser = argparse.ArgumentParser(prog="scripts/demo", description=kcmdemo.__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "status", "failover"):
        sub.add_parser(name).add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="every command, each master's own lines, whole events and alerts",
        )
    sub.add_parser("down")
    shell = sub.add_parser("shell", help="a shell (or a command) inside a master")
    shell.add_argument("machine", choices=NODES)
    shell.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    sandbox = sandbox_dir()
    say.verbose = getattr(args, "verbose", False)
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
