"""The demo behind ``scripts/demo``: the whole story of kcm-formula on real systemd machines.

``up`` starts etcd + kube-apiserver on a host bridge (``kcmlab``, suite ``demo``), Alertmanager
on the host's loopback, a real salt-master with the formula's ``kcm.master`` config (reactor +
kcm_alert), and three systemd machines master-1..3, each running ``salt-minion`` under
systemd. It applies the formula over the bus (``salt 'master*' state.apply kcm``, pillar from
``pillar.example`` with the lab's facts, default paths, ``service:manage: true``), then the
``kcm.beacon``, prints the fleet table (``salt-run kcm.status``), and drives a failover with
``systemctl stop`` of the leader's service: the new leader, the ``kcm/alert/changed`` event on
the master's bus and the ``KCMLeaderChanged`` alert in Alertmanager (its only alert: the
certificates live a year). Everything keeps running after ``up`` returns: ``status``,
``failover`` and ``shell`` work on it, ``down`` removes it. ``--verbose`` adds the detail.

The host processes (etcd, kube-apiserver, Alertmanager, salt-master) are recorded in
``<sandbox>/demo.json`` with pid, session and start time, so ``down`` stops exactly those and
whatever they spawned in their session. The machines are ``kcmlab``'s: ``down`` removes them,
their cgroups, veths and the bridge by the lab's suite name, with or without ``demo.json``.
``down`` and ``shell`` need only the standard library, so nothing here imports Salt, PyYAML
or requests at module level.

The parts: ``say`` (progress lines), ``state`` (the sandbox, demo.json, process records),
``teardown`` (stopping what a demo started), ``running`` (the demo as later commands see
it: status, failover), ``up`` (starting it); ``scripts/demo.py`` is the command line.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

STATE_NAME = "demo.json"
NODES = ("master-1", "master-2", "master-3")
SUITE = os.environ.get("KCM_DEMO_SUITE") or "demo"
UNIT = "kube-controller-manager"
# Short timings so the failover fits in seconds (lease / renew deadline / retry period).
ELECTION = {"lease_duration": "4s", "renew_deadline": "3s", "retry_period": "1s"}
# Beacon settings for the demo: poll every second (minion loop_interval 1).
BEACON = {"interval": 1, "debounce": 2, "stale_after": 3, "timeout": 2}
BEACON_STATE = "/var/cache/salt/minion/kcm/beacon-kcm_leader.json"
# AF_UNIX socket paths are limited to 107 bytes; the master's live in its root_dir.
SOCKET_PATH_MAX = 107
# Upper bounds for things that must happen; exceeding one is an error naming the part.
WAIT = {"apply": 900, "kcm": 120, "leader": 60, "beacon": 60, "alert": 60}
# Stop order of the host processes: the watchers before the watched, the control plane last.
STOP_ORDER = ("salt-master", "alertmanager", "kube-apiserver", "etcd")
TOTAL_STEPS = 7


class DemoError(RuntimeError):
    """Something did not come up; the message names it and its log."""
