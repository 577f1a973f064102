#!/usr/bin/env bash
# Installs a cosmos-workflow .deb into a throwaway copy-on-write overlay of this machine's
# root filesystem (a private mount namespace), runs check-installed.sh there and discards
# everything: for a shared build host, where a real /etc/cosmos/config.toml would change
# what every test run on it reads. Needs root, unshare and overlayfs; sees only the root
# filesystem (other mounts, /work excepted when it lives on /, are not in the overlay).
# Usage: packaging/deb/check-in-overlay.sh DEB [check-installed.sh options]
set -euo pipefail
deb="$(realpath "${1:?usage: $0 DEB}")"; shift
here="$(cd "$(dirname "$0")" && pwd)"
[ "$(id -u)" = 0 ] || { echo "check-in-overlay.sh: run as root" >&2; exit 1; }
exec unshare --mount --propagation private bash -euo pipefail -c '
    deb="$1"; here="$2"; shift 2
    ov=$(mktemp -d /tmp/cosmos-overlay.XXXXXX)
    mount -t tmpfs tmpfs "$ov"
    mkdir "$ov/upper" "$ov/work" "$ov/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$ov/upper,workdir=$ov/work" "$ov/root"
    for api in proc sys dev run/docker.sock; do [ -e "/$api" ] && mount --rbind "/$api" "$ov/root/$api" || true; done
    mount -t tmpfs tmpfs "$ov/root/tmp"
    chroot "$ov/root" bash -euo pipefail -c "dpkg -i \"\$0\" >/dev/null && \"\$1/check-installed.sh\" \"\${@:2}\" && dpkg --purge cosmos-workflow >/dev/null && echo check-in-overlay: purged" "$deb" "$here" "$@"
' bash "$deb" "$here" "$@"
