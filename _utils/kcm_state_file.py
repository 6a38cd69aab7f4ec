"""
Small JSON state files (what the alert runner has sent, what the demo started), written so
that a crash or a full disk leaves the old file or the new one, never half of one and never a
temporary file beside it: ``salt.utils.atomicfile`` writes a sibling and renames it over.

Called as ``__utils__["kcm_state_file.write_json"](path, data)`` from modules and runners.
"""

import json
import logging
import os

import salt.utils.atomicfile

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
    """Replace ``path`` with ``data`` as JSON, atomically, then set ``mode`` (owner only by
    default). Creates the parent directory (0700) when missing. The umask is left alone: the
    master runs runners in threads, and these files hold no secret."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    text = json.dumps(data, sort_keys=True)
    with salt.utils.atomicfile.atomic_open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)
