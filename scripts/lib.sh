# Shared by scripts/test and scripts/demo: install what the project needs, idempotently.
# shellcheck shell=bash
KCM_CACHE="${KCM_CACHE:-$HOME/.cache/kcm-formula}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '\033[1m[kcm %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '\033[31m[kcm] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

# Debian packages the tests and the demo run for real.
ensure_debian_packages() {
  local missing=()
  command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  command -v kubectl >/dev/null || missing+=(kubernetes-client)
  command -v python3 >/dev/null || missing+=(python3 python3-venv)
  # The lab's machines: systemd-nspawn boots them, mmdebstrap builds their rootfs.
  command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # No recommends: systemd-container would bring libnss-mymachines into the host's nsswitch.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
}

# The machines' rootfs (Debian + systemd + Salt), built once into the cache:
# ensure_rootfs <salt line> [suite: bookworm (default) or trixie].
ensure_rootfs() {
  local venv; venv=$(ensure_venv "${1:-3008}")
  [[ $(id -u) -eq 0 ]] || die "the lab's machines (systemd-nspawn) need root"
  (cd "$REPO" && "$venv/bin/python" -m kcmlab.rootfs "${1:-3008}" ${2:+"$2"} >/dev/null) \
    || die "building the machines' ${2:-bookworm} rootfs failed (python -m kcmlab.rootfs ${1:-3008} ${2:-}; mmdebstrap from Debian's registry, wheels from PyPI)"
}

# A venv per Salt line, rebuilt when setup.cfg changes. Prints the venv path.
ensure_venv() {
  local line="${1:-3008}" venv="$KCM_CACHE/venv-salt$1" stamp
  stamp=$(sha256sum "$REPO/setup.cfg" | cut -c1-16)
  if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]]; then
    log "creating $venv (Salt $line, test, lint and bench extras from setup.cfg; a few minutes cold)"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (install python3-venv)"
    "$venv/bin/pip" install -q --upgrade pip >&2
    (cd "$REPO" && "$venv/bin/pip" install -q ".[salt$line,tests,lint,bench]" >&2) \
      || die "pip install of the salt$line,tests,lint,bench extras failed"
    echo "$stamp" > "$venv/.stamp"
  fi
  printf '%s\n' "$venv"
}

# The pinned release (its directory is printed) and, with "previous", also the previous minor
# release the version-upgrade test starts from.
KCM_K8S_PREVIOUS="${KCM_K8S_PREVIOUS:-v1.36.3}"
ensure_k8s_binaries() {
  command -v go >/dev/null || die "Go is needed to build etcd, kube-apiserver and kube-controller-manager (scripts/k8s-binaries)"
  if [[ "${1:-}" == previous ]]; then
    "$REPO/scripts/k8s-binaries" "$KCM_K8S_PREVIOUS" >/dev/null || die "scripts/k8s-binaries $KCM_K8S_PREVIOUS failed"
  fi
  "$REPO/scripts/k8s-binaries" || die "scripts/k8s-binaries failed"
}
