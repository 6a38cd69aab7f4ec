"""The test PKI of the lab and of the tests, made with ``cryptography`` (ECDSA P-256 unless said).

``CertificateAuthority`` issues server and client certificates (``issue`` gives PEM texts,
``sign`` the objects, for tests that build broken ones: expired, wrong CN, foreign CA);
``service_account_keypair`` makes the apiserver's token key; ``kcm_pillar_pki`` the PEMs of
the formula's ``kcm:pki`` pillar; ``kubeconfig`` a kubeconfig with an embedded client
certificate; ``server_context`` TLS for the loopback HTTPS stand-ins of the unit tests.

Shared by the control plane, the e2e and unit tests, the demo and the benchmarks: nothing
here imports pytest.

    ca = CertificateAuthority("kcm-formula-test-ca")
    cert_pem, key_pem = ca.issue("kube-apiserver", server=True, names=["127.0.0.1"])
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KCM_CN = "system:kube-controller-manager"
# Backdated so that a clock a little behind on the other side still accepts a new certificate.
BACKDATE = datetime.timedelta(minutes=5)
# The lab's certificates live a week: below the formula's default expiry thresholds, so the
# certificate alert tests see them near expiry; the demo asks for long-lived ones instead.
DAYS = 7


def pem_key(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(common_name: str, organizations=()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _san(names) -> x509.SubjectAlternativeName:
    entries = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _key_usage(signs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs,
        crl_sign=signs,
        encipher_only=False,
        decipher_only=False,
    )


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates valid for ``days``.

    ``is_ca=False`` makes a self-signed certificate that is not a CA (basicConstraints
    CA:FALSE), for the tests of the formula's refusal of one.
    """

    def __init__(self, common_name: str, days: int = DAYS, is_ca: bool = True):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .add_extension(_key_usage(signs=is_ca), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.days = days

    @classmethod
    def from_pair(cls, cert: x509.Certificate, key, days: int = DAYS) -> CertificateAuthority:
        """A CA around an existing certificate and key (objects), e.g. one read back from a pillar."""
        ca = cls.__new__(cls)
        ca.cert, ca.key, ca.days = cert, key, days
        return ca

    @property
    def cert_pem(self) -> str:
        return pem_cert(self.cert)

    @property
    def key_pem(self) -> str:
        return pem_key(self.key)

    def sign(
        self,
        common_name: str,
        organizations=(),
        *,
        server: bool = False,
        client: bool = False,
        names=(),
        days: int | None = None,
        not_before=None,
        not_after=None,
    ):
        """Issue a leaf certificate; return ``(certificate, private_key)`` as objects.

        ``organizations`` become O= entries (Kubernetes groups); ``names`` are SANs (IPs or
        DNS names); ``server``/``client`` select the extended key usages; the validity is
        ``days`` (the CA's by default) unless ``not_before``/``not_after`` say otherwise.
        """
        if not (server or client):
            raise ValueError("issue(): ask for server=True and/or client=True")
        key = ec.generate_private_key(ec.SECP256R1())
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - BACKDATE)
            .not_valid_after(not_after or now + datetime.timedelta(days=days or self.days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key

    def issue(
        self,
        common_name: str,
        organizations=(),
        *,
        server: bool = False,
        client: bool = False,
        names=(),
        days: int | None = None,
    ) -> tuple[str, str]:
        """Issue a leaf certificate (see :meth:`sign`); return ``(cert_pem, key_pem)``."""
        cert, key = self.sign(common_name, organizations, server=server, client=client, names=names, days=days)
        return pem_cert(cert), pem_key(key)


def service_account_keypair() -> tuple[str, str]:
    """An RSA key pair for service-account tokens: ``(private_pem, public_pem)``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return pem_key(key), public


def kcm_pillar_pki(ca: CertificateAuthority, names, service_account_key: str | None = None) -> dict:
    """PEMs for the formula's ``kcm:pki`` pillar (mode ``pillar``).

    ``ca_cert``/``ca_key`` are ``ca``; ``cert``/``key`` are CN ``system:kube-controller-manager``
    (no O: it must go through RBAC), serverAuth + clientAuth, SANs ``names``;
    ``service_account_key`` is the given token key, else a new one.
    """
    cert, key = ca.issue(KCM_CN, server=True, client=True, names=list(names))
    return {
        "ca_cert": ca.cert_pem,
        "ca_key": ca.key_pem,
        "cert": cert,
        "key": key,
        "service_account_key": service_account_key or service_account_keypair()[0],
    }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kubeconfig(server: str, ca_pem: str, cert_pem: str, key_pem: str, user: str, cluster: str = "kubernetes") -> dict:
    """A kubeconfig with one cluster, one user (embedded client cert) and one current context."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}],
        "users": [
            {"name": user, "user": {"client-certificate-data": _b64(cert_pem), "client-key-data": _b64(key_pem)}}
        ],
        "contexts": [{"name": f"{user}@{cluster}", "context": {"cluster": cluster, "user": user}}],
        "current-context": f"{user}@{cluster}",
    }


def server_context(
    directory, ca: CertificateAuthority, names=("127.0.0.1",), client_ca=None, require_client: bool = False
) -> ssl.SSLContext:
    """A TLS server context with a certificate from ``ca`` for ``names`` (written under
    ``directory``). ``client_ca`` verifies client certificates: optional, or required with
    ``require_client``."""
    cert, key = ca.issue("test-server", server=True, names=list(names))
    cert_path, key_path = Path(directory) / "srv.pem", Path(directory) / "srv-key.pem"
    cert_path.write_text(cert)
    key_path.write_text(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=client_ca.cert_pem)
    return context
