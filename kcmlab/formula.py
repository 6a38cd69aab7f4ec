"""The formula's custom modules imported as plain Python modules, without Salt's loader.

For the tests and the release record: ``kcm_flags`` and ``kcm_config`` wired together the way
the loader wires them (``__utils__``, ``__salt__``), nothing else.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def load(kind: str, name: str):
    """Import a custom Salt module from the repo (e.g. _modules/kcm_flags.py) as a plain module;
    ``kind`` may be any directory of the repo (``formula/kcm/files`` for the Lease release program)."""
    module_name = "kcmtest_" + "".join(c if c.isalnum() else "_" for c in f"{kind}_{name}")
    spec = importlib.util.spec_from_file_location(module_name, REPO / kind / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def utils() -> dict:
    """``__utils__`` as Salt's loader gives it to modules: the formula's _utils functions."""
    found = {}
    for path in sorted((REPO / "_utils").glob("*.py")):
        # No __utils__ in a util, as Salt's loader packs none into utils modules: they are leaves.
        module = load("_utils", path.stem)
        found.update(
            {
                f"{module.__virtualname__}.{n}": getattr(module, n)
                for n in dir(module)
                if not n.startswith("_")
                and callable(getattr(module, n))
                and getattr(getattr(module, n), "__module__", None) == module.__name__
            }
        )
    return found


def kcm_flags():
    """``_modules/kcm_flags.py`` with its ``__utils__``."""
    module = load("_modules", "kcm_flags")
    module.__utils__ = utils()
    return module


def kcm_config(flags=None):
    """``_modules/kcm_config.py`` calling ``flags`` (a :func:`kcm_flags`) through ``__salt__``."""
    flags = flags or kcm_flags()
    module = load("_modules", "kcm_config")
    module.__salt__ = {f"kcm_flags.{n}": getattr(flags, n) for n in ("normalize_version", "problems", "render")}
    module.__grains__ = {"ip4_interfaces": {"eth2": ["10.10.10.21"], "lo": ["127.0.0.1"]}}
    module.__opts__ = {"cachedir": "/var/cache/salt/minion"}
    module.__utils__ = utils()
    return module


def defaults() -> dict:
    """``kcm:`` of ``formula/kcm/defaults.yaml``: every default of the formula."""
    return yaml.safe_load((REPO / "formula" / "kcm" / "defaults.yaml").read_text())["kcm"]


def _merged(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``, mappings key by key (as ``defaults.merge``)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def master_conf(**master) -> dict:
    """
    The Salt master's configuration that ``kcm.master`` writes (its ``kcm.conf``: ``engines``,
    ``kcm_alert``, ``kcm_orch``, ``schedule``) for pillar ``kcm:master`` = defaults.yaml's with
    ``master`` over it: the real ``formula/kcm/master/config.sls`` rendered by plain Jinja,
    without Salt (no validation; ``kcmlab.masterless.kcm_master_config`` applies the state).
    Every hand-made master configuration of the lab, tests and bench starts from it, so each
    carries every setting the runners and the engine read.
    """
    import jinja2

    cfg = dict(defaults(), master=_merged(defaults()["master"], master))
    sls = {
        "kcm/map.jinja": "{%- set kcm = merged %}",
        "kcm/master/config.sls": (REPO / "formula" / "kcm" / "master" / "config.sls").read_text(),
    }
    env = jinja2.Environment(
        loader=jinja2.DictLoader(sls), extensions=["jinja2.ext.do"], undefined=jinja2.StrictUndefined
    )
    env.filters["json"] = json.dumps
    text = env.get_template("kcm/master/config.sls").render(tpldir="kcm/master", merged=cfg)
    states = yaml.safe_load(text)["kcm-master-config"]["file.serialize"]
    return next(arg["dataset"] for arg in states if "dataset" in arg)


def orch_settings() -> dict:
    """``kcm_orch:`` as kcm.master writes it into a Salt master's configuration (the
    defaults of ``kcm:master:orch``): what the kcm_orch runner and the orchestrations read."""
    return master_conf()["kcm_orch"]


def runner_settings(**master) -> dict:
    """``kcm_alert:`` and ``kcm_orch:`` as kcm.master writes them (``master`` over the
    defaults): what the runners read, without the engine and the schedule, for a lab's
    Salt master that only runs the runners."""
    conf = master_conf(**master)
    return {"kcm_alert": conf["kcm_alert"], "kcm_orch": conf["kcm_orch"]}


def alert_settings(**master) -> dict:
    """``kcm_alert:`` as kcm.master writes it for pillar ``kcm:master`` = ``master`` over the
    defaults: every setting the kcm_alert runner reads."""
    return master_conf(**master)["kcm_alert"]


def alert_store(path) -> dict:
    """The ``kcm_alert`` runner's store at ``path`` as its next round reads it: with what the
    receivers answered, recorded beside it, settled (``kcm_outbox.locked_store``)."""
    found = utils()
    with found["kcm_outbox.locked_store"](
        str(path), found["kcm_state_file.read_json"], found["kcm_state_file.write_json"]
    ) as store:
        return store
