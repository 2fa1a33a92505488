#!/usr/bin/env bash
# Usage: test-total.sh LOG SKIPS
# Lists the tests recorded as skipped in the directory SKIPS (one file per test, holding
# why; see test-support), then prints `total: P passed, F failed, S skipped` for the
# `cargo test` output in LOG: a skipped test is one libtest counts as passed, so it moves
# from passed to skipped; libtest's ignored tests are skipped too.
set -euo pipefail
log=$1
skips=$2
recorded=0
for record in "$skips"/*; do
    [ -f "$record" ] || continue
    printf 'skipped %s: %s\n' "$(basename "$record")" "$(awk 'NR > 1 {printf "; "} {printf "%s", $0}' "$record")"
    recorded=$((recorded + 1))
done
awk -v recorded="$recorded" '/^test result:/ {p += $4; f += $6; i += $8}
    END {printf "total: %d passed, %d failed, %d skipped\n", p - recorded, f, i + recorded}' "$log"
