"""What each real kube-controller-manager binary says it accepts, kept in the repository, and
the flag and feature-gate table generated from it.

``capture`` writes, for each binary, ``kcmlab/kcm_help/<version>.help`` (its ``--help``,
verbatim) and ``<version>.hidden``: the flags and feature gates it parses although ``--help``
does not list them (deprecated flags; GA and deprecated gates), found by asking the binary
about each name any committed ``--help`` or the hand-written table knows, one name per run.
``generate`` turns those files into ``_utils/kcm_release_flags.py``: per minor, the release
whose binary spoke, its flags and its gates. Minors without a file keep the hand-written rows
of ``kcm_flags.FLAG_HISTORY`` alone ("table only").

    python -m kcmlab.kcm_help capture [BINARY...]   # default: every binary in the build cache
    python -m kcmlab.kcm_help generate [--check]    # --check: exit 1 when the table is stale
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELP_DIR = REPO / "kcmlab" / "kcm_help"
TABLE = REPO / "formula" / "_utils" / "kcm_release_flags.py"
K8S_CACHE = Path.home() / ".cache" / "kcm-formula" / "k8s"

_FLAG = re.compile(r"^\s+(?:-\w, )?--([a-z0-9_-]+)", re.M)
# In the --feature-gates text: "AllAlpha=true|false (ALPHA - default=false)"; v1.31+ prefix "kube:".
_GATE = re.compile(r"^\s+(?:kube:)?([A-Z][A-Za-z0-9]*)=true\|false \(", re.M)
_VERSION = re.compile(r"^Kubernetes (v1\.\d+\.\d+\S*)$", re.M)


def listed(help_text: str) -> tuple[set[str], set[str]]:
    """(flag names, feature-gate names) that a ``--help`` text lists."""
    return set(_FLAG.findall(help_text)), set(_GATE.findall(help_text))


def run(binary: Path, *args: str) -> str:
    """What ``binary *args`` printed, stdout then stderr (under ``nice``: the lab runs beside it)."""
    done = subprocess.run(
        ["nice", "-n", "19", str(binary), *args], capture_output=True, text=True, check=False, timeout=60
    )
    return done.stdout + done.stderr


def parses_flag(binary: Path, flag: str) -> bool:
    """Whether ``binary`` parses ``--flag`` (an empty value may be refused: that is not 'unknown')."""
    return f"unknown flag: --{flag}" not in run(binary, f"--{flag}=", "--version")


def knows_gate(binary: Path, gate: str) -> bool:
    """Whether ``binary`` knows the feature gate (a gate locked to a value is still known)."""
    return f"unrecognized feature gate: {gate}" not in run(binary, f"--feature-gates={gate}=true", "--version")


def committed() -> dict[str, tuple[str, set[str], set[str]]]:
    """version -> (help text, hidden flags, hidden gates) of every committed binary."""
    out = {}
    for path in sorted(HELP_DIR.glob("*.help")):
        version = path.name.removesuffix(".help")
        hidden_file = HELP_DIR / f"{version}.hidden"
        hidden = hidden_file.read_text().split() if hidden_file.exists() else []
        flags = {h.removeprefix("--") for h in hidden if h.startswith("--")}
        gates = {h.removeprefix("gate:") for h in hidden if h.startswith("gate:")}
        out[version] = (path.read_text(), flags, gates)
    return out


def candidates() -> tuple[set[str], set[str]]:
    """Every flag and gate a committed ``--help`` lists, and every flag of the hand-written
    table: the names each binary is asked about."""
    from kcmlab import formula

    flags, gates = set(), set()
    for path in HELP_DIR.glob("*.help"):
        more_flags, more_gates = listed(path.read_text())
        flags |= more_flags
        gates |= more_gates
    return flags | set(formula.kcm_flags().FLAG_HISTORY), gates


def version_of(binary: Path) -> str:
    """The release a binary says it is (``v1.37.2``)."""
    return _VERSION.search(run(binary, "--version")).group(1)


def capture_help(binary: Path) -> str:
    """Write ``<version>.help`` for ``binary``; return its version."""
    version = version_of(binary)
    HELP_DIR.mkdir(exist_ok=True)
    (HELP_DIR / f"{version}.help").write_text(run(binary, "--help"))
    return version


def capture_hidden(binary: Path, version: str) -> None:
    """Write ``<version>.hidden``: each name some committed ``--help`` lists, or the table
    knows, that this binary parses without listing it."""
    flags, gates = listed((HELP_DIR / f"{version}.help").read_text())
    all_flags, all_gates = candidates()
    hidden = [f"--{f}" for f in sorted(all_flags - flags) if parses_flag(binary, f)]
    hidden += [f"gate:{g}" for g in sorted(all_gates - gates) if knows_gate(binary, g)]
    (HELP_DIR / f"{version}.hidden").write_text("".join(f"{h}\n" for h in hidden))


def _minor(version: str) -> int:
    return int(version.split(".")[1])


def table_source() -> str:
    """The text of ``_utils/kcm_release_flags.py`` that the committed files give."""
    rows = {}
    for version, (text, hidden_flags, hidden_gates) in committed().items():
        flags, gates = listed(text)
        row = (version, sorted(flags | hidden_flags), sorted(gates | hidden_gates))
        # One binary speaks for its minor: the newest patch committed.
        if _minor(version) not in rows or _patch(version) > _patch(rows[_minor(version)][0]):
            rows[_minor(version)] = row
    lines = [
        '"""',
        "The flags and feature gates each minor's real kube-controller-manager binary accepts, by minor.",
        "",
        "Generated by ``python -m kcmlab.kcm_help generate`` from ``kcmlab/kcm_help/`` (each proven",
        "binary's ``--help`` and the names it parses unlisted): do not edit. Minors missing here are",
        "judged by the hand-written rows of ``kcm_flags`` alone. Pure data.",
        '"""',
        "",
        '__virtualname__ = "kcm_release_flags"',
        "",
        "# minor -> (the release whose binary spoke, its flags, its feature gates)",
        "RELEASES = {",
    ]
    for minor in sorted(rows):
        version, flags, gates = rows[minor]
        lines.append(f"    {minor}: (")
        lines.append(f'        "{version}",')
        for names in (flags, gates):
            lines.append('        frozenset("""')
            lines.extend(
                textwrap.wrap(
                    " ".join(names),
                    100,
                    initial_indent=" " * 12,
                    subsequent_indent=" " * 12,
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )
            lines.append('        """.split()),')
        lines.append("    ),")
    lines += [
        "}",
        "",
        "",
        "def __virtual__():",
        "    return __virtualname__",
        "",
        "",
        "def spoken(minor):",
        '    """``(release, flags, gates)`` that the binary of ``minor`` accepts, or ``None`` when',
        '    no binary of that minor was captured."""',
        "    return RELEASES.get(minor)",
        "",
        "",
        "def minors():",
        '    """The minors a binary spoke for, oldest first."""',
        "    return sorted(RELEASES)",
        "",
    ]
    return "\n".join(lines)


def _patch(version: str) -> tuple[int, str]:
    rest = version.split(".", 2)[2]
    number = re.match(r"\d+", rest).group(0)
    return int(number), rest[len(number) :] or "~"  # a release sorts after its pre-releases


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture")
    cap.add_argument("binaries", nargs="*", type=Path)
    gen = sub.add_parser("generate")
    gen.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "capture":
        binaries = args.binaries or sorted(K8S_CACHE.glob("*/kube-controller-manager"))
        # Every --help first: each binary is then asked about the names all of them list.
        versions = {binary: capture_help(binary) for binary in binaries}
        for binary, version in versions.items():
            capture_hidden(binary, version)
            print(f"{binary}: {version}", flush=True)
        args.check = False
    source = table_source()
    if getattr(args, "check", False):
        if TABLE.read_text() != source:
            print(f"{TABLE.relative_to(REPO)} is stale: run python -m kcmlab.kcm_help generate", file=sys.stderr)
            return 1
        return 0
    TABLE.write_text(source)
    print(f"wrote {TABLE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
