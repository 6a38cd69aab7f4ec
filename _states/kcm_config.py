"""
State that refuses a bad ``kcm:`` pillar before anything on disk changes.

Every other state of the formula requires ``kcm_config.validated``: when it fails, the
run changes nothing, and its comment lists every problem with its pillar key.
"""

import logging

log = logging.getLogger(__name__)

__virtualname__ = "kcm_config"


def __virtual__():
    return __virtualname__


def validated(name, config, section=None):
    """
    Succeed when the resolved config is valid; fail listing every problem otherwise.

    name
        A label for the state output (``kcm``).
    config
        The resolved config from ``map.jinja``.
    section
        ``master``: validate only ``kcm:master`` (``kcm.master`` on the Salt master's own
        minion, which runs no KCM); ``master_clean``: the same but who the KCM masters are
        (``kcm.master.clean`` removes the config that names them); ``paths``: only the paths, the service name and the
        value shapes (``kcm.clean``, which needs no PKI).

    .. code-block:: yaml

        kcm-config-validated:
          kcm_config.validated:
            - name: kcm
            - config: {{ kcm | json }}
    """
    if section in ("master", "master_clean"):
        problems = __salt__["kcm_config.master_problems"](config.get("master"))
        if section == "master_clean":
            problems = [p for p in problems if not p.startswith(("kcm:master:masters", "kcm:master:clusters"))]
    elif section == "paths":
        problems = __salt__["kcm_config.path_problems"](config)
    else:
        problems = __salt__["kcm_config.validate"](config)
    if problems:
        return {
            "name": name,
            "result": False,
            "changes": {},
            "comment": "Invalid pillar, nothing was changed:\n" + "\n".join(f"- {p}" for p in problems),
        }
    return {
        "name": name,
        "result": True,
        "changes": {},
        "comment": f"kcm:{section} is valid" if section else f"kcm config for {config.get('version')} is valid",
    }
