"""Write a go.mod for a Kubernetes release that has none (v1.14 and older) from its Godeps.json.

Kubernetes before v1.15 pinned its dependencies with godep: ``Godeps/Godeps.json`` lists every
vendored package with the git revision of its repository, and ``vendor/`` held the code. The Go
module proxy serves ``k8s.io/kubernetes@v1.14.2`` without ``vendor/`` (it strips vendored code),
so ``scripts/k8s-binaries`` builds such a release in module mode: this helper turns each
repository revision into the module version the proxy serves for that very commit, and writes a
wrapper module that requires them all and pins each with a ``replace`` (so that no dependency's
own go.mod can move it: the shape of v1.15's generated go.mod). The staging modules
(``k8s.io/api`` ...) point at ``./staging/<name>``, which the caller fills with the release's
``staging/src/k8s.io/<name>``.

The proxy here answers only canonical versions (a query by commit hash gets 403), and a
pseudo-version names the commit's time, which Godeps.json does not hold. So a revision becomes
a version by, in this order: a version in a reference go.mod (``--reference``, repeatable: the
next release's go.mod, and ``scripts/k8s-godeps-pins.txt``, versions copied from public go.mod
files of 2019 that pinned the same commits) that ends in the revision's first 12 hex digits;
the tag in the package's godep ``Comment`` when it is an exact tag (not ``tag-N-gHASH``). Each
candidate is checked with ``go mod download -json`` (one call through GOPROXY, which also
downloads it); the first the proxy serves wins. A module left without a version is named on
stderr and left out: a build that imports it then fails naming it.

    python3 scripts/godeps_gomod.py [--reference GO_MOD]... GODEPS_JSON KUBERNETES_VERSION STAGING... > go.mod
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Hosts whose module path is host/owner/repo (three elements); golang.org/x/<repo> and
# gonum.org/v1/<repo> have the same shape. gopkg.in paths end at the element with .vN; every
# other host that Kubernetes vendored (k8s.io, sigs.k8s.io, go.uber.org, google.golang.org,
# cloud.google.com/go, vbom.ml/util) has host/<name> modules.
THREE_ELEMENTS = {"github.com", "bitbucket.org", "golang.org", "gonum.org"}
# `git describe` output: a tag, or a tag with commits on top (not a tag of this commit).
DESCRIBED = re.compile(r"-\d+-g[0-9a-f]+$")
TAG = re.compile(r"^v(\d+)(?:\.\d+){0,2}(?:-[\w.]+)?$")
# "module version" at the start of a line (require blocks, pins files) or after "=>" (replace).
REFERENCE = re.compile(r"(?m)(?:^[ \t]*(?:require[ \t]+)?|=>[ \t]*)([^\s/]+\.[^\s/]+(?:/[^\s/]+)*)[ \t]+(v\d[^\s]*)")


def module_root(import_path: str) -> str:
    """The module that holds ``import_path`` at a 2019 revision (its repository root)."""
    parts = import_path.split("/")
    if parts[0] in THREE_ELEMENTS:
        return "/".join(parts[:3])
    if parts[0] == "gopkg.in":
        for index, part in enumerate(parts):
            if re.search(r"\.v\d+$", part):
                return "/".join(parts[: index + 1])
        raise ValueError(f"{import_path}: a gopkg.in path without a .vN element")
    return "/".join(parts[:2])


def module_pins(godeps: dict) -> dict[str, tuple[str, str]]:
    """{module: (git revision, godep comment)}; raises when one module has two revisions."""
    pins: dict[str, tuple[str, str]] = {}
    for dep in godeps["Deps"]:
        module = module_root(dep["ImportPath"])
        pin = (dep["Rev"], dep.get("Comment", ""))
        if pins.setdefault(module, pin)[0] != pin[0]:
            raise ValueError(f"{module}: two revisions in Godeps.json ({pins[module][0]}, {pin[0]})")
    return pins


def reference_versions(text: str) -> dict[str, set[str]]:
    """{module: versions} named in a go.mod (require and replace lines) or a pins file."""
    found: dict[str, set[str]] = {}
    for module, version in REFERENCE.findall(text):
        found.setdefault(module, set()).add(version)
    return found


def exact_tag(comment: str) -> str | None:
    """The semantic version of a godep comment that is a tag of the commit itself, else None."""
    if not comment or DESCRIBED.search(comment) or not TAG.match(comment):
        return None
    core, sep, pre = comment.partition("-")
    parts = core[1:].split(".")
    return "v" + ".".join(parts + ["0"] * (3 - len(parts))) + sep + pre


def candidates(module: str, revision: str, comment: str, references: dict[str, set[str]]) -> list[str]:
    """The versions that may name ``revision`` of ``module``, most certain first."""
    out = sorted(v for v in references.get(module, ()) if v.split("+")[0].endswith("-" + revision[:12]))
    tag = exact_tag(comment)
    if tag:
        # v2 and later without a /vN module path: +incompatible (no go.mod at that tag), or the
        # plain tag when the repository had a go.mod.
        out += [f"{tag}+incompatible", tag] if int(TAG.match(tag).group(1)) >= 2 else [tag]
    return out


def parse_downloads(stream: str) -> dict[tuple[str, str], str | None]:
    """{(module, version): error or None} from the JSON ``go mod download -json`` prints."""
    results: dict[tuple[str, str], str | None] = {}
    decoder, index = json.JSONDecoder(), 0
    while index < len(stream):
        if stream[index].isspace():
            index += 1
            continue
        item, index = decoder.raw_decode(stream, index)
        results[(item["Path"], item.get("Version", ""))] = item.get("Error") or None
    return results


def choose(
    pins: dict[str, tuple[str, str]], references: dict[str, set[str]], served: dict[tuple[str, str], str | None]
) -> tuple[dict[str, str], dict[str, str]]:
    """({module: version}, {module: why none}): each module's first served candidate."""
    versions, missing = {}, {}
    for module, (revision, comment) in sorted(pins.items()):
        tried = candidates(module, revision, comment, references)
        good = [v for v in tried if (module, v) in served and served[(module, v)] is None]
        if good:
            versions[module] = good[0]
        elif tried:
            missing[module] = f"the proxy serves none of {', '.join(tried)} (revision {revision[:12]})"
        else:
            missing[module] = f"no known version names revision {revision[:12]} (godep comment {comment!r})"
    return versions, missing


def download(queries: list[str]) -> dict[tuple[str, str], str | None]:
    """Ask the proxy for every query at once (outside any module: the caller's go.mod is not ours)."""
    env = {k: v for k, v in os.environ.items() if k != "GOFLAGS"}
    with tempfile.TemporaryDirectory() as empty:
        proc = subprocess.run(
            ["go", "mod", "download", "-json", *queries],
            capture_output=True,
            text=True,
            check=False,
            cwd=empty,
            env=env,
        )
    if not proc.stdout.strip():
        raise SystemExit(f"godeps_gomod: go mod download answered nothing: {proc.stderr.strip()[-500:]}")
    return parse_downloads(proc.stdout)


def render(kubernetes_version: str, versions: dict[str, str], staging: list[str], go_version: str = "1.12") -> str:
    """The wrapper module's go.mod: k8s.io/kubernetes, every dependency required and pinned,
    every staging module replaced by its local directory ``./staging/<name>``."""
    lines = [
        "// Generated by scripts/godeps_gomod.py from k8s.io/kubernetes@"
        f"{kubernetes_version}'s Godeps/Godeps.json. Do not edit.",
        "",
        "module kcmformula.local/kubernetes",
        "",
        f"go {go_version}",
        "",
        "require (",
    ]
    lines.append(f"\tk8s.io/kubernetes {kubernetes_version}")
    lines += [f"\t{module} {version}" for module, version in sorted(versions.items())]
    lines += [f"\tk8s.io/{name} v0.0.0" for name in sorted(staging)]
    lines += [")", "", "replace ("]
    lines += [f"\t{module} => {module} {version}" for module, version in sorted(versions.items())]
    lines += [f"\tk8s.io/{name} => ./staging/{name}" for name in sorted(staging)]
    lines += [")", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--reference", action="append", type=Path, default=[])
    parser.add_argument("godeps", type=Path)
    parser.add_argument("kubernetes_version")
    parser.add_argument("staging", nargs="*")
    args = parser.parse_args(argv)
    pins = module_pins(json.loads(args.godeps.read_text()))
    references: dict[str, set[str]] = {}
    for path in args.reference:
        for module, found in reference_versions(path.read_text()).items():
            references.setdefault(module, set()).update(found)
    queries = [f"{m}@{v}" for m, (r, c) in sorted(pins.items()) for v in candidates(m, r, c, references)]
    versions, missing = choose(pins, references, download(queries))
    for module, why in missing.items():
        print(f"godeps_gomod: {module}: {why}", file=sys.stderr)
    sys.stdout.write(render(args.kubernetes_version, versions, args.staging))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
