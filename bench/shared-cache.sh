#!/usr/bin/env bash
# A build cache shared between hosts, side by side: Fledge's embedded engine
# (`--cache-to/--cache-from type=registry`) against buildah's registry cache
# (`buildah bud --layers --cache-to/--cache-from`), on the same Dockerfile over the same Debian
# minbase base (made by bench/initramfs-pack.sh), with a docker-registry on 127.0.0.1 that this
# script starts and stops. One host builds and exports its cache (timed: "export"); the other
# host, which has the base image but no build cache, builds cold and then from the shared
# cache ("import"): its RUN steps, which stand for a compile (a 2 s sleep and 32 MB of
# output), are not run again; only their layers are fetched. Each run ends with a squashfs
# rootfs, as a user of either tool needs for a microVM: Fledge writes it (fledge.toml with
# `[source] dockerfile`), buildah's image is mounted and packed with mksquashfs; both with lz4,
# so packing does not hide the build. Needs root (buildah, registry).
#
# usage: bench/shared-cache.sh [RUNS]    (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
source "$(dirname "$0")/lib.sh"
dockerfile_bench_setup

work=$(mktemp -d)
start_registry "$work"
buildah_() { buildah --root "$work/buildah-$1" --runroot "$work/run-$1" "${@:2}"; }
trap 'kill $registry_pid 2>/dev/null; for h in a b; do buildah_ $h rm --all >/dev/null 2>&1 || true; done; rm -rf "$work"' EXIT
image="127.0.0.1:$port/bench/minbase:1"
push_tree "$tree" "$image" "$work"

ctx=$work/ctx && mkdir -p "$ctx"
printf 'FROM %s\nRUN sleep 2 && head -c 33554432 /dev/zero | sha256sum > /sum && head -c 33554432 /dev/urandom > /output\nCOPY app.txt /app/\nRUN sleep 1 && cat /app/app.txt /sum > /app/built\n' "$image" >"$ctx/Dockerfile"
echo "version 1" >"$ctx/app.txt"
printf 'version = "1"\nstrategy = "oci_rootfs"\n[source]\ndockerfile = "Dockerfile"\n[filesystem]\ncompression = "lz4"\n' >"$ctx/fledge.toml"
fledge_cache="127.0.0.1:$port/bench/fledge-cache:main"
buildah_cache="127.0.0.1:$port/bench/buildah-cache"

# Both hosts of both tools have the base image, outside the timings.
for h in a b; do
    buildah_ $h pull -q --tls-verify=false "$image" >/dev/null
    FLEDGE_STATE_DIR=$work/state-$h "$fledge" image pull -q "$image"
done

drop_caches() { :; }
# A host forgets its build cache (and the layers built), keeping the base.
forget() {
    buildah_ "$1" rmi -f bench >/dev/null 2>&1 || true
    buildah_ "$1" rmi --prune >/dev/null 2>&1 || true
    FLEDGE_STATE_DIR=$work/state-$1 "$fledge" prune -q
    rm -rf "$work/state-$1/store/derived/artifact-v1" "$ctx/out.squashfs"* "$ctx/peer.squashfs"
}
bud() {
    buildah_ "$1" bud -q --layers --isolation chroot --tls-verify=false -t bench "${@:2}" "$ctx" >/dev/null
    local c m
    c=$(buildah_ "$1" from -q bench) && m=$(buildah_ "$1" mount "$c")
    mksquashfs "$m" "$ctx/peer.squashfs" -comp lz4 -noappend -quiet -no-progress >/dev/null
    buildah_ "$1" umount "$c" >/dev/null && buildah_ "$1" rm "$c" >/dev/null
}
build() { FLEDGE_STATE_DIR=$work/state-$1 "$fledge" build -q -c "$ctx/fledge.toml" -o "$ctx/out.squashfs" "${@:2}"; }
peer_export() { forget a; bud a --cache-to "$buildah_cache"; }
fledge_export() { forget a; build a --cache-to "type=registry,ref=$fledge_cache,mode=max"; }
peer_cold() { forget b; bud b; }
fledge_cold() { forget b; build b; }
peer_import() { forget b; bud b --cache-from "$buildah_cache"; }
fledge_import() { forget b; build b --cache-from "type=registry,ref=$fledge_cache"; }

time_pair "buildah export" peer_export "fledge export" fledge_export
time_pair "buildah cold" peer_cold "fledge cold" fledge_cold
time_pair "buildah import" peer_import "fledge import" fledge_import

echo "accel $FLEDGE_ACCEL, $(nproc) cores, median of $runs; base $(du -sm "$tree" | cut -f1) MB"
printf '\n%-44s %10s %12s\n' "second host, shared registry cache" seconds "vs buildah"
for what in export cold import; do
    printf '%-44s %10.3f %12s\n' "buildah bud + mksquashfs ($what)" "${secs[buildah $what]}" 1.00
    printf '%-44s %10.3f %12.2f\n' "fledge build ($what)" "${secs[fledge $what]}" "$(echo "${secs[fledge $what]} / ${secs[buildah $what]}" | bc -l)"
done
printf '%-44s %10.2f\n' "buildah: cold / import" "$(echo "${secs[buildah cold]} / ${secs[buildah import]}" | bc -l)"
printf '%-44s %10.2f\n' "fledge: cold / import" "$(echo "${secs[fledge cold]} / ${secs[fledge import]}" | bc -l)"
