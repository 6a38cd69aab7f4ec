"""Test PKI made with `cryptography`: a CA, the KCM client+serving cert, a service-account key."""

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KCM_CN = "system:kube-controller-manager"


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(cn="kcm-test-ca", days=30, is_ca=True):
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=is_ca, crl_sign=is_ca, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(ca_cert, ca_key, cn=KCM_CN, orgs=(), dns=("localhost",), ips=("127.0.0.1",),
          days=30, not_before=None, not_after=None, key=None):
    key = key or new_key()
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or _now() - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or _now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def kcm_pki(nodes=("master-1", "master-2", "master-3"), ca=None):
    """PEM texts for the formula's `kcm:pki` pillar (pillar mode)."""
    ca_cert, ca_key = ca or make_ca()
    cert, key = issue(ca_cert, ca_key, dns=("localhost", *nodes))
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "ca_cert": cert_pem(ca_cert),
        "ca_key": key_pem(ca_key),
        "cert": cert_pem(cert),
        "key": key_pem(key),
        "service_account_key": key_pem(sa_key),
    }
