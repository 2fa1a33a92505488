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
    local dir=$1 out=$2 tmp=$2.tmp
    rm -rf "$tmp" && mkdir -p "$tmp/blobs/sha256"
    tar -C "$dir" --sort=name --numeric-owner --xattrs -cf "$tmp/layer.tar" .
    local layer size config msize manifest
    layer=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
    size=$(stat -c %s "$tmp/layer.tar")
    mv "$tmp/layer.tar" "$tmp/blobs/sha256/$layer"
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
