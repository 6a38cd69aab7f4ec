"""
The tables ``salt-run kcm_orch.upgrade`` and ``kcm_orch.drill`` end with (their ``summary``):
what an operator reads first, built from the report the runner returns.

Called from the runner as ``__utils__["kcm_orch_report.upgrade_summary"](report, steps)``.
"""

__virtualname__ = "kcm_orch_report"


def __virtual__():
    return __virtualname__


def upgrade_summary(report, steps):
    """One row per master (version before and after, role, restarted, seconds), then one line
    with the leader before and after, the leader changes and the longest time without one."""
    by_minion = {s["minion"]: s for s in steps}
    rows = [f"{'master':<20}{'before':<12}{'after':<12}{'role':<10}{'restarted':<11}{'seconds':>8}"]
    for minion, row in sorted(report["masters"].items()):
        step = by_minion.get(minion, {})
        rows.append(
            f"{minion:<20}{str(row.get('version_before')):<12}{str(row.get('version_after')):<12}"
            f"{step.get('role', '-'):<10}{str(step.get('restarted', '-')):<11}{str(step.get('seconds', '-')):>8}"
        )
    rows.append(
        f"leader {report['leader_before']} -> {report['leader_after']}, "
        f"{report['leader_changes']} leader change(s), longest without a live leader "
        f"{report['longest_no_leader_seconds']} s, {report['seconds']} s in all"
    )
    return rows


def drill_summary(report):
    """The drill's facts, one per line: leader before, stopped, leader after, failover seconds,
    leader changes, healthy after."""
    return [
        f"{'leader before':<24}{report['leader_before']}",
        f"{'stopped':<24}{', '.join(report['stopped'])}",
        f"{'leader after':<24}{report['leader_after']}",
        f"{'failover seconds':<24}{report['failover_seconds']}",
        f"{'leader changes':<24}{report['leader_changes']}",
        f"{'healthy after':<24}{', '.join(report['healthy_after'])}",
    ]
