"""
No pillar value becomes code. Every SLS of the formula is rendered through Salt's own loaders
(``state.show_sls``, as a minion renders it) once with a complete, valid pillar and then once
per string of that pillar (every key, value, map entry and list item) replaced by a hostile
value: a newline with a YAML state, Jinja, and Salt's slot syntax. No variant may bring a
state (id and module) the valid pillar does not have, and each hostile value is either
refused by the formula's validation or carried literally into the state data.

H4 of the second audit: ``kcm:user`` reached ``unless: getent passwd {{ name }}`` bare, and
``"k8s\\nkcm-pwned:\\n  cmd.run: ..."`` made ``kcm-pwned`` a state of its own (run as root).
"""

import copy

import pytest

from tests.support import pki as testpki
from tests.support.pillar import defaults, merge, sandbox_pillar

# Each is a whole SLS a careless template would run: a new top-level state, a Jinja
# expression a second render would evaluate, and a Salt slot (a function call in a state
# argument).
PWNED = "x\nkcm-pwned:\n  cmd.run:\n    - name: id\n"
HOSTILE = [
    PWNED,
    "{{ 7*7 }}{% do salt['cmd.run']('id') %}",
    "__slot__:salt:cmd.run(id)",
    "x: {kcm-pwned: {cmd.run: [{name: id}]}}",
]
# The SLS that include every other one: what a minion renders for kcm, kcm.clean, kcm.master,
# kcm.beacon, kcm.ca (and its clean), kcm.pki_peer.
ROOTS = ["kcm", "kcm.clean", "kcm.master", "kcm.beacon", "kcm.ca", "kcm.ca.clean", "kcm.pki_peer"]


@pytest.fixture(scope="module")
def valid_pillar(tmp_path_factory):
    """Every feature on, so that the valid pillar shows every state the formula has: a KCM
    user to create, a dedicated signer, the service managed, alert receivers and labels."""
    root = tmp_path_factory.mktemp("inj")
    pki = testpki.kcm_pki()
    pki.update(signer_cert=pki["ca_cert"], signer_key=pki["ca_key"])
    tarball = root / "kcm.tar.gz"
    pillar = sandbox_pillar(
        root, tarball, "v1.34.3", pki,
        user="k8s", group="k8s", create_user=True, service={"manage": True, "name": "kube-controller-manager"},
        extra_args={"horizontal-pod-autoscaler-sync-period": "10s"},
        master={"alertmanager_urls": ["https://am.example:9093"], "labels": {"env": "prod"},
                "enroll": {"enabled": True}, "alert_engine": False},
        tofs={"source_files": {"kcm-service-unit": ["site.service.jinja"]}},
    )
    pillar["kcm"] = merge(defaults(), pillar["kcm"])
    pillar["kcm_ca"] = {"dir": str(root / "ca"), "ca_cert": pki["ca_cert"], "ca_key": pki["ca_key"]}
    return pillar


def rendered(state, pillar):
    """{root: high data or the render errors} for every root SLS."""
    return {root: state.show_sls(root, pillar=pillar) for root in ROOTS}


def states_of(high):
    """(id, state module) pairs of ``show_sls`` high data (none when it did not render)."""
    if not isinstance(high, dict):
        return set()
    return {(sid, mod) for sid, body in high.items() if isinstance(body, dict)
            for mod in body if not mod.startswith("__")}


def strings_of(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings_of(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_of(item)
    elif isinstance(node, str):
        yield node


def positions(node, path=()):
    """Every place a string can be put: (path, "key" or "value")."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path + (key,), "key"
            yield from positions(value, path + (key,))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from positions(item, path + (index,))
    elif isinstance(node, str):
        yield path, "value"


def with_hostile(pillar, path, where, text):
    out = copy.deepcopy(pillar)
    node = out
    for part in path[:-1]:
        node = node[part]
    last = path[-1]
    if where == "key":
        node[text] = node.pop(last)
    else:
        node[last] = text
    return out


@pytest.fixture(scope="module")
def baseline(loaders, valid_pillar):
    high = rendered(loaders.modules.state, valid_pillar)
    errors = {root: h for root, h in high.items() if not isinstance(h, dict)}
    assert errors == {}, errors
    found = set().union(*(states_of(h) for h in high.values()))
    # The states the injection would hijack are there, so a variant that loses them is seen.
    assert ("kcm-install-user-created-marker", "file") in found
    assert ("kcm-config-validated", "kcm_config") in found
    return found


def _all_positions(pillar):
    return [(path, where) for path, where in positions(pillar)
            # The PEM text itself: refused by the PKI checks, never interpolated (contents_pillar).
            if not (where == "value" and path[-1] in ("ca_cert", "ca_key", "cert", "key", "signer_cert",
                                                      "signer_key", "service_account_key"))]


def test_every_string_of_the_pillar_is_covered(valid_pillar):
    covered = {":".join(map(str, p)) for p, _ in _all_positions(valid_pillar)}
    for key in ("kcm:user", "kcm:group", "kcm:cluster", "kcm:extra_args:horizontal-pod-autoscaler-sync-period",
                "kcm:master:labels:env", "kcm:controllers:0", "kcm:master:alertmanager_urls:0", "kcm_ca:dir",
                "kcm:tofs:source_files:kcm-service-unit:0"):
        assert key in covered
    assert len(covered) > 60


@pytest.mark.parametrize("text", HOSTILE, ids=["newline-yaml", "jinja", "slot", "flow-yaml"])
def test_no_hostile_string_becomes_a_state(loaders, valid_pillar, baseline, text):
    state, config = loaders.modules.state, loaders.modules.kcm_config
    smuggled, unaccounted = [], []
    for path, where in _all_positions(valid_pillar):
        pillar = with_hostile(valid_pillar, path, where, text)
        high = rendered(state, pillar)
        extra = set().union(*(states_of(h) for h in high.values())) - baseline
        where_text = f"{where} {':'.join(map(str, path))}"
        if extra:
            smuggled.append(f"{where_text}: {sorted(extra)}")
            continue
        if path[0] != "kcm" or len(path) == 1:
            continue  # kcm_ca (files from its own PEMs, no validation), or the top-level key itself
        resolved = config.resolve(merge(defaults(), pillar["kcm"]), defaults=defaults())
        refused = config.validate(resolved) if path[1] != "master" else config.master_problems(resolved["master"])
        carried = any(text in s for h in high.values() if isinstance(h, dict) for s in strings_of(h))
        if not refused and not carried:
            unaccounted.append(where_text)
    assert smuggled == [], "a pillar string added states:\n" + "\n".join(smuggled)
    assert unaccounted == [], "accepted by validation but not carried literally:\n" + "\n".join(unaccounted)


def test_the_h4_payload_in_the_user_adds_no_state(state, valid_pillar, baseline):
    pillar = with_hostile(valid_pillar, ("kcm", "user"), "value", "k8s\n" + PWNED)
    high = state.show_sls("kcm", pillar=pillar)
    assert isinstance(high, dict), high
    assert "kcm-pwned" not in high
    assert states_of(high) <= baseline
