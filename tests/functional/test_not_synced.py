"""Before saltutil.sync_all, the formula says so in one line instead of a Jinja traceback."""

import pytest
from salt.exceptions import SaltRenderError
from salt.utils.templates import render_jinja_tmpl

from tests.support.pillar import REPO

MAP = REPO / "formula" / "kcm" / "map.jinja"


class Unsynced(dict):
    """The `salt` of a minion that never synced the formula: Salt's modules, none of ours."""

    def __init__(self, modules):
        super().__init__((k, v) for k, v in modules.items() if not k.startswith(("kcm.", "kcm_")))


def test_an_unsynced_minion_gets_one_line_naming_the_fix(loaders, minion_opts):
    context = {
        "opts": minion_opts,
        "saltenv": "base",
        "salt": Unsynced(loaders.modules),
        "tpldir": "kcm",
        "grains": {},
        "pillar": {},
    }
    with pytest.raises(SaltRenderError) as raised:
        render_jinja_tmpl(MAP.read_text(), context, tmplpath=str(MAP))
    message = str(raised.value)
    assert "its modules are not synced to this minion" in message
    assert "saltutil.sync_all" in message
    assert "kcm_config.resolve" not in message.split("not synced")[0]
