"""The reactor SLS render any event data, however hostile, into the data the runner gets."""

import pytest
import yaml
from salt.utils.templates import render_jinja_tmpl

from tests.support.pillar import REPO

REACTOR = REPO / "formula" / "reactor" / "kcm"
HOSTILE = "x\u2028y\x85z\x7f\x00\n- cmd.run: id\"'<>&é"


def render(minion_opts, sls, tag, data):
    path = REACTOR / sls
    text = render_jinja_tmpl(path.read_text(), {"opts": minion_opts, "saltenv": "base", "tag": tag, "data": data,
                                                "salt": {}, "grains": {}, "pillar": {}}, tmplpath=str(path))
    return yaml.safe_load(text) or {}


@pytest.mark.parametrize("sls, tag, data, runner, runner_tag", [
    ("leader.sls", "salt/beacon/master-1/kcm_leader/changed", {"id": "master-1", "cluster": HOSTILE},
     "runner.kcm_alert.handle", "salt/beacon/master-1/kcm_leader/changed"),
    ("cert.sls", "salt/beacon/master-1/kcm_cert/cert_expiring", {"id": "master-1", "cert": HOSTILE},
     "runner.kcm_alert.handle", "salt/beacon/master-1/kcm_cert/cert_expiring"),
    ("enroll.sls", "salt/minion/master-1/start", {"id": HOSTILE}, "runner.kcm_enroll.on_start",
     "salt/minion/master-1/start"),
])
def test_hostile_event_data_reaches_the_runner_unchanged(minion_opts, sls, tag, data, runner, runner_tag):
    [state] = render(minion_opts, sls, tag, data).values()
    args = {k: v for item in state[runner][0]["args"] for k, v in item.items()}
    assert args["tag"] == runner_tag
    if "data" in args:
        assert args["data"] == data
    else:
        assert args["sender"] == HOSTILE


@pytest.mark.parametrize("tag", ["salt/beacon/master-1/kcm_cert/changed", "salt/beacon/m-1/kcm_leader/cert_expiring",
                                 "kcm/alert/cert_expiring", "salt/beacon/a/b/kcm_cert/cert_renewed"])
def test_the_cert_reactor_ignores_any_other_tag(minion_opts, tag):
    assert render(minion_opts, "cert.sls", tag, {"id": "master-1"}) == {}
