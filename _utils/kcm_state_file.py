"""
Small JSON state files (what the alert runner has sent, what the demo started), written so
that a crash or a full disk leaves the old file or the new one, never half of one and never a
temporary file beside it: a sibling is written, synced and renamed over.

Called as ``__utils__["kcm_state_file.write_json"](path, data)`` from modules and runners.
"""

import contextlib
import json
import logging
import os
import tempfile

__virtualname__ = "kcm_state_file"

log = logging.getLogger(__name__)


def __virtual__():
    return __virtualname__


def read_json(path, default=None):
    """The JSON document at ``path``, or ``default`` when it is missing or unreadable (logged:
    a state file that cannot be read is started afresh, not fatal)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        log.warning("kcm: state file %s unreadable, starting afresh: %s", path, exc)
        return default


def write_json(path, data, mode=0o600):
    """Replace ``path`` with ``data`` as JSON, atomically, with ``mode`` (owner only by
    default). Creates the parent directory (0700) when missing. The umask is left alone: the
    master runs runners in threads, and these files hold no secret.

    The mode is set on the new file's own descriptor before the rename, and the rename
    replaces the name itself: nothing here follows a symlink someone put at ``path``
    (``atomic_open`` copies the old file's mode and owner through one, and a chmod after
    the rename would follow one swapped in meanwhile)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    text = json.dumps(data, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
