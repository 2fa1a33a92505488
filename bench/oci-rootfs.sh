#!/usr/bin/env bash
# Pull + flatten + squashfs of the same image from a local registry, side by side:
#   Fledge (`fledge build`, strategy oci_rootfs, empty store) versus
#   `skopeo copy` + `umoci unpack` + `mksquashfs` (the original Fledge's pipeline),
# both with zstd (and with xz, reported without a target: the compressor dominates).
# The image is a one-layer Debian minbase (see initramfs-pack.sh), built with umoci and
# pushed to a docker-registry on 127.0.0.1 that this script starts and stops. Needs root.
#
# usage: bench/oci-rootfs.sh [RUNS]    (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
bench_dir=${FLEDGE_BENCH_DIR:-/var/cache/fledge-bench}
tree=${FLEDGE_BENCH_TREE:-$bench_dir/minbase}
fledge=$(realpath "${FLEDGE:-target/release/fledge}")
[ -d "$tree" ] || bench/initramfs-pack.sh 0 >/dev/null 2>&1 || true
[ -d "$tree" ] || { echo "no tree at $tree (run bench/initramfs-pack.sh once as root)" >&2; exit 1; }
[ -x "$fledge" ] || cargo build --release --quiet

work=$(mktemp -d)
source "$(dirname "$0")/lib.sh"
start_registry "$work"
trap 'kill $registry_pid 2>/dev/null; rm -rf "$work"' EXIT

image="127.0.0.1:$port/bench/minbase:1"
push_tree "$tree" "$image" "$work"
echo "image: $image ($(du -sm "$tree" | cut -f1) MB tree), $(nproc) cores, $runs run(s) each"


peer() { # $1 = compressor
    rm -rf "$work/peer" && mkdir "$work/peer"
    skopeo copy --quiet --src-tls-verify=false "docker://$image" "oci:$work/peer/layout:1"
    umoci unpack --image "$work/peer/layout:1" "$work/peer/bundle" >/dev/null
    mksquashfs "$work/peer/bundle/rootfs" "$work/peer/out.squashfs" -comp "$1" -noappend -no-progress -quiet
}
fledge_build() { # $1 = compressor
    rm -rf "$work/fl" && mkdir -p "$work/fl"
    printf 'version = "1"\nstrategy = "oci_rootfs"\n[agent]\nsource_strategy = "local"\npath = "%s"\n[source]\nimage = "%s"\n[filesystem]\ncompression = "%s"\n' \
        "$(command -v busybox)" "$image" "$1" >"$work/fl/fledge.toml"
    printf 'name = "bench"\nversion = "1"\nruntime = "bench"\n' >"$work/fl/manifest.toml"
    FLEDGE_STATE_DIR="$work/fl/state" "$fledge" build -q -c "$work/fl/fledge.toml" -o "$work/fl/out.squashfs"
}

peer_zstd() { peer zstd; }
fledge_zstd() { fledge_build zstd; }
peer_xz() { peer xz; }
fledge_xz() { fledge_build xz; }
for comp in zstd xz; do
    time_pair "peer $comp" "peer_$comp" "fledge $comp" "fledge_$comp"
done
printf '\n%-28s %10s %12s\n' pipeline seconds "vs peer"
for comp in zstd xz; do
    printf '%-28s %10.2f %12s\n' "skopeo+umoci+mksquashfs $comp" "${secs[peer $comp]}" "1.00"
    printf '%-28s %10.2f %12.2f\n' "fledge $comp" "${secs[fledge $comp]}" "$(echo "${secs[fledge $comp]} / ${secs[peer $comp]}" | bc -l)"
done
echo
echo "target (issue 3): fledge zstd <= 0.80 x the peer's zstd time; xz reported without a target"
