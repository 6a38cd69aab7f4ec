"""
States that install the kube-controller-manager binary safely: the new version lands in
its own directory, is verified by running it, and only then replaces anything.
"""

import logging
import os
import shutil
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


def binary_installed(name, source, version, member="", user="root", group="root"):
    """
    Install the KCM binary at ``name`` from a verified local download: the tarball member
    (``kubernetes/server/bin/kube-controller-manager``) or, with ``member`` empty, the file
    itself. The new file is written beside ``name``, must report ``version`` when run, and
    only then is moved into place atomically.

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
            return _ret(name, None, f"{version} would be installed from {source} once downloaded",
                        {"installed": version})
        return _ret(name, False, f"download {source} is missing")
    stamp = _source_stamp(source, member)
    if os.access(name, os.X_OK) and _read_stamp(name) == stamp:
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
        got = __salt__["kcm.version"](binary=tmp)
        if got != version:
            return _ret(name, False, f"the binary from {source} reports {got}, expected {version}; nothing replaced")
        __salt__["file.chown"](tmp, user, group)
        # Verified first, then renamed over: a running KCM keeps its old inode.
        salt.utils.atomicfile.atomic_rename(tmp, name)
    except (OSError, RuntimeError, CommandExecutionError, tarfile.TarError) as exc:
        return _ret(name, False, f"cannot install kube-controller-manager {version}: {exc}")
    except (EOFError, zlib.error) as exc:
        # A truncated or corrupt archive (its hash can match when the hash file was made
        # from the same broken download).
        return _ret(name, False, f"cannot install kube-controller-manager {version}: {source} is truncated or"
                                 f" corrupt ({exc or type(exc).__name__}); delete it to download it again")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    __utils__["kcm_state_file.write_json"](_stamp_path(name), stamp, mode=0o644)  # noqa: F821
    return _ret(name, True, f"kube-controller-manager {version} installed and verified", {"installed": version})


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
        return _ret(name, None if doomed else True, f"would remove {len(doomed)} empty directories",
                    {"removed": doomed} if doomed else None)
    removed, kept = [], []
    for directory in present:
        try:
            os.rmdir(directory)
            removed.append(directory)
        except OSError:
            kept.append(directory)
    comment = f"removed {len(removed)} empty directories" + (f"; kept (not empty): {', '.join(kept)}" if kept else "")
    return _ret(name, True, comment, {"removed": removed} if removed else None)
