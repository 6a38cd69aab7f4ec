import importlib.util
from pathlib import Path

import pytest

from kcmlab.controlplane import CertificateAuthority

REPO = Path(__file__).resolve().parents[2]


def load(kind, name):
    """Import a custom Salt module from the repo (e.g. _modules/kcm_flags.py) as a plain module."""
    spec = importlib.util.spec_from_file_location(f"kcmtest_{kind}_{name}", REPO / kind / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def utils():
    """``__utils__`` as Salt's loader gives it to modules: the formula's _utils functions."""
    systemd = load("_utils", "kcm_systemd")
    return {f"kcm_systemd.{n}": getattr(systemd, n) for n in dir(systemd) if not n.startswith("_")}


@pytest.fixture
def kcm_flags():
    module = load("_modules", "kcm_flags")
    module.__utils__ = utils()
    return module


@pytest.fixture
def kcm_config(kcm_flags):
    module = load("_modules", "kcm_config")
    salt = {f"kcm_flags.{n}": getattr(kcm_flags, n) for n in ("normalize_version", "problems", "render")}
    module.__salt__ = salt
    module.__grains__ = {"ip4_interfaces": {"eth2": ["10.10.10.21"], "lo": ["127.0.0.1"]}}
    module.__opts__ = {"cachedir": "/var/cache/salt/minion"}
    return module


@pytest.fixture(scope="module")
def ca():
    """A cluster CA for the loopback HTTPS stand-ins."""
    return CertificateAuthority("unit-test-cluster-ca")


@pytest.fixture(scope="module")
def client_pem(ca):
    """(cert, key) PEMs of a KCM client certificate (CN system:kube-controller-manager) from ``ca``."""
    return ca.issue("system:kube-controller-manager", client=True)
