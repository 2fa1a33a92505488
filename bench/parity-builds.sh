#!/usr/bin/env bash
# The BuildKit parity suite's cases (tests/parity/cases), side by side: Fledge's embedded
# engine (RUN steps in a QEMU build VM; TCG here unless FLEDGE_ACCEL=kvm) against BuildKit
# itself (`buildctl build --no-cache` on a running buildkitd, OCI worker), each case built
# cold in turn, alternating the two. Fledge starts each case from an empty store, so every
# build boots its VM and builds BusyBox's layer again, as BuildKit's --no-cache does.
# Reported: the total and the median per case for each, and the ratio.
# Needs a buildkitd at BUILDKIT_ADDR (started with --allow-insecure-entitlement
# security.insecure) and buildctl on PATH; Debian packages neither, so this is run where one
# was built.
#
# usage: BUILDKIT_ADDR=unix:///run/buildkit/buildkitd.sock bench/parity-builds.sh [CASE_PREFIX]
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-}
: "${BUILDKIT_ADDR:?set BUILDKIT_ADDR to a running buildkitd}"
command -v buildctl >/dev/null || { echo "needs buildctl on PATH" >&2; exit 1; }
fledge=$(realpath "${FLEDGE:-target/release/fledge}")
[ -x "$fledge" ] || cargo build --release --quiet
cargo build --release --quiet -p fledge-parity --bin materialise
materialise=target/release/materialise
: "${FLEDGE_KERNEL_VMLINUX:=$HOME/.cache/fledge-test/kernel-state/kernel/vmlinux}"
export FLEDGE_KERNEL_VMLINUX FLEDGE_ACCEL=${FLEDGE_ACCEL:-tcg} FLEDGE_AGENT=${FLEDGE_AGENT:-$(command -v busybox)}

work=$(mktemp -d "${FLEDGE_BENCH_DIR:-/var/tmp}/parity.XXXXXX")
trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
fl_times=() bk_times=()
for case in tests/parity/cases/"$prefix"*.case; do
    name=$(basename "$case" .case)
    dir=$work/$name
    options=$("$materialise" "$case" "$dir")
    fl_args=() bk_args=()
    while read -r option; do
        case $option in
            target=*) fl_args+=(--target "${option#target=}"); bk_args+=(--opt "$option") ;;
            build-arg=*) fl_args+=(--build-arg "${option#build-arg=}"); bk_args+=(--opt "build-arg:${option#build-arg=}") ;;
            secret=*) id=${option#secret=}; fl_args+=(--secret "id=$id,src=$dir/secrets/$id"); bk_args+=(--secret "id=$id,src=$dir/secrets/$id") ;;
            allow=*) fl_args+=(--allow "${option#allow=}"); bk_args+=(--allow "${option#allow=}") ;;
        esac
    done <<<"$options"
    start=$(now)
    FLEDGE_STATE_DIR=$dir/state "$fledge" build -q "$dir/context/Dockerfile" --context "$dir/context" \
        --build-context "bb=$dir/bb" -o "$dir/fl.squashfs" --export-oci "$dir/fl.tar" "${fl_args[@]}" >/dev/null 2>&1 || true
    fl_times+=("$(echo "$(now) - $start" | bc)")
    start=$(now)
    buildctl --addr "$BUILDKIT_ADDR" build --no-cache --frontend dockerfile.v0 --local "context=$dir/context" \
        --local "dockerfile=$dir/context" --local "bb=$dir/bb" --opt context:bb=local:bb \
        --output "type=oci,dest=$dir/bk.tar" "${bk_args[@]}" >/dev/null 2>&1 || true
    bk_times+=("$(echo "$(now) - $start" | bc)")
    rm -rf "$dir"
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
total() { printf '%s\n' "$@" | awk '{s+=$1} END {printf "%.1f", s}'; }
fl_total=$(total "${fl_times[@]}") bk_total=$(total "${bk_times[@]}")
printf '%d cases (each a cold build; failures included, as each case expects)\n' "${#fl_times[@]}"
printf '%-28s %10s %12s\n' "" "total (s)" "median (s)"
printf '%-28s %10s %12.2f\n' "Fledge (embedded, QEMU $FLEDGE_ACCEL)" "$fl_total" "$(median "${fl_times[@]}")"
printf '%-28s %10s %12.2f\n' "BuildKit (buildctl, runc)" "$bk_total" "$(median "${bk_times[@]}")"
printf 'ratio Fledge/BuildKit: %.2f\n' "$(echo "$fl_total / $bk_total" | bc -l)"
