import pytest

from kcmlab import formula
from kcmlab.pki import CertificateAuthority

REPO = formula.REPO
load = formula.load
utils = formula.utils


@pytest.fixture
def kcm_flags():
    return formula.kcm_flags()


@pytest.fixture
def kcm_config(kcm_flags):
    return formula.kcm_config(kcm_flags)


@pytest.fixture(scope="module")
def ca():
    """A cluster CA for the loopback HTTPS stand-ins."""
    return CertificateAuthority("unit-test-cluster-ca")


@pytest.fixture(scope="module")
def client_pem(ca):
    """(cert, key) PEMs of a KCM client certificate (CN system:kube-controller-manager) from ``ca``."""
    return ca.issue("system:kube-controller-manager", client=True)
