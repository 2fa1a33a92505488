#!/usr/bin/env bash
# Peak resident memory of the `fledge` process (VmHWM; the filesystem tools it runs are
# separate processes) while it builds a 1.1 GB image: nine copies of the minbase /usr as one
# gzip layer of an OCI layout. Requirement (issue 3): under 150 MB for a 1 GB image.
#
# usage: bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bench_dir=${FLEDGE_BENCH_DIR:-/var/cache/fledge-bench}
tree=${FLEDGE_BENCH_TREE:-$bench_dir/minbase}
fledge=$(realpath "${FLEDGE:-target/release/fledge}")
[ -d "$tree" ] || { echo "no tree at $tree (run bench/initramfs-pack.sh once as root)" >&2; exit 1; }
[ -x "$fledge" ] || cargo build --release --quiet
source "$(dirname "$0")/lib.sh"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/big"
for i in $(seq 9); do cp -a "$tree/usr" "$work/big/usr$i"; done
plain_layout "$work/big" "$work/plain"
# The same tree gzip-compressed, as registries serve layers.
umoci init --layout "$work/layout" && umoci new --image "$work/layout:1"
umoci insert --image "$work/layout:1" "$work/big" / >/dev/null
rm -rf "$work/big" "$work/plain"
echo "tree: $(du -sh "$work/layout" | cut -f1) compressed layout"

# peak_rss CMD...: runs CMD in the background and prints its peak VmHWM in MB.
peak_rss() {
    "$@" &
    local pid=$! peak=0 kb
    while kill -0 "$pid" 2>/dev/null; do
        kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        [ "${kb:-0}" -gt "$peak" ] && peak=$kb
        sleep 0.05
    done
    wait "$pid"
    echo $((peak / 1024))
}
export FLEDGE_STATE_DIR=$work/state
printf 'name = "big"\nversion = "1"\nruntime = "big"\n' >"$work/manifest.toml"
printf '\n%-28s %12s %12s\n' build "peak MB" "output MB"
for fs in 'compression = "xz"' 'type = "ext4"'; do
    printf 'version = "1"\nstrategy = "oci_rootfs"\n[agent]\nsource_strategy = "local"\npath = "%s"\n[source]\nimage = "oci-layout:%s:1"\n[filesystem]\n%s\n' \
        "$(command -v busybox)" "$work/layout" "$fs" >"$work/fledge.toml"
    rm -f "$work"/out.*
    mb=$(peak_rss "$fledge" build -q -c "$work/fledge.toml" -o "$work/out.img")
    printf '%-28s %12s %12s\n' "$fs" "$mb" "$(find "$work" -maxdepth 1 -name 'out.*' ! -name '*.json' -exec du -m --apparent-size {} + | cut -f1)"
done
