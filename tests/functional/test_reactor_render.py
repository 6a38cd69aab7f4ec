"""The enrollment reactor SLS renders any event data, however hostile, into the data the runner
gets. (The alerts take no reactor path: the kcm_alert engine is the only one.)"""

import pytest
import yaml
from salt.utils.templates import render_jinja_tmpl

from tests.support.pillar import REPO

REACTOR = REPO / "formula" / "reactor" / "kcm"
HOSTILE = "x\u2028y\x85z\x7f\x00\n- cmd.run: id\"'<>&é"


def render(minion_opts, sls, tag, data):
    path = REACTOR / sls
    text = render_jinja_tmpl(
        path.read_text(),
        {"opts": minion_opts, "saltenv": "base", "tag": tag, "data": data, "salt": {}, "grains": {}, "pillar": {}},
        tmplpath=str(path),
    )
    return yaml.safe_load(text) or {}


@pytest.mark.parametrize(
    "sls, tag, data, runner, runner_tag",
    [
        (
            "enroll.sls",
            "salt/minion/master-1/start",
            {"id": HOSTILE},
            "runner.kcm_enroll.on_start",
            "salt/minion/master-1/start",
        ),
    ],
)
def test_hostile_event_data_reaches_the_runner_unchanged(minion_opts, sls, tag, data, runner, runner_tag):
    [state] = render(minion_opts, sls, tag, data).values()
    args = {k: v for item in state[runner][0]["args"] for k, v in item.items()}
    assert args["tag"] == runner_tag
    if "data" in args:
        assert args["data"] == data
    else:
        assert args["sender"] == HOSTILE


def test_no_reactor_sls_handles_the_alert_events():
    # One alert path (the engine): a reactor SLS for the beacons' events would be a second one.
    assert sorted(p.name for p in REACTOR.glob("*.sls")) == ["enroll.sls"]
