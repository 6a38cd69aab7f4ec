"""
Every default of the master side has one owner, ``formula/kcm/defaults.yaml`` (issue #26):
``kcm.master`` writes them into the Salt master's configuration (``kcm_alert:``,
``kcm_orch:``, the engine's entry), the runners and the engine read them there and keep
none of their own, and a key they read that is missing fails naming it and saying to
apply kcm.master.
"""

import ast
import inspect

import pytest
from salt.exceptions import CommandExecutionError

from kcmlab.formula import REPO, defaults, load, master_conf, utils
from tests.unit.test_kcm_alert import CHANGE, CID, Harness, Masters, lease, signed

# What kcm.master writes for pillar kcm:master:masters: 'master-*' and every default.
CONF = master_conf(masters="master-*")
MASTER = defaults()["master"]
# The code that reads the master's kcm_alert: (as cfg[...]): the runners and the utils they hand it to.
READERS = (
    "_runners/kcm_alert.py",
    "_runners/kcm.py",
    "_runners/kcm_enroll.py",
    "_utils/kcm_outbox.py",
    "_utils/kcm_receiver.py",
    "_utils/kcm_alert_decide.py",
)
# The master side's code, where no default of a kcm:master key may be written.
MASTER_SIDE = sorted(
    p.relative_to(REPO).as_posix() for d in ("_runners", "_engines", "_utils") for p in (REPO / d).glob("*.py")
)


def tree(path, text=None):
    return ast.parse((REPO / path).read_text() if text is None else text)


def keys_read(path):
    """The keys ``path`` reads as ``cfg["key"]``."""
    return {
        node.slice.value
        for node in ast.walk(tree(path))
        if isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "cfg"
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
    }


def test_the_config_kcm_master_writes_holds_every_key_the_runners_and_the_engine_read():
    read = set().union(*(keys_read(path) for path in READERS))
    assert {"receiver_timeout", "signature_window", "max_seen", "refusal_log_interval"} <= read  # the scan sees them
    assert sorted(read - set(CONF["kcm_alert"])) == []
    engine = inspect.signature(load("_engines", "kcm_alert").start).parameters
    assert set(engine) == set(CONF["engines"][0]["kcm_alert"])


def written_defaults(path, text=None):
    """Where ``path`` writes a default of a kcm:master key: a module constant named after it,
    a function argument of its name with a default, ``.get("<key>", default)``, or a ``DEFAULTS``."""
    found, module = [], tree(path, text)
    for node in module.body:
        if isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            found += [f"{path}:{node.lineno} {n} = ..." for n in names if n.lower() in MASTER or n == "DEFAULTS"]
    for node in ast.walk(module):
        if isinstance(node, ast.FunctionDef):
            args = node.args.args + node.args.kwonlyargs
            given = (
                [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + node.args.kw_defaults
            )
            found += [
                f"{path}:{node.lineno} {node.name}({arg.arg}={ast.unparse(default)})"
                for arg, default in zip(args, given)
                if arg.arg in MASTER
                and default is not None
                and not (isinstance(default, ast.Constant) and default.value is None)
            ]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in MASTER
        ):
            found.append(f"{path}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_default_of_a_master_setting_is_written_in_the_runners_the_engine_or_their_utils():
    found = [line for path in MASTER_SIDE for line in written_defaults(path)]
    assert found == []


def test_the_scan_finds_the_defaults_the_runner_kept_before():
    # What the runner and the engine held before #26, as the scan reads it.
    before = (
        'DEFAULTS = {"event_ttl": 3600}\nSIGNATURE_WINDOW = 300\n'
        'def start(batch_wait=0.2, max_batch=500):\n    return cfg.get("receiver_timeout", 5)\n'
    )
    found = written_defaults("_runners/kcm_alert.py", before)
    assert len(found) == 5, found


def exercise(h, masters):
    """Every path of the alert runner that reads a setting: a change and a condition reported,
    a refused sender, a flush, a reconcile, one real POST (to a closed port)."""
    h.handle("master-1", "changed", **CHANGE)
    h.handle("master-2", "no_leader", transitions=4, cluster_id=CID)
    for _ in range(2):  # the second within refusal_log_interval is only counted
        h.raw("salt/beacon/web-1/kcm_leader/changed", signed("web-1", "changed", dict(CHANGE, cluster="prod"), h.now))
    h.module.flush()
    masters.record = lease("master-2", 5)
    h.module.reconcile()
    post = utils()["kcm_receiver.post"]
    with pytest.raises(post.__globals__["ReceiverError"]):
        post("http://127.0.0.1:9/api/v2/alerts", [], h.module._config())


def test_the_runner_runs_on_what_kcm_master_writes(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch)
    masters = Masters(h, monkeypatch)
    exercise(h, masters)
    assert h.alerts() and any("refused" in tag for tag in h.tags())


@pytest.mark.parametrize("key", sorted(set(CONF["kcm_alert"]) - {"masters", "clusters"}))
def test_a_setting_missing_from_the_masters_kcm_alert_fails_naming_it(tmp_path, monkeypatch, key):
    # masters and clusters are kcm_trust's: without masters every report is refused, naming it.
    h = Harness(tmp_path, monkeypatch)
    masters = Masters(h, monkeypatch)
    del h.module.__opts__["kcm_alert"][key]

    with pytest.raises(CommandExecutionError) as failed:
        exercise(h, masters)

    assert str(failed.value) == (
        f"not_configured: kcm_alert:{key} is not in the Salt master's configuration:"
        f" apply kcm.master (pillar kcm:master:{key}) and restart salt-master"
    )


@pytest.mark.parametrize("name", ["batch_wait", "max_batch"])
def test_the_engine_without_its_settings_stops_naming_the_missing_one(monkeypatch, name):
    engine = load("_engines", "kcm_alert")
    monkeypatch.setattr(engine, "__utils__", utils(), raising=False)
    given = dict(CONF["engines"][0]["kcm_alert"])
    given.pop(name)

    with pytest.raises(
        CommandExecutionError,
        match=f"engines:kcm_alert:{name} is not in the Salt master's"
        f" configuration: apply kcm.master \\(pillar kcm:master:{name}\\)",
    ):
        engine.start(**given)


@pytest.mark.parametrize(
    "master, message",
    [
        ({"receiver_retries": 0}, "kcm:master:receiver_retries: 0 is not a positive number of attempts"),
        ({"receiver_timeout": "5"}, "kcm:master:receiver_timeout: '5' is not a number"),
        ({"receiver_backoff": -1}, "kcm:master:receiver_backoff: -1 is not zero or more seconds"),
        ({"event_ttl": 0}, "kcm:master:event_ttl: 0 is not a positive number of seconds"),
        ({"max_seen": 2.5}, "kcm:master:max_seen: 2.5 is not an integer"),
        ({"max_batch": 0}, "kcm:master:max_batch: 0 is not a positive number of events"),
        ({"signature_window": -5}, "kcm:master:signature_window: -5 is not a positive number of seconds"),
        ({"dedupe_file": "dedupe.json"}, "kcm:master:dedupe_file: 'dedupe.json' is not a plain absolute path"),
    ],
)
def test_the_master_settings_are_validated_naming_the_key_and_what_is_expected(kcm_config, master, message):
    problems = kcm_config.master_problems(dict(MASTER, masters="master-*", **master))
    assert any(p.startswith(message) for p in problems), problems
