"""
State that refuses a bad ``kcm:`` pillar before anything on disk changes.

Every other state of the formula requires ``kcm_config.validated``: when it fails, the
run changes nothing, and its comment lists every problem with its pillar key. A valid
config then passes the version skew guard (``kcm_skew.check``: KCM never newer than the live
kube-apiserver, a version change refused when its ``/version`` cannot be read) the same way.

The state's arguments carry no secret: the SLS passes the resolved config without PEM
text (``kcm_config.without_pems``) and the PEMs' SHA-256 fingerprints, and this state reads
the PEMs from pillar itself (``kcm_config.merged_pems``). ``state.show_sls``,
``show_lowstate`` and the rendered SLS in the minion's log therefore never show a key.
"""

import logging

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "kcm_config"


def __virtual__():
    return __virtualname__


def _failed(name, problems, why="Invalid pillar, nothing was changed"):
    return {
        "name": name,
        "result": False,
        "changes": {},
        "comment": f"{why}:\n" + "\n".join(f"- {p}" for p in problems),
    }


def _pillar(key):
    """Pillar ``key`` as written: Salt 3008 masks pillar values read during a state run unless
    asked (``unmask``, as ``file.managed``'s ``contents_pillar`` does); Salt 3006 has no such
    argument and no masking."""
    try:
        return __salt__["pillar.get"](key, None, unmask=True)
    except TypeError:
        return __salt__["pillar.get"](key, None)


def _config_with_pems(config, pems):
    """The full config for validation: ``config`` with the pillar's PEM text, or a problem
    when that text is not the one the SLS was rendered with (``pems`` fingerprints)."""
    pillar = __salt__["kcm_config.merged_pems"](_pillar("kcm:lookup:pki"), _pillar("kcm:pki"))
    full = dict(config)
    full["pki"] = dict(config.get("pki") if isinstance(config.get("pki"), dict) else {}, **pillar)
    got = __salt__["kcm_config.pem_fingerprints"](full)
    if pems is not None and got != pems:
        changed = sorted(k for k in set(got) | set(pems) if got.get(k) != pems.get(k))
        return full, [
            f"kcm:pki:{k}: the PEM in pillar is not the one this SLS was rendered with (pillar changed during the run?)"
            for k in changed
        ]
    return full, []


def validated(name, config, section=None, pems=None):
    """
    Succeed when the resolved config is valid; fail listing every problem otherwise.

    name
        A label for the state output (``kcm``).
    config
        ``{"kcm": <the resolved config from map.jinja without PEM text>}`` (or
        ``{"master": <kcm:master>}`` for ``section: master``). Nested one level so that no
        pillar string is a top-level value of a state argument, where Salt would evaluate
        its ``__slot__:`` syntax before this state can refuse it.
    section
        None (the whole config): validate it, then run the version skew guard
        (``kcm_skew.check``), whose refusal fails this state the same way, test mode
        included. ``master``: validate only ``kcm:master`` (``kcm.master`` on the Salt master's own
        minion, which runs no KCM); ``master_clean``: the same but who the KCM masters are
        (``kcm.master.clean`` removes the config that names them); ``paths``: only the paths, the service name and the
        value shapes (``kcm.clean``, which needs no PKI).
    pems
        ``kcm_config.pem_fingerprints`` of the config the SLS was rendered with; the PEM
        text itself is read from pillar by this state and checked against these.

    .. code-block:: yaml

        kcm-config-validated:
          kcm_config.validated:
            - name: kcm
            - config: {{ {"kcm": salt['kcm_config.without_pems'](kcm)} | json }}
            - pems: {{ salt['kcm_config.pem_fingerprints'](kcm) | json }}
    """
    if section in ("master", "master_clean"):
        problems = __salt__["kcm_config.master_problems"](config.get("master"))
        if section == "master_clean":
            problems = [p for p in problems if not p.startswith(("kcm:master:masters", "kcm:master:clusters"))]
        return (
            _failed(name, problems)
            if problems
            else {"name": name, "result": True, "changes": {}, "comment": "kcm:master is valid"}
        )
    kcm = config.get("kcm") if isinstance(config, dict) else None
    if not isinstance(kcm, dict):
        return _failed(name, ['kcm: expected the state argument config: {"kcm": <resolved config>}'])
    if section == "paths":
        problems = __salt__["kcm_config.path_problems"](kcm)
    else:
        full, problems = _config_with_pems(kcm, pems)
        problems = problems + __salt__["kcm_config.validate"](full)
    if problems:
        return _failed(name, problems)
    if section is None:
        return _skew_checked(name, kcm)
    return {"name": name, "result": True, "changes": {}, "comment": f"kcm:{section} is valid"}


def _skew_checked(name, kcm):
    """The version skew guard (``kcm_skew.check``) on a valid config: refused like an invalid
    pillar, before anything on disk changes, and the same in test mode."""
    skew = kcm.get("skew") if isinstance(kcm.get("skew"), dict) else {}
    try:
        decision = __salt__["kcm_skew.check"](
            kcm.get("version"), (kcm.get("files") or {}).get("kubeconfig"), skew.get("override_reason") or ""
        )
    except CommandExecutionError as exc:
        return _failed(name, [str(exc)], "Version skew not checked, nothing was changed")
    if not decision["allowed"]:
        return _failed(name, [decision["comment"]], "Refused by the version skew guard, nothing was changed")
    ret = {
        "name": name,
        "result": True,
        "changes": {},
        "comment": f"kcm config for {kcm.get('version')} is valid; {decision['comment']}",
    }
    if decision["warnings"]:
        ret["warnings"] = decision["warnings"]
    return ret
