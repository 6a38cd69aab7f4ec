"""Release tarballs in the upstream layout (kubernetes/server/bin/kube-controller-manager)."""

import hashlib
import io
import tarfile
from pathlib import Path

MEMBER = "kubernetes/server/bin/kube-controller-manager"

# A stand-in KCM for functional tests of releases we cannot build here (v1.14 - v1.36):
# it answers --version like the real binary and refuses the flags its release removed,
# so the formula's install check and preflight have something real to run. The real
# v1.37 binary is used by the e2e tier.
FAKE_KCM = """#!/bin/sh
for a in "$@"; do
  for bad in {rejected}; do
    case "$a" in --$bad=*|--$bad) echo "Error: unknown flag: --$bad" >&2; exit 1;; esac
  done
done
for a in "$@"; do
  [ "$a" = "--version" ] && {{ echo "Kubernetes {version}"; exit 0; }}
done
echo "fake kube-controller-manager {version}: only --version is implemented" >&2
exit 1
"""


def fake_kcm(version, rejected=("no-such-flag",)):
    return FAKE_KCM.format(version=version, rejected=" ".join(rejected) or "none").encode()


def build_tarball(directory, version, binary_bytes=None, extra_members=("kubernetes/server/bin/kubectl",)):
    """Write kubernetes-server-<version>-linux-amd64.tar.gz and its .sha512 into directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"kubernetes-server-{version}-linux-amd64.tar.gz"
    payload = binary_bytes if binary_bytes is not None else fake_kcm(version)
    with tarfile.open(path, "w:gz") as tar:
        for name, data, mode in [(MEMBER, payload, 0o755)] + [(m, b"not KCM\n", 0o755) for m in extra_members]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    (directory / (path.name + ".sha512")).write_text(hashlib.sha512(path.read_bytes()).hexdigest() + "\n")
    return path
