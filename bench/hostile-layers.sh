#!/usr/bin/env bash
# Layers at and past the limits (issue 14), side by side:
#   Fledge (`fledge build`, strategy oci_rootfs, ext4, empty store) versus
#   `umoci unpack` + `mkfs.ext4 -d` (what a user without Fledge runs on an OCI layout),
# on one-layer images that are deep (a chain of one-byte directories) or wide (directories
# of 1,024 empty files). Past Fledge's limits (a path deeper than 2047 components, more than 2^20 entries) the
# time Fledge takes to refuse is reported; the peer is not run there. Where the peer fails
# (umoci cannot unpack a path longer than PATH_MAX), that is reported instead of its time.
# Peak memory of each run is printed too (GNU time's maximum RSS).
#
# usage: bench/hostile-layers.sh [RUNS] [--million]   (default 1 run; --million adds the
#        2^20-entry layer and the refused 2^20+1, a few minutes each)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
million=${2:-}
fledge=$(realpath "${FLEDGE:-target/release/fledge}")
[ -x "$fledge" ] || cargo build --release --quiet
command -v umoci >/dev/null && command -v mkfs.ext4 >/dev/null || { echo "needs umoci and mkfs.ext4" >&2; exit 1; }

source "$(dirname "$0")/lib.sh"
work=$(mktemp -d "${FLEDGE_BENCH_DIR:-/var/tmp}/hostile.XXXXXX")
trap 'rm -rf "$work"' EXIT

# layer KIND N OUT: a one-layer OCI layout at OUT. deep: a path N components deep (a file
# under N - 1 nested one-byte directories); wide: N entries (directories of up to 1,024 empty files).
layer() {
    python3 - "$1" "$2" "$3.tar" <<'EOF'
import sys, tarfile
kind, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def entry(name, dir):
    t = tarfile.TarInfo(name)
    t.type, t.mode = (tarfile.DIRTYPE, 0o755) if dir else (tarfile.REGTYPE, 0o644)
    return t
with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
    if kind == "deep":
        tar.addfile(entry("d/" * (n - 1) + "f", False))
    else:
        written = d = 0
        while written < n:
            tar.addfile(entry(f"d{d:04}", True)); written += 1
            for f in range(min(1023, n - written)):
                tar.addfile(entry(f"d{d:04}/f{f:04}", False)); written += 1
            d += 1
EOF
    tar_layout "$3.tar" "$3"
}

# The peer's image size: generous, sparse, as a user would pick it.
peer() {
    rm -rf "$work/peer" "$work/peer.img"
    umoci unpack --rootless --image "$work/layout:1" "$work/peer" >/dev/null
    mkfs.ext4 -q -F -N "$((entries + 1024))" -d "$work/peer/rootfs" "$work/peer.img" 8G
}
fledge_build() {
    rm -rf "$work/fl" && mkdir -p "$work/fl"
    printf 'version = "1"\nstrategy = "oci_rootfs"\n[agent]\nsource_strategy = "local"\npath = "%s"\n[source]\nimage = "oci-layout:%s:1"\n[filesystem]\ntype = "ext4"\n' \
        "$(command -v busybox)" "$work/layout" >"$work/fl/fledge.toml"
    printf 'name = "bench"\nversion = "1"\nruntime = "bench"\n' >"$work/fl/manifest.toml"
    FLEDGE_STATE_DIR="$work/fl/state" "$fledge" build -q -c "$work/fl/fledge.toml" -o "$work/fl/out.img"
}
fledge_refuses() { ! fledge_build 2>/dev/null; }
# peak_rss FUNCTION: the maximum resident set of one run, in MB.
export -f peer fledge_build fledge_refuses
export work fledge
peak_rss() {
    /usr/bin/time -f %M -o "$work/rss" bash -c "$1" >/dev/null 2>&1 || true
    echo $(($(tail -1 "$work/rss") / 1024))
}

cases=("deep 1000" "deep 2047" "wide 1000" "wide 10000" "wide 100000")
refused=("deep 2048" "deep 10000")
[ "$million" = --million ] && { cases+=("wide 1048576"); refused+=("wide 1048577"); }
echo "$(nproc) cores, $runs run(s) each"
printf '\n%-20s %12s %12s %8s %12s %12s\n' layer "peer s" "fledge s" ratio "peer MB" "fledge MB"
for c in "${cases[@]}"; do
    read -r kind n <<<"$c"
    export entries=$n
    layer "$kind" "$n" "$work/layout"
    if peer >/dev/null 2>&1; then
        time_pair peer peer fledge fledge_build
        printf '%-20s %12.2f %12.2f %8.2f %12s %12s\n' "$kind $n" "${secs[peer]}" "${secs[fledge]}" \
            "$(echo "${secs[fledge]} / ${secs[peer]}" | bc -l)" "$(peak_rss peer)" "$(peak_rss fledge_build)"
    else
        time_it fledge fledge_build
        printf '%-20s %12s %12.2f %8s %12s %12s\n' "$kind $n" fails "${secs[fledge]}" - - "$(peak_rss fledge_build)"
    fi
done
for c in "${refused[@]}"; do
    read -r kind n <<<"$c"
    layer "$kind" "$n" "$work/layout"
    time_it refuse fledge_refuses
    printf '%-20s %12s %12.2f %8s %12s %12s   (refused)\n' "$kind $n" - "${secs[refuse]}" - - "$(peak_rss fledge_refuses)"
done
