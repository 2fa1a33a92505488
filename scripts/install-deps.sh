#!/usr/bin/env bash
# Installs the Debian packages Fledge's build, demo, tests and benchmarks use, when missing.
# As root it runs apt-get; otherwise it names what to install and fails.
# Rust itself (cargo >= the workspace's rust-version) must already be installed (rustup).
# vhost-device-vsock is installed with cargo when missing.
set -euo pipefail

packages=(
    build-essential libc6-dev   # cc for crates with C parts; static glibc for guest-init
    cpio gzip zstd lz4 pigz     # archive tools that read back what Fledge writes
    busybox-static              # a local static BusyBox for tests and the demo
    binutils util-linux         # readelf, setpriv (non-root test)
    qemu-system-x86             # boots built artifacts in the boot tests (TCG)
    linux-source flex bison libelf-dev  # fledge kernel build: the source and its build tools
    docker-registry skopeo      # a real local registry, and pushing test images into it
    squashfs-tools e2fsprogs erofs-utils umoci  # rootfs writers and the peers benchmarks compare against
    btrfs-progs                 # the legacy btrfs writer
    apache2-utils               # htpasswd, for the authenticated-registry test
    bc debootstrap              # benchmarks
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages: ${missing[*]}" >&2
        echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

need=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$(dirname "$0")/../Cargo.toml" | head -n1)
if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust $need or newer (https://rustup.rs) and re-run" >&2
    exit 1
fi
have=$(cargo --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
    echo "cargo $have is older than the required $need: run 'rustup update'" >&2
    exit 1
fi

# QEMU's vsock goes through the vhost-user daemon from crates.io (about 40 s to build, once).
if ! command -v vhost-device-vsock >/dev/null; then
    echo "installing vhost-device-vsock (cargo install)"
    cargo install --locked --quiet vhost-device-vsock
fi
