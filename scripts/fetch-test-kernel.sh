#!/usr/bin/env bash
# Prints the path of a bootable x86_64 kernel for the boot tests: Debian's cloud kernel
# (serial console and initramfs support built in), downloaded with apt once and cached under
# ${FLEDGE_TEST_CACHE:-$HOME/.cache/fledge-test}/kernel, keyed by package name. The package
# itself is kept beside it as package.deb (for the `fledge kernel import` test).
# Until Fledge builds its own guest kernel (kernel-config/), this is what tests boot.
set -euo pipefail
cache=${FLEDGE_TEST_CACHE:-$HOME/.cache/fledge-test}/kernel
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
if [ -z "$pkg" ]; then
    cached=$(ls -1 "$cache"/*/vmlinuz 2>/dev/null | tail -n1 || true)
    [ -n "$cached" ] || { echo "cannot resolve linux-image-cloud-amd64 (run apt-get update)" >&2; exit 1; }
    echo "$cached"
    exit 0
fi
dir=$cache/$pkg
if [ ! -s "$dir/vmlinuz" ] || [ ! -s "$dir/package.deb" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get -o APT::Sandbox::User=root download "$pkg" >/dev/null)
    dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*'
    mkdir -p "$dir"
    mv "$tmp"/boot/vmlinuz-* "$dir/vmlinuz.partial.$$"
    mv "$tmp"/*.deb "$dir/package.deb.partial.$$"
    mv "$dir/package.deb.partial.$$" "$dir/package.deb"
    mv "$dir/vmlinuz.partial.$$" "$dir/vmlinuz"
fi
echo "$dir/vmlinuz"
