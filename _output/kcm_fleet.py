"""
Outputter ``kcm_fleet``: draws the data of ``salt-run kcm.status`` as one table, one
row per master, grouped by cluster, each group closed by its verdict line (exactly one
live leader, or what is wrong). ``--out=json`` / ``--out=yaml`` bypass it.
"""

__virtualname__ = "kcm_fleet"

COLUMNS = (
    ("cluster", "CLUSTER"),
    ("cluster_id", "CLUSTER ID"),
    ("minion", "MINION"),
    ("version", "VERSION"),
    ("service_active", "SERVICE"),
    ("healthy", "HEALTHY"),
    ("leader", "LEADER"),
    ("lease_age_seconds", "LEASE AGE S"),
    ("cert_days_left", "CERT DAYS"),
    ("errors", "ERRORS"),
)
# A UID is 36 characters; its first 8 tell clusters apart in a table (json has it whole).
ID_WIDTH = 8


def __virtual__():
    return __virtualname__


def _printable(text):
    # What a row says reaches the terminal: no escape sequence, no line of its own.
    return "".join(
        ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}" for ch in str(text)
    )


def _cell(key, value):
    if value is None or value == "":
        return "-"
    if key == "cluster_id":
        return _printable(str(value)[:ID_WIDTH])
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _printable(value)


def render(data):
    """The table as text; pure, so it is tested without a master."""
    if not isinstance(data, dict) or "clusters" not in data:
        return str(data)
    by_group = {}
    for row in data.get("masters") or []:
        key = (row.get("cluster") or "(no answer)", row.get("cluster_id") or None)
        by_group.setdefault(key, []).append(row)
    groups = [(c, by_group.get((c["cluster"], c["cluster_id"]), [])) for c in data["clusters"]]
    cells = [[_cell(key, row.get(key)) for key, _ in COLUMNS] for _, rows in groups for row in rows]
    widths = [max([len(title)] + [len(line[i]) for line in cells]) for i, (_, title) in enumerate(COLUMNS)]

    def line(values):
        return "  ".join(value.ljust(width) for value, width in zip(values, widths)).rstrip()

    out = [line([title for _, title in COLUMNS])]
    for summary, rows in groups:
        out.extend(line([_cell(key, row.get(key)) for key, _ in COLUMNS]) for row in rows)
        out.append(f"  {'ok  ' if summary['ok'] else '!!  '}{_printable(summary['verdict'])}")
    if not groups:
        out.append("  (no masters matched)")
    if data.get("problem"):
        out.append(f"  !!  {_printable(data['problem'])}")
    return "\n".join(out)


def output(data, **kwargs):  # pylint: disable=unused-argument
    """
    Salt's outputter entry point.

    CLI Example:

    .. code-block:: bash

        salt-run kcm.status --out=kcm_fleet
    """
    return render(data)
