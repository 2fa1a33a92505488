#!/usr/bin/env bash
# Fledge's rootfs writers against the Debian tools on the same tree, side by side:
#   squashfs: `fledge build` (image already in the store) vs `mksquashfs DIR -comp zstd`
#   ext4:     `fledge build` (image already in the store) vs `mke2fs -t ext4 -d DIR`
# The tree is the Debian minbase of initramfs-pack.sh, unpacked in a directory for the tools
# and, for Fledge, the same directory as the one uncompressed layer of an OCI layout (in
# Fledge's store after a warm-up build): both sides read the same bytes, and neither has a
# layer to decompress (bench/oci-rootfs.sh measures that path). Needs root (debootstrap,
# drop_caches).
#
# usage: bench/rootfs-writers.sh [RUNS]    (default 3, median reported)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
bench_dir=${FLEDGE_BENCH_DIR:-/var/cache/fledge-bench}
tree=${FLEDGE_BENCH_TREE:-$bench_dir/minbase}
fledge=$(realpath "${FLEDGE:-target/release/fledge}")
[ -d "$tree" ] || { echo "no tree at $tree (run bench/initramfs-pack.sh once as root)" >&2; exit 1; }
[ -x "$fledge" ] || cargo build --release --quiet
source "$(dirname "$0")/lib.sh"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dir=$work/dir
mkdir "$dir"
(cd "$tree" && tar --exclude=./dev --exclude=./proc --exclude=./sys -cf - .) | tar -C "$dir" -xf -
layout=$work/layout
plain_layout "$dir" "$layout"
export FLEDGE_STATE_DIR=$work/state
fledge_cfg() {
    printf 'version = "1"\nstrategy = "oci_rootfs"\n[agent]\nsource_strategy = "local"\npath = "%s"\n[source]\nimage = "oci-layout:%s:1"\n[filesystem]\n%s\n' \
        "$(command -v busybox)" "$layout" "$1" >"$work/fledge.toml"
    printf 'name = "bench"\nversion = "1"\nruntime = "bench"\n' >"$work/manifest.toml"
}
fledge_cfg 'type = "ext4"'
"$fledge" build -q -c "$work/fledge.toml" -o "$work/warmup.img" # imports the layout into the store
rm -f "$work/warmup.img"

size=$(( $(du -sm "$dir" | cut -f1) * 2 ))M
peer_squashfs() { mksquashfs "$dir" "$work/peer.squashfs" -comp zstd -noappend -no-progress -quiet; }
peer_ext4() { rm -f "$work/peer.img" && truncate -s "$size" "$work/peer.img" && mke2fs -q -t ext4 -F -d "$dir" "$work/peer.img"; }
fledge_squashfs() { fledge_cfg 'compression = "zstd"' && "$fledge" build -q -c "$work/fledge.toml" -o "$work/f.squashfs"; }
fledge_ext4() { fledge_cfg 'type = "ext4"' && "$fledge" build -q -c "$work/fledge.toml" -o "$work/f.img"; }
time_pair "mksquashfs zstd" peer_squashfs "fledge squashfs zstd" fledge_squashfs
time_pair "mke2fs -d" peer_ext4 "fledge ext4" fledge_ext4

echo "tree: $(du -sm "$dir" | cut -f1) MB, $(find "$dir" | wc -l) entries, $(nproc) cores, median of $runs"
printf '\n%-24s %10s %12s\n' writer seconds "vs tool"
printf '%-24s %10.2f %12s\n' "mksquashfs zstd" "${secs[mksquashfs zstd]}" 1.00
printf '%-24s %10.2f %12.2f\n' "fledge squashfs zstd" "${secs[fledge squashfs zstd]}" "$(echo "${secs[fledge squashfs zstd]} / ${secs[mksquashfs zstd]}" | bc -l)"
printf '%-24s %10.2f %12s\n' "mke2fs -d" "${secs[mke2fs -d]}" 1.00
printf '%-24s %10.2f %12.2f\n' "fledge ext4" "${secs[fledge ext4]}" "$(echo "${secs[fledge ext4]} / ${secs[mke2fs -d]}" | bc -l)"
