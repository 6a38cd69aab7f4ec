"""kcm.* called over the bus (``salt <master> kcm.<fun>``) on three systemd machines, against
a real etcd + kube-apiserver and three real KCMs run by systemd (fixtures in conftest.py)."""

PORT = 10257


def ok(cluster, minion, fun, *args, **kwargs):
    returns = cluster.salt(fun, *args, target=[minion], **kwargs)
    assert minion in returns, f"{fun} on {minion}: no return ({returns})"
    return returns[minion]


def test_every_master_names_the_real_leader(kcm_cluster):
    leader, holder, _, records = kcm_cluster.consistent(lambda: kcm_cluster.salt("kcm.leader"))

    assert sorted(records) == sorted(kcm_cluster.nodes)
    for name, record in records.items():
        assert record["holder"] == holder, f"{name} reads a different holder"
        assert record["node"] == leader
        assert record["minion"] == leader
        assert record["source"] == "lease"
        assert record["expired"] is False
        assert record["lease_duration_seconds"] == int(kcm_cluster.election_seconds["lease_duration"])


def test_is_leader_is_true_on_exactly_the_leader(kcm_cluster):
    leader, _, _, answers = kcm_cluster.consistent(lambda: kcm_cluster.salt("kcm.is_leader"))

    assert sorted(answers) == sorted(kcm_cluster.nodes), answers
    assert [name for name, mine in sorted(answers.items()) if mine is True] == [leader], answers
    assert all(mine in (True, False) for mine in answers.values()), answers


def test_leader_follows_a_kill_9_failover(kcm_cluster):
    old, _, before, _ = kcm_cluster.consistent()
    survivor = next(n for n in kcm_cluster.nodes if n != old)

    kcm_cluster.kill(old)
    kcm_cluster.wait_for_leader(kcm_cluster.failover_bound + 10, exclude=[old])

    def answers():
        mine = {n: ok(kcm_cluster, n, "kcm.is_leader") for n in kcm_cluster.nodes}
        return ok(kcm_cluster, survivor, "kcm.leader"), mine

    new, holder, after, (record, mine) = kcm_cluster.consistent(answers)
    assert new != old
    assert (record["node"], record["holder"]) == (new, holder)
    assert holder != before["holderIdentity"]
    assert record["transitions"] == after["leaseTransitions"] > before["leaseTransitions"]
    assert record["expired"] is False
    assert mine == {n: n == new for n in kcm_cluster.nodes}, mine


def test_cluster_id_is_the_kube_system_uid_read_as_kcm_itself(kcm_cluster):
    # The masters read it with KCM's own kubeconfig (CN system:kube-controller-manager):
    # the real apiserver's RBAC must allow that GET, or the beacon carries no cluster_id.
    uid = kcm_cluster.cp.get_json("/api/v1/namespaces/kube-system")["metadata"]["uid"]

    answers = kcm_cluster.salt("kcm.cluster_id")

    assert sorted(answers) == sorted(kcm_cluster.nodes)
    assert set(answers.values()) == {uid}, answers
    for name, rows in kcm_cluster.salt("kcm.status").items():
        assert rows[0]["cluster_id"] == uid and "cluster_id" not in rows[0]["errors"], f"{name}: {rows}"


def test_health_is_ok_on_every_master(kcm_cluster):
    results = kcm_cluster.salt("kcm.health")
    assert sorted(results) == sorted(kcm_cluster.nodes), results
    for name, result in results.items():
        assert result["healthy"] is True, f"{name}: {result}"
        assert result["checks"].get("leaderElection") == "ok", f"{name}: {result['checks']}"
        assert f":{PORT}/healthz" in result["url"], result["url"]


def test_version_and_status_row(kcm_cluster):
    version = kcm_cluster.version

    versions = kcm_cluster.salt("kcm.version")
    leader, _, _, status = kcm_cluster.consistent(lambda: kcm_cluster.salt("kcm.status"))
    rows = {name: row for name, [row] in status.items()}

    assert versions == {name: version for name in kcm_cluster.nodes}
    assert [name for name, row in sorted(rows.items()) if row["leader"] == "yes"] == [leader], rows
    for name, row in rows.items():
        assert row["minion"] == name
        assert (row["version"], row["healthy"], row["errors"]) == (version, True, ""), row
        assert row["holder"].startswith(f"{leader}_")
        assert row["cert_days_left"] > 0


def test_preflight_accepts_the_deployed_flags_and_rejects_an_unknown_one(kcm_cluster):
    name = kcm_cluster.nodes[0]
    deployed = kcm_cluster.deployed(name)

    accepted = ok(kcm_cluster, name, "kcm.preflight")
    assert accepted["ok"] is True, accepted
    assert accepted["version"] == deployed["version"]

    # --port (the insecure port) was removed in v1.24: the real binary must refuse it.
    refused = ok(kcm_cluster, name, "kcm.preflight", config=dict(deployed, extra_args={"port": 10252}))
    text = str(refused)
    assert "unknown flag: --port" in text, refused
    assert "Usage:" not in text


def test_leader_elected_state_succeeds_on_a_live_cluster(kcm_cluster):
    name = kcm_cluster.nodes[-1]

    leader, _, _, ret = kcm_cluster.consistent(
        lambda: ok(kcm_cluster, name, "state.single", "kcm.leader_elected", name="kube-controller-manager")
    )

    [result] = ret.values()
    assert result["result"] is True, result
    assert f"node {leader}," in result["comment"]
