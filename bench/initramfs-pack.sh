#!/usr/bin/env bash
# Packs the same ~200 MB tree (a Debian minbase) into a gzip-compressed cpio newc archive
# with Fledge and with the classic pipeline `find | cpio -o -H newc | gzip -9` (plus pigz -9
# when installed), side by side, and prints times, sizes and the ratios.
#
# usage: bench/initramfs-pack.sh [RUNS]        (default 3 runs each, median reported)
# env:   FLEDGE_BENCH_TREE  tree to pack (default: a debootstrap minbase, created on first use
#                           under ${FLEDGE_BENCH_DIR:-/var/cache/fledge-bench}; needs root)
#                           A copy of it is staged in a temporary directory for the run.
#        FLEDGE             fledge binary (default: target/release/fledge, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
bench_dir=${FLEDGE_BENCH_DIR:-/var/cache/fledge-bench}
tree=${FLEDGE_BENCH_TREE:-$bench_dir/minbase}
fledge=${FLEDGE:-target/release/fledge}

if [ ! -d "$tree" ]; then
    [ "$(id -u)" = 0 ] || { echo "no tree at $tree: run as root once to debootstrap it, or set FLEDGE_BENCH_TREE" >&2; exit 1; }
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
    mkdir -p "$bench_dir"
    debootstrap --variant=minbase bookworm "$tree.tmp" http://deb.debian.org/debian >"$bench_dir/debootstrap.log"
    mv "$tree.tmp" "$tree"
fi
[ -x "$fledge" ] || cargo build --release --quiet

# Both sides pack the same staged copy of the tree: everything but /dev, /proc and /sys
# (mappings take files, directories and symlinks; an initramfs gets /dev from devtmpfs), plus
# the BusyBox that Fledge always installs and an /init (a link to it), so the archives hold
# the same files.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/stage
mkdir "$stage"
(cd "$tree" && tar --exclude=./dev --exclude=./proc --exclude=./sys -cf - .) | tar -C "$stage" -xf -
busybox_bin=$(command -v busybox)
cp "$busybox_bin" "$stage/usr/bin/busybox"
ln -s usr/bin/busybox "$stage/init"
{
    echo 'version = "1"'
    echo 'strategy = "initramfs"'
    echo '[init]'
    echo 'none = true'
    echo '[source]'
    echo "busybox_path = \"$stage/usr/bin/busybox\""
    echo '[mappings]'
    echo "\"$stage\" = \"/\""
} >"$work/fledge.toml"
printf 'name = "bench"\nversion = "1"\nruntime = "bench"\n' >"$work/manifest.toml"

source "$(dirname "$0")/lib.sh"

# time_and_size NAME OUTPUT COMMAND...: time_it, and record OUTPUT's size.
declare -A size
time_and_size() {
    local name=$1 out=$2; shift 2
    time_it "$name" "$@"
    size[$name]=$(stat -c %s "$out")
}

pipe_gzip() { (cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet | gzip -9 >"$work/pipe.cpio.gz"); }
pipe_pigz() { (cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet | pigz -9 >"$work/pigz.cpio.gz"); }
run_fledge() { "$fledge" build -q -c "$work/fledge.toml" -o "$work/fledge.cpio.gz"; }

echo "tree: $tree staged without dev/proc/sys ($(du -sm "$stage" | cut -f1) MB, $(find "$stage" | wc -l) entries), $(nproc) cores, $runs runs each (median)"
time_and_size "find|cpio|gzip -9" "$work/pipe.cpio.gz" pipe_gzip
if command -v pigz >/dev/null; then time_and_size "find|cpio|pigz -9" "$work/pigz.cpio.gz" pipe_pigz; fi
time_and_size "fledge (gzip 9)" "$work/fledge.cpio.gz" run_fledge

base="find|cpio|gzip -9"
printf '\n%-20s %10s %14s %12s %12s\n' tool seconds bytes "time ratio" "size ratio"
for name in "$base" "find|cpio|pigz -9" "fledge (gzip 9)"; do
    [ -n "${secs[$name]:-}" ] || continue
    printf '%-20s %10.2f %14d %12.2f %12.4f\n' "$name" "${secs[$name]}" "${size[$name]}" \
        "$(echo "${secs[$name]} / ${secs[$base]}" | bc -l)" "$(echo "${size[$name]} / ${size[$base]}" | bc -l)"
done
echo
echo "target: fledge time ratio <= 0.50 and size ratio <= 1.01 against $base"
