#!/usr/bin/env bash
# Builds the small image the Docker tests use, with no registry: a root filesystem holding
# this host's Python 3 (binary, shared libraries, standard library) imported with
# `docker import`. The worker package is not baked in: cosmosd bind-mounts it, as it does
# for NVIDIA's stock image.
# Usage: packaging/docker/test-image.sh [IMAGE]   (default cosmos-test-worker:latest)
set -euo pipefail
image=${1:-cosmos-test-worker:latest}
python=${PYTHON:-$(readlink -f /usr/bin/python3)}
[ -x "$python" ] || { echo "test-image.sh: no $python (apt-get install python3)" >&2; exit 1; }
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
stdlib=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/tmp" "$root/etc" "$root/cosmos/work"
chmod 1777 "$root/tmp"
cp "$python" "$root/usr/bin/python$version"
ln -s "python$version" "$root/usr/bin/python3"
for lib in $(ldd "$python" | grep -o '/[^ ]*'); do
    cp --parents -L "$lib" "$root"
done
mkdir -p "$root$(dirname "$stdlib")"
tar -C "$(dirname "$stdlib")" --exclude='test' --exclude='__pycache__' --exclude='idlelib' --exclude='tkinter' -cf - "$(basename "$stdlib")" | tar -C "$root$(dirname "$stdlib")" -xf -
# Shared libraries the standard library's extension modules need (ctypes, ssl, ...).
for so in "$root$stdlib"/lib-dynload/*.so; do
    for lib in $(ldd "$so" 2>/dev/null | grep -o '/[^ ]*'); do
        [ -e "$root$lib" ] || cp --parents -L "$lib" "$root"
    done
done
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
tar -C "$root" -cf - . | docker import - "$image" >/dev/null
echo "test-image.sh: built $image (python $version)"
