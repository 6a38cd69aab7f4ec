"""
The shape and the text of a ``kcm:`` pillar, checked before any value is used: a value of
the wrong type (a list where a mapping belongs, the string ``"false"`` where a boolean
does) is a message naming its key, never a traceback or a Jinja error, and no string that
leaves Python (SLS, unit, kubeconfig, alert) carries a control character.

Called as ``__utils__["kcm_shapes.shape_problems"](config)`` from ``kcm_config``.
"""

import json
import unicodedata

__virtualname__ = "kcm_shapes"

MAP, LIST, BOOL, INT, NUMBER, TEXT = "a mapping", "a list", "true or false", "an integer", "a number", "a string"
# The kind each pillar key must have, as ``section:key`` paths.
_KEYS_BY_KIND = {
    MAP: "source skew paths leader_election pki extra_args service beacon master master:enroll master:labels"
    " master:clusters master:orch tofs tofs:source_files",
    LIST: "controllers beacon:cert_thresholds master:alertmanager_urls master:webhook_urls tofs:files_switch",
    BOOL: "create_user use_service_account_credentials log_to_file profiling service:manage beacon:enabled"
    " master:sync_runners master:enroll:enabled master:allow_http",
    NUMBER: "master:batch_wait beacon:interval beacon:stale_after beacon:timeout beacon:cert_check_interval"
    " beacon:healthy_for"
    " master:orch:timeout master:orch:interval master:orch:drill_interval master:orch:apply_timeout"
    " master:receiver_backoff master:receiver_timeout master:reconcile_timeout",
    INT: "secure_port keep_versions verbosity terminated_pod_gc_threshold pki:days_valid pki:days_remaining"
    " pki:key_size beacon:debounce"
    " master:reconcile_interval master:flush_interval master:resend_interval master:renew_interval"
    " master:max_batch master:receiver_retries master:event_ttl master:dedupe_ttl master:max_seen master:max_open"
    " master:refusal_log_interval master:signature_window"
    " master:orch:count"
    " master:orch:min_remaining",
    TEXT: "version identity cluster user group apiserver bind_address bind_interface service_cluster_ip_range"
    " cluster_signing_duration service:name service:control_cmd source:type source:url source:hash"
    " source:arch skew:override_reason pki:mode pki:ca_server pki:signing_policy pki:key_algo master:config_dir"
    " master:ca_bundle master:proxy master:runbook_url master:dedupe_file",
}
# Sections before their keys: a section of the wrong kind hides what is under it.
SHAPES = tuple(
    sorted(
        ((tuple(path.split(":")), kind) for kind, paths in _KEYS_BY_KIND.items() for path in paths.split()),
        key=lambda item: len(item[0]),
    )
)
KINDS = {
    MAP: lambda v: isinstance(v, dict),
    LIST: lambda v: isinstance(v, list),
    BOOL: lambda v: isinstance(v, bool),
    INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    TEXT: lambda v: isinstance(v, str),
}
_EXAMPLES = {
    MAP: "{}",
    LIST: "[]",
    BOOL: "true (unquoted)",
    INT: "2 (unquoted)",
    NUMBER: "2 (unquoted)",
    TEXT: "'text'",
}
PEM_KEYS = ("ca_cert", "ca_key", "cert", "key", "service_account_key", "signer_cert", "signer_key")
# Values that may hold a newline: PEM text only.
_MULTILINE = {("pki", k) for k in PEM_KEYS}
# Salt evaluates a state argument (or a first-level value of one) that starts with this as a
# function call (salt/state.py format_slots): pillar text must never start so.
SLOT_PREFIX = "__slot__:"
# Keys resolve() adds: not pillar, never checked as such.
_RESOLVED = ("files", "credentials", "shape_problems")


def __virtual__():
    return __virtualname__


def pillar_key(path):
    """``("pki", "mode")`` as the pillar key a message names: ``kcm:pki:mode``."""
    return "kcm:" + ":".join(str(p) for p in path)


def lookup(cfg, path):
    """``(value, True)`` at ``path`` under ``cfg``, or ``(None, False)`` when it is absent."""
    node = cfg
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None, False
        node = node[part]
    return node, True


def shape_problems(cfg):
    """``[(path, message)]`` for every key of ``cfg`` whose value has the wrong type; the
    keys under a section of the wrong type are not named again."""
    out, hidden = [], []
    for path, kind in SHAPES:
        if any(path[: len(h)] == h for h in hidden):
            continue
        value, present = lookup(cfg, path)
        if present and value is not None and not KINDS[kind](value):
            out.append((path, f"{pillar_key(path)}: {value!r} is not {kind} (for example {_EXAMPLES[kind]})"))
            hidden.append(path)
    return out


def repair_shapes(cfg, defaults):
    """Replace, in place, every value of the wrong type by its entry in ``defaults`` (so the
    SLS still renders) and return the messages that name them."""
    problems = []
    for path, message in shape_problems(cfg):
        problems.append(message)
        default, _ = lookup(defaults, path)
        parent, _ = lookup(cfg, path[:-1]) if len(path) > 1 else (cfg, True)
        parent[path[-1]] = json.loads(json.dumps(default)) if default is not None else None
    return problems


def _walk_text(node, path):
    """Yield (path, text) for every string key and value under ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path + (f"<key {key}>",), str(key)
            yield from _walk_text(value, path + (key,))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _walk_text(value, path + (index,))
    elif isinstance(node, str):
        yield path, node


def text_problems(cfg):
    """``[(pillar key, message)]`` for every string (key or value) in ``cfg`` that holds a
    control character or a Unicode line/paragraph separator; PEM values may hold newlines
    and nothing else."""
    problems = []
    for path, text in _walk_text({k: v for k, v in cfg.items() if k not in _RESOLVED}, ()):
        if path[:2] in _MULTILINE:
            text = text.replace("\r\n", "\n").replace("\n", "")
        if text.startswith(SLOT_PREFIX):
            is_name = str(path[-1]).startswith("<key ")
            key = pillar_key(path[:-1]) if is_name else pillar_key(path)
            problems.append(
                (
                    key,
                    f"{key}: starts with {SLOT_PREFIX!r}, Salt's slot syntax, which would run"
                    " a function when the value reaches a state argument; expected plain text",
                )
            )
            continue
        for char in text:
            if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
                is_name = str(path[-1]).startswith("<key ")
                key = pillar_key(path[:-1]) if is_name else pillar_key(path)
                where = f"{key} (the key {path[-1][5:-1]!r})" if is_name else key
                problems.append(
                    (key, f"{where}: holds the control character U+{ord(char):04X}; expected printable text")
                )
                break
    return problems
