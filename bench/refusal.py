#!/usr/bin/env python3
"""What one forged report costs the Salt master to refuse: a minion with an accepted key that
is no KCM master sends a signed ``kcm_leader`` report of its own (it may also have set the
grain ``role:k8s-master`` on itself), on a master that knows ``--minions`` minions, each with
~6 KB of cached grains.

"before" is the runner of 5f6804a (taken from git), whose refusal matched the grain target
over the master's grains cache; "now" is this tree's runner, which refuses by minion id in
memory (``kcm_alert:masters``) before any I/O. Both run the real Salt master code they call
(``salt.cache``, ``CkMinions``), in this process; the follow-up events go to a recorder.
Prints the median CPU time per refused event (process time). Goal: <= 1 ms now.

    python bench/refusal.py [--minions 2000] [-n 20]
"""

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time

from common import REPO, machine, median, scratch_dir

from kcmlab.formula import alert_settings

GOAL_MS = 1.0
OLD = "5f6804a"


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root, commit):
    """The runner and _utils of ``commit`` (None: this tree) as files under ``root``."""
    if commit is None:
        return REPO
    for part in ("_runners", "_utils"):
        names = subprocess.run(
            ["git", "-C", str(REPO), "ls-tree", "--name-only", f"{commit}:{part}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        (root / part).mkdir(parents=True)
        for name in names:
            text = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{commit}:{part}/{name}"], capture_output=True, text=True, check=True
            ).stdout
            (root / part / name).write_text(text)
    return root


def _runner(tree, tag):
    """The kcm_alert runner of ``tree`` with its __utils__, as Salt's loader wires them."""
    utils = {}
    for path in sorted((tree / "_utils").glob("*.py")):
        module = _module(path, f"bench_{tag}_utils_{path.stem}")
        module.__utils__ = utils
        utils.update(
            {
                f"{module.__virtualname__}.{n}": getattr(module, n)
                for n in dir(module)
                if not n.startswith("_")
                and callable(getattr(module, n))
                and getattr(getattr(module, n), "__module__", None) == module.__name__
            }
        )
    runner = _module(tree / "_runners" / "kcm_alert.py", f"bench_{tag}_kcm_alert")
    runner.__utils__ = utils
    return runner


def _master_opts(root, minions):
    import salt.cache
    import salt.config
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    opts = dict(salt.config.DEFAULT_MASTER_OPTS, __role="master")
    opts.update(
        cachedir=str(root / "cache"),
        pki_dir=str(root / "pki"),
        sock_dir=str(root / "sock"),
        extension_modules=str(root / "extmods"),
        minion_data_cache=True,
        cache="localfs",
    )
    (root / "pki" / "minions").mkdir(parents=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    cache = salt.cache.factory(opts)
    filler = {f"fact_{i}": "x" * 60 for i in range(90)}  # ~6 KB of grains, as a real minion sends
    for n in range(minions):
        minion = f"master-{n}" if n < 3 else f"web-{n}"
        (root / "pki" / "minions" / minion).write_bytes(public)
        grains = dict(filler, id=minion, role="k8s-master" if n < 3 else "web")
        cache.store("grains", minion, grains)  # where the master keeps what a minion's pillar request sent
    return opts, key


def _forged(key, now):
    """web-7's signed report of its own, as a forging minion sends it (its grain says k8s-master)."""
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    data = {
        "cluster": "prod",
        "transitions": 9,
        "new_node": "evil",
        "id": "web-7",
        "signed_at": now,
        "epoch": 1,
        "counter": 1,
    }
    message = json.dumps({"kind": "changed", "data": data}, sort_keys=True, separators=(",", ":")).encode()
    sig = base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()
    return "salt/beacon/web-7/kcm_leader/changed", dict(data, sig=sig)


def measure(runner, opts, event, runs):
    fired = []
    # What kcm.master writes (every default of defaults.yaml) for these masters and receiver.
    runner.__opts__ = dict(
        opts,
        kcm_alert=alert_settings(
            masters=["master-0", "master-1", "master-2"], alertmanager_urls=["http://127.0.0.1:9"]
        ),
    )
    runner._fire = lambda tag, data: fired.append(tag)
    entry = getattr(runner, "handle", None) or (lambda tag, data: runner.handle_batch([(tag, data)])[0])
    costs = []
    for _ in range(runs):
        start = time.process_time()
        result = entry(*event)
        costs.append(time.process_time() - start)
        assert result.get("refused"), result
    return median(costs) * 1000, result["refused"], len(fired)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minions", type=int, default=2000)
    parser.add_argument("-n", type=int, default=20, help="refused events per variant")
    args = parser.parse_args()
    logging.basicConfig(stream=open(os.devnull, "w"), level=logging.WARNING)  # noqa: SIM115
    print(f"# {machine()}")
    with scratch_dir("kcm-bench-refusal-") as root:
        opts, key = _master_opts(root / "master", args.minions)
        event = _forged(key, time.time())
        old = _runner(_tree(root / "old", OLD), "old")
        new = _runner(_tree(root / "new", None), "new")
        before, why_before, fired_before = measure(old, opts, event, args.n)
        now, why_now, fired_now = measure(new, opts, event, max(args.n, 200))
    print(
        f"before ({OLD}, grain target over {args.minions} cached minions): {before:.2f} ms CPU per refused"
        f" event; refusal events fired: {fired_before} of {args.n} ({why_before})"
    )
    print(
        f"now (kcm_alert:masters by id): {now:.3f} ms CPU per refused event; refusal events fired:"
        f" {fired_now} of {max(args.n, 200)} (once per sender per interval) ({why_now})"
    )
    print(
        f"refusal cost with {args.minions} minions: {now:.3f} ms now vs {before:.1f} ms before"
        f" ({before / now if now else float('inf'):.0f}x); goal <= {GOAL_MS:g} ms:"
        f" {'met' if now <= GOAL_MS else 'NOT met'}"
    )
    sys.exit(0 if now <= GOAL_MS else 1)


if __name__ == "__main__":
    main()
