#!/usr/bin/env bash
# Compares discovery-server with Redis (modelled as a registry) on this machine, over
# loopback only, and writes the results into docs/BENCHMARKS.md between the GENERATED
# markers (the prose around them is kept). docs/BENCHMARKS.md says what the figures mean.
#
# Every row gets a fresh server of each kind, so no row sees what an earlier one left. The
# whole run takes about 4 minutes with the defaults, plus the first build.
#
# Environment (all optional):
#   BENCH_SECONDS  measured seconds per row (default 8, at most 600)
#   BENCH_WARMUP   warm-up seconds per row, not measured (default 2)
#   BENCH_MICRO    1 to also run the criterion micro-benchmarks, briefly (default 1)
#   BENCH_NOTE     a sentence printed above the results (e.g. why the run is special)
#   BENCH_DOC      the file to write (default docs/BENCHMARKS.md); "-" prints only
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${BENCH_SECONDS:-8}
warmup=${BENCH_WARMUP:-2}
micro=${BENCH_MICRO:-1}
note=${BENCH_NOTE:-}
doc=${BENCH_DOC:-docs/BENCHMARKS.md}
for value in "$seconds" "$warmup"; do
    if ! [[ $value =~ ^[0-9]+$ ]] || ((value > 600)); then
        echo "compare.sh: BENCH_SECONDS and BENCH_WARMUP must be whole seconds, at most 600" >&2
        exit 2
    fi
done
if ((seconds < 1)); then
    echo "compare.sh: BENCH_SECONDS must be at least 1" >&2
    exit 2
fi

# The rows: op, connections, pipeline depth.
rows=(
    "register 1 1"
    "register 64 1"
    "heartbeat 1 1"
    "heartbeat 64 1"
    "query 1 1"
    "query 64 1"
    "mixed 64 1"
    "heartbeat 64 16"
)
# Seed data of the load rows, and of the memory figure.
instances=10000
types=100
memory_instances=100000

work=$(mktemp -d -t discovery-compare.XXXXXX)
running=()

log() { echo "compare.sh: $*" >&2; }

# Stops a process we started, by its PID: SIGTERM, then SIGKILL after 10 s.
stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local left=()
    for p in "${running[@]}"; do [[ $p == "$pid" ]] || left+=("$p"); done
    running=("${left[@]+"${left[@]}"}")
}

cleanup() {
    for pid in "${running[@]+"${running[@]}"}"; do stop "$pid"; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------- setup

if ! command -v redis-server >/dev/null; then
    if (($(id -u) != 0)); then
        log "redis-server is missing; install Debian's redis-server (as root) and run again"
        exit 1
    fi
    log "installing Debian's redis-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

log "building the release binaries"
cargo build --release --quiet -p discovery-server -p discovery-bench
server_bin=$root/target/release/discovery-server
bench_bin=$root/target/release/discovery-bench

# Starts a fresh discovery server on a free loopback port: sets discovery_pid and
# discovery_addr.
start_discovery() {
    local out=$work/discovery.out
    : >"$out"
    "$server_bin" --listen 127.0.0.1:0 --ttl 1h >"$out" 2>>"$work/discovery.log" &
    discovery_pid=$!
    running+=("$discovery_pid")
    discovery_addr=
    for _ in $(seq 100); do
        discovery_addr=$(sed -n 's/^listening on //p' "$out")
        [[ -n $discovery_addr ]] && return 0
        kill -0 "$discovery_pid" 2>/dev/null || break
        sleep 0.1
    done
    log "discovery-server did not start; its log:"
    tail -n 20 "$work/discovery.log" >&2
    exit 1
}

# Starts a fresh Redis on a free loopback port, saving nothing: sets redis_pid and
# redis_port.
start_redis() {
    local dir
    dir=$(mktemp -d -p "$work" redis.XXXXXX)
    for _ in $(seq 20); do
        redis_port=$((20000 + RANDOM % 40000))
        # Something already answers there: try another port.
        if (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null; then continue; fi
        redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
            --dir "$dir" --logfile "$dir/redis.log" --daemonize no &
        redis_pid=$!
        running+=("$redis_pid")
        for _ in $(seq 100); do
            if [[ $(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null) == PONG ]]; then
                return 0
            fi
            kill -0 "$redis_pid" 2>/dev/null || break
            sleep 0.1
        done
        stop "$redis_pid"
    done
    log "redis-server did not start; its log:"
    tail -n 20 "$dir/redis.log" >&2 || true
    exit 1
}

# Runs the load generator, bounded in time; prints its result line, or FAILED.
bench() {
    local limit=$((warmup + seconds + 120))
    if ! timeout --kill-after=5 "$limit" "$bench_bin" "$@" 2>>"$work/bench.log"; then
        echo "FAILED $*"
    fi
}

# Runs one row against a fresh server of the given backend.
run_row() {
    local backend=$1 op=$2 conns=$3 depth=$4
    local args=(--op "$op" --conns "$conns" --depth "$depth" --instances "$instances"
        --types "$types" --duration "${seconds}s" --warmup "${warmup}s")
    if [[ $backend == discovery ]]; then
        start_discovery
        bench --backend discovery --addr "$discovery_addr" "${args[@]}"
        stop "$discovery_pid"
    else
        start_redis
        bench --backend redis --redis-addr "127.0.0.1:$redis_port" "${args[@]}"
        stop "$redis_pid"
    fi
}

# The value of `key=value` in a result line.
field() {
    sed -n "s|.* $2=\([^ ]*\).*|\1|p" <<<" $1"
}

# "p50 / p99 / p999" of a result line, in µs.
latencies() {
    local p50 p99 p999
    p50=$(field "$1" p50) p99=$(field "$1" p99) p999=$(field "$1" p999)
    if [[ -z $p50 ]]; then echo FAILED; else echo "${p50%us} / ${p99%us} / ${p999%us}"; fi
}

# ----------------------------------------------------------------------------- runs

declare -A result
raw=()

# Results go through a file, not `$(...)`: servers are started and stopped by this shell,
# never by a subshell that the cleanup would not know of.
out=$work/result.txt

log "memory: $memory_instances instances over $types types in a fresh server of each kind"
start_discovery
bench --backend discovery --addr "$discovery_addr" --measure-memory "$discovery_pid" \
    --instances "$memory_instances" --types "$types" >"$out"
stop "$discovery_pid"
result[memory|discovery]=$(<"$out")
start_redis
bench --backend redis --redis-addr "127.0.0.1:$redis_port" --measure-memory "$redis_pid" \
    --instances "$memory_instances" --types "$types" >"$out"
stop "$redis_pid"
result[memory|redis]=$(<"$out")
raw+=("${result[memory|discovery]}" "${result[memory|redis]}")
echo "${result[memory|discovery]}"
echo "${result[memory|redis]}"

for i in "${!rows[@]}"; do
    read -r op conns depth <<<"${rows[$i]}"
    # Alternate which backend goes first, so that neither always runs on a warmer machine.
    if ((i % 2 == 0)); then order=(discovery redis); else order=(redis discovery); fi
    for backend in "${order[@]}"; do
        log "$op, $conns connections, depth $depth: $backend"
        run_row "$backend" "$op" "$conns" "$depth" >"$out"
        line=$(<"$out")
        result[$i|$backend]=$line
        raw+=("$line")
        echo "$line"
    done
done

micro_lines=()
if [[ $micro == 1 ]]; then
    log "criterion micro-benchmarks (short)"
    # `bencher` output: one `test NAME ... bench: N ns/iter (+/- M)` line per benchmark.
    if timeout 900 cargo bench --quiet -p discovery-bench --features micro -- \
        --warm-up-time 1 --measurement-time 3 --output-format bencher \
        >"$work/micro.txt" 2>>"$work/micro.log"; then
        mapfile -t micro_lines < <(grep '^test ' "$work/micro.txt")
    else
        micro_lines=("FAILED (cargo bench -p discovery-bench --features micro)")
        tail -n 20 "$work/micro.log" >&2
    fi
fi

# --------------------------------------------------------------------------- report

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
[[ -n $cpu ]] || cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain 2>/dev/null) ]]; then revision="$revision + uncommitted changes"; fi

command_line="BENCH_SECONDS=$seconds BENCH_WARMUP=$warmup BENCH_MICRO=$micro bench/compare.sh"
generated=$work/generated.md
{
    echo "### Results of $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    if [[ -n $note ]]; then
        echo "**$note**"
        echo
    fi
    echo "- Command: \`$command_line\`"
    echo "- Machine: $(nproc) cores ($cpu), $(uname -sr)"
    echo "- Versions: $(rustc -V 2>/dev/null || echo rustc unknown); $(redis-server --version | cut -d ' ' -f 1-3)"
    echo "- Source: revision $revision"
    echo "- Each row: $instances instances over $types types registered first, ${warmup} s warm-up, ${seconds} s measured; a fresh server of each kind per row"
    echo
    echo "| op | conns | depth | discovery ops/s | Redis ops/s | discovery / Redis | discovery p50 / p99 / p999 µs | Redis p50 / p99 / p999 µs | errors (discovery / Redis) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for i in "${!rows[@]}"; do
        read -r op conns depth <<<"${rows[$i]}"
        d=${result[$i|discovery]}
        r=${result[$i|redis]}
        d_ops=$(field "$d" ops/s)
        r_ops=$(field "$r" ops/s)
        ratio=$(awk -v d="${d_ops:-0}" -v r="${r_ops:-0}" \
            'BEGIN { if (r > 0 && d > 0) printf "%.2f", d / r; else print "n/a" }')
        echo "| $op | $conns | $depth | ${d_ops:-FAILED} | ${r_ops:-FAILED} | $ratio | $(latencies "$d") | $(latencies "$r") | $(field "$d" errors) / $(field "$r" errors) |"
    done
    echo
    echo "Resident memory per live instance, $memory_instances instances over $types types, no metadata (VmRSS after registering them, minus before, divided by their number):"
    echo
    echo "| store | RSS before | RSS after | bytes per instance |"
    echo "|---|---:|---:|---:|"
    for backend in discovery redis; do
        m=${result[memory|$backend]}
        echo "| $backend | $(field "$m" rss_before) | $(field "$m" rss_after) | $(field "$m" bytes/instance) |"
    done
    if ((${#micro_lines[@]} > 0)); then
        echo
        echo "Criterion micro-benchmarks (\`--warm-up-time 1 --measurement-time 3\`; time per operation):"
        echo
        echo "| benchmark | ns per operation |"
        echo "|---|---:|"
        for line in "${micro_lines[@]}"; do
            name=$(sed -n 's/^test \([^ ]*\) .*/\1/p' <<<"$line")
            ns=$(sed -n 's/.*bench: *\([0-9,]*\) ns\/iter.*/\1/p' <<<"$line")
            echo "| ${name:-$line} | ${ns:-?} |"
        done
    fi
    echo
    echo "<details><summary>The load generator's own lines</summary>"
    echo
    echo '```'
    printf '%s\n' "${raw[@]}"
    echo '```'
    echo
    echo "</details>"
} >"$generated"

cat "$generated"

begin='<!-- BEGIN GENERATED by bench/compare.sh: everything up to the END marker is replaced on each run -->'
end='<!-- END GENERATED -->'
if [[ $doc == - ]]; then
    exit 0
fi
if [[ ! -f $doc ]]; then
    printf '# Benchmarks\n\n' >"$doc"
fi
if grep -qxF "$begin" "$doc"; then
    awk -v gen="$generated" -v begin="$begin" -v end="$end" '
        $0 == begin { print; while ((getline line < gen) > 0) print line; skip = 1; next }
        $0 == end { skip = 0 }
        !skip { print }
    ' "$doc" >"$work/doc.md"
else
    { cat "$doc"; echo; echo "$begin"; cat "$generated"; echo "$end"; } >"$work/doc.md"
fi
cat "$work/doc.md" >"$doc"
log "wrote the results into $doc"
if grep -q FAILED "$generated"; then
    log "some runs failed; see the table"
    exit 1
fi
