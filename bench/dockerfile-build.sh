#!/usr/bin/env bash
# Dockerfile builds, side by side: Fledge's embedded engine (RUN steps in a QEMU microVM;
# TCG here unless FLEDGE_ACCEL=kvm) against `buildah bud --layers --isolation chroot` (the
# daemonless peer), on the same 4-step Dockerfile over the same Debian minbase base (206 MB,
# made by bench/initramfs-pack.sh with debootstrap), served from a docker-registry on
# 127.0.0.1 that this script starts and stops. Measured: a cold build (no build cache; the
# base already pulled), a no-op rebuild, and a rebuild after editing the copied file. Then
# the per-RUN cost: one Dockerfile with 1 RUN and one with 6, cold, which shows what a step
# costs once the build VM is up (Fledge boots one VM per build, not one per step). Last,
# independent stages: two stages of `RUN sleep 2` joined by COPY --from, built with one
# worker (FLEDGE_BUILD_VMS=1, buildah --jobs 1) and with two (Fledge's default here; --jobs 2).
# Needs root (buildah, registry).
#
# usage: bench/dockerfile-build.sh [RUNS]    (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
source "$(dirname "$0")/lib.sh"
dockerfile_bench_setup

work=$(mktemp -d)
start_registry "$work"
export BUILDAH_ROOT=$work/buildah
trap 'kill $registry_pid 2>/dev/null; buildah --root "$BUILDAH_ROOT" --runroot "$work/run" rm --all >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
image="127.0.0.1:$port/bench/minbase:1"
push_tree "$tree" "$image" "$work"

ctx=$work/ctx && mkdir -p "$ctx"
printf 'FROM %s\nRUN echo hello > /hello && ls /usr/bin | wc -l > /count\nCOPY app.txt /app/\nRUN cat /app/app.txt > /app/copy && sha256sum /app/copy > /app/sum\nWORKDIR /app\n' "$image" >"$ctx/Dockerfile"
echo "version 1" >"$ctx/app.txt"
buildah_() { buildah --root "$BUILDAH_ROOT" --runroot "$work/run" "$@"; }
# Both pull the base once, outside the timings.
buildah_ pull -q --tls-verify=false "$image" >/dev/null
export FLEDGE_STATE_DIR=$work/state
"$fledge" image pull -q "$image"

drop_caches() { :; } # small trees, warm for both
clear_caches() {
    buildah_ rmi -f bench runs >/dev/null 2>&1 || true
    buildah_ rmi --prune >/dev/null 2>&1 || true
    rm -rf "$FLEDGE_STATE_DIR/store/derived/build-cache-v1" "$FLEDGE_STATE_DIR/store/derived/artifact-v1" "$ctx/out.squashfs"*
}
peer_cold() { clear_caches; buildah_ bud -q --layers --isolation chroot --tls-verify=false -t bench "$ctx" >/dev/null; }
fledge_cold() { clear_caches; "$fledge" build -q "$ctx/Dockerfile" -o "$ctx/out.squashfs"; }
peer_noop() { buildah_ bud -q --layers --isolation chroot --tls-verify=false -t bench "$ctx" >/dev/null; }
fledge_noop() { "$fledge" build -q "$ctx/Dockerfile" -o "$ctx/out.squashfs"; }
edit() { echo "version $RANDOM" >"$ctx/app.txt"; }
peer_edit() { edit; peer_noop; }
fledge_edit() { edit; fledge_noop; }

time_pair "buildah cold" peer_cold "fledge cold" fledge_cold
peer_noop && fledge_noop
time_pair "buildah no-op" peer_noop "fledge no-op" fledge_noop
time_pair "buildah edit" peer_edit "fledge edit" fledge_edit

# Per-RUN cost: 1 RUN versus 6 RUNs, cold.
for n in 1 6; do
    mkdir -p "$work/runs$n"
    { printf 'FROM %s\n' "$image"; for i in $(seq "$n"); do printf 'RUN echo %s > /step%s\n' "$i" "$i"; done; } >"$work/runs$n/Dockerfile"
done
runs_fledge() { clear_caches; "$fledge" build -q "$work/runs$1/Dockerfile" -o "$work/runs$1/out.squashfs"; }
runs_peer() { clear_caches; buildah_ bud -q --layers --isolation chroot --tls-verify=false -t runs "$work/runs$1" >/dev/null; }
fledge_1() { runs_fledge 1; }
fledge_6() { runs_fledge 6; }
peer_1() { runs_peer 1; }
peer_6() { runs_peer 6; }
time_pair "buildah 1 RUN" peer_1 "fledge 1 RUN" fledge_1
time_pair "buildah 6 RUNs" peer_6 "fledge 6 RUNs" fledge_6

# Independent stages: one worker against two.
mkdir -p "$work/stages"
printf 'FROM %s AS left
RUN sleep 2 && echo left > /left
FROM %s AS right
RUN sleep 2 && echo right > /right
FROM %s
COPY --from=left /left /
COPY --from=right /right /
' \
    "$image" "$image" "$image" >"$work/stages/Dockerfile"
stages_fledge() { clear_caches; FLEDGE_BUILD_VMS=$1 "$fledge" build -q "$work/stages/Dockerfile" -o "$work/stages/out.squashfs"; }
stages_peer() { clear_caches; buildah_ bud -q --layers --isolation chroot --jobs "$1" --tls-verify=false -t runs "$work/stages" >/dev/null; }
fledge_serial() { stages_fledge 1; }
fledge_parallel() { stages_fledge 2; }
peer_serial() { stages_peer 1; }
peer_parallel() { stages_peer 2; }
time_pair "buildah stages 1 job" peer_serial "fledge stages 1 VM" fledge_serial
time_pair "buildah stages 2 jobs" peer_parallel "fledge stages 2 VMs" fledge_parallel

echo "accel $FLEDGE_ACCEL, $(nproc) cores, median of $runs; base $(du -sm "$tree" | cut -f1) MB"
printf '\n%-34s %10s %12s\n' build seconds "vs buildah"
for what in cold no-op edit; do
    printf '%-34s %10.3f %12s\n' "buildah bud --layers ($what)" "${secs[buildah $what]}" 1.00
    printf '%-34s %10.3f %12.2f\n' "fledge build ($what)" "${secs[fledge $what]}" "$(echo "${secs[fledge $what]} / ${secs[buildah $what]}" | bc -l)"
done
for tool in buildah fledge; do
    per=$(echo "(${secs[$tool 6 RUNs]} - ${secs[$tool 1 RUN]}) / 5" | bc -l)
    printf '%-34s %10.3f\n' "$tool: cost per extra RUN" "$per"
done
printf '%-34s %10.3f %12.2f\n' "buildah 2 stages, --jobs 1" "${secs[buildah stages 1 job]}" 1.00
printf '%-34s %10.3f %12.2f\n' "buildah 2 stages, --jobs 2" "${secs[buildah stages 2 jobs]}" "$(echo "${secs[buildah stages 2 jobs]} / ${secs[buildah stages 1 job]}" | bc -l)"
printf '%-34s %10.3f %12.2f\n' "fledge 2 stages, 1 VM" "${secs[fledge stages 1 VM]}" "$(echo "${secs[fledge stages 1 VM]} / ${secs[buildah stages 1 job]}" | bc -l)"
printf '%-34s %10.3f %12.2f\n' "fledge 2 stages, 2 VMs" "${secs[fledge stages 2 VMs]}" "$(echo "${secs[fledge stages 2 VMs]} / ${secs[buildah stages 1 job]}" | bc -l)"
