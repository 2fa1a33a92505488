#!/usr/bin/env bash
# Records one real exchange with Cloud Hypervisor's REST API as the fixture that
# vmm/tests/cloud_hypervisor.rs replays in CI (where no cloud-hypervisor binary exists).
# Needs a cloud-hypervisor binary (CLOUDHYPERVISOR or on PATH; build it from its own source
# outside this repository), curl and python3. The VM is created but never booted, so this
# works even where KVM cannot run guests.
#
# usage: scripts/capture-ch-fixtures.sh KERNEL > vmm/tests/fixtures/cloud-hypervisor-vX.json
set -euo pipefail
ch=${CLOUDHYPERVISOR:-cloud-hypervisor}
kernel=$(realpath "$1")
work=$(mktemp -d)
"$ch" --api-socket "path=$work/api.sock" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -S "$work/api.sock" ] && break; sleep 0.05; done
config=$(printf '{"cpus":{"boot_vcpus":1,"max_vcpus":1},"memory":{"size":268435456},"payload":{"kernel":"%s","cmdline":"console=ttyS0"},"serial":{"mode":"Tty"},"console":{"mode":"Off"}}' "$kernel")
exchange() { # METHOD ENDPOINT [BODY]
    local out status
    out=$(curl -s --unix-socket "$work/api.sock" -X "$1" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} -w '\n%{http_code}' "http://localhost/api/v1/$2")
    status=${out##*$'\n'}
    python3 -c 'import json,sys; print(json.dumps({"method": sys.argv[1], "endpoint": sys.argv[2], "request": sys.argv[3], "status": int(sys.argv[4]), "response": sys.argv[5]}))' \
        "$1" "$2" "${3:-}" "$status" "${out%$'\n'*}"
}
version=$("$ch" --version)
{
    exchange GET vmm.ping
    exchange PUT vm.create "$config"
    exchange GET vm.info
    exchange PUT vm.create "$config" # a second create is refused
    exchange PUT vm.delete
    exchange PUT vmm.shutdown
} | python3 -c 'import json,sys; print(json.dumps({"version": sys.argv[1], "captured_with": "scripts/capture-ch-fixtures.sh (curl over the API socket; the VM created, never booted)", "kernel_placeholder": sys.argv[2], "exchanges": [json.loads(l) for l in sys.stdin]}, indent=2))' "$version" "$kernel"
