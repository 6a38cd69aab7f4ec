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
import re

import pytest

from kcmlab.formula import REPO
from tests.support import pki as testpki
from tests.support.pillar import defaults, merge, sandbox_pillar

# Each is a whole SLS a careless template would run (a new top-level state, in block and in
# flow YAML), a Jinja expression a second render would evaluate, and a Salt slot (a function
# call in a state argument).
HOSTILE = {
    # the second audit's H4 payload: valid YAML wherever it lands bare, the sink taking the
    # template's own requisite lines
    "newline-yaml": "k8s\nkcm-pwned:\n  cmd.run:\n    - name: id\nkcm-sink:\n  test.nop:\n    - name: sink",
    "jinja": "{{ 7*7 }}{% do salt['cmd.run']('id') %}",
    "slot-flow-yaml": "__slot__:salt:cmd.run(id) x: {kcm-pwned: {cmd.run: [{name: id}]}}",
}
PWNED = HOSTILE["newline-yaml"]
# Every SLS of the formula is included by one of these. kcm.beacon.clean (in kcm.clean) is
# rendered for the valid pillar only: its one input is pillar `beacons`, not `kcm`, and it asks
# the minion's event bus (2 s without a running minion) on every render.
ROOTS = [
    "kcm",
    "kcm.master",
    "kcm.beacon",
    "kcm.ca",
    "kcm.ca.clean",
    "kcm.pki_peer",
    "kcm.mine.clean",
    "kcm.service.clean",
    "kcm.kubeconfig.clean",
    "kcm.pki.clean",
    "kcm.install.clean",
    "kcm.config.clean",
    "kcm.master.clean",
    "kcm.pki_peer.clean",
]
FORMULA = REPO / "formula"
PEM_KEYS = ("ca_cert", "ca_key", "cert", "key", "signer_cert", "signer_key", "service_account_key")


@pytest.fixture(scope="module")
def valid_pillar(tmp_path_factory):
    """Every feature on, so that the valid pillar shows every state the formula has: a KCM
    user to create, a dedicated signer, the service managed, alert receivers and labels."""
    root = tmp_path_factory.mktemp("inj")
    pki = testpki.kcm_pki()
    pki.update(signer_cert=pki["ca_cert"], signer_key=pki["ca_key"])
    tarball = root / "kcm.tar.gz"
    pillar = sandbox_pillar(
        root,
        tarball,
        "v1.34.3",
        pki,
        user="k8s",
        group="k8s",
        create_user=True,
        service={"manage": True, "name": "kube-controller-manager"},
        extra_args={"horizontal-pod-autoscaler-sync-period": "10s"},
        master={
            "alertmanager_urls": ["https://am.example:9093"],
            "labels": {"env": "prod"},
            "enroll": {"enabled": True},
            "alert_engine": False,
        },
        tofs={"source_files": {"kcm-service-unit": ["site.service.jinja"]}},
    )
    pillar["kcm"] = merge(defaults(), pillar["kcm"])
    pillar["kcm_ca"] = {"dir": str(root / "ca"), "ca_cert": pki["ca_cert"], "ca_key": pki["ca_key"]}
    return pillar


def rendered(state, pillar):
    """High data of every root SLS at once (one render, as one state.apply of them would), or
    the render errors."""
    return state.show_sls(",".join(ROOTS), pillar=pillar)


def states_of(high):
    """(id, state module) pairs of ``show_sls`` high data (none when it did not render)."""
    if not isinstance(high, dict):
        return set()
    return {
        (sid, mod) for sid, body in high.items() if isinstance(body, dict) for mod in body if not mod.startswith("__")
    }


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


def hostile(node, text, keep=()):
    """``node`` with every string in it (keys, values, list items) replaced by ``text``, except
    the PEM text (refused by the PKI checks, never interpolated: contents_pillar) and the
    keys in ``keep``."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in keep or (key in PEM_KEYS and isinstance(value, str)):
                out[key] = value
            else:
                out[text if isinstance(key, str) and key not in out else key] = hostile(value, text, keep)
        return out
    if isinstance(node, list):
        return [hostile(item, text, keep) for item in node]
    return text if isinstance(node, str) else node


def groups(pillar, text):
    """Each section of the pillar made hostile as a whole, and a hostile key beside them:
    (what, the pillar with it). ``pki`` also with its mode kept, so that the branches of the
    valid mode render with every other pki string hostile."""
    for top in ("kcm", "kcm_ca"):
        for section, value in pillar[top].items():
            if not isinstance(value, (str, dict, list)) or section in PEM_KEYS:
                continue
            for keep in [()] if section != "pki" else [(), ("mode",)]:
                variant = copy.deepcopy(pillar)
                variant[top][section] = hostile(value, text, keep)
                yield f"{top}:{section}" + (" (mode kept)" if keep else ""), variant
        variant = copy.deepcopy(pillar)
        variant[top][text] = "x"
        yield f"{top}:<a key>", variant


@pytest.fixture(scope="module")
def baseline(loaders, valid_pillar):
    state = loaders.modules.state
    found = set()
    for roots in (",".join(ROOTS), "kcm.beacon.clean"):
        high = state.show_sls(roots, pillar=valid_pillar)
        assert isinstance(high, dict), high
        found |= states_of(high)
    # The states an injection would hijack are there, so a variant that loses them is seen.
    assert ("kcm-install-user-created-marker", "file") in found
    assert ("kcm-config-validated", "kcm_config") in found
    assert ("kcm-service-unit", "file") in found
    return found


def test_the_valid_pillar_renders_every_sls_of_the_formula(loaders, valid_pillar, baseline):
    sls_files = {".".join(p.relative_to(FORMULA).with_suffix("").parts) for p in FORMULA.rglob("*.sls")}
    sls_files = {name[: -len(".init")] if name.endswith(".init") else name for name in sls_files}
    high = loaders.modules.state.show_sls(",".join(ROOTS) + ",kcm.beacon.clean", pillar=valid_pillar)
    with_states = {body["__sls__"] for body in high.values()}
    # init.sls files only include; every file with states is rendered
    assert sorted(n for n in sls_files if n.startswith("kcm") and n not in with_states and not _only_includes(n)) == []


def _only_includes(name):
    """True for an SLS whose only top-level key is ``include:`` (an init.sls of a concern)."""
    path = FORMULA.joinpath(*name.split("."))
    path = path / "init.sls" if path.is_dir() else path.with_suffix(".sls")
    text = re.sub(r"\{#.*?#\}|\{%.*?%\}", "", path.read_text(), flags=re.S)
    return {line.split(":")[0] for line in text.splitlines() if re.match(r"^[^\s#]", line)} == {"include"}


@pytest.mark.parametrize("name", HOSTILE)
def test_no_hostile_string_becomes_a_state(loaders, valid_pillar, baseline, name):
    state, config = loaders.modules.state, loaders.modules.kcm_config
    text = HOSTILE[name]
    smuggled, unaccounted, seen = [], [], 0
    for where, pillar in groups(valid_pillar, text):
        seen += 1
        high = rendered(state, pillar)
        extra = states_of(high) - baseline
        if extra:
            smuggled.append(f"{where}: {sorted(extra)}")
            continue
        if not where.startswith("kcm:"):
            continue  # kcm_ca: the CA minion's files, named by its own dir
        resolved = config.resolve(merge(defaults(), pillar["kcm"]), defaults=defaults())
        refused = config.validate(resolved) + config.master_problems(resolved["master"])
        carried = isinstance(high, dict) and any(text in s for s in strings_of(high))
        if not refused and not carried:
            unaccounted.append(where)
    assert seen > 20
    assert smuggled == [], "a pillar string added states:\n" + "\n".join(smuggled)
    assert unaccounted == [], "accepted by validation but not carried literally:\n" + "\n".join(unaccounted)


def test_the_h4_payload_in_the_user_adds_no_state(state, valid_pillar, baseline):
    pillar = copy.deepcopy(valid_pillar)
    pillar["kcm"]["user"] = PWNED
    high = state.show_sls("kcm", pillar=pillar)
    assert isinstance(high, dict), high  # it renders (validation refuses the user when it runs)
    assert "kcm-pwned" not in high
    assert states_of(high) <= baseline


def test_a_slot_in_a_pillar_value_is_never_called(state, tmp_path, valid_pillar):
    # Salt calls `__slot__:salt:<function>(...)` found in a state argument (or a first-level
    # value of one) when the state runs: validation runs first and refuses the value, and its
    # own arguments hold no pillar string at that level.
    touched = tmp_path / "slot-was-called"
    pillar = copy.deepcopy(valid_pillar)
    pillar["kcm"]["cluster"] = f"__slot__:salt:file.touch({touched})"
    ret = state.apply("kcm.config.validated", pillar=pillar)
    comment = next(r.comment for r in ret if r.id == "kcm-config-validated")
    assert "kcm:cluster: starts with '__slot__:'" in comment, comment
    assert not touched.exists()
