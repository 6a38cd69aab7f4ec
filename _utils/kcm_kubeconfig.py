"""
A kubeconfig read the way kubectl reads it: the ``current-context`` (or the only context),
its cluster and its user. One reader for the API client (``kcm_api``) and the certificate
report (``kcm_pki``), so both look at the same credentials.

Errors are ``ValueError`` naming the file and the problem, never a key or a token; callers
turn them into their own ``kubeconfig`` failure. Called as
``__utils__["kcm_kubeconfig.current"](path)``.

Root reads these files (the beacons, ``kcm.leader``, the kubeconfig state), so every read
goes through :func:`read_trusted`: a regular file (never a FIFO or a device, never through a
symlink), owned by root (or the caller) and writable by no one else, in directories no one
else may write, and at most ``LIMIT`` bytes.
"""

import os
import stat

import yaml

LIMIT = 1 << 20

__virtualname__ = "kcm_kubeconfig"


def __virtual__():
    return __virtualname__


def _foreign(st, euid):
    """Why a file or directory with ``st`` is someone else's to change, or None."""
    if st.st_uid not in (0, euid):
        return f"is owned by uid {st.st_uid}, not root"
    others = st.st_mode & 0o002 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX)
    if others or (st.st_mode & 0o020 and st.st_gid != 0):
        return f"may be written by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def read_trusted(path, limit=LIMIT):
    """
    Return the bytes of ``path`` when root may trust it; raise ``ValueError`` naming the
    path and why not: not a regular file (a FIFO would block the reader), a symlink, owned
    by anyone but root (or the calling user), writable by others, in a directory others
    may write, or larger than ``limit`` bytes.

    Example:

    .. code-block:: python

        pem = __utils__["kcm_kubeconfig.read_trusted"]("/etc/k8s/ssl/ca.pem")
    """
    euid = os.geteuid()
    directory = os.path.dirname(os.path.abspath(path))
    head = os.path.realpath(directory)
    while True:
        try:
            why = _foreign(os.stat(head), euid)
        except OSError as exc:
            raise ValueError(f"{path}: cannot read it ({exc.strerror})") from None
        if why:
            raise ValueError(f"{path}: its directory {head} {why}")
        if head == os.path.dirname(head):
            break
        head = os.path.dirname(head)
    try:
        # O_NONBLOCK: opening a FIFO returns at once (and is refused below) instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror}; symlinks are not followed)") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: is not a regular file")
        why = _foreign(st, euid)
        if why:
            raise ValueError(f"{path}: {why}")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: larger than {limit} bytes")
    return data


def _load(path):
    try:
        doc = yaml.safe_load(read_trusted(path).decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: is not UTF-8 text") from None
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
