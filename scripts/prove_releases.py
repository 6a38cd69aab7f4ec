"""Prove releases by their real binary; ``scripts/prove-releases`` runs this in the project's venv.

For each minor: the newest patch on the Go module proxy (or an older one named on the command
line, once the newest has failed to build: the row says which and why), its kube-controller-manager built
alone (``scripts/k8s-binaries --kcm-only``, under ``nice -n 19``, one build at a time), then one
systemd machine of the lab deployed at that release by a real ``state.apply kcm`` against the
pinned control plane, and what the binary did with the flags the formula rendered: accepted
them (running, not restarting), took the Lease, answered ``/healthz``. The rows proven are
rewritten in ``docs/releases.md`` (kcmlab.releases); the others are left as they are.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kcmlab import formula, kcm_help, releases  # noqa: E402
from kcmlab.cluster import K8S_CACHE, SHORT_ELECTION, UNIT, LabCluster  # noqa: E402

CACHE = K8S_CACHE.parent
WORK = CACHE / "prove"
DEFAULT_MINORS = [f"v1.{m}" for m in range(37, 15, -1)]
# The last patch of each minor the proxy's version list leaves out (it lists v1.29 to v1.37 and
# few older tags); each is confirmed with `go list -m` before it is used.
LAST_PATCHES = {
    16: 15,
    17: 17,
    18: 20,
    19: 16,
    20: 15,
    21: 14,
    22: 17,
    23: 17,
    24: 17,
    25: 16,
    26: 15,
    27: 16,
    28: 15,
    29: 15,
}
OBSERVE = 20.0  # seconds KCM must stay up, without a restart, after it answers /healthz


def say(text: str) -> None:
    print(f"[prove-releases {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def go(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["go", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(os.environ, GOFLAGS="-mod=mod", GOTOOLCHAIN="local"),
    )


def listed_versions() -> list[str]:
    proc = go("list", "-m", "-versions", "k8s.io/kubernetes")
    if proc.returncode != 0:
        raise SystemExit(f"go list -m -versions k8s.io/kubernetes failed: {proc.stderr.strip()}")
    return proc.stdout.split()[1:]


def newest_patch(minor: int, listed: list[str]) -> str | None:
    """The newest patch of ``minor`` the proxy serves (its list, or the known last patch it answers)."""
    patches = [int(m.group(1)) for v in listed if (m := re.match(rf"^v1\.{minor}\.(\d+)$", v))]
    if minor in LAST_PATCHES:
        candidate = f"v1.{minor}.{LAST_PATCHES[minor]}"
        newer = LAST_PATCHES[minor] > max(patches, default=-1)
        if newer and go("list", "-m", f"k8s.io/kubernetes@{candidate}").returncode == 0:
            patches.append(LAST_PATCHES[minor])
    return f"v1.{minor}.{max(patches)}" if patches else None


def built(version: str) -> bool:
    out = K8S_CACHE / version
    return (out / "kube-controller-manager").is_file() and (
        out / f"kubernetes-server-{version}-linux-amd64.tar.gz.sha512"
    ).is_file()


def build_failure(log: str) -> str:
    """Why a build failed, in one line, from scripts/k8s-binaries' output."""
    patterns = [
        (
            r"([\w./-]+@v[\w.+-]+): reading https?://\S+: 403 Forbidden",
            "the Go module proxy refuses {0} (403: this module version is not available)",
        ),
        (
            r"verifying module: ([\w./-]+@v[\w.+-]+): reading https?://\S+: 404 Not Found",
            "the Go checksum database does not know {0} (404), so it cannot be verified",
        ),
        (r"requires go >= ?([\d.]+)", "needs Go >= {0} (this host: {go})"),
        (r"(go\.mod file not found|no go\.mod|missing go\.sum entry[^\n]*)", "{0}"),
        (r"(invalid reference to [\w./]+)", "its dependencies break with {go}: {0} (go:linkname)"),
        (r"ERROR: ([^\n]+)", "{0}"),
        (r"(# [\w./-]+\n[^\n]+)", "does not compile with {go}: {0}"),
    ]
    goversion = go("env", "GOVERSION").stdout.strip()
    for pattern, text in patterns:
        match = re.search(pattern, log)
        if match:
            return text.format(*(g.replace("\n", ": ") for g in match.groups()), go=goversion)[:300]
    lines = [line for line in log.splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:300]


def build(version: str, until: datetime.time | None) -> tuple[bool, str]:
    """(built, text for the build column); reuses the cache and its recorded time."""
    work = WORK / version
    work.mkdir(parents=True, exist_ok=True)
    seconds = work / "build.seconds"
    if built(version):
        earlier = " (built by scripts/k8s-binaries for the tests; time not recorded)"
        took = f", {int(seconds.read_text())} s" if seconds.is_file() else earlier
        return True, f"ok{took}"
    if (work / "build.rc").is_file() and (work / "build.rc").read_text().strip() != "0":
        return False, f"does not build: {build_failure((work / 'build.log').read_text())}"
    if until and datetime.datetime.now().time() >= until:
        return False, releases.NOT_BUILT
    say(f"{version}: building kube-controller-manager (nice -n 19; log: {work / 'build.log'})")
    begin = time.monotonic()
    with open(work / "build.log", "w") as log:
        proc = subprocess.Popen(
            ["nice", "-n", "19", str(REPO / "scripts/k8s-binaries"), "--kcm-only", version],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in proc.stderr:
            log.write(line)
            if line.startswith("[k8s-binaries"):
                say(f"{version}: {line.strip()}")
        code = proc.wait()
    took = int(time.monotonic() - begin)
    seconds.write_text(f"{took}\n")
    (work / "build.rc").write_text(f"{code}\n")
    say(f"{version}: build {'ok' if code == 0 else f'failed ({code})'} in {took} s")
    if code != 0:
        return False, f"does not build: {build_failure((work / 'build.log').read_text())}"
    return True, f"ok, {took} s"


def wrapper_fixes(version: str) -> list[str]:
    """The wrapper module's replaces beyond the staging ones: fixes this host's Go or proxy needed.

    A release built from its Godeps.json (v1.14) pins every dependency by a replace; those pins,
    kept as generated in ``go.mod.godeps``, are the release's own and no fix.
    """
    src = CACHE / "src" / f"kubernetes-{version}"

    def replaces(name: str) -> list[tuple[str, str]]:
        path = src / name
        return re.findall(r"^\s*(?:replace\s+)?(\S+) => (.+)$", path.read_text(), re.M) if path.is_file() else []

    lines, own = replaces("go.mod"), set(replaces("go.mod.godeps"))
    return [f"{old} => {new.strip()}" for old, new in lines if not old.startswith("k8s.io/") and (old, new) not in own]


def binary_facts(version: str) -> dict:
    binary = K8S_CACHE / version / "kube-controller-manager"
    toolchain = go("version", str(binary)).stdout.strip().rsplit(" ", 1)[-1]
    said = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False, timeout=60)
    return {
        "kcm_version": (said.stdout or said.stderr).strip(),
        "go": toolchain,
        "binary_sha256": hashlib.sha256(binary.read_bytes()).hexdigest(),
    }


# How KCM's journal says a controller started or failed, across releases (v1.19: Started "job",
# Error starting "job"; later: "Started controller" / "Controller starting..." controller="job").
STARTED = re.compile(
    r'(?:Controller starting\.\.\."|Started controller"|Started) controller="([\w-]+)"'
    r'|Started \\?"([\w-]+)\\?"'
)
FAILED = re.compile(r'Error starting controller" controller="([\w-]+)"|Error starting \\?"([\w-]+)\\?"')
# Skipped: no cloud provider, no cluster CIDR, a gate off, or (old releases) the API it needs gone.
SKIPPED = re.compile(r'Skipping \\?"([\w-]+)\\?"|skipping controller" controller="([\w-]+)"')
API_GONE = re.compile(
    r"Not starting ([\w-]+) since ([\w./-]+) resources are not available"
    r'|Refusing to start ([\w-]+) because resource \\?"(\w+)\\?" in group \\?"([\w./-]+)\\?"'
)


def journal_findings(journal: str) -> list[str]:
    """What KCM's journal says: controllers started, controllers failed, APIs it cannot list."""
    started = {a or b for a, b in STARTED.findall(journal)}
    failed = sorted({a or b for a, b in FAILED.findall(journal)})
    listed = sorted(set(re.findall(r"failed to list \*?([\w./]+)", journal)))
    out = [f"{len(started)} controllers started"]
    lock = re.search(r"error retrieving resource lock [\w/-]+: ([^\n]{0,200})", journal)
    if lock:
        out.append(f"cannot take the lock: {lock.group(1).strip()}")
    if failed:
        out.append("failed to start: " + ", ".join(failed))
    if listed:
        out.append("cannot list (API gone from the v1.37 apiserver): " + ", ".join(listed))
    gone = sorted({f"{a or c} ({b or f'{e} {d}'})" for a, b, c, d, e in API_GONE.findall(journal)})
    if gone:
        out.append("not started, its API gone from the v1.37 apiserver: " + ", ".join(gone))
    skipped = sorted({a or b for a, b in SKIPPED.findall(journal)})
    if skipped:
        out.append("skipped: " + ", ".join(skipped))
    return out


def help_facts(version: str) -> tuple[set[str], set[str]]:
    """(flag names, controller names) that the binary's ``--help`` lists."""
    binary = K8S_CACHE / version / "kube-controller-manager"
    text = subprocess.run([str(binary), "--help"], capture_output=True, text=True, check=False, timeout=60)
    text = text.stdout + text.stderr
    listed = re.search(r"All controllers: ([^\n]+)", text)
    controllers = {c.strip() for c in listed.group(1).split(",")} if listed else set()
    return kcm_help.listed(text)[0], controllers


def accepts(version: str, flag: str) -> bool:
    """Whether the binary parses ``--flag`` (deprecated flags are hidden from --help, yet parsed)."""
    return kcm_help.parses_flag(K8S_CACHE / version / "kube-controller-manager", flag)


def capture(version: str) -> None:
    """Keep the binary's ``--help`` and unlisted names in kcmlab/kcm_help/ and regenerate the
    flag and gate table from them (commit both: the formula refuses by that table)."""
    binary = K8S_CACHE / version / "kube-controller-manager"
    kcm_help.capture_hidden(binary, kcm_help.capture_help(binary))
    kcm_help.TABLE.write_text(kcm_help.table_source())


def table_findings(version: str) -> list[str]:
    """Where the binary's ``--help`` contradicts the flag table (kcm_flags) for ``version``."""
    table = formula.kcm_flags()
    flags, controllers = help_facts(version)
    out, hidden = [], []
    for name in sorted(table.FLAG_HISTORY):
        says = table.flag_problem(name, version) is None
        if says and name not in flags and accepts(version, name):
            hidden.append(f"--{name}")
        elif says != (name in flags):
            out.append(
                f"table says --{name} is {'there' if says else 'gone'}, the binary {'lacks' if says else 'has'} it"
            )
    if controllers:
        refused = sorted(c for c in controllers if table.controllers_problem([c], version))
        if refused:
            out.append("controllers the binary has and the table refuses: " + ", ".join(refused))
        names = set(table.CONTROLLER_ALIASES.values()) | table.CANONICAL_ONLY | table.CONTROLLERS_BEFORE_1_28
        accepted = {c for c in names if table.controllers_problem([c], version) is None}
        lacking = sorted(set(table.controller_names(sorted(accepted), version)) - controllers)
        if lacking:
            out.append("controllers the table accepts and the binary lacks: " + ", ".join(lacking))
    else:
        out.append("--help lists no controllers")
    out = out or ["--help agrees with the flag table"]
    if hidden:
        out.append("hidden from --help but parsed (deprecated): " + ", ".join(hidden))
    return out


def prove(version: str, apiserver_bin: Path, suite: str = "prove") -> dict:
    """Deploy ``version`` on one lab machine by a real apply and record what its binary did."""
    workdir = WORK / version / f"lab-{suite}"
    # A fresh lab each time: the salt-master of an earlier run would refuse the new minion key.
    shutil.rmtree(workdir, ignore_errors=True)
    result = {"flags_accepted": "no", "leads": "no", "healthz": "no", "notes": []}
    cluster = LabCluster(
        apiserver_bin, workdir, suite=suite, version=version, nodes=("master-1",), election=SHORT_ELECTION
    )
    node = "master-1"
    try:
        cluster.start()
        cluster.salt("saltutil.sync_all", timeout=300)
        try:
            cluster.apply("kcm")
        except AssertionError as exc:
            result["notes"].append(f"state.apply kcm failed: {str(exc).splitlines()[-1].strip()[:300]}")
            return result
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not cluster.healthz(node):
            time.sleep(0.5)
        healthy = cluster.healthz(node)
        leader = None
        if healthy:
            try:
                leader = cluster.wait_for_leader(60)
            except Exception:  # noqa: BLE001 (a release that never leads is a result, not a crash)
                leader = None
            time.sleep(OBSERVE)
        machine = cluster.machine(node)
        restarts, active = cluster.restarts(node), cluster.active(node)
        journal = machine.journal(UNIT, lines=3000)
        (WORK / version / "journal.txt").write_text(journal)
        rejected = re.findall(r"(unknown flag: \S+|invalid argument [^\n]{0,120})", journal)
        if active == "active" and restarts == 0:
            result["flags_accepted"] = "yes"
            running = cluster.cmdline(node)
            if releases.flag_names(running) != releases.flag_names(releases.reference_flags(version)):
                result["notes"].append(
                    "the running flags differ in name from the reference set: " + " ".join(releases.flag_names(running))
                )
        else:
            result["notes"].append(f"systemd: {active}, {restarts} restarts")
        if rejected:
            result["flags_accepted"] = "no: " + "; ".join(sorted(set(rejected)))[:300]
        result["leads"] = "yes" if leader == node else "no"
        result["healthz"] = "yes" if healthy and cluster.healthz(node) else "no"
        result["notes"].extend(journal_findings(journal))
    finally:
        cluster.close()
    return result


def prove_prerelease(version: str, apiserver_bin: Path, suite: str = "prove") -> list[str]:
    """A pre-release on its first day, on one lab machine: deployed at the control plane's own
    release, upgraded to ``version`` by ``state.apply kcm``, and back. Each step must leave KCM
    running its release without a restart, answering ``/healthz`` and holding the Lease; the
    lines say what each did. The control plane is older than the pre-release, so the pillar states
    why the skew guard is overridden (kcm:skew:override_reason), as an operator would."""
    base = apiserver_bin.name
    workdir = WORK / version / f"lab-{suite}"
    shutil.rmtree(workdir, ignore_errors=True)
    reason = f"{version} proven against the {base} control plane before a {version} apiserver exists here"
    cluster = LabCluster(
        apiserver_bin,
        workdir,
        suite=suite,
        version=base,
        nodes=("master-1",),
        election=SHORT_ELECTION,
        kcm={"skew": {"override_reason": reason}},
    )
    node, lines = "master-1", []
    try:
        cluster.start()
        cluster.salt("saltutil.sync_all", timeout=300)
        for step, release in (("deploy", base), ("upgrade", version), ("back", base)):
            url, hash_url = cluster.tarball(release)
            cluster.change_pillar(version=release, source={"type": "tarball", "url": url, "hash": hash_url})
            began = time.monotonic()
            cluster.apply("kcm")
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not cluster.healthz(node):
                time.sleep(0.5)
            leader = cluster.wait_for_leader(60) if cluster.healthz(node) else None
            running = cluster.salt("kcm.version", timeout=60).get(node)
            journal = cluster.machine(node).journal(UNIT, lines=400)
            rejected = sorted(set(re.findall(r"unknown flag: \S+", journal)))
            ok = running == release and leader == node and cluster.active(node) == "active" and not rejected
            lines.append(
                f"{step} to {release}: {'ok' if ok else 'FAILED'} in {time.monotonic() - began:.0f} s"
                f" (running {running}, leader {leader}, systemd {cluster.active(node)},"
                f" restarts {cluster.restarts(node)}{', ' + '; '.join(rejected) if rejected else ''})"
            )
            say(f"{version}: {lines[-1]}")
            if not ok:
                break
    finally:
        cluster.close()
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="scripts/prove-releases", description=__doc__.splitlines()[0])
    parser.add_argument(
        "minors",
        nargs="*",
        help="v1.MINOR (default: v1.37 down to v1.16), or v1.MINOR.PATCH: "
        "that older patch, only when the newest patch of its minor does not build",
    )
    parser.add_argument("--build-until", metavar="HH:MM", help="start no build at or after this time of day")
    parser.add_argument(
        "--apiserver",
        metavar="DIR",
        type=Path,
        default=K8S_CACHE / "v1.37.2",
        help="the control plane's binaries (default: the pinned v1.37.2 build)",
    )
    parser.add_argument("--suite", default="prove", help="the lab's suite name (its subnet derives from it)")
    parser.add_argument(
        "--prerelease",
        metavar="VERSION",
        help="a pre-release (v1.38.0-beta.0): build it, capture its --help, deploy it by an upgrade"
        " from the control plane's release and back; prints what each step did",
    )
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="no build, no lab: rewrite the notes of the proven rows from their cached "
        "binaries' --help (against today's table) and the journals of their lab runs",
    )
    args = parser.parse_args(argv)
    args.until = datetime.time.fromisoformat(args.build_until) if args.build_until else None
    try:
        args.minor_numbers = sorted({releases.minor_key(m) for m in args.minors or DEFAULT_MINORS}, reverse=True)
    except ValueError as exc:
        parser.error(str(exc))
    explicit = [m for m in args.minors if re.fullmatch(r"v1\.\d+\.\d+", m)]
    args.patches = {releases.minor_key(m): m for m in explicit}
    if len(args.patches) != len(explicit):
        parser.error("give at most one release per minor")
    return args


def older_patch(version: str, newest: str) -> str:
    """Why ``version`` stands for its minor instead of ``newest``; refuses when the newest builds.

    The record proves the newest patch of each minor; an older one only when the newest was tried
    and did not build (its failure is in the build log an earlier run left).
    """
    rc = WORK / newest / "build.rc"
    if not rc.is_file() or rc.read_text().strip() == "0":
        raise SystemExit(
            f"{version}: not the newest patch of its minor ({newest}); prove {newest} first "
            f"(scripts/prove-releases v1.{releases.minor_key(newest)}): only a newest patch "
            "that does not build makes way for an older one"
        )
    return f"not the newest patch: {newest} does not build: {build_failure((WORK / newest / 'build.log').read_text())}"


def record(row: releases.Row) -> None:
    """Rewrite ``row``'s line of docs/releases.md, read afresh (another run may have written others)."""
    rows = releases.parse(releases.RECORD.read_text())
    rows[row.minor] = row
    releases.RECORD.write_text(releases.rewrite(releases.RECORD.read_text(), rows))


# The notes table_findings and journal_findings write, told from the others (joined by "; ").
DERIVED = re.compile(
    r"--help |table says |controllers the |hidden from --help |\d+ controllers started|"
    r"cannot take the lock: |failed to start: |cannot list |not started, |skipped: "
)


def recheck(numbers: list[int]) -> int:
    """Rewrite the derived notes of the proven rows from their cached binary and saved journal."""
    rows = releases.parse(releases.RECORD.read_text())
    for number in numbers:
        row = rows.get(f"v1.{number}")
        journal = WORK / row.release / "journal.txt" if row else None
        if row is None or not row.proven or not built(row.release) or not journal.is_file():
            continue
        lab = [note for note in row.notes.split("; ") if not DERIVED.match(note)]
        row.notes = "; ".join(table_findings(row.release) + lab + journal_findings(journal.read_text()))
        say(f"{row.release}: {row.notes}")
        record(row)
    return 0


def main(argv) -> int:
    args = parse_args(argv)
    if args.recheck:
        return recheck(args.minor_numbers)
    if args.prerelease:
        ok, build_text = build(args.prerelease, args.until)
        if not ok:
            raise SystemExit(f"{args.prerelease}: {build_text}")
        capture(args.prerelease)
        lines = prove_prerelease(args.prerelease, args.apiserver, args.suite)
        print("\n".join([f"{args.prerelease} ({build_text})", *table_findings(args.prerelease), *lines]))
        return 0 if lines and all(": ok " in line for line in lines) and len(lines) == 3 else 1
    listed = listed_versions()
    newest = {number: newest_patch(number, listed) for number in args.minor_numbers}
    # Checked before any build: a refused older patch must not cost the builds queued before it.
    why_older = {
        number: older_patch(patch, newest[number])
        for number, patch in args.patches.items()
        if newest[number] not in (None, patch)
    }
    table = []
    for number in args.minor_numbers:
        minor = f"v1.{number}"
        version = args.patches[number] if number in why_older else newest[number]
        if version is None:
            record(releases.Row(minor, build="not on the Go module proxy"))
            continue
        ok, build_text = build(version, args.until)
        if ok and wrapper_fixes(version):
            build_text += "; built with replace " + ", ".join(wrapper_fixes(version)) + " (scripts/k8s-binaries)"
        if number in why_older and build_text != releases.NOT_BUILT:
            build_text = f"{build_text}; {why_older[number]}"
        if not ok:
            if build_text == releases.NOT_BUILT and releases.parse(releases.RECORD.read_text())[minor].proven:
                say(f"{version}: not built in this session; its proven row is kept")
                continue
            record(releases.Row(minor, release=version, build=build_text))
            table.append((version, build_text, "", "", ""))
            continue
        say(f"{version}: deploying on a lab machine (state.apply kcm) against {args.apiserver.name}")
        began = time.monotonic()
        capture(version)
        facts, outcome = binary_facts(version), prove(version, args.apiserver, args.suite)
        outcome["notes"] = table_findings(version) + outcome["notes"]
        say(f"{version}: proven in {time.monotonic() - began:.0f} s: {json.dumps(outcome)}")
        record(
            releases.Row(
                minor,
                release=version,
                flags_sha256=releases.flagset_sha256(version),
                build=build_text,
                flags_accepted=outcome["flags_accepted"],
                leads=outcome["leads"],
                healthz=outcome["healthz"],
                notes="; ".join(outcome["notes"]),
                **facts,
            )
        )
        table.append((version, build_text, outcome["flags_accepted"], outcome["leads"], outcome["healthz"]))
    width = max((len(r[0]) for r in table), default=7)
    print(f"{'release':<{width}}  {'build':<40}  flags  leads  healthz")
    for version, build_text, accepted, leads, healthz in table:
        print(f"{version:<{width}}  {build_text[:40]:<40}  {accepted[:5]:<5}  {leads:<5}  {healthz}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
