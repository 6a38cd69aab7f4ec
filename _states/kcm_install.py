"""
States that install the kube-controller-manager binary safely: the new version lands in
its own directory, is verified by running it, and only then replaces anything.

Everything here is root's: the directories (``directories_owned``), the binary and its
record. Root runs that binary (``kcm.version``, the preflight) and its directories hold
what root executes, so no other user may write any of them.
"""

import hashlib
import logging
import os
import pwd
import shutil
import stat
import tarfile
import tempfile
import zlib

import salt.utils.atomicfile
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "kcm_install"


def __virtual__():
    return __virtualname__


def _ret(name, result, comment, changes=None):
    return {"name": name, "result": result, "comment": comment, "changes": changes or {}}


def _stamp_path(name):
    return name + ".source.json"


def _source_stamp(source, member):
    st = os.stat(source)
    return {"source": source, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "member": member or ""}


def _sha256(path):
    """The sha256 of the regular file ``path`` (never through a link), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        digest = hashlib.sha256()
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
        return digest.hexdigest()


def _root_only(path):
    """Why root may not trust the file ``path`` (owner, mode, a link), or None."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid != 0 or st.st_mode & 0o022:
        return f"{path} is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}"
    return None


def _read_stamp(name):
    return __utils__["kcm_state_file.read_json"](_stamp_path(name))  # noqa: F821


def _copy_out(source, member, dest_fh):
    if not member:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, dest_fh)
        return
    # Streamed: only the KCM member is read out of the (large) release tarball.
    with tarfile.open(source, "r:*") as tar:
        for info in tar:
            if info.name.lstrip("./") == member and info.isfile():
                shutil.copyfileobj(tar.extractfile(info), dest_fh)
                return
    raise FileNotFoundError(f"{member} is not in {source}")


def binary_installed(name, source, version, member="", user="root"):
    """
    Install the KCM binary at ``name`` from a verified local download: the tarball member
    (``kubernetes/server/bin/kube-controller-manager``) or, with ``member`` empty, the file
    itself. The new file is written beside ``name``, must report ``version`` when run, and
    only then is moved into place atomically, owned by root (0755). An installed file
    whose sha256 differs from the one recorded at install, or that is not root's alone, is
    installed again.

    user
        The KCM user: the new binary's ``--version`` runs as this user.

    .. code-block:: yaml

        kcm-install-binary:
          kcm_install.binary_installed:
            - name: /data/apps/k8s/kubernetes/versions/v1.34.3/kube-controller-manager
            - source: /root/software/kubernetes-server-v1.34.3-linux-amd64.tar.gz
            - version: v1.34.3
            - member: kubernetes/server/bin/kube-controller-manager
    """
    if not os.path.isfile(source):
        if __opts__.get("test"):
            return _ret(
                name, None, f"{version} would be installed from {source} once downloaded", {"installed": version}
            )
        return _ret(name, False, f"download {source} is missing")
    stamp = _source_stamp(source, member)
    recorded = _read_stamp(name) or {}
    installed = {k: v for k, v in recorded.items() if k != "sha256"}
    # The stamp says which download it came from; the file itself must still be the bytes
    # installed then (root runs it), root's and writable by root alone.
    if (
        installed == stamp
        and recorded.get("sha256")
        and recorded.get("sha256") == _sha256(name)
        and not _root_only(name)
    ):
        return _ret(name, True, f"kube-controller-manager {version} is installed")
    if __opts__.get("test"):
        return _ret(name, None, f"kube-controller-manager {version} would be installed", {"installed": version})
    directory = os.path.dirname(name)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kube-controller-manager.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_out(source, member, out)
        os.chmod(tmp, 0o755)
        os.chown(tmp, 0, 0)
        got = __salt__["kcm.version"](binary=tmp, runas=user)
        if got != version:
            return _ret(name, False, f"the binary from {source} reports {got}, expected {version}; nothing replaced")
        stamp["sha256"] = _sha256(tmp)
        # Verified first, then renamed over: a running KCM keeps its old inode.
        salt.utils.atomicfile.atomic_rename(tmp, name)
    except (OSError, RuntimeError, CommandExecutionError, tarfile.TarError) as exc:
        return _ret(name, False, f"cannot install kube-controller-manager {version}: {exc}")
    except (EOFError, zlib.error) as exc:
        # A truncated or corrupt archive (its hash can match when the hash file was made
        # from the same broken download).
        return _ret(
            name,
            False,
            f"cannot install kube-controller-manager {version}: {source} is truncated or"
            f" corrupt ({exc or type(exc).__name__}); delete it to download it again",
        )
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    __utils__["kcm_state_file.write_json"](_stamp_path(name), stamp, mode=0o644)  # noqa: F821
    return _ret(name, True, f"kube-controller-manager {version} installed and verified", {"installed": version})


def _unsafe(st, kcm_uid):
    """Why a directory with ``st`` may not hold what root runs; 'reclaim' when it is the KCM
    user's (earlier formula releases gave it that user), None when it is root's alone."""
    if st.st_uid == 0:
        others = st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX
        if others or (st.st_mode & 0o020 and st.st_gid != 0):
            return f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o}, gid {st.st_gid})"
        return None
    if kcm_uid is not None and st.st_uid == kcm_uid:
        return "reclaim"
    return f"is owned by uid {st.st_uid}, not root"


def _chain(path):
    """``path`` and every directory above it, from ``/`` down."""
    parts, head = [], os.path.normpath(path)
    while True:
        parts.append(head)
        if head == os.path.dirname(head):
            return parts[::-1]
        head = os.path.dirname(head)


def _directory_plan(path, kcm_uid):
    """(to create, to reclaim, refusal) for one directory and the ones above it."""
    create, reclaim = [], []
    for each in _chain(path):
        try:
            st = os.lstat(each)
        except FileNotFoundError:
            create.append(each)
            continue
        if create:
            return create, reclaim, f"{each} appeared below {create[0]}"
        if stat.S_ISLNK(st.st_mode):
            if each == os.path.normpath(path):
                return create, reclaim, f"{each} is a symlink, not a directory"
            each = os.path.realpath(each)
            st = os.stat(each)
        if not stat.S_ISDIR(st.st_mode):
            return create, reclaim, f"{each} is not a directory"
        why = _unsafe(st, kcm_uid)
        if why == "reclaim":
            reclaim.append(each)
        elif why:
            return create, reclaim, f"{each} {why}"
    return create, reclaim, None


def _make_root_owned(directory):
    # Through a descriptor of the directory itself: never follow what replaced it.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)


def directories_owned(name, directories, user="root", existing=None):
    """
    Make each of ``directories`` (``{pillar key: path}``) and every directory above it a
    directory root owns and only root may write: missing ones are created ``root:root
    0755``. The formula never chowns a directory it did not create, with one exception: a
    directory owned by the KCM ``user`` (what earlier releases of the formula made) is
    taken back, ``root:root 0755``. Any other owner, a directory others may write (not
    sticky), or a symlink in place of the directory itself fails the state, naming the key,
    before anything changes. ``existing`` (same form) are directories earlier releases made
    and this one no longer uses: checked the same way when they exist, never created.

    .. code-block:: yaml

        kcm-install-directories:
          kcm_install.directories_owned:
            - name: kcm-install
            - directories:
                kcm:paths:install: /data/apps/k8s/kubernetes
                kcm:paths:bin: /data/apps/k8s/kubernetes/sbin
            - user: k8s
    """
    try:
        kcm_uid = pwd.getpwnam(user).pw_uid if user and user != "root" else None
    except KeyError:
        kcm_uid = None
    create, reclaim, refused = [], [], []
    wanted = dict(directories)
    wanted.update({k: v for k, v in (existing or {}).items() if os.path.lexists(v)})
    for key, path in wanted.items():
        new, old, why = _directory_plan(path, kcm_uid)
        if why:
            refused.append(f"{key}: {why}")
        create += [d for d in new if d not in create]
        reclaim += [d for d in old if d not in reclaim]
    if refused:
        return _ret(
            name,
            False,
            "refused, nothing changed: "
            + "; ".join(refused)
            + " (root runs and reads what these directories hold, so only root may write them)",
        )
    changes = {k: v for k, v in (("created", create), ("reclaimed", reclaim)) if v}
    if not changes:
        return _ret(name, True, f"{len(directories)} directories are root's alone")
    if __opts__.get("test"):
        return _ret(name, None, "directories would be made root's alone", changes)
    try:
        for directory in reclaim:
            _make_root_owned(directory)
        for directory in create:
            os.mkdir(directory, 0o755)
            _make_root_owned(directory)
    except OSError as exc:
        return _ret(name, False, f"cannot make the directories root's: {exc}", changes)
    return _ret(name, True, "directories made root's alone", changes)


def versions_pruned(name, keep=2, active=""):
    """
    Keep the ``keep`` most recently installed versions under ``name`` (the active one
    always among them) and remove the others.

    .. code-block:: yaml

        kcm-install-prune-versions:
          kcm_install.versions_pruned:
            - name: /data/apps/k8s/kubernetes/versions
            - keep: 2
            - active: v1.34.3
    """
    if __opts__.get("test") and not os.path.lexists(name):
        # A fresh root: the same run creates the directory and installs the first version.
        return _ret(name, True, f"{name} does not exist yet; nothing to prune")
    try:
        entries = [e for e in os.scandir(name) if e.is_dir(follow_symlinks=False)]
    except OSError as exc:
        return _ret(name, False, f"cannot list {name}: {exc}")
    others = sorted((e for e in entries if e.name != active), key=lambda e: e.stat().st_mtime, reverse=True)
    kept = max(keep - (1 if any(e.name == active for e in entries) else 0), 0)
    doomed = [e.path for e in others[kept:]]
    if not doomed:
        return _ret(name, True, f"{len(entries)} version(s) kept")
    if __opts__.get("test"):
        return _ret(name, None, "would remove old versions", {"removed": doomed})
    for path in doomed:
        shutil.rmtree(path)
    return _ret(name, True, f"removed {len(doomed)} old version(s)", {"removed": doomed})


def empty_directories_absent(name, directories):
    """
    Remove each of ``directories`` (in the order given: children before their parents) that
    exists and is empty; one that still holds anything (a file the formula did not lay down)
    is left, and named in the comment.

    .. code-block:: yaml

        kcm-install-clean-directories:
          kcm_install.empty_directories_absent:
            - name: kcm
            - directories:
              - /data/apps/k8s/kubernetes/sbin
              - /data/apps/k8s/kubernetes
    """
    present = [d for d in directories if os.path.isdir(d) and not os.path.islink(d)]
    if __opts__.get("test"):
        doomed = [d for d in present if not os.listdir(d)]
        return _ret(
            name,
            None if doomed else True,
            f"would remove {len(doomed)} empty directories",
            {"removed": doomed} if doomed else None,
        )
    removed, kept = [], []
    for directory in present:
        try:
            os.rmdir(directory)
            removed.append(directory)
        except OSError:
            kept.append(directory)
    comment = f"removed {len(removed)} empty directories" + (f"; kept (not empty): {', '.join(kept)}" if kept else "")
    return _ret(name, True, comment, {"removed": removed} if removed else None)
