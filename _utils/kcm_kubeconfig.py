"""
A kubeconfig read the way kubectl reads it: the ``current-context`` (or the only context),
its cluster and its user. One reader for the API client (``kcm_api``) and the certificate
report (``kcm_pki``), so both look at the same credentials.

Errors are ``ValueError`` naming the file and the problem, never a key or a token; callers
turn them into their own ``kubeconfig`` failure. Called as
``__utils__["kcm_kubeconfig.current"](path)``.
"""

import yaml

__virtualname__ = "kcm_kubeconfig"


def __virtual__():
    return __virtualname__


def _load(path):
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError:
        raise ValueError(f"{path}: is not valid YAML") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping with clusters, users and contexts")
    return doc


def _named(doc, path, section, name):
    for item in doc.get(section) or []:
        if isinstance(item, dict) and item.get("name") == name:
            key = section[:-1]  # clusters -> cluster, users -> user, contexts -> context
            value = item.get(key)
            if not isinstance(value, dict):
                raise ValueError(f"{path}: {section}[name={name}].{key} must be a mapping")
            return value
    raise ValueError(f"{path}: {section} has no entry named {name!r}")


def current(path):
    """
    Return ``(cluster, user)``, the mappings of the kubeconfig's current context (or of its
    only context when ``current-context`` is unset); ``user`` is ``{}`` for a context
    without one. Raises ``ValueError`` naming ``path`` and what is wrong.

    Example:

    .. code-block:: python

        cluster, user = __utils__["kcm_kubeconfig.current"]("/etc/k8s/kubeconfig/kcm.kubeconfig")
    """
    doc = _load(path)
    name = doc.get("current-context")
    if not name:
        contexts = doc.get("contexts") or []
        if len(contexts) != 1:
            raise ValueError(f"{path}: current-context is not set and there is not exactly one context")
        name = contexts[0].get("name")
    context = _named(doc, path, "contexts", name)
    cluster = _named(doc, path, "clusters", context.get("cluster"))
    user = _named(doc, path, "users", context.get("user")) if context.get("user") else {}
    return cluster, user
