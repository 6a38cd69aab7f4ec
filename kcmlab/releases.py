"""The release record (``docs/releases.md``): what each release's real binary proved.

One row per minor. ``scripts/prove-releases`` rewrites the rows it proves; the unit tier
checks that the flag table still renders, for every proven release, the flag set the binary
was run with (:func:`flagset_sha256`), so a proof cannot drift silently.

The flag set of a release is what ``kcm_flags.render`` returns for the *reference pillar*:
``formula/kcm/defaults.yaml``'s ``kcm:`` with only ``version`` set, resolved with no grains
and the minion cachedir ``/var/cache/salt/minion``. Its hash is the sha256 of those
``--name=value`` strings (sorted by name, as rendered) each followed by a newline; it needs
no build to recompute::

    python -m kcmlab.releases v1.35.4      # prints the flags and their sha256
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, fields

import yaml

from kcmlab import formula

RECORD = formula.REPO / "docs" / "releases.md"
BEGIN = "<!-- prove-releases: begin (scripts/prove-releases rewrites the rows it proves) -->"
END = "<!-- prove-releases: end -->"
NOT_BUILT = "not yet built in this session"
NONE = "-"


def reference_config(version: str) -> dict:
    """The resolved config of the reference pillar for ``version`` (see the module docstring)."""
    defaults = yaml.safe_load((formula.REPO / "formula/kcm/defaults.yaml").read_text())["kcm"]
    config = formula.kcm_config()
    return config.resolve(dict(defaults, version=version), grains={}, opts={"cachedir": "/var/cache/salt/minion"})


def reference_flags(version: str) -> list[str]:
    """The ``--name=value`` flags the flag table renders for ``version``'s reference pillar."""
    return formula.kcm_flags().render(reference_config(version))


def flagset_sha256(version: str) -> str:
    """sha256 (hex) of :func:`reference_flags`, one flag per line, each line ending in a newline."""
    return hashlib.sha256("".join(f"{flag}\n" for flag in reference_flags(version)).encode()).hexdigest()


def flag_names(flags) -> list[str]:
    """The sorted names of ``--name=value`` words (other words are ignored)."""
    return sorted(word[2:].partition("=")[0] for word in flags if word.startswith("--"))


@dataclass
class Row:
    """One release in the record; the field order is the column order of the table."""

    minor: str  # v1.35
    release: str = NONE  # v1.35.4, the newest patch the Go module proxy serves
    kcm_version: str = NONE  # what the binary's --version prints
    go: str = NONE  # the Go toolchain that built it
    binary_sha256: str = NONE
    flags_sha256: str = NONE  # flagset_sha256(release) when it was proven
    build: str = NOT_BUILT  # "ok, 312 s" or why it does not build
    flags_accepted: str = NONE
    leads: str = NONE
    healthz: str = NONE
    notes: str = NONE  # what the binary showed (controllers that failed, ...)

    @property
    def proven(self) -> bool:
        return self.flags_sha256 != NONE


HEADER = (
    "minor",
    "release",
    "KCM `--version`",
    "Go",
    "binary sha256",
    "flag set sha256",
    "build",
    "flags accepted",
    "leads",
    "`/healthz` ok",
    "what the binary showed",
)


def minor_key(minor: str) -> int:
    match = re.match(r"^v?1\.(\d+)", minor)
    if not match:
        raise ValueError(f"'{minor}' is not a Kubernetes minor such as v1.35")
    return int(match.group(1))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip() or NONE


def parse(text: str) -> dict[str, Row]:
    """The rows of the record's table, by minor; raises ``ValueError`` on a malformed table."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"docs/releases.md has no table between '{BEGIN}' and '{END}'")
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    rows = {}
    for line in body.strip().splitlines()[2:]:
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) != len(HEADER):
            raise ValueError(f"docs/releases.md: a row has {len(cells)} cells, not {len(HEADER)}: {line}")
        row = Row(*[c.strip("`") if i < 6 else c for i, c in enumerate(cells)])
        rows[row.minor] = row
    return rows


def render(rows: dict[str, Row]) -> str:
    """The table (between the markers) for ``rows``, newest minor first."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in sorted(rows.values(), key=lambda r: -minor_key(r.minor)):
        values = [getattr(row, f.name) for f in fields(Row)]
        cells = [f"`{v}`" if i < 6 and v != NONE else _cell(v) for i, v in enumerate(values)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rewrite(text: str, rows: dict[str, Row]) -> str:
    """``text`` with the table between the markers replaced by :func:`render` of ``rows``."""
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    return f"{head}{BEGIN}\n{render(rows)}\n{END}{tail}"


PENDING = "<!-- re-proof pending: begin -->"
PENDING_END = "<!-- re-proof pending: end -->"


def pending(text: str) -> dict[str, str]:
    """The minors listed as awaiting a re-proof (``- v1.35: why``), by minor.

    A proven row whose flag set changed stays in the table with the hash its binary ran with;
    it is listed here, with the change that moved it, until ``scripts/prove-releases`` runs
    it again. The list is a debt in plain sight, not an exemption: a minor listed here whose
    flag set no longer drifts (re-proven, or the change undone) fails the unit tier until it is
    taken off.
    """
    if PENDING not in text:
        return {}
    body = text.split(PENDING, 1)[1].split(PENDING_END, 1)[0]
    items = (re.match(r"^- (v1\.\d+): (.+)$", line.strip()) for line in body.splitlines() if line.strip())
    return {m.group(1): m.group(2) for m in items if m}


def drift(rows: dict[str, Row], excused: dict[str, str] | None = None) -> list[str]:
    """One message per proven row whose flag set the flag table no longer renders (minors in
    ``excused``, the :func:`pending` list, are left out)."""
    out = []
    for row in sorted(rows.values(), key=lambda r: minor_key(r.minor)):
        if row.proven and row.minor not in (excused or {}):
            now = flagset_sha256(row.release)
            if now != row.flags_sha256:
                out.append(
                    f"{row.release}: the flag table now renders flag set {now[:12]}..., not the"
                    f" {row.flags_sha256[:12]}... its real binary was proven with in docs/releases.md;"
                    f" re-prove it: scripts/prove-releases {row.minor}"
                )
    return out


def main(argv: list[str]) -> int:
    for version in argv or ["v1.37.2"]:
        for flag in reference_flags(version):
            print(flag)
        print(f"{version} flag set sha256: {flagset_sha256(version)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
