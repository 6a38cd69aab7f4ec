"""TLS for the loopback HTTPS stand-ins of the unit tests (fake apiservers)."""

import ssl
from pathlib import Path


def server_context(directory, ca, names=("127.0.0.1",), client_ca=None, require_client=False) -> ssl.SSLContext:
    """A server context with a certificate from ``ca`` for ``names`` (written under ``directory``).

    ``client_ca`` verifies client certificates: optional, or required with ``require_client``.
    """
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
