"""Run kube-bench's controller-manager checks on a running demo master (see docs/cis.md).

CI cannot build kube-bench on a new machine (the Go module proxy refuses it), so this is run
by hand: build kube-bench from its git tag (docs/cis.md), then

    scripts/demo up
    python3 scripts/kube_bench.py --kube-bench ./kube-bench --cfg ./cfg master-1

It copies the binary and its ``cfg/`` into the master, points the benchmark's controller-manager
paths at the unit systemd loaded and at the kubeconfig's root-owned source file (kube-bench
knows only static-pod paths), runs the checks and prints one row per check. Exit status 1
when any scored check fails. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNIT = "kube-controller-manager"
CHECKS = "1.1.3,1.1.4,1.1.17,1.1.18,1.3.1,1.3.2,1.3.3,1.3.4,1.3.5,1.3.6,1.3.7"
BENCHMARK = "cis-1.12"
INSIDE = "/root/kube-bench"


def inside(master: str, command: list[str], stdin: bytes | None = None) -> str:
    """``command`` run in ``master`` through ``scripts/demo shell``; its stdout."""
    done = subprocess.run(
        [str(REPO / "scripts" / "demo"), "shell", master, *command], input=stdin, capture_output=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} in {master} failed ({done.returncode}): "
            f"{done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout.decode()


def override(unit_path: str, kubeconfig: str) -> str:
    """The benchmark's own config: only the controller-manager, at the systemd paths."""
    return json.dumps(
        {
            "master": {
                "components": ["controllermanager"],
                "controllermanager": {"confs": [unit_path], "kubeconfig": [kubeconfig]},
            }
        }
    )


def rows(report: dict) -> list[tuple[str, str, bool, str]]:
    """(id, status, scored, text) of every check in kube-bench's JSON report."""
    out = []
    for control in report.get("Controls", []):
        for group in control.get("tests", []):
            for result in group.get("results", []):
                out.append((result["test_number"], result["status"], bool(result.get("scored")), result["test_desc"]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kube-bench", required=True, type=Path, help="the kube-bench binary")
    parser.add_argument("--cfg", required=True, type=Path, help="kube-bench's cfg/ directory (of the same tag)")
    parser.add_argument("master", help="a demo master, e.g. master-1")
    args = parser.parse_args(argv)

    unit_path = inside(args.master, ["systemctl", "show", "-P", "FragmentPath", UNIT]).strip()
    # The running KCM reads systemd's copy (LoadCredential=); its source is the file the formula owns.
    credential = next(
        (
            line
            for line in inside(args.master, ["cat", unit_path]).splitlines()
            if line.startswith("LoadCredential=") and ".kubeconfig:" in line
        ),
        "",
    )
    kubeconfig = credential.split(":", 1)[-1].strip()
    if not unit_path or not kubeconfig.startswith("/"):
        raise SystemExit(f"{args.master}: no unit or kubeconfig credential found ({unit_path!r}, {credential!r})")

    bundle = subprocess.run(
        [
            "tar",
            "-c",
            "-C",
            str(args.kube_bench.parent),
            args.kube_bench.name,
            "-C",
            str(args.cfg.parent),
            args.cfg.name,
        ],
        capture_output=True,
        check=True,
    ).stdout
    inside(args.master, ["sh", "-c", f"rm -rf {INSIDE} && mkdir -p {INSIDE} && tar -x -C {INSIDE}"], stdin=bundle)
    cfg = f"{INSIDE}/{args.cfg.name}"
    inside(
        args.master,
        ["sh", "-c", f"cat > {cfg}/{BENCHMARK}/config.yaml"],
        stdin=override(unit_path, kubeconfig).encode(),
    )
    text = inside(
        args.master,
        [
            f"{INSIDE}/{args.kube_bench.name}",
            "run",
            "--targets",
            "master",
            "--benchmark",
            BENCHMARK,
            "--config-dir",
            cfg,
            "--config",
            f"{cfg}/config.yaml",
            "--check",
            CHECKS,
            "--json",
        ],
    )
    inside(args.master, ["rm", "-rf", INSIDE])
    results = rows(json.loads(text))
    print(f"kube-bench {BENCHMARK} on {args.master}: unit {unit_path}, kubeconfig {kubeconfig}")
    print("| check | status | scored | what |")
    print("|---|---|---|---|")
    for number, status, scored, desc in results:
        print(f"| {number} | {status} | {'yes' if scored else 'no'} | {desc} |")
    failed = [number for number, status, scored, _ in results if scored and status == "FAIL"]
    print(f"scored checks failing: {', '.join(failed) or 'none'}")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
