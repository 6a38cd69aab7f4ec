import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

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
def good_pki():
    """A valid ``kcm:pki`` for the ``pillar`` mode (CA, client and service-account PEMs)."""
    from tests.support import pki as testpki

    return testpki.kcm_pki()


@pytest.fixture
def check(kcm_config, good_pki):
    """What kcm-config-validated says of defaults.yaml's ``kcm:`` with ``good_pki`` and the
    given keys replaced: every problem, each naming its pillar key."""
    defaults = yaml.safe_load((REPO / "formula/kcm/defaults.yaml").read_text())["kcm"]

    def run(**over):
        cfg = dict(defaults, pki=dict(good_pki, mode="pillar"))
        cfg.update(over)
        return kcm_config.validate(kcm_config.resolve(cfg, opts={"cachedir": "/c"}))

    return run


@pytest.fixture(scope="module")
def ca():
    """A cluster CA for the loopback HTTPS stand-ins."""
    return CertificateAuthority("unit-test-cluster-ca")


@pytest.fixture(scope="module")
def client_pem(ca):
    """(cert, key) PEMs of a KCM client certificate (CN system:kube-controller-manager) from ``ca``."""
    return ca.issue("system:kube-controller-manager", client=True)


# One RSA key for the session: the minion key the beacons sign their events with.
MINION_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def beacon_opts(tmp_path):
    """A minion's __opts__ for the beacons: id master-2, a cachedir, and pki_dir/minion.pem (MINION_KEY)."""
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    (pki_dir / "minion.pem").write_bytes(
        MINION_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    return {"id": "master-2", "cachedir": str(tmp_path), "pki_dir": str(pki_dir)}


@pytest.fixture
def beacon_deployed():
    """Deployed facts as the beacons read them: kcm:beacon from defaults.yaml, 1 s / 4 s lease timings."""
    beacon = yaml.safe_load((REPO / "formula/kcm/defaults.yaml").read_text())["kcm"]["beacon"]
    return {"cluster": "prod", "leader_election": {"retry_period": "1s", "lease_duration": "4s"}, "beacon": beacon}
