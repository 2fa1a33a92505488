#!/usr/bin/env bash
# Booting, measured from the host (median of RUNS):
#  1. boot to workload exit of a Fledge initramfs (examples/hello: BusyBox, init, stub agent,
#     hello; "boot" ends when the guest has powered off after hello exited): `fledge run`
#     against QEMU started by hand with the same machine, kernel and initramfs (what a user
#     would otherwise type), with the initramfs compressed with gzip, lz4 and zstd, on Debian's
#     cloud kernel and on Fledge's own (`fledge kernel build`);
#  2. a build VM: cold boot until guest-init's agent answers gRPC over vsock, and the exec
#     and info round trips on the running guest (benches/agent.rs), on Fledge's kernel.
# Accel: tcg unless FLEDGE_ACCEL says otherwise (this project's machines cannot run KVM guests).
#
# usage: bench/boot.sh [RUNS]    (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
cargo build --release --quiet
fledge=$(realpath target/release/fledge)
make -s examples/hello/build/hello examples/hello/build/stub-agent
debian_kernel=$(scripts/fetch-test-kernel.sh)
kernel_state=${FLEDGE_TEST_CACHE:-$HOME/.cache/fledge-test}/kernel-state
FLEDGE_STATE_DIR=$kernel_state "$fledge" kernel build -q
fledge_kernel=$kernel_state/kernel/vmlinux
accel=${FLEDGE_ACCEL:-tcg}
source bench/lib.sh
drop_caches() { :; } # boots read small files that stay cached on any real host

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for comp in gzip:gz lz4:lz4 zstd:zst; do
    sed "s|^\[source\]|[filesystem]\ncompression = \"${comp%:*}\"\n\n[source]|" examples/hello/fledge.toml >examples/hello/bench.toml
    "$fledge" build -q -c examples/hello/bench.toml -o "$work/hello.cpio.${comp#*:}"
done
rm examples/hello/bench.toml

by_hand() { # $1 kernel, $2 acpi on|off
    qemu-system-x86_64 -M "microvm,acpi=$2" -accel "$accel" -cpu max -m 512M -smp 1 -nodefaults -no-user-config \
        -nographic -serial stdio -no-reboot -kernel "$1" -initrd "$work"/hello.cpio.gz \
        -append "console=ttyS0 reboot=t panic=-1 quiet" </dev/null
}
fledge_run() { # $1 kernel env, $2 initramfs
    env "$1" "$fledge" run -q --accel "$accel" "$2"
}
debian_by_hand() { by_hand "$debian_kernel" on; }
debian_gzip() { fledge_run "FLEDGE_KERNEL_BZIMAGE=$debian_kernel" "$work"/hello.cpio.gz; }
debian_lz4() { fledge_run "FLEDGE_KERNEL_BZIMAGE=$debian_kernel" "$work"/hello.cpio.lz4; }
debian_zstd() { fledge_run "FLEDGE_KERNEL_BZIMAGE=$debian_kernel" "$work"/hello.cpio.zst; }
fledge_by_hand() { by_hand "$fledge_kernel" off; }
fledge_gzip() { fledge_run "FLEDGE_STATE_DIR=$kernel_state" "$work"/hello.cpio.gz; }
fledge_lz4() { fledge_run "FLEDGE_STATE_DIR=$kernel_state" "$work"/hello.cpio.lz4; }
fledge_zstd() { fledge_run "FLEDGE_STATE_DIR=$kernel_state" "$work"/hello.cpio.zst; }
time_pair "debian: qemu by hand, gzip" debian_by_hand "debian: fledge run, gzip" debian_gzip
time_it "debian: fledge run, lz4" debian_lz4
time_it "debian: fledge run, zstd" debian_zstd
time_pair "fledge: qemu by hand, gzip" fledge_by_hand "fledge: fledge run, gzip" fledge_gzip
time_it "fledge: fledge run, lz4" fledge_lz4
time_it "fledge: fledge run, zstd" fledge_zstd

echo "accel $accel, $(nproc) cores, median of $runs"
printf '\n%-32s %10s %12s\n' "boot to workload exit" seconds "vs by hand"
for k in debian fledge; do
    for name in "qemu by hand, gzip" "fledge run, gzip" "fledge run, lz4" "fledge run, zstd"; do
        printf '%-32s %10.2f %12.2f\n' "$k: $name" "${secs[$k: $name]}" "$(echo "${secs[$k: $name]} / ${secs[$k: qemu by hand, gzip]}" | bc -l)"
    done
done

echo
RUNS=$runs FLEDGE_BENCH_KERNEL=$fledge_kernel cargo bench --quiet --bench agent 2>/dev/null
