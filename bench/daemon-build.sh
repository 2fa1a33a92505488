#!/usr/bin/env bash
# Daemon mode, side by side: the same Dockerfile built on the same buildkitd by
#   `buildctl build` (the daemon's own client, OCI tarball output) and
#   `fledge build` with FLEDGE_BUILDKIT_MODE=daemon (session, OCI import into the store, and a
#   squashfs artifact packed from it),
# warm (the daemon has every step cached), so what is measured is each client's own work:
# sending the context (incrementally), and receiving the OCI tarball, which Fledge then
# imports into its store (and, when nothing changed, does not repack).
# Needs buildkitd and buildctl (FLEDGE_BENCH_BUILDKITD, FLEDGE_BENCH_BUILDCTL, or PATH) and
# root (the OCI worker). buildkitd is started on a temporary socket and stopped after.
#
# usage: bench/daemon-build.sh [RUNS]    (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
buildkitd=${FLEDGE_BENCH_BUILDKITD:-$(command -v buildkitd || true)}
buildctl=${FLEDGE_BENCH_BUILDCTL:-$(command -v buildctl || true)}
[ -x "$buildkitd" ] && [ -x "$buildctl" ] || { echo "needs buildkitd and buildctl (set FLEDGE_BENCH_BUILDKITD/FLEDGE_BENCH_BUILDCTL)" >&2; exit 1; }
cargo build --release --quiet
fledge=$(realpath target/release/fledge)

work=$(mktemp -d)
printf '[worker.oci]\nenabled = true\nsnapshotter = "native"\n[worker.containerd]\nenabled = false\n' >"$work/bk.toml"
"$buildkitd" --addr "unix://$work/bk.sock" --root "$work/root" --config "$work/bk.toml" >"$work/bk.log" 2>&1 &
daemon_pid=$!
trap 'kill $daemon_pid 2>/dev/null; wait $daemon_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -S "$work/bk.sock" ] && break; sleep 0.1; done

# A context of 2,000 small files and one of 50 MB, copied in two steps.
ctx=$work/ctx && mkdir -p "$ctx/src"
for i in $(seq 2000); do echo "file $i" >"$ctx/src/f$i.txt"; done
head -c 50M /dev/urandom >"$ctx/blob.bin"
printf 'FROM scratch\nCOPY src/ /src/\nCOPY blob.bin /data/\n' >"$ctx/Dockerfile"
export FLEDGE_BUILDKIT_MODE=daemon FLEDGE_BUILDKIT_ADDR="unix://$work/bk.sock" FLEDGE_STATE_DIR=$work/state
export FLEDGE_AGENT=$(command -v busybox)

source "$(dirname "$0")/lib.sh"
drop_caches() { :; }
buildctl_build() {
    "$buildctl" --addr "unix://$work/bk.sock" build --frontend dockerfile.v0 --local "context=$ctx" --local "dockerfile=$ctx" \
        --output "type=oci,dest=$work/buildctl.tar" >/dev/null 2>&1
}
fledge_build() { "$fledge" build -q "$ctx/Dockerfile" -o "$work/fledge.squashfs"; }
buildctl_build && fledge_build # the daemon's cache warmed, and Fledge's store
time_pair "buildctl warm" buildctl_build "fledge warm" fledge_build
echo "buildkitd $("$buildkitd" --version | awk '{print $3}'), $(nproc) cores, median of $runs"
printf '\n%-40s %10s %12s\n' build seconds "vs buildctl"
printf '%-40s %10.3f %12s\n' "buildctl build --output type=oci (warm)" "${secs[buildctl warm]}" 1.00
printf '%-40s %10.3f %12.2f\n' "fledge build, daemon mode (warm)" "${secs[fledge warm]}" "$(echo "${secs[fledge warm]} / ${secs[buildctl warm]}" | bc -l)"
