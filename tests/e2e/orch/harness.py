"""What the orchestration tests share: restart counting (systemd's journal on each machine)
and readers of an orchestration's return (the Lease watcher is kcmlab.leasewatch)."""

from __future__ import annotations

from kcmlab.cluster import NODES, SHORT_ELECTION
from kcmlab.controlplane import failover_bound
from kcmlab.leasewatch import LeaseWatch

# Failover at the lab's timings: waits are built on it, never speed claims (bench/ has those).
BOUND = failover_bound(
    float(SHORT_ELECTION["lease_duration"].rstrip("s")), float(SHORT_ELECTION["retry_period"].rstrip("s"))
)
__all__ = ["NODES", "SHORT_ELECTION", "BOUND", "LeaseWatch", "steps", "runner_return", "starts"]


def steps(result):
    """State id -> state return of a `salt-run state.orchestrate` (parsed JSON)."""
    data = result.data
    assert isinstance(data, dict), result.stdout
    [states] = data.get("data", data).values()  # keyed by the master's id
    return {st["__id__"]: st for st in states.values()}


def runner_return(step):
    """What the runner of a ``salt.runner`` orchestration step returned."""
    return (step.get("changes") or {}).get("return")


def starts(cluster, since):
    """KCM starts per master at or after ``since`` (epoch), as systemd logged them."""
    return {name: node.starts(since) for name, node in cluster.nodes.items()}
