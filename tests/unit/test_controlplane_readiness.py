"""kcmlab.controlplane asks a kube-apiserver for readiness where its release serves it:
/readyz from v1.16, /healthz before (v1.14.2, the install guide's release, has no /readyz)."""

import pytest

from kcmlab.controlplane import binary_minor, readiness_path


@pytest.mark.parametrize(
    ("minor", "path"), [(14, "/healthz"), (15, "/healthz"), (16, "/readyz"), (37, "/readyz"), (None, "/readyz")]
)
def test_readiness_path(minor, path):
    assert readiness_path(minor) == path


@pytest.mark.parametrize(
    ("said", "minor"), [("Kubernetes v1.14.2", 14), ("Kubernetes v1.37.2", 37), ("etcd Version: 3.6.16", None)]
)
def test_binary_minor_reads_version(tmp_path, said, minor):
    binary = tmp_path / "kube-apiserver"
    binary.write_text(f"#!/bin/sh\necho '{said}'\n")
    binary.chmod(0o755)
    assert binary_minor(binary) == minor


def test_binary_minor_of_a_missing_binary_is_none(tmp_path):
    assert binary_minor(tmp_path / "absent") is None
