#!/usr/bin/env bash
# Checks that a test which cannot run never passes silently, on one representative test: the
# kernel test run without the kernel state it needs must fail when CI is set, and otherwise
# say why it skips and be recorded under FLEDGE_TEST_SKIPS (which `make test` counts).
set -euo pipefail
cd "$(dirname "$0")/.."
test=a_built_kernel_is_reused_and_boots_an_initramfs
records=$(mktemp -d)
trap 'rm -rf "$records"' EXIT

run() {
    env -u FLEDGE_TEST_KERNEL_STATE -u CI FLEDGE_TEST_SKIPS="$records" "$@" \
        "${CARGO:-cargo}" test --locked -q --test kernel -- --exact "$test" --nocapture 2>&1
}
fail() {
    printf 'check-skips: %s\n%s\n' "$1" "$2" >&2
    exit 1
}

if out=$(run CI=true); then
    fail "kernel::$test passed with CI set although it could not run" "$out"
fi
grep -q "cannot run in CI: FLEDGE_TEST_KERNEL_STATE is not set" <<<"$out" ||
    fail "kernel::$test failed with CI set, but not saying why it cannot run" "$out"
[ -z "$(ls -A "$records")" ] || fail "a skip that failed the test was recorded as a skip" "$(ls "$records")"

out=$(run) || fail "kernel::$test failed without CI set (it should skip)" "$out"
grep -q "SKIPPED kernel::$test: FLEDGE_TEST_KERNEL_STATE is not set" <<<"$out" ||
    fail "kernel::$test did not say why it skipped" "$out"
[ -s "$records/kernel::$test" ] || fail "kernel::$test's skip was not recorded in FLEDGE_TEST_SKIPS" "$(ls "$records")"
echo "check-skips: a test that cannot run fails in CI and is counted as skipped elsewhere"
