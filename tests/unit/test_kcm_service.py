"""
``kcm_service.unit``, the one state of the KCM unit: it renders the unit once, has the
binary about to run it run its ``ExecStart=`` through ``kcm.preflight`` (the formula's one
preflight, the real one here), and only then hands the text to Salt's ``file.managed``. A
refusal writes nothing; test mode writes nothing and still says what the binary would do.

``file.managed`` is a stand-in that writes the text (and nothing in test mode): the
functional tier runs Salt's own (tests/functional/test_layout.py, test_dry_run.py).
"""

import os
import tempfile
from pathlib import Path

import jinja2
import pytest

from kcmlab import formula

KCM_LOCAL = formula.load("_modules", "kcm_local")
KCM_SERVICE = formula.load("_states", "kcm_service")
SOURCE = [
    "salt://kcm/files/master-1/kube-controller-manager.service.jinja",
    "salt://kcm/files/default/kube-controller-manager.service.jinja",
]
TEMPLATE = "[Service]\nUser={{ user }}\nExecStart={{ exec_start }}\n"
# Refuses --bogus-* as cobra does (usage first, the error last); records every argv it gets.
FAKE_KCM = """#!/bin/sh
echo "$@" >> "$0.runs"
for arg in "$@"; do
  case "$arg" in --bogus-*) printf 'Usage:\\n  kube-controller-manager [flags]\\n\\nError: unknown flag: %s\\n' \
    "${arg%%=*}" >&2; exit 1 ;; esac
done
echo "Kubernetes v1.37.2"
"""


class Salt:
    """The stand-ins' record: every render of the template and every file.managed call."""

    def __init__(self):
        self.renders, self.written = [], []


@pytest.fixture
def salt():
    return Salt()


@pytest.fixture
def tree(tmp_path):
    """The active link on v1.37.1, the new binary beside it, no unit yet."""
    new = tmp_path / "versions" / "v1.37.2" / "kube-controller-manager"
    new.parent.mkdir(parents=True)
    new.write_text(FAKE_KCM)
    new.chmod(0o755)
    link = tmp_path / "sbin" / "kube-controller-manager"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "versions" / "v1.37.1" / "kube-controller-manager")
    return {"binary": new, "link": link, "unit": tmp_path / "systemd" / "kube-controller-manager.service"}


@pytest.fixture
def configure_loader_modules(salt):
    opts = {"test": False}

    def get_managed(**kwargs):
        salt.renders.append(kwargs["source"])
        with tempfile.NamedTemporaryFile("w", delete=False, suffix=".service") as handle:
            handle.write(jinja2.Template(TEMPLATE, keep_trailing_newline=True).render(kwargs["context"]))
        return handle.name, None, ""

    def managed(name, contents, **kwargs):
        salt.written.append((name, contents, kwargs))
        if not opts["test"]:
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            Path(name).write_text(contents)
        return {
            "name": name,
            "result": None if opts["test"] else True,
            "changes": {"diff": "new file"},
            "comment": f"File {name} {'is set to be changed' if opts['test'] else 'updated'}",
        }

    functions = {
        "file.source_list": lambda source, source_hash, saltenv: (source[0], ""),
        "file.get_managed": get_managed,
        "kcm.preflight": KCM_LOCAL.preflight,
    }
    return {
        KCM_LOCAL: {"__salt__": functions, "__utils__": formula.utils(), "__opts__": opts, "__context__": {}},
        KCM_SERVICE: {
            "__salt__": functions,
            "__states__": {"file.managed": managed},
            "__opts__": opts,
            "__env__": "base",
            "__context__": {},
        },
    }


def apply(tree, flags="--secure-port=10257", test=False):
    KCM_SERVICE.__opts__["test"] = test
    context = {"binary": str(tree["link"]), "user": "root", "exec_start": f"{tree['link']} {flags}"}
    return KCM_SERVICE.unit(str(tree["unit"]), str(tree["binary"]), SOURCE, context)


def runs(tree):
    recorded = Path(f"{tree['binary']}.runs")
    return recorded.read_text().splitlines() if recorded.exists() else []


def test_the_unit_is_rendered_once_and_written_after_the_new_binary_accepts_it(tree, salt):
    ret = apply(tree)

    assert ret["result"] is True and ret["changes"] == {"diff": "new file"}
    assert ret["comment"].startswith(f"{tree['binary']} (v1.37.2) accepts the ExecStart= of {SOURCE[0]}; ")
    assert salt.renders == [SOURCE[0]]
    assert runs(tree) == ["--secure-port=10257 --version"]
    text = f"[Service]\nUser=root\nExecStart={tree['link']} --secure-port=10257\n"
    assert [(name, contents) for name, contents, _ in salt.written] == [(str(tree["unit"]), text)]
    assert salt.written[0][2] == {
        "user": "root",
        "group": "root",
        "mode": "0600",
        "follow_symlinks": False,
        "makedirs": True,
        "dir_mode": "0755",
    }


def test_a_unit_the_binary_refuses_is_not_written(tree, salt):
    ret = apply(tree, flags="--secure-port=10257 --bogus-flag=1")

    refusal = f"{tree['binary']} refuses the ExecStart= of {SOURCE[0]}: Error: unknown flag: --bogus-flag"
    assert ret == {"name": str(tree["unit"]), "result": False, "changes": {}, "comment": refusal}
    assert salt.written == [] and not tree["unit"].exists()


@pytest.mark.parametrize("flags, result", [("--secure-port=10257", None), ("--bogus-flag=1", False)])
def test_test_mode_writes_nothing_and_says_what_the_binary_would_do(tree, salt, flags, result):
    ret = apply(tree, flags=flags, test=True)

    assert ret["result"] is result
    assert runs(tree) == [f"{flags} --version"]
    assert not tree["unit"].exists()
    assert ("refuses" if result is False else "accepts") in ret["comment"]


def test_test_mode_before_the_binary_is_installed_predicts_the_change(tree, salt):
    tree["binary"].unlink()

    ret = apply(tree, test=True)

    assert ret["result"] is None and ret["changes"] and not tree["unit"].exists()
    assert ret["comment"].startswith(f"{tree['binary']} is not installed yet; the unit is checked against it")


def test_nothing_runs_when_neither_the_unit_nor_the_link_changes(tree, salt):
    apply(tree)
    tree["link"].unlink()
    tree["link"].symlink_to(tree["binary"])
    before = runs(tree)

    ret = apply(tree)

    assert ret["result"] is True and runs(tree) == before and len(salt.renders) == 2


def test_a_link_about_to_move_is_checked_even_when_the_unit_stays(tree, salt):
    apply(tree)
    tree["binary"].write_text(FAKE_KCM.replace("--bogus-*", "--secure-port=*"))

    ret = apply(tree)

    assert ret["result"] is False and "unknown flag: --secure-port" in ret["comment"]
    assert len(salt.written) == 1


def test_a_unit_that_does_not_run_the_active_link_is_refused(tree, salt):
    KCM_SERVICE.__opts__["test"] = False
    context = {"binary": str(tree["link"]), "user": "root", "exec_start": "/usr/bin/env --secure-port=10257"}

    ret = KCM_SERVICE.unit(str(tree["unit"]), str(tree["binary"]), SOURCE, context)

    assert ret["result"] is False and salt.written == []
    assert ret["comment"] == (
        f"cannot check {tree['binary']} against {SOURCE[0]}: malformed: the unit's"
        f" ExecStart= runs /usr/bin/env, not {tree['link']}"
    )
    assert runs(tree) == []


def test_a_symlink_in_the_units_place_is_a_change_to_check(tree, salt):
    apply(tree)
    tree["link"].unlink()
    tree["link"].symlink_to(tree["binary"])
    real = tree["unit"].with_suffix(".real")
    os.replace(tree["unit"], real)
    tree["unit"].symlink_to(real)
    before = runs(tree)

    apply(tree)

    assert len(runs(tree)) == len(before) + 1
