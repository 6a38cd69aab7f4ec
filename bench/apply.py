#!/usr/bin/env python3
"""Benchmark `state.apply kcm` with a real `salt-call --local`: first apply, idempotent
re-apply, and a baseline `state.apply` of an empty SLS in the same run (medians).
Goal: the re-apply costs at most 1 s more than the baseline and changes nothing.

    python bench/apply.py [--runs 5]
"""

import argparse
import tempfile
import time
from pathlib import Path

from common import k8s_bin, machine, median

from tests.support import pki as testpki
from tests.support.masterless import REPO, MasterlessMinion
from tests.support.pillar import sandbox_pillar


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def changes(ret):
    return [k for k, v in ret.items() if v["changes"]] if isinstance(ret, dict) else [str(ret)]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    bindir = k8s_bin()
    version = bindir.name
    tarball = bindir / f"kubernetes-server-{version}-linux-amd64.tar.gz"
    pki = testpki.kcm_pki()
    first, again, baseline, changed = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="kcm-bench-apply-") as tmp:
        extra_root = Path(tmp) / "bench-states"
        extra_root.mkdir()
        (extra_root / "empty.sls").write_text("{}\n")
        for i in range(args.runs):
            root = Path(tmp) / f"run{i}"
            minion = MasterlessMinion(
                root, f"bench-{i}", sandbox_pillar(root, tarball, version, pki),
                extra_config={"file_roots": {"base": [str(REPO / "formula"), str(extra_root)]}},
            )
            t, ret = timed(minion.apply, "kcm")
            failed = [k for k, v in ret.items() if not v["result"]] if isinstance(ret, dict) else [ret]
            if failed:
                raise SystemExit(f"first apply failed: {failed}")
            first.append(t)
            t, ret = timed(minion.apply, "kcm")
            again.append(t)
            changed += changes(ret)
            t, _ = timed(minion.apply, "empty")
            baseline.append(t)
    print(f"# bench/apply: state.apply kcm via salt-call --local, {args.runs} runs, KCM {version} (real tarball)")
    print(f"# {machine()}")
    print(f"{'measure':<34}{'median s':>10}")
    print(f"{'first apply':<34}{median(first):>10.2f}")
    print(f"{'idempotent re-apply':<34}{median(again):>10.2f}")
    print(f"{'baseline: empty SLS':<34}{median(baseline):>10.2f}")
    extra = median(again) - median(baseline)
    print(f"{'re-apply minus baseline':<34}{extra:>10.2f}   goal <= 1.00 s: {'met' if extra <= 1 else 'MISSED'}")
    print(f"{'states changed on re-apply':<34}{len(changed):>10}   goal 0: {'met' if not changed else changed}")


if __name__ == "__main__":
    main()
