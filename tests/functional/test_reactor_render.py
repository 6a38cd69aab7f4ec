"""The reactor SLS render any event data, however hostile, into the data the runner gets."""

import pytest
import yaml
from salt.utils.templates import render_jinja_tmpl

from tests.support.pillar import REPO

REACTOR = REPO / "formula" / "reactor" / "kcm"
HOSTILE = "x\u2028y\x85z\x7f\x00\n- cmd.run: id\"'<>&é"


@pytest.mark.parametrize("sls, tag, data, runner", [
    ("leader.sls", "salt/beacon/master-1/kcm_leader/changed", {"id": "master-1", "cluster": HOSTILE},
     "runner.kcm_alert.handle"),
    ("enroll.sls", "salt/minion/master-1/start", {"id": HOSTILE}, "runner.kcm_enroll.on_start"),
])
def test_hostile_event_data_reaches_the_runner_unchanged(minion_opts, sls, tag, data, runner):
    path = REACTOR / sls
    text = render_jinja_tmpl(path.read_text(), {"opts": minion_opts, "saltenv": "base", "tag": tag, "data": data,
                                                "salt": {}, "grains": {}, "pillar": {}}, tmplpath=str(path))
    [state] = yaml.safe_load(text).values()
    args = {k: v for item in state[runner][0]["args"] for k, v in item.items()}
    assert args["tag"] == tag
    if "data" in args:
        assert args["data"] == data
    else:
        assert args["sender"] == HOSTILE
