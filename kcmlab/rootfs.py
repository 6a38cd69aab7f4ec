"""The machines' root filesystem: Debian bookworm with systemd, and Salt installed like a onedir.

Built once with ``mmdebstrap`` from Debian's packages and cached under
``$KCM_CACHE/machines/rootfs-<key>`` (``~/.cache/kcm-formula`` by default); the key hashes
everything that goes into it (package list, Salt requirement, the files written below), so a
change rebuilds it and an unchanged one is reused. Salt is installed from PyPI into
``/opt/saltstack/salt`` with bookworm's own Python 3.11, the layout of Salt's onedir: the
minion runs on the machine's interpreter, not on the host's. The wheels are downloaded on
the host first (where the package index is configured) and installed offline in the chroot.

    base = ensure_rootfs("3008")     # a directory to boot with systemd-nspawn --volatile=overlay
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

CACHE = Path(os.environ.get("KCM_CACHE", Path.home() / ".cache" / "kcm-formula"))
SUITE = "bookworm"
# What a Kubernetes master needs for this formula, and what Salt's grains and states call.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "iproute2", "python3", "python3-venv", "procps",
    "curl", "ca-certificates", "passwd", "tar", "gzip", "less",
)
SALT_REQUIREMENTS = {"3008": "salt>=3008,<3009", "3006": "salt>=3006,<3007"}
SALT_ROOT = "/opt/saltstack/salt"

# The salt-minion service, as a onedir package ships it (Type=simple: no sd_notify module).
SALT_MINION_UNIT = f"""\
[Unit]
Description=The Salt Minion
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={SALT_ROOT}/bin/salt-minion
KillMode=process
Restart=on-failure
LimitNOFILE=8192

[Install]
WantedBy=multi-user.target
"""
# No DNS server is reachable from the lab's bridge: without this, glibc would wait on one.
NSSWITCH_HOSTS = "hosts: files\n"


def _key(salt_line: str) -> str:
    material = json.dumps({
        "suite": SUITE, "packages": PACKAGES, "salt": SALT_REQUIREMENTS[salt_line],
        "unit": SALT_MINION_UNIT, "nss": NSSWITCH_HOSTS, "python": sys.version_info[:2],
    }, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def rootfs_dir(salt_line: str = "3008") -> Path:
    return CACHE / "machines" / f"rootfs-{salt_line}-{_key(salt_line)}"


def _wheelhouse(salt_line: str) -> Path:
    """Salt and its dependencies as wheels, made by the host's CPython 3.11 on bookworm.

    Salt itself is published as an sdist: ``pip wheel`` builds it (pure Python) and fetches
    the binary wheels of its dependencies for the same interpreter and libc as the rootfs.
    """
    if sys.version_info[:2] != (3, 11):
        raise RuntimeError(f"the wheels must be made by Python 3.11 (bookworm's), not {sys.version.split()[0]}")
    house = CACHE / "machines" / f"wheels-{salt_line}-{_key(salt_line)}"
    if (house / ".complete").exists():
        return house
    shutil.rmtree(house, ignore_errors=True)
    house.mkdir(parents=True)
    log.info("downloading %s wheels into %s", SALT_REQUIREMENTS[salt_line], house)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(house), SALT_REQUIREMENTS[salt_line]],
        check=True)
    (house / ".complete").write_text("")
    return house


def _hooks(wheels: Path, salt_line: str) -> list[str]:
    """mmdebstrap --customize-hook commands; each gets the chroot directory as $1."""
    env = "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root"
    pip = f"{SALT_ROOT}/bin/python3 -m pip install -q --no-index --find-links /tmp/wheels"
    unit = "$1/etc/systemd/system/salt-minion.service"
    return [
        f'mkdir -p "$1/tmp/wheels" && cp -a {wheels}/. "$1/tmp/wheels/"',
        f'chroot "$1" {env} python3 -m venv {SALT_ROOT}',
        f"chroot \"$1\" {env} {pip} '{SALT_REQUIREMENTS[salt_line]}'",
        'rm -rf "$1/tmp/wheels"',
        f'for b in salt-minion salt-call; do ln -sf {SALT_ROOT}/bin/$b "$1/usr/bin/$b"; done',
        f"printf '%s' '{SALT_MINION_UNIT}' > {unit}",
        'mkdir -p "$1/etc/systemd/system/multi-user.target.wants"',
        'ln -sf /etc/systemd/system/salt-minion.service "$1/etc/systemd/system/multi-user.target.wants/"',
        f'chroot "$1" {env} systemctl enable systemd-networkd.service',
        f"sed -i 's/^hosts:.*/{NSSWITCH_HOSTS.strip()}/' \"$1/etc/nsswitch.conf\"",
        'rm -f "$1/etc/hostname" "$1/etc/machine-id" && touch "$1/etc/machine-id"',
        'mkdir -p "$1/etc/salt/minion.d" "$1/srv/k8s"',
    ]


def ensure_rootfs(salt_line: str = "3008") -> Path:
    """The cached rootfs directory for ``salt_line``; built first when missing (about 2 minutes).

    Raises ``RuntimeError`` naming what is missing (mmdebstrap, systemd-nspawn, root).
    """
    target = rootfs_dir(salt_line)
    if (target / ".kcmlab-complete").exists():
        return target
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("systemd-nspawn", "systemd-container")):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: apt-get install --no-install-recommends {package}")
    if os.geteuid() != 0:
        raise RuntimeError("building and booting the lab machines needs root")
    begin = time.monotonic()
    wheels = _wheelhouse(salt_line)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        argv = ["mmdebstrap", "--quiet", "--mode=root", "--variant=minbase",
                f"--include={','.join(PACKAGES)}"]
        argv += [f"--customize-hook={hook}" for hook in _hooks(wheels, salt_line)]
        argv += [SUITE, str(work / "root")]
        log.info("building the machines' rootfs with mmdebstrap into %s", target)
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        (work / "root" / ".kcmlab-complete").write_text(f"{time.monotonic() - begin:.0f}s\n")
        for old in target.parent.glob(f"rootfs-{salt_line}-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        os.rename(work / "root", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("rootfs ready in %.0fs", time.monotonic() - begin)
    return target


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[kcmlab %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    print(ensure_rootfs(sys.argv[1] if len(sys.argv) > 1 else "3008"))
