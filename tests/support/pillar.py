"""A complete `kcm:` pillar whose every path lies inside a test's sandbox directory."""

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = REPO / "formula" / "kcm" / "defaults.yaml"
NO_APISERVER = "test sandbox: no kube-apiserver to read /version from"


def defaults():
    return yaml.safe_load(DEFAULTS.read_text())["kcm"]


def sandbox_paths(root):
    fs = Path(root) / "fs"
    install = fs / "data/apps/k8s/kubernetes"
    return {
        "install": str(install),
        "bin": str(install / "sbin"),
        "logs": str(install / "logs"),
        "conf": str(fs / "etc/k8s/kubernetes"),
        "kubeconfig": str(fs / "etc/k8s/kubeconfig"),
        "pki": str(fs / "etc/k8s/ssl"),
        "cache": str(fs / "root/software"),
        "unit": str(fs / "usr/lib/systemd/system"),
        "link": str(fs / "usr/local/bin"),
    }


def merge(base, over):
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def sandbox_pillar(root, tarball, version, pki, **overrides):
    """Return `{"kcm": {...}}` for a sandbox: user root, no service management,
    the source a local tarball (or binary) with its `.sha512` beside it."""
    tarball = Path(tarball)
    kcm = {
        "version": version,
        "user": "root",
        "group": "root",
        "create_user": False,
        "source": {
            "type": "tarball" if tarball.name.endswith(".tar.gz") else "binary",
            "url": f"file://{tarball}",
            "hash": f"file://{tarball}.sha512",
        },
        "paths": sandbox_paths(root),
        "apiserver": "https://127.0.0.1:6443",
        "bind_address": "127.0.0.1",
        "pki": dict(pki, mode="pillar"),
        "service": {"manage": False},
        # No kube-apiserver answers at the sandbox's kcm:apiserver, so the skew guard would
        # refuse every version change here; tests/functional/test_skew.py runs it against a
        # real one with the override off.
        "skew": {"override_reason": NO_APISERVER},
    }
    return {"kcm": merge(kcm, overrides)}
