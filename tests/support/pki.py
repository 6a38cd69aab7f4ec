"""The tests' view of the lab's PKI (``kcmlab.pki``): CA and leaf certificates as
``cryptography`` objects, for the cases that build broken ones, and the ``kcm:pki`` pillar."""

from kcmlab.pki import KCM_CN, CertificateAuthority, kcm_pillar_pki, pem_cert, pem_key

cert_pem = pem_cert
key_pem = pem_key


def make_ca(cn="kcm-test-ca", days=30, is_ca=True):
    """``(certificate, key)`` of a self-signed CA (with ``is_ca=False``: a self-signed non-CA)."""
    ca = CertificateAuthority(cn, days=days, is_ca=is_ca)
    return ca.cert, ca.key


def issue(
    ca_cert,
    ca_key,
    cn=KCM_CN,
    orgs=(),
    dns=("localhost",),
    ips=("127.0.0.1",),
    days=30,
    not_before=None,
    not_after=None,
):
    """``(certificate, key)`` of a serverAuth + clientAuth leaf signed by ``ca_cert``/``ca_key``."""
    return CertificateAuthority.from_pair(ca_cert, ca_key).sign(
        cn, orgs, server=True, client=True, names=[*dns, *ips], days=days, not_before=not_before, not_after=not_after
    )


def kcm_pki(nodes=("master-1", "master-2", "master-3")):
    """PEM texts for the formula's ``kcm:pki`` pillar (pillar mode), from a new 30-day CA."""
    return kcm_pillar_pki(CertificateAuthority("kcm-test-ca", days=30), ["127.0.0.1", "localhost", *nodes])
