"""The machines' root filesystem: Debian (bookworm or trixie) with systemd, and Salt installed
like a onedir.

Built once with ``mmdebstrap`` from Debian's packages and cached under
``$KCM_CACHE/machines/rootfs-<line>-<key>`` for bookworm and ``rootfs-<suite>-<line>-<key>``
for the other suites (``~/.cache/kcm-formula`` by default); the key hashes everything that
goes into it (package list, Salt requirement, the files written below), so a change rebuilds
it and an unchanged one is reused. Salt is installed from PyPI into ``/opt/saltstack/salt``
with the suite's own Python (bookworm 3.11, trixie 3.13), the layout of Salt's onedir: the
minion runs on the machine's interpreter, not on the host's. The wheels are downloaded on
the host first (where the package index is configured) and installed offline in the chroot.

    base = ensure_rootfs("3008")                    # bookworm, systemd 252
    base = ensure_rootfs("3008", suite="trixie")    # trixie, systemd 257, Python 3.13
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
SUITE = "bookworm"  # the default suite; its cache path and key predate the other suites
# What a Kubernetes master needs for this formula, and what Salt's grains and states call.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "python3",
    "python3-venv",
    "procps",
    "curl",
    "ca-certificates",
    "passwd",
    "tar",
    "gzip",
    "less",
)
SALT_REQUIREMENTS = {"3008": "salt>=3008,<3009", "3006": "salt>=3006,<3007"}
SALT_ROOT = "/opt/saltstack/salt"
# The other suites: their Python (wheels are fetched for it, not made by the host's) and
# the Salt dependencies PyPI has no wheel of for it, compiled in the chroot from their sdist
# with the build packages, which are purged afterwards. Measured for trixie and Salt 3008.4:
# timelib 0.3.0 has wheels up to cp312 only.
SUITES = {
    "trixie": {"python": (3, 13), "sdists": ("timelib",), "build": ("gcc", "libc6-dev", "python3-dev")},
}

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


def _check_suite(suite: str) -> None:
    if suite != SUITE and suite not in SUITES:
        raise ValueError(f"suite {suite!r}: the lab builds {', '.join([SUITE, *SUITES])}")


def _key(salt_line: str, suite: str = SUITE) -> str:
    _check_suite(suite)
    material = {
        "suite": suite,
        "packages": PACKAGES,
        "salt": SALT_REQUIREMENTS[salt_line],
        "unit": SALT_MINION_UNIT,
        "nss": NSSWITCH_HOSTS,
        "python": sys.version_info[:2],
    }
    if suite != SUITE:
        # bookworm's material is unchanged, so its existing cache stays valid.
        material.update(SUITES[suite], python=SUITES[suite]["python"])
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:12]


def _name(kind: str, salt_line: str, suite: str) -> str:
    prefix = f"{kind}-{salt_line}" if suite == SUITE else f"{kind}-{suite}-{salt_line}"
    return f"{prefix}-{_key(salt_line, suite)}"


def rootfs_dir(salt_line: str = "3008", suite: str = SUITE) -> Path:
    return CACHE / "machines" / _name("rootfs", salt_line, suite)


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, stdin=subprocess.DEVNULL)


def _wheelhouse(salt_line: str, suite: str = SUITE) -> Path:
    """Salt and its dependencies as wheels for the suite's CPython, in the cache."""
    house = CACHE / "machines" / _name("wheels", salt_line, suite)
    if (house / ".complete").exists():
        return house
    shutil.rmtree(house, ignore_errors=True)
    house.mkdir(parents=True)
    log.info("downloading %s wheels for %s into %s", SALT_REQUIREMENTS[salt_line], suite, house)
    if suite == SUITE:
        _bookworm_wheels(house, salt_line)
    else:
        _foreign_wheels(house, salt_line, **SUITES[suite])
    (house / ".complete").write_text("")
    return house


def _bookworm_wheels(house: Path, salt_line: str) -> None:
    """Made by the host's CPython 3.11, bookworm's: Salt is published as an sdist, and
    ``pip wheel`` builds it (pure Python) and fetches the binary wheels of its
    dependencies for the same interpreter and libc as the rootfs."""
    if sys.version_info[:2] != (3, 11):
        raise RuntimeError(f"the wheels must be made by Python 3.11 (bookworm's), not {sys.version.split()[0]}")
    _pip("wheel", "-q", "-w", str(house), SALT_REQUIREMENTS[salt_line])


def target_options(python: tuple[int, int]) -> list[str]:
    """pip's options that pick binary wheels for another CPython on glibc x86_64: every
    manylinux tag up to trixie's glibc 2.41 (pip expands only the legacy aliases)."""
    tag = f"cp{python[0]}{python[1]}"
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(41, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "any"]
    return [
        "--only-binary=:all:",
        "--python-version",
        f"{python[0]}.{python[1]}",
        "--implementation",
        "cp",
        "--abi",
        tag,
        "--abi",
        "abi3",
        "--abi",
        "none",
        *(o for p in platforms for o in ("--platform", p)),
    ]


def _foreign_wheels(
    house: Path, salt_line: str, python: tuple[int, int], sdists: tuple[str, ...], build: tuple[str, ...]
) -> None:  # noqa: ARG001 - build is the chroot's
    """For a Python the host does not run: Salt's own wheel (pure Python, built by the
    host), the binary wheels of its dependencies for ``python``, and the sdists of
    ``sdists`` with their build requirements (compiled in the chroot). pip resolves for
    another Python only among wheels: each of ``sdists`` stands in as an empty wheel of
    the sdist's version while it resolves, and is replaced by its sdist afterwards."""
    _pip("wheel", "-q", "--no-deps", "-w", str(house), f"salt=={_salt_release(salt_line)}")
    salt_wheel = next(house.glob("salt-*.whl"))
    stand_ins = Path(tempfile.mkdtemp(prefix="kcm-stand-ins-"))
    try:
        for name in sdists:
            _pip("download", "-q", "--no-deps", "--no-binary=:all:", "-d", str(house), name)
            version = next(house.glob(f"{name}-*.tar.gz")).name[len(name) + 1 : -len(".tar.gz")]
            _stand_in_wheel(stand_ins, name, version)
        _pip(
            "download", "-q", "-d", str(house), "--find-links", str(stand_ins), *target_options(python), str(salt_wheel)
        )
        for wheel in stand_ins.iterdir():
            (house / wheel.name).unlink(missing_ok=True)
        # The sdists' build requirements, for pip's isolated build in the chroot (offline).
        _pip("download", "-q", "-d", str(house), *target_options(python), "setuptools", "wheel", "Cython")
    finally:
        shutil.rmtree(stand_ins, ignore_errors=True)


def _salt_release(salt_line: str) -> str:
    """The newest Salt of the line whose dependencies the index has, as the host's pip
    resolves it (measured: 3008.5 asks for a certifi the index does not have yet, and pip
    falls back to 3008.4); the other Python's resolution below cannot fall back itself."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--dry-run",
            "--ignore-installed",
            "--report",
            "-",
            SALT_REQUIREMENTS[salt_line],
        ],
        check=True,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    return next(
        item["metadata"]["version"] for item in json.loads(out)["install"] if item["metadata"]["name"].lower() == "salt"
    )


def _stand_in_wheel(where: Path, name: str, version: str) -> Path:
    """An empty ``py3-none-any`` wheel that satisfies a requirement of ``name`` while pip
    resolves; never installed."""
    import zipfile

    info = f"{name}-{version}.dist-info"
    path = where / f"{name}-{version}-py3-none-any.whl"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: kcmlab\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for entry, text in files.items():
            archive.writestr(entry, text)
    return path


def _hooks(wheels: Path, salt_line: str, suite: str = SUITE) -> list[str]:
    """mmdebstrap --customize-hook commands; each gets the chroot directory as $1."""
    env = "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root"
    pip = f"{SALT_ROOT}/bin/python3 -m pip install -q --no-index --find-links /tmp/wheels"
    unit = "$1/etc/systemd/system/salt-minion.service"
    build = SUITES.get(suite, {}).get("build", ())
    # The compiler and headers the sdists need go again, with what they brought.
    purge = [f'chroot "$1" {env} apt-get purge -y -qq --autoremove {" ".join(build)} >/dev/null'] if build else []
    return [
        f'mkdir -p "$1/tmp/wheels" && cp -a {wheels}/. "$1/tmp/wheels/"',
        f'chroot "$1" {env} python3 -m venv {SALT_ROOT}',
        f"chroot \"$1\" {env} {pip} '{SALT_REQUIREMENTS[salt_line]}'",
        *purge,
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


def ensure_rootfs(salt_line: str = "3008", suite: str = SUITE) -> Path:
    """The cached rootfs directory for ``salt_line`` on Debian ``suite``; built first when
    missing (about 2 minutes).

    Raises ``RuntimeError`` naming what is missing (mmdebstrap, systemd-nspawn, root).
    """
    target = rootfs_dir(salt_line, suite)
    if (target / ".kcmlab-complete").exists():
        return target
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("systemd-nspawn", "systemd-container")):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: apt-get install --no-install-recommends {package}")
    if os.geteuid() != 0:
        raise RuntimeError("building and booting the lab machines needs root")
    begin = time.monotonic()
    wheels = _wheelhouse(salt_line, suite)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        argv = [
            "mmdebstrap",
            "--quiet",
            "--mode=root",
            "--variant=minbase",
            f"--include={','.join(PACKAGES + SUITES.get(suite, {}).get('build', ()))}",
        ]
        argv += [f"--customize-hook={hook}" for hook in _hooks(wheels, salt_line, suite)]
        argv += [suite, str(work / "root")]
        log.info("building the machines' rootfs with mmdebstrap into %s", target)
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        (work / "root" / ".kcmlab-complete").write_text(f"{time.monotonic() - begin:.0f}s\n")
        for old in target.parent.glob(_name("rootfs", salt_line, suite).rsplit("-", 1)[0] + "-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        os.rename(work / "root", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("rootfs ready in %.0fs", time.monotonic() - begin)
    return target


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[kcmlab %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    print(ensure_rootfs(sys.argv[1] if len(sys.argv) > 1 else "3008", *sys.argv[2:3]))
