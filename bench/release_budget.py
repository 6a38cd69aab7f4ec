#!/usr/bin/env python3
"""Benchmark of the Lease release step's time budget (``kcm-release-lease --budget``), the
speed half of tests/unit/test_release_lease.py (the tests only check the order: it waited
its budget, then stopped). Not a test.

Two apiservers that cannot release anything, on loopback: a closed port (the connection is
refused: the step must end at once) and one that accepts TCP but never speaks TLS (the step
must end at its budget). Prints, per case and budget, the median and the longest run time.
Goal: refused well under the budget; silent within budget + 0.5 s (the step's own alarm).

    python bench/release_budget.py [--runs 10] [--budgets 1,2]
"""

import argparse
import contextlib
import io
import socket
import tempfile
import time
from pathlib import Path

import yaml
from common import machine, median

from kcmlab.controlplane import free_port
from kcmlab.formula import load
from kcmlab.pki import CertificateAuthority, kubeconfig


def write_kubeconfig(path: Path, server: str, ca, pair) -> Path:
    path.write_text(
        yaml.safe_dump(kubeconfig(server, ca.cert_pem, pair[0], pair[1], user="system:kube-controller-manager"))
    )
    path.chmod(0o600)
    return path


def one_run(program, kcfg: Path, budget: float) -> float:
    begin = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        program.main(["--kubeconfig", str(kcfg), "--identity", "master-1", "--budget", str(budget)])
    return time.monotonic() - begin


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--budgets", default="1,2")
    args = parser.parse_args()
    program = load("formula/kcm/files", "kcm-release-lease")
    ca = CertificateAuthority("bench-release-budget-ca")
    pair = ca.issue("system:kube-controller-manager", client=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kcmb-") as tmp, socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        cases = {
            "refused": f"https://127.0.0.1:{free_port()}",
            "silent": f"https://127.0.0.1:{silent.getsockname()[1]}",
        }
        for budget in (float(b) for b in args.budgets.split(",")):
            for case, url in cases.items():
                kcfg = write_kubeconfig(Path(tmp) / f"{case}.kubeconfig", url, ca, pair)
                took = [one_run(program, kcfg, budget) for _ in range(args.runs)]
                rows.append((case, budget, median(took), max(took)))
    print(f"# bench/release_budget: kcm-release-lease against apiservers that cannot answer, {args.runs} runs each")
    print(f"# {machine()}")
    print(f"{'case':<8} {'budget':>6} {'median':>7} {'max':>6}  goal")
    for case, budget, med, worst in rows:
        goal = f"< {budget:g} s" if case == "refused" else f"<= {budget + 0.5:g} s"
        print(f"{case:<8} {budget:>6g} {med:>7.2f} {worst:>6.2f}  {goal}")


if __name__ == "__main__":
    main()
