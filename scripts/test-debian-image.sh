#!/usr/bin/env bash
# Prints the path of an OCI image layout (tag `minbase`) holding a small Debian made with
# `debootstrap --variant=minbase` from the apt mirror, for the end-to-end build tests. Made
# once (a minute or two) and cached under ${FLEDGE_TEST_CACHE:-$HOME/.cache/fledge-test}/debian,
# keyed by suite and mirror. Needs root (debootstrap chroots); otherwise prints nothing and the
# tests that want it say why they skip.
set -euo pipefail
suite=${FLEDGE_TEST_DEBIAN_SUITE:-bookworm}
mirror=${FLEDGE_TEST_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}
key=$(printf '%s %s' "$suite" "$mirror" | sha256sum | cut -c1-16)
layout=${FLEDGE_TEST_CACHE:-$HOME/.cache/fledge-test}/debian/$suite-$key
if [ -s "$layout/index.json" ]; then
    echo "$layout"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v debootstrap >/dev/null || ! command -v umoci >/dev/null; then
    echo "test-debian-image: not made (needs root, debootstrap and umoci)" >&2
    exit 0
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fledge-debian.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if ! debootstrap --variant=minbase "$suite" "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
    tail -n 20 "$tmp/debootstrap.log" >&2
    echo "test-debian-image: debootstrap from $mirror failed" >&2
    exit 0
fi
rm -rf "$tmp/rootfs/var/cache/apt/archives"/*.deb "$tmp/rootfs/var/lib/apt/lists"/*_Packages
umoci init --layout "$tmp/layout"
umoci new --image "$tmp/layout:minbase"
umoci insert --image "$tmp/layout:minbase" "$tmp/rootfs" / >/dev/null
mkdir -p "$(dirname "$layout")"
rm -rf "$layout"
mv "$tmp/layout" "$layout"
echo "$layout"
