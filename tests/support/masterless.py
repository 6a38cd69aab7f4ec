"""The masterless minion lives in ``kcmlab.masterless`` (the demo uses it too); one copy."""

from kcmlab.masterless import REPO, SALT_CALL, MasterlessMinion, SaltCallError

__all__ = ["REPO", "SALT_CALL", "MasterlessMinion", "SaltCallError"]
