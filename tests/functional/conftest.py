import shutil
import tempfile
from pathlib import Path

import pytest
from saltfactories.utils.functional import Loaders

from tests.support import pki as testpki
from tests.support.pillar import REPO


@pytest.fixture(scope="session")
def test_pki():
    return testpki.kcm_pki()


def local_minion_opts(salt_factories, minion_id: str, file_roots: list, pillar_root) -> dict:
    """The opts of a masterless minion (local file client) reading ``file_roots`` and
    ``pillar_root``, with x509_v2: what every functional tier's loader starts from."""
    factory = salt_factories.salt_minion_daemon(
        minion_id,
        overrides={
            "file_client": "local",
            "file_roots": {"base": [str(path) for path in file_roots]},
            "pillar_roots": {"base": [str(pillar_root)]},
            "fileserver_list_cache_time": 0,
            "features": {"x509_v2": True},
        },
    )
    return factory.config.copy()


@pytest.fixture(scope="module")
def minion_opts(salt_factories, tmp_path_factory):
    root = tmp_path_factory.mktemp("func-minion")
    return local_minion_opts(salt_factories, "func-minion", [REPO / "formula"], root / "pillar")


@pytest.fixture(scope="module")
def loaders(minion_opts):
    return Loaders(minion_opts, loaded_base_name=f"{__name__}.loaded")


@pytest.fixture
def state(loaders):
    return loaders.modules.state


@pytest.fixture
def modules(loaders):
    return loaders.modules


@pytest.fixture
def open_tmp():
    """A temporary root other users may enter (tmp_path is root's 0700): for a KCM user other
    than root, who runs the new binary's --version there."""
    path = Path(tempfile.mkdtemp(prefix="kcm-func-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)
