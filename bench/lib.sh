# Shared by the benchmark scripts: timing helpers. Source it; it defines:
#   drop_caches            start from a cold page cache (as root; a no-op otherwise)
#   time_it NAME CMD...    run CMD $runs times, record the median seconds in secs[NAME]

# This machine's file-creation speed swings with page-cache pressure, so every timed run
# starts from the same state.
drop_caches() { if [ "$(id -u)" = 0 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi; }

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A secs
time_it() {
    local name=$1; shift
    local times=()
    for _ in $(seq "${runs:-1}"); do
        drop_caches
        local start end
        start=$(date +%s.%N)
        "$@"
        end=$(date +%s.%N)
        times+=("$(echo "$end - $start" | bc)")
    done
    secs[$name]=$(printf '%s\n' "${times[@]}" | median)
}
