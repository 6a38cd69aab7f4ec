import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import salt._logging

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pytest_configure(config):
    # Salt's deferred stderr handler would flush into pytest's closed capture at exit.
    salt._logging.shutdown_temp_handler()


@pytest.fixture(scope="session")
def salt_factories_config():
    # Short paths: daemons keep unix sockets under root_dir.
    root = Path(tempfile.mkdtemp(prefix="kcmsf-", dir="/tmp"))
    yield {"root_dir": str(root)}
    if not os.environ.get("KCM_KEEP_TMP"):
        shutil.rmtree(root, ignore_errors=True)
