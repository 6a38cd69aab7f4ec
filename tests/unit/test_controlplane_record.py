"""The lab reads the leader where the release keeps it: the Lease, or for KCM v1.14-v1.16
(Endpoints locks) the Endpoints' leader annotation, in a Lease's shape for every waiter."""

import json

from kcmlab.controlplane import ENDPOINTS_PATH, LEASE_PATH, leader_record

RECORD = {
    "holderIdentity": "master-3_1f0c",
    "leaseDurationSeconds": 15,
    "acquireTime": "2019-05-14T10:00:00Z",
    "renewTime": "2019-05-14T10:05:00Z",
    "leaderTransitions": 2,
}


def served(objects):
    return lambda path: objects.get(path)


def test_a_lease_is_read_as_it_is():
    lease = {"kind": "Lease", "spec": {"holderIdentity": "master-1_x", "leaseTransitions": 4}}
    assert leader_record(served({LEASE_PATH: lease, ENDPOINTS_PATH: {"metadata": {}}})) is lease


def test_an_endpoints_lock_is_read_from_its_annotation_in_a_leases_shape():
    endpoints = {"metadata": {"annotations": {"control-plane.alpha.kubernetes.io/leader": json.dumps(RECORD)}}}

    spec = leader_record(served({ENDPOINTS_PATH: endpoints}))["spec"]

    assert spec == {
        "holderIdentity": "master-3_1f0c",
        "leaseDurationSeconds": 15,
        "acquireTime": "2019-05-14T10:00:00Z",
        "renewTime": "2019-05-14T10:05:00Z",
        "leaseTransitions": 2,
    }


def test_nothing_before_the_first_election():
    assert leader_record(served({})) is None
    assert leader_record(served({ENDPOINTS_PATH: {"metadata": {"annotations": {}}}})) is None
