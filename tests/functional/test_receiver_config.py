"""``kcm:master:proxy`` end to end: kcm.master writes it into the master's kcm.conf, and the
kcm_alert runner, given that config as the master would, posts through that proxy and
through no other (the master's own HTTP_PROXY is ignored). Real HTTP servers on 127.0.0.1."""

import yaml

from kcmlab.formula import load, utils
from tests.unit.test_kcm_receiver import ok, proxy_env, serve  # noqa: F401 - fixtures

URL = "https://alertmanager.example:9093"


def rendered_alert_config(state, tmp_path, **master):
    pillar = {"kcm": {"master": dict({"config_dir": str(tmp_path / "master.d"), "sync_runners": False,
                                      "alertmanager_urls": [URL]}, **master)}}
    ret = state.apply("kcm.master", pillar=pillar)
    assert all(step["result"] for step in ret.raw.values()), ret.raw
    return yaml.safe_load((tmp_path / "master.d" / "kcm.conf").read_text())["kcm_alert"]


def test_kcm_master_hands_its_proxy_to_the_runner_which_posts_through_it(state, tmp_path, serve, proxy_env):  # noqa: F811
    proxy, receiver, elsewhere = serve(ok), serve(ok), serve(ok)
    proxy_env(elsewhere.url)
    conf = rendered_alert_config(state, tmp_path, proxy=proxy.url)
    assert conf["proxy"] == proxy.url
    runner = load("_runners", "kcm_alert")
    runner.__utils__ = utils()
    runner.__opts__ = {"cachedir": str(tmp_path / "cache"), "kcm_alert": conf}
    runner._post(receiver.url + "/api/v2/alerts", [], runner._config())
    assert [line for line, _ in proxy.requests] == [f"POST {receiver.url}/api/v2/alerts HTTP/1.1"]
    assert receiver.requests == [] and elsewhere.requests == []


def test_without_a_proxy_setting_the_runner_uses_none(state, tmp_path):
    assert rendered_alert_config(state, tmp_path)["proxy"] == ""
