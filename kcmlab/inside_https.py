"""One verified HTTPS request from inside a lab machine's network namespace, for a KCM that
binds its secure port to 127.0.0.1 (the formula's default, CIS 1.3.7): the host cannot reach
it, so the lab runs this module with the host's Python under ``nsenter --net`` (the host's
files, the machine's loopback). Prints one JSON object: ``status``, ``text`` and the served
certificate (``cert``, PEM), or ``error``.

    nsenter -t <init pid> -n python -m kcmlab.inside_https URL CA [CERT KEY] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from urllib.parse import urlsplit


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("ca")
    parser.add_argument("cert", nargs="?")
    parser.add_argument("key", nargs="?")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    import requests

    from kcmlab.controlplane import https_session

    out: dict = {}
    try:
        parts = urlsplit(args.url)
        # What is served, whoever signed it (the GET below verifies it against the CA).
        out["cert"] = ssl.get_server_certificate((parts.hostname, parts.port), timeout=args.timeout)
        client = (args.cert, args.key) if args.cert else None
        with https_session(args.ca, client) as session:
            reply = session.get(args.url, timeout=args.timeout)
        out.update(status=reply.status_code, text=reply.text)
    except (OSError, requests.RequestException) as exc:
        out["error"] = f"{exc.__class__.__name__}: {exc}"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
