#!/usr/bin/env python3
"""Print the pillar reference (a Markdown table, docs/pillar.md) from formula/kcm/defaults.yaml:
every key, its default, and the comment above it. `--check docs/pillar.md` fails when the
document's copy (between the markers) differs, so the reference cannot drift."""

import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = REPO / "formula" / "kcm" / "defaults.yaml"
BEGIN, END = "<!-- pillar-reference:begin -->", "<!-- pillar-reference:end -->"
KEY_RE = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):(.*)$")


def rows(text=None):
    """(dotted key, default as YAML, description) for every leaf under `kcm:`."""
    text = text if text is not None else DEFAULTS.read_text()
    data = yaml.safe_load(text)
    stack, comments, out = [], [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped.lstrip("# ").strip())
            continue
        match = KEY_RE.match(line)
        if not match:
            comments = []
            continue
        indent = len(match.group(1))
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, match.group(2))]
        path = [k for _, k in stack]
        value = data
        for key in path:
            value = value[key]
        if not isinstance(value, dict) or value == {}:
            shown = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
            shown = shown.removesuffix("...").strip()
            out.append((":".join(path), shown, " ".join(comments)))
        comments = [] if not isinstance(value, dict) or value == {} else comments
        if isinstance(value, dict) and value:
            comments = []
    return out


def table():
    lines = [BEGIN, "| pillar key | default | meaning |", "|---|---|---|"]
    for key, default, text in rows():
        lines.append(f"| `{key}` | `{default}` | {text.replace('|', '/')} |")
    lines.append(END)
    return "\n".join(lines)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        readme = Path(sys.argv[2]).read_text()
        got = readme[readme.find(BEGIN) : readme.find(END) + len(END)]
        if got != table():
            sys.exit(
                f"{sys.argv[2]}: the pillar reference differs from defaults.yaml;"
                " regenerate it with scripts/pillar_reference.py"
            )
        return
    print(table())


if __name__ == "__main__":
    main()
