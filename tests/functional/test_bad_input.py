"""
Hostile and careless pillar, table-driven: every class of bad input is refused by
kcm-config-validated with its pillar key named, and the target tree stays byte-identical
(each case is applied over a deployed, working tree).
"""

import pytest

from tests.functional.test_apply import changed, tree_digest
from tests.support.pillar import merge, sandbox_pillar
from tests.support.tarball import build_tarball

VERSION = "v1.34.3"
NEWLINE_YAML = "x\n- cmd.run:\n  - name: touch /tmp/kcm-pwned"
UNIT_LINE = "x\nExecStartPre=+/bin/sh -c 'touch /tmp/kcm-pwned'"

# (class, pillar overrides, the key the message must name)
CASES = [
    # injection: a newline and YAML or a unit directive, through many keys
    ("newline+YAML in cluster", {"cluster": NEWLINE_YAML}, "kcm:cluster:"),
    ("unit line in user", {"user": "root\nExecStartPre=+/bin/id"}, "kcm:user:"),
    ("newline+YAML in group", {"group": NEWLINE_YAML}, "kcm:group:"),
    ("newline+YAML in a path", {"paths": {"pki": "/tmp/x\n- cmd.run: id"}}, "kcm:paths:pki:"),
    ("newline+YAML in source url", {"source": {"url": "file:///x\n- cmd.run: id"}}, "kcm:source:url:"),
    ("newline+YAML in source hash", {"source": {"hash": "sha512=ab\n- cmd.run: id"}}, "kcm:source:hash:"),
    ("newline in service name", {"service": {"name": "kcm\nExecStartPre=+/bin/id"}}, "kcm:service:name:"),
    ("newline in the CA server", {"pki": {"ca_server": NEWLINE_YAML}}, "kcm:pki:ca_server:"),
    ("newline in identity", {"identity": NEWLINE_YAML}, "kcm:identity:"),
    ("unit line in an extra_args value", {"extra_args": {"feature-gates": UNIT_LINE}}, "kcm:extra_args:feature-gates:"),
    ("unit line in an extra_args name", {"extra_args": {"v\nExecStartPre=+/bin/id": 1}}, "kcm:extra_args"),
    ("unit line in verbosity", {"verbosity": "2\nExecStartPre=+/bin/id"}, "kcm:verbosity:"),
    ("U+2028 in cluster", {"cluster": "a\u2028b"}, "kcm:cluster:"),
    ("ESC in apiserver", {"apiserver": "https://127.0.0.1:6443\x1b[2J"}, "kcm:apiserver:"),
    ("NUL in a controller", {"controllers": ["*", "ttl\x00"]}, "kcm:controllers:"),
    # values validation let through
    (
        "zero retry period",
        {"leader_election": {"lease_duration": "15s", "renew_deadline": "10s", "retry_period": "0s"}},
        "kcm:leader_election:retry_period:",
    ),
    ("zero signing duration", {"cluster_signing_duration": "0h"}, "kcm:cluster_signing_duration:"),
    ("service name with ../", {"service": {"name": "../../../tmp/evil"}}, "kcm:service:name:"),
    ("service name with .service", {"service": {"name": "kcm.service"}}, "kcm:service:name:"),
    (
        "string boolean (credentials)",
        {"use_service_account_credentials": "false"},
        "kcm:use_service_account_credentials:",
    ),
    ("string boolean (service:manage)", {"service": {"manage": "false"}}, "kcm:service:manage:"),
    ("string boolean (log_to_file)", {"log_to_file": "no"}, "kcm:log_to_file:"),
    ("string boolean (create_user)", {"create_user": "yes"}, "kcm:create_user:"),
    ("apiserver with user:password@", {"apiserver": "https://admin:secret@127.0.0.1:6443"}, "kcm:apiserver:"),
    ("apiserver port 99999", {"apiserver": "https://127.0.0.1:99999"}, "kcm:apiserver:"),
    ("apiserver with a path", {"apiserver": "https://127.0.0.1:6443/api?x=1"}, "kcm:apiserver:"),
    ("source url with credentials", {"source": {"url": "https://u:p@dl.example/k.tar.gz"}}, "kcm:source:url:"),
    ("list where paths belong", {"paths": ["/a"]}, "kcm:paths:"),
    ("string where source belongs", {"source": "https://dl.k8s.io/x.tar.gz"}, "kcm:source:"),
    ("list where leader_election belongs", {"leader_election": ["15s"]}, "kcm:leader_election:"),
    ("list where extra_args belong", {"extra_args": ["--v=4"]}, "kcm:extra_args:"),
    ("list where pki belongs", {"pki": ["pem"]}, "kcm:pki:"),
    ("list where service belongs", {"service": ["kcm"]}, "kcm:service:"),
    ("string where controllers belong", {"controllers": "*,tokencleaner"}, "kcm:controllers:"),
    ("mapping as an extra_args value", {"extra_args": {"feature-gates": {"A": True}}}, "kcm:extra_args:feature-gates:"),
    ("version with a leading zero", {"version": "v1.034.3"}, "kcm:version:"),
    ("port as a string", {"secure_port": "10257"}, "kcm:secure_port:"),
    ("boolean as keep_versions", {"keep_versions": True}, "kcm:keep_versions:"),
    ("verbosity out of range", {"verbosity": 99}, "kcm:verbosity:"),
    ("path with ..", {"paths": {"install": "/data/../../etc"}}, "kcm:paths:install:"),
    ("path with a space", {"paths": {"bin": "/data/my bin"}}, "kcm:paths:bin:"),
    ("user name with a space", {"user": "kcm user"}, "kcm:user:"),
    ("cluster name with a space", {"cluster": "my cluster"}, "kcm:cluster:"),
    ("architecture with a shell word", {"source": {"arch": "amd64;id"}}, "kcm:source:arch:"),
    ("hash that is no digest", {"source": {"hash": "md5=xyz"}}, "kcm:source:hash:"),
    ("controller with a comma", {"controllers": ["*", "ttl,-csrsigning"]}, "kcm:controllers:"),
    ("extra_args name with a space", {"extra_args": {"feature gates": "A=true"}}, "kcm:extra_args:"),
    ("interface name with a shell word", {"bind_interface": "eth0;id"}, "kcm:bind_interface:"),
    ("beacon interval 0", {"beacon": {"interval": 0}}, "kcm:beacon:interval:"),
    ("beacon timeout the beacon refuses", {"beacon": {"timeout": 30}}, "kcm:beacon:timeout:"),
    ("list where beacon belongs", {"beacon": [2]}, "kcm:beacon:"),
    # kcm:master, validated like kcm:
    ("label name Alertmanager refuses", {"master": {"labels": {"team-name": "x"}}}, "kcm:master:labels:"),
    (
        "string where a URL list belongs",
        {"master": {"alertmanager_urls": "https://am:9093"}},
        "kcm:master:alertmanager_urls:",
    ),
    (
        "http receiver without allow_http",
        {"master": {"alertmanager_urls": ["http://127.0.0.1:9093"]}},
        "kcm:master:alertmanager_urls:",
    ),
    (
        "http receiver off loopback",
        {"master": {"allow_http": True, "alertmanager_urls": ["http://10.0.0.5:9093"]}},
        "kcm:master:alertmanager_urls:",
    ),
    (
        "webhook with credentials",
        {"master": {"webhook_urls": ["https://u:p@hooks.example/x"]}},
        "kcm:master:webhook_urls:",
    ),
    ("receivers' proxy not an http(s) URL", {"master": {"proxy": "socks5://127.0.0.1:1080"}}, "kcm:master:proxy:"),
    ("list where the clusters mapping belongs", {"master": {"clusters": ["prod"]}}, "kcm:master:clusters:"),
    ("control character in the KCM masters' ids", {"master": {"masters": "master-*\nweb-*"}}, "kcm:master:masters:"),
]


@pytest.fixture(scope="module")
def deployed_tree(loaders, test_pki, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    tarball = build_tarball(root / "dl", VERSION)
    good = sandbox_pillar(root, tarball, VERSION, test_pki)
    ret = loaders.modules.state.apply("kcm", pillar=good)
    assert not [r for r in ret if r.result is False]
    return root, good


def test_the_table_covers_at_least_40_classes():
    names = [name for name, _, _ in CASES]
    assert len(set(names)) == len(names) >= 40, len(names)


@pytest.mark.parametrize("name, over, key", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_its_key_and_changes_nothing(state, deployed_tree, name, over, key):
    root, good = deployed_tree
    before = tree_digest(root / "fs")
    bad = {"kcm": merge(good["kcm"], over)}

    ret = state.apply("kcm", pillar=bad)

    validated = [r for r in ret if r.id == "kcm-config-validated"]
    assert validated, f"the SLS did not render: {ret}"
    assert validated[0].result is False
    problems = validated[0].comment.splitlines()[1:]
    assert any(line.startswith(f"- {key}") for line in problems), validated[0].comment
    # one line per problem: no hostile value is echoed raw into the output
    assert all(line.startswith("- kcm:") for line in problems), validated[0].comment
    assert changed(ret) == []
    assert tree_digest(root / "fs") == before


def test_clean_refuses_a_service_name_outside_the_unit_directory(state, tmp_path, test_pki):
    tarball = build_tarball(tmp_path / "dl", VERSION)
    good = sandbox_pillar(tmp_path, tarball, VERSION, test_pki)
    outside = tmp_path / "fs" / "usr" / "lib" / "evil.service"
    outside.parent.mkdir(parents=True)
    outside.write_text("[Unit]\n")
    bad = {"kcm": merge(good["kcm"], {"service": {"name": "../evil"}, "pki": {"cert": "", "key": ""}})}

    ret = state.apply("kcm.clean", pillar=bad)

    validated = next(r for r in ret if r.id == "kcm-config-paths-validated")
    assert validated.result is False and "kcm:service:name:" in validated.comment
    assert outside.exists(), "kcm.clean removed a file outside paths:unit"


@pytest.mark.parametrize(
    "masters, message",
    [
        (None, "kcm:master:masters: required"),
        ("role:k8s-master", "kcm:master:masters: 'role:k8s-master' is not a minion id glob"),
        ("G@role:k8s-master or master-*", "kcm:master:masters: 'G@role:k8s-master or master-*' is not"),
        (["master-1", "I@kcm:cluster:prod"], "kcm:master:masters: 'I@kcm:cluster:prod' is not"),
    ],
)
def test_kcm_master_trusts_no_grain_and_fails_naming_the_key(state, tmp_path, masters, message):
    # H1: the KCM masters are named by minion id in the master's own configuration, or nothing is written.
    master = {"config_dir": str(tmp_path / "master.d"), "sync_runners": False}
    if masters is not None:
        master["masters"] = masters

    ret = state.apply("kcm.master", pillar={"kcm": {"master": master}})

    validated = next(r for r in ret if r.id == "kcm-master-config-validated")
    assert validated.result is False and f"- {message}" in validated.comment, validated.comment
    assert not (tmp_path / "master.d" / "kcm.conf").exists()
