"""Every value a template interpolates reaches SLS through a serializer: each ``{{ ... }}`` in
the formula's SLS and Jinja files ends in ``| json`` (or ``tojson``/``yaml``), or is one of the
exceptions below, each with the reason it cannot carry pillar text. H4 of the second audit
was one bare ``{{ name }}`` (the KCM user) on an ``unless:`` line."""

import re

import pytest

from kcmlab.formula import REPO

FORMULA = REPO / "formula"
EXPRESSION = re.compile(r"\{\{-?(.*?)-?\}\}", re.S)
COMMENT = re.compile(r"\{#.*?#\}", re.S)
SERIALIZED = re.compile(r"\|\s*(json|tojson|yaml|yaml_dquote|yaml_encode)\s*$")

# Where the formula's own folder name goes (Salt sets tpldir from the SLS path).
_TPLROOT = "the formula's folder name, set by Salt from the SLS path"
SAFE = {
    "tplroot": _TPLROOT,
    "tpldir.split('/')[0]": _TPLROOT,
}
# file -> expression -> why it is safe there
SAFE_IN = {
    "kcm/install/user.sls": {"kind": "loop over the literal ('group', 'user')"},
    "kcm/pki/files.sls": {
        "key": "loop over literal PEM key names",
        "key | replace('_', '-')": "loop over literal PEM key names",
        "mode": "literal '0644' / '0600' of the same loop",
        "key_mode": "a literal mode chosen in the template ('0600' or '0640')",
    },
    "kcm/beacon/init.sls": {
        "name": "keys of the template's own literal dict (kcm_leader, kcm_cert)",
        "key": "keys of the template's own literal settings lists",
    },
    "kcm/beacon/clean.sls": {
        "name": "loop over the literal ['kcm_leader', 'kcm_cert']",
        "name | replace('_', '-')": "loop over the literal ['kcm_leader', 'kcm_cert']",
    },
    "kcm/map.jinja": {
        "raise(\"kcm formula: its modules are not synced to this minion; run `salt '<minion>' saltutil.sync_all`"
        ' (or `salt-call saltutil.sync_all`) first")': "a literal message",
    },
    # A systemd unit, not YAML: its serializer is systemd's quoting, applied in Python.
    "kcm/files/default/kube-controller-manager.service.jinja": {
        "exec_start": "kcm_flags.exec_start: every word quoted by kcm_systemd.command_line",
        "release": "kcm_release.exec_line: quoted by kcm_systemd.command_line",
        "user": "rendered only after kcm-config-validated passed: letters, digits, _ . - only",
        "group": "rendered only after kcm-config-validated passed: letters, digits, _ . - only",
        "version": "rendered only after kcm-config-validated passed: v1.X.Y only",
        "log_dir": "rendered only after kcm-config-validated passed: a plain absolute path",
        "id": "kcm_systemd.credentials: a credential id from the formula's own fixed names",
        "path": "kcm_systemd.credentials: a files path, rendered only after kcm-config-validated passed",
        "logs_directory": "kcm_config.resolve: the unit name, validated (no '/', letters, digits, - _ . @)",
    },
}


def interpolations():
    for path in sorted(FORMULA.rglob("*")):
        if path.suffix not in (".sls", ".jinja"):
            continue
        text = COMMENT.sub("", path.read_text())
        for match in EXPRESSION.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            yield str(path.relative_to(FORMULA)), line, " ".join(match.group(1).split())


def test_every_interpolation_is_serialized_or_a_named_exception():
    bare = [
        f"{name}:{line}: {{{{ {expr} }}}}"
        for name, line, expr in interpolations()
        if not SERIALIZED.search(expr) and expr not in SAFE and expr not in SAFE_IN.get(name, {})
    ]
    assert bare == [], "interpolated without | json (or a reason in SAFE_IN):\n" + "\n".join(bare)


@pytest.mark.parametrize(
    "text, caught",
    [
        ("    - unless: getent passwd {{ name }}", True),
        ("    - name: {{ kcm.user }}", True),
        ("    - name: {{ kcm.user | json }}", False),
        ("    - text: {{ (a ~ 'b'\n       ~ 'c') | json }}", False),
        ("    - name: {{ kcm.user | json | upper }}", True),
    ],
)
def test_the_scan_sees_a_bare_interpolation(text, caught):
    exprs = [" ".join(m.group(1).split()) for m in EXPRESSION.finditer(text)]
    assert any(not SERIALIZED.search(e) for e in exprs) is caught
