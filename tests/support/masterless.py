"""Moved to kcmlab.masterless (the benchmarks use it too, and they import nothing from tests/)."""

from kcmlab.masterless import REPO, SALT_CALL, MasterlessMinion, SaltCallError

__all__ = ["REPO", "SALT_CALL", "MasterlessMinion", "SaltCallError"]
