#!/usr/bin/env bash
# Boot to workload exit of a Fledge initramfs, measured from the host, median of RUNS:
#   `fledge run` (kernel lookup, QMP, console watching, status) against QEMU started by hand
#   with the same machine, kernel and initramfs (what a user would otherwise type), and the
#   same initramfs compressed with gzip, lz4 and zstd. Kernel: Debian's cloud kernel
#   (scripts/fetch-test-kernel.sh) unless FLEDGE_KERNEL_BZIMAGE is set. Accel: tcg unless
#   FLEDGE_ACCEL says otherwise. The initramfs is examples/hello (BusyBox, init, stub agent,
#   hello); "boot" ends when the guest has powered off after hello exited.
#
# usage: bench/boot.sh [RUNS]    (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
fledge=$(realpath "${FLEDGE:-target/release/fledge}")
cargo build --release --quiet
make -s examples/hello/build/hello examples/hello/build/stub-agent
export FLEDGE_KERNEL_BZIMAGE=${FLEDGE_KERNEL_BZIMAGE:-$(scripts/fetch-test-kernel.sh)}
accel=${FLEDGE_ACCEL:-tcg}
source bench/lib.sh
drop_caches() { :; } # boots read small files that stay cached on any real host

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for comp in gzip:gz lz4:lz4 zstd:zst; do
    sed "s|^\[source\]|[filesystem]\ncompression = \"${comp%:*}\"\n\n[source]|" examples/hello/fledge.toml >"examples/hello/bench.toml"
    "$fledge" build -q -c examples/hello/bench.toml -o "$work/hello.cpio.${comp#*:}"
done
rm examples/hello/bench.toml
by_hand() {
    qemu-system-x86_64 -M microvm,acpi=on -accel "$accel" -cpu max -m 512M -smp 1 -nodefaults -no-user-config \
        -nographic -serial stdio -no-reboot -kernel "$FLEDGE_KERNEL_BZIMAGE" -initrd "$work"/hello.cpio.gz \
        -append "console=ttyS0 reboot=t panic=-1 quiet" </dev/null
}
run_gzip() { "$fledge" run -q --accel "$accel" "$work"/hello.cpio.gz; }
run_lz4() { "$fledge" run -q --accel "$accel" "$work"/hello.cpio.lz4; }
run_zstd() { "$fledge" run -q --accel "$accel" "$work"/hello.cpio.zst; }
time_pair "qemu by hand, gzip" by_hand "fledge run, gzip" run_gzip
time_it "fledge run, lz4" run_lz4
time_it "fledge run, zstd" run_zstd

echo "kernel: $FLEDGE_KERNEL_BZIMAGE, accel $accel, $(nproc) cores, median of $runs"
printf '\n%-24s %10s %12s\n' boot seconds "vs by hand"
for name in "qemu by hand, gzip" "fledge run, gzip" "fledge run, lz4" "fledge run, zstd"; do
    printf '%-24s %10.2f %12.2f\n' "$name" "${secs[$name]}" "$(echo "${secs[$name]} / ${secs[qemu by hand, gzip]}" | bc -l)"
done
