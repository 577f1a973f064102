#!/usr/bin/env bash
# Installs cosmos-workflow on a GPU host from a checkout: binaries, the systemd unit, a config
# to edit, the folders of DESIGN.md section 12 and a `cosmos` system user that owns them.
# On Debian and Ubuntu prefer the package: packaging/deb/build.sh, then dpkg -i.
# Usage (as root, from a checkout): packaging/install.sh [--prefix /usr/local]
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="$2"; shift 2 ;;
        *) echo "usage: $0 [--prefix DIR]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

cargo build --release --locked
install -D -m 0755 target/release/cosmosd "$prefix/bin/cosmosd"
install -D -m 0755 target/release/cosmos "$prefix/bin/cosmos"
if [ -d worker/cosmos_worker ]; then
    mkdir -p /usr/share/cosmos/worker
    cp -r worker/cosmos_worker /usr/share/cosmos/worker/
fi
install -D -m 0644 README.md /usr/share/doc/cosmos-workflow/README.md

id cosmos >/dev/null 2>&1 || useradd --system --user-group --home-dir /var/lib/cosmos --shell /usr/sbin/nologin cosmos
# As the package's tmpfiles.d: setgid and group-writable, for every member of group cosmos.
install -d -m 0755 /srv/cosmos
install -d -o cosmos -g cosmos -m 2770 /var/lib/cosmos /srv/cosmos/inbox
install -d -o cosmos -g cosmos -m 2775 /srv/cosmos/outbox /srv/cosmos/checkpoints
install -d -m 0755 /etc/cosmos
if [ ! -e /etc/cosmos/config.toml ]; then
    "$prefix/bin/cosmosd" --config /dev/null check-config | grep -v '^#' > /etc/cosmos/config.toml
    echo "install.sh: wrote /etc/cosmos/config.toml with every default; edit it"
fi
sed "s|/usr/bin/cosmosd|$prefix/bin/cosmosd|g" systemd/cosmosd.service > /etc/systemd/system/cosmosd.service
install -D -m 0644 systemd/cosmosd.service.d/docker.conf /usr/share/cosmos/systemd/docker.conf
if getent group docker >/dev/null && [ ! -e /etc/systemd/system/cosmosd.service.d/docker.conf ]; then
    mkdir -p /etc/systemd/system/cosmosd.service.d
    ln -s /usr/share/cosmos/systemd/docker.conf /etc/systemd/system/cosmosd.service.d/docker.conf
    echo "install.sh: cosmosd joins group docker (root-equivalent; see /usr/share/cosmos/systemd/docker.conf)"
fi
systemctl daemon-reload 2>/dev/null || true
echo "install.sh: done. Check with: cosmosd check-config; start with: systemctl enable --now cosmosd"
