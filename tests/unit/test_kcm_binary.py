"""
What the KCM binary answers is read one way (``_utils/kcm_binary.py``): ``kcm.version``,
``kcm.preflight`` and the ``kcm_service.unit_accepted`` state, given the same process
output, report the same version or the same refusal.

The module and the state get their dunders from pytest-salt-factories'
``configure_loader_modules``; the binary is a stand-in that prints a case's output.
"""

import tempfile

import pytest
from salt.exceptions import CommandExecutionError

from kcmlab import formula

KCM_LOCAL = formula.load("_modules", "kcm_local")
KCM_SERVICE = formula.load("_states", "kcm_service")
UTILS = formula.utils()
SOURCE = "salt://kcm/files/default/kube-controller-manager.service.jinja"
USAGE = "Usage:\n  kube-controller-manager [flags]\n\nFlags:\n      --contention-profiling   Enable profiling\n"

# (case, exit code, stdout, stderr, the version or the refusal all three report)
CASES = [
    (
        "version with a pre-release, build and trailing words",
        0,
        "Kubernetes v1.37.2-rc.0+abc (extra)\n",
        "",
        ("v1.37.2-rc.0+abc", None),
    ),
    (
        "usage text around two Error: lines",
        1,
        "",
        f"Error: unknown flag: --bogus\n{USAGE}\nError: unknown flag: --bogus\nError: invalid argument x\n",
        (None, "Error: unknown flag: --bogus\nError: invalid argument x"),
    ),
    (
        "no Error: line, its last lines",
        2,
        "",
        "".join(f"line {n}\n" for n in range(1, 9)),
        (None, "line 4\nline 5\nline 6\nline 7\nline 8"),
    ),
    ("success that prints no version", 0, "hello\n", "", (None, "hello")),
    ("silent failure", 1, "", "", (None, "exited 1 without a message")),
]


def _get_managed(**kwargs):
    """file.get_managed: the rendered unit in a temporary file (the state removes it)."""
    handle = tempfile.NamedTemporaryFile("w", delete=False, suffix=".service")
    with handle:
        handle.write(f"[Service]\nExecStart={kwargs['context']['binary']} --secure-port=10257\n")
    return handle.name, None, ""


@pytest.fixture
def binary(tmp_path):
    return tmp_path / "kube-controller-manager"


@pytest.fixture
def configure_loader_modules(binary):
    salt = {
        "kcm_config.deployed": lambda: {"user": "root", "files": {"binary": str(binary)}},
        "kcm_flags.render": lambda config: ["--secure-port=10257"],
        "kcm_flags.exec_start": lambda config, binary=None: f"{binary} --secure-port=10257",
        "file.source_list": lambda source, source_hash, saltenv: (source[0], ""),
        "file.get_managed": _get_managed,
    }
    common = {"__salt__": salt, "__utils__": UTILS, "__opts__": {"test": False}, "__context__": {}}
    return {KCM_LOCAL: common, KCM_SERVICE: dict(common, __env__="base")}


def stand_in(binary, code, stdout, stderr):
    (binary.parent / "out").write_text(stdout)
    (binary.parent / "err").write_text(stderr)
    binary.write_text(f"#!/bin/sh\ncat '{binary.parent}/out'\ncat '{binary.parent}/err' >&2\nexit {code}\n")
    binary.chmod(0o755)


@pytest.mark.parametrize("name, code, stdout, stderr, expected", CASES, ids=[c[0] for c in CASES])
def test_the_module_and_the_unit_state_read_the_same_answer_alike(binary, name, code, stdout, stderr, expected):
    stand_in(binary, code, stdout, stderr)
    version, refusal = expected

    preflight = KCM_LOCAL.preflight()
    state = KCM_SERVICE.unit_accepted(str(binary), [SOURCE], {"binary": str(binary), "user": "root"}, str(binary))

    if version:
        assert KCM_LOCAL.version() == version
        assert preflight == {"ok": True, "version": version, "binary": str(binary)}
        assert state["result"] is True
        assert state["comment"] == f"{binary} ({version}) accepts the ExecStart= of {SOURCE}"
    else:
        with pytest.raises(CommandExecutionError) as raised:
            KCM_LOCAL.version()
        assert (raised.value.info["reason"], raised.value.error) == ("binary", f"{binary} --version: {refusal}")
        assert preflight == {"ok": False, "error": refusal, "binary": str(binary)}
        assert state["result"] is False
        assert state["comment"] == f"{binary} refuses the ExecStart= of {SOURCE}: {refusal}"
    assert state["changes"] == {}
