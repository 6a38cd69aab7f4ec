"""kcm.* through real `salt-call --local` minions against a real etcd + kube-apiserver and
three real KCMs run from the units the formula rendered (fixtures in conftest.py)."""


def call(node, fun, **kwargs):
    """Run kcm.<fun> on a node's minion; return (retcode, data)."""
    return node.minion.call(fun, **kwargs)


def ok(node, fun, **kwargs):
    retcode, data = call(node, fun, **kwargs)
    assert retcode == 0, f"salt-call {fun} on {node.name} exited {retcode}: {data!r}"
    return data


def lease_spec(cluster):
    return cluster.control_plane.lease()["spec"]


def test_every_master_names_the_real_leader(kcm_cluster):
    holder = lease_spec(kcm_cluster)["holderIdentity"]
    leader = kcm_cluster.leader()

    for node in kcm_cluster.nodes.values():
        record = ok(node, "kcm.leader")
        assert record["holder"] == holder, f"{node.name} reads a different holder"
        assert record["node"] == leader
        assert record["minion"] == leader
        assert record["source"] == "lease"
        assert record["expired"] is False
        assert record["lease_duration_seconds"] == int(kcm_cluster.election["lease_duration"])


def test_is_leader_is_true_on_exactly_the_leader(kcm_cluster):
    leader = kcm_cluster.leader()

    answers = {name: ok(node, "kcm.is_leader") for name, node in kcm_cluster.nodes.items()}

    assert [name for name, mine in answers.items() if mine is True] == [leader], answers
    assert all(mine in (True, False) for mine in answers.values()), answers


def test_leader_follows_a_sigkill_failover(kcm_cluster):
    old = kcm_cluster.leader()
    before = lease_spec(kcm_cluster)
    survivor = next(kcm_cluster.nodes[n] for n in sorted(kcm_cluster.nodes) if n != old)

    kcm_cluster.kill(old)
    new = kcm_cluster.wait_for_leader(kcm_cluster.failover_bound, exclude=[old])

    record = ok(survivor, "kcm.leader")
    assert record["node"] == new != old
    assert record["holder"] != before["holderIdentity"]
    assert record["transitions"] > before["leaseTransitions"]
    assert record["expired"] is False
    assert ok(kcm_cluster.nodes[new], "kcm.is_leader") is True
    assert ok(kcm_cluster.nodes[old], "kcm.is_leader") is False


def test_cluster_id_is_the_kube_system_uid_read_as_kcm_itself(kcm_cluster):
    # The masters read it with KCM's own kubeconfig (CN system:kube-controller-manager):
    # the real apiserver's RBAC must allow that GET, or the beacon carries no cluster_id.
    uid = kcm_cluster.control_plane.get_json("/api/v1/namespaces/kube-system")["metadata"]["uid"]

    answers = {name: ok(node, "kcm.cluster_id") for name, node in kcm_cluster.nodes.items()}

    assert set(answers.values()) == {uid}, answers
    row = ok(next(iter(kcm_cluster.nodes.values())), "kcm.status")[0]
    assert row["cluster_id"] == uid and "cluster_id" not in row["errors"]


def test_health_is_ok_on_every_master(kcm_cluster):
    for node in kcm_cluster.nodes.values():
        result = ok(node, "kcm.health")
        assert result["healthy"] is True, f"{node.name}: {result}"
        assert result["checks"].get("leaderElection") == "ok", f"{node.name}: {result['checks']}"
        assert result["url"] == f"https://127.0.0.1:{node.secure_port}/healthz?verbose"


def test_version_and_status_row(kcm_cluster):
    leader = kcm_cluster.leader()
    version = next(iter(kcm_cluster.nodes.values())).deployed["version"]

    rows = {}
    for name, node in kcm_cluster.nodes.items():
        assert ok(node, "kcm.version") == version
        [rows[name]] = ok(node, "kcm.status")

    assert [name for name, row in rows.items() if row["leader"] == "yes"] == [leader], rows
    for name, row in rows.items():
        assert row["minion"] == name
        assert (row["version"], row["healthy"], row["errors"]) == (version, True, ""), row
        assert row["holder"].startswith(f"{leader}_")
        assert row["cert_days_left"] > 0


def test_preflight_accepts_the_deployed_flags_and_rejects_an_unknown_one(kcm_cluster):
    node = kcm_cluster.nodes[sorted(kcm_cluster.nodes)[0]]
    version = node.deployed["version"]

    accepted = ok(node, "kcm.preflight")
    assert accepted == {"ok": True, "version": version, "binary": node.deployed["files"]["binary"]}

    # --port (the insecure port) was removed in v1.24: the real binary must refuse it.
    config = dict(node.deployed, extra_args={"port": 10252})
    retcode, refused = call(node, "kcm.preflight", config=config)

    assert retcode == 1, refused
    assert refused["ok"] is False
    assert "unknown flag: --port" in refused["error"]
    assert "Usage:" not in refused["error"]


def test_leader_elected_state_succeeds_on_a_live_cluster(kcm_cluster):
    node = kcm_cluster.nodes[sorted(kcm_cluster.nodes)[-1]]

    retcode, ret = node.minion.call("state.single", "kcm.leader_elected", name="kube-controller-manager", timeout=30)

    assert retcode == 0, ret
    [result] = ret.values()
    assert result["result"] is True, result
    assert f"node {kcm_cluster.leader()}," in result["comment"]
