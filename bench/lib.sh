# Shared by the benchmark scripts: timing helpers. Source it; it defines:
#   drop_caches            start from a cold page cache (as root; a no-op otherwise)
#   time_it NAME CMD...    run CMD $runs times, record the median seconds in secs[NAME]
#   time_pair A CMD_A B CMD_B
#                          the same for two commands (each one word: a function or a
#                          program), alternating A and B so drift in the machine hits both

# This machine's file-creation speed swings with page-cache pressure, so every timed run
# starts from the same state.
drop_caches() { if [ "$(id -u)" = 0 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi; }

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# timed CMD...: seconds one cold run of CMD takes.
timed() {
    drop_caches
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null || { echo "benchmark command failed: $*" >&2; return 1; }
    end=$(date +%s.%N)
    echo "$end - $start" | bc
}

declare -A secs
time_it() {
    local name=$1; shift
    local times=()
    for _ in $(seq "${runs:-1}"); do
        times+=("$(timed "$@")")
    done
    secs[$name]=$(printf '%s\n' "${times[@]}" | median)
}

time_pair() {
    local a=$1 cmd_a=$2 b=$3 cmd_b=$4
    local ta=() tb=()
    for _ in $(seq "${runs:-1}"); do
        ta+=("$(timed "$cmd_a")")
        tb+=("$(timed "$cmd_b")")
    done
    secs[$a]=$(printf '%s\n' "${ta[@]}" | median)
    secs[$b]=$(printf '%s\n' "${tb[@]}" | median)
}

# plain_layout DIR OUT: an OCI layout at OUT with DIR as its one uncompressed layer (tag 1),
# so Fledge reads exactly the tree another tool reads from DIR, with nothing to decompress.
plain_layout() {
    local dir=$1 out=$2
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    tar -C "$dir" --sort=name --numeric-owner --xattrs -cf "$out.tmp/layer.tar" .
    tar_layout "$out.tmp/layer.tar" "$out"
}

# tar_layout TAR OUT: an OCI layout at OUT with the tar file TAR (moved into it) as its one
# uncompressed layer (tag 1).
tar_layout() {
    local tmp=$2.tmp out=$2
    mkdir -p "$tmp/blobs/sha256"
    local layer size config msize manifest
    layer=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    mv "$1" "$tmp/blobs/sha256/$layer"
    blob() { local d; d=$(printf '%s' "$1" | sha256sum | cut -d' ' -f1); printf '%s' "$1" >"$tmp/blobs/sha256/$d"; echo "$d"; }
    config=$(blob "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$layer\"]}}")
    local m="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config\",\"size\":$(stat -c %s "$tmp/blobs/sha256/$config")},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$layer\",\"size\":$size}]}"
    manifest=$(blob "$m")
    msize=$(stat -c %s "$tmp/blobs/sha256/$manifest")
    printf '{"imageLayoutVersion":"1.0.0"}' >"$tmp/oci-layout"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"1"}}]}' \
        "$manifest" "$msize" >"$tmp/index.json"
    rm -rf "$out" && mv "$tmp" "$out"
}

# start_registry WORK: a docker-registry on 127.0.0.1 with its storage under WORK; sets
# $port and $registry_pid (the caller's EXIT trap kills it) and waits until it answers.
start_registry() {
    local work=$1
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s/registry\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:%s\n' "$work" "$port" >"$work/registry.yml"
    docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
    registry_pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
}

# push_tree TREE IMAGE WORK: the directory TREE as a one-layer image, pushed to IMAGE
# (umoci builds it in WORK/layout, skopeo pushes it).
push_tree() {
    local tree=$1 image=$2 work=$3
    umoci init --layout "$work/layout"
    umoci new --image "$work/layout:1"
    umoci insert --image "$work/layout:1" "$tree" / >/dev/null
    skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:1" "docker://$image"
}

# dockerfile_bench_setup: what the Dockerfile build benchmarks need: buildah, the minbase
# tree ($tree: FLEDGE_BENCH_TREE, else minbase under FLEDGE_BENCH_DIR), a release build ($fledge), the guest kernel, and the build VM's settings.
dockerfile_bench_setup() {
    tree=${FLEDGE_BENCH_TREE:-${FLEDGE_BENCH_DIR:-/var/cache/fledge-bench}/minbase}
    command -v buildah >/dev/null || apt-get install -y -qq buildah >/dev/null
    [ -d "$tree" ] || bench/initramfs-pack.sh 0 >/dev/null 2>&1 || true
    [ -d "$tree" ] || { echo "no tree at $tree (run bench/initramfs-pack.sh once as root)" >&2; exit 1; }
    cargo build --release --quiet
    fledge=$(realpath target/release/fledge)
    local kernel_state=${FLEDGE_TEST_CACHE:-$HOME/.cache/fledge-test}/kernel-state
    FLEDGE_STATE_DIR=$kernel_state "$fledge" kernel build -q
    export FLEDGE_KERNEL_VMLINUX=$kernel_state/kernel/vmlinux FLEDGE_ACCEL=${FLEDGE_ACCEL:-tcg}
    FLEDGE_AGENT=$(command -v busybox)
    export FLEDGE_AGENT
}
