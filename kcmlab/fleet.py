"""
Load that looks like a fleet of KCM clusters to a real Salt master, made by one real
salt-minion: it is not a real KCM.

The events are made by the kcm_leader beacon's own pure `step()` from two Lease
records (old holder, new holder), so their tail and data are exactly what a beacon
fires on a failover (signed with the stand-in minion's key by the beacons' own code,
kcm_trust.sign_events); `id` is the stand-in minion's, as Salt's beacon framework adds it.
They reach the master the way beacon events do: a `__beacons_return` event on the
minion's local bus, which the running salt-minion forwards to the master as a
`_minion_event` with an `events` list (salt/minion.py), where the kcm_alert engine (or
the reactor) sees them.

Also what kcm.master writes for a master (kcm_master_conf), shared by the integration
tier and bench/fleet.py.
"""

import datetime
import uuid
from pathlib import Path

from kcmlab.formula import load, utils

ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")
# The lease timings of the formula's defaults (15s/10s/2s), as deployed facts carry them.
SETTINGS = {"debounce": 2, "stale_after": 3, "retry_period": 2.0, "lease_duration": 15.0}
T0 = 1_800_000_000.0


_BEACON = load("_beacons", "kcm_leader")
# The beacons sign through kcm_trust.sign_events, with the minion's key and its counter.
_UTILS = utils()


def new_cluster_id():
    """A cluster identity as kcm.cluster_id returns it (a namespace UID is a UUID)."""
    return str(uuid.uuid4())


def _record(node, transitions, renewed):
    """A leader record as kcm.leader returns it."""
    text = datetime.datetime.fromtimestamp(renewed, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "holder": f"{node}_{uuid.uuid5(uuid.NAMESPACE_DNS, node)}",
        "node": node,
        "minion": node,
        "transitions": transitions,
        "acquire_time": text,
        "renew_time": text,
        "lease_duration_seconds": 15,
        "source": "lease",
    }


def failover_events(cluster, cluster_id, old="master-1", new="master-2", transitions=5):
    """
    What the kcm_leader beacon's beacon() returns on a minion when the leader of
    `cluster` moves from `old` to `new` (dicts with the tag's tail in `tag`): computed by
    the beacon's own step().
    """
    settings = dict(SETTINGS, cluster=cluster, cluster_id=cluster_id)
    state, _ = _BEACON.step(None, _record(old, transitions - 1, T0), T0, settings)
    _, events = _BEACON.step(state, _record(new, transitions, T0 + 1), T0 + 1, settings)
    return events


class BeaconStandIn:
    """Fires beacon returns through a running salt-minion, as its beacons would."""

    def __init__(self, minion_opts):
        import salt.utils.event

        self.opts = dict(minion_opts)
        self.id = self.opts["id"]
        self.context = {}
        self.bus = salt.utils.event.get_event("minion", opts=self.opts, listen=False)

    def _signed(self, events):
        # Signed as the beacons sign theirs (this minion's key, its counter in its cachedir).
        opts = {"id": self.id, "pki_dir": self.opts.get("pki_dir", ""), "cachedir": self.opts["cachedir"]}
        return _UTILS["kcm_trust.sign_events"](
            opts,
            [dict(event) for event in events],
            _UTILS["kcm_state_file.read_json"],
            _UTILS["kcm_state_file.write_json"],
        )

    def returns(self, events):
        """The beacon return for `events` as the minion sends it (signed when the beacon signs)."""
        returns = []
        for event in self._signed(events):
            data = dict(event)
            tail = data.pop("tag")
            data.setdefault("id", self.id)  # what Beacon.process adds
            returns.append({"tag": f"salt/beacon/{self.id}/kcm_leader/{tail}", "data": data})
        return returns

    def send(self, returns):
        """One beacon return (one `_minion_event` to the master)."""
        self.bus.fire_event({"beacons": returns}, "__beacons_return")

    def fire(self, events):
        self.send(self.returns(events))

    def close(self):
        self.bus.destroy()


def kcm_master_conf(root, alertmanager_url, labels, **master):
    """What the formula's kcm.master state writes into master.d/kcm.conf for these receivers
    and labels (``master``: more pillar kcm:master keys): ``kcmlab.masterless.kcm_master_config``."""
    from kcmlab.masterless import kcm_master_config

    return kcm_master_config(root, dict({"alertmanager_urls": [alertmanager_url], "labels": labels}, **master))
