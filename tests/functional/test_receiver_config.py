"""``kcm:master:proxy`` end to end: kcm.master writes it into the master's kcm.conf, and the
kcm_alert runner, given that config as the master would, posts through that proxy and
through no other (the master's own HTTP_PROXY is ignored). Real HTTP servers on 127.0.0.1."""

import salt.config
import salt.loader
import yaml

from kcmlab.formula import alert_settings, alert_store, load, utils
from tests.support.pillar import REPO
from tests.unit.test_kcm_receiver import ok, proxy_env, serve  # noqa: F401 - fixtures

URL = "https://alertmanager.example:9093"


def rendered_alert_config(state, tmp_path, **master):
    pillar = {
        "kcm": {
            "master": dict(
                {
                    "config_dir": str(tmp_path / "master.d"),
                    "sync_runners": False,
                    "alertmanager_urls": [URL],
                    "masters": "master-*",
                },
                **master,
            )
        }
    }
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


# --------------------------------------------------------------------------
# the flush as Salt's loader runs it on a master (a util calls the runner's _post back)
# --------------------------------------------------------------------------

FAR = "2099-01-01T00:00:00Z"


def loaded_runner(tmp_path, receiver_url):
    opts = dict(
        salt.config.DEFAULT_MASTER_OPTS,
        cachedir=str(tmp_path / "cache"),
        sock_dir=str(tmp_path / "sock"),
        extension_modules=str(tmp_path / "extmods"),
        runner_dirs=[str(REPO / "_runners")],
        utils_dirs=[str(REPO / "_utils")],
        kcm_alert=alert_settings(alertmanager_urls=[receiver_url], receiver_retries=1, receiver_timeout=2),
    )
    loaded_utils = salt.loader.utils(opts)
    path = tmp_path / "cache" / "kcm_alert" / "dedupe.json"
    path.parent.mkdir(parents=True)
    item = {
        "alert": {
            "labels": {"alertname": "KCMNoLeader", "cluster": "prod"},
            "startsAt": "2026-12-06T10:00:00Z",
            "endsAt": FAR,
        },
        "action": "fire",
        "kind": "no_leader",
        "reporter": "master-1",
        "group": "g1",
        "expires": 4070908800,
    }
    with loaded_utils["kcm_outbox.locked_store"](
        str(path), loaded_utils["kcm_state_file.read_json"], loaded_utils["kcm_state_file.write_json"]
    ) as store:
        loaded_utils["kcm_outbox.add"](store, [item], loaded_utils["kcm_outbox.receivers"](opts["kcm_alert"]), 0)
    return salt.loader.runner(opts, utils=loaded_utils), path


def test_the_loaded_flush_refuses_a_redirect_and_keeps_the_alert(tmp_path, serve):  # noqa: F811
    target = serve(ok)

    def redirect(handler, _server):
        handler.send_response(307)
        handler.send_header("Location", target.url + "/internal/admin")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    receiver = serve(redirect)
    runners, path = loaded_runner(tmp_path, receiver.url)
    assert runners["kcm_alert.flush"]() == {"delivered": 0, "pending": 1, "expired": 0}
    assert len(receiver.requests) == 1 and target.requests == []
    [entry] = alert_store(path)["outbox"].values()
    assert list(entry["errors"].values()) == [
        f"ReceiverError: HTTP 307 redirect to '{target.url}/internal/admin' not followed"
        " (a receiver must accept alerts at its own URL)"
    ]


def test_the_loaded_flush_delivers_to_a_receiver_that_accepts(tmp_path, serve):  # noqa: F811
    receiver = serve(ok)
    runners, path = loaded_runner(tmp_path, receiver.url)
    assert runners["kcm_alert.flush"]() == {"delivered": 1, "pending": 0, "expired": 0}
    assert [line for line, _ in receiver.requests] == ["POST /api/v2/alerts HTTP/1.1"]
