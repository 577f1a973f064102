#!/usr/bin/env bash
# Checks an installed cosmos-workflow package as an operator would meet it: the binaries,
# man pages, completions, the conffile, the unit (systemd-analyze verify and security, with
# an exposure threshold), the user, group and folders; then end to end: cosmosd as user
# cosmos with the sim backend finds the worker at /usr/share/cosmos/worker, and a second
# operator, a member of group cosmos only, lists and submits. Run as root after dpkg -i.
# Leaves runs in /var/lib/cosmos and /srv/cosmos (the package's folders; purge keeps data).
# Usage: packaging/deb/check-installed.sh [--max-exposure 3.0]
set -euo pipefail
max_exposure=3.0
[ "${1:-}" = --max-exposure ] && max_exposure="${2:?}"
here="$(cd "$(dirname "$0")" && pwd)"
unit=/usr/lib/systemd/system/cosmosd.service
say() { echo "check-installed: $*"; }

say "$(cosmos --version); $(cosmosd --version)"
say "man pages: $(man -w cosmos) $(man -w cosmosd) $(man -w cosmos-submit)"
for f in /usr/share/bash-completion/completions/cosmos /usr/share/zsh/vendor-completions/_cosmos \
    /usr/share/fish/vendor_completions.d/cosmos.fish /usr/share/bash-completion/completions/cosmosd; do
    [ -s "$f" ] || { say "missing completion $f"; exit 1; }
done
dpkg-query --control-show cosmos-workflow conffiles | grep -qxF /etc/cosmos/config.toml || { say "/etc/cosmos/config.toml is not a conffile"; exit 1; }
env -u COSMOS_CONFIG cosmosd check-config >/dev/null
say "config: /etc/cosmos/config.toml is a conffile and valid"

systemd-analyze verify "$unit"
exposure=$(systemd-analyze security --offline=yes "$unit" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
say "unit verified; exposure $exposure (threshold $max_exposure)"
awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e != "" && e + 0 <= m + 0) }' || { say "exposure $exposure is above $max_exposure"; exit 1; }

getent passwd cosmos >/dev/null && getent group cosmos >/dev/null || { say "no user or group cosmos"; exit 1; }
for spec in /var/lib/cosmos:2770 /srv/cosmos/inbox:2770 /srv/cosmos/outbox:2775; do
    got=$(stat -c '%a %U:%G' "${spec%%:*}")
    [ "$got" = "${spec##*:} cosmos:cosmos" ] || { say "${spec%%:*} is $got, expected ${spec##*:} cosmos:cosmos"; exit 1; }
done
say "user and group cosmos; folders setgid and group-writable"

# End to end on the package's folders with the sim backend (no Docker, no GPU).
tmp=$(mktemp -d)
chmod 755 "$tmp"
cosmos_gid=$(getent group cosmos | cut -d: -f3)
cat >"$tmp/sim.toml" <<'TOML'
[runtime]
kind = "process"
backend = "sim"
backend_args = ["--load-seconds", "0", "--job-seconds", "0"]
gpus = []
[watch]
settle = "300ms"
[outbox]
min_free = "1MiB"
TOML
mkdir -p "$tmp/videos"
cp -r "$here/../../examples/videos/city1" "$tmp/videos/"
echo '{"name": "deb-check", "visual_input": "videos/city1/color.mp4", "prompt": "a package check", "control_overrides": {"edge": {"control_weight": 0.5}}}' >"$tmp/jobs.jsonl"
chmod -R a+rX "$tmp"
env -u COSMOS_WORKER_PATH -u COSMOS_CONFIG setpriv --reuid cosmos --regid cosmos --init-groups \
    cosmosd --config "$tmp/sim.toml" >"$tmp/cosmosd.log" 2>&1 &
daemon=$!
stop_daemon() { kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true; }
trap 'stop_daemon; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do grep -q "watching the inbox" "$tmp/cosmosd.log" && break; sleep 0.1; done
operator() { (cd "$tmp" && env -u COSMOS_CONFIG setpriv --reuid 64200 --regid 64200 --groups "$cosmos_gid" cosmos --config "$tmp/sim.toml" "$@"); }
if ! operator submit --wait jobs.jsonl >"$tmp/submit.out" 2>&1; then
    cat "$tmp/submit.out" "$tmp/cosmosd.log"
    exit 1
fi
operator list runs --status completed | grep -q "a package check" || { operator list runs; exit 1; }
say "cosmosd (user cosmos) ran a submission of uid 64200 (group cosmos only) with the worker from /usr/share/cosmos/worker"
stop_daemon
