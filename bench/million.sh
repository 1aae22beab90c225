#!/usr/bin/env bash
# One discovery server holding a million live instances, every one of them kept alive by
# heartbeats (200,000 a second: one per instance every 5 s, the server's TTL 15 s) through
# pipelined connections, while queries are answered beside them. Runs over loopback only,
# and writes the results into docs/BENCHMARKS.md between this script's own markers (the
# prose around them, and bench/compare.sh's section, are kept). docs/BENCHMARKS.md says
# what the figures mean.
#
# Takes about 75 s with the defaults, plus the build.
#
# Environment (all optional):
#   MILLION_SECONDS     measured seconds (default 60, at most 3600)
#   MILLION_WARMUP      seconds of the same load before measuring (default 5)
#   MILLION_INSTANCES   live instances (default 1000000, at most 1000000)
#   MILLION_TYPES       types they are spread over (default 1000)
#   MILLION_INTERVAL    seconds between two heartbeats of one instance (default 5)
#   MILLION_TTL         the server's --ttl in seconds (default 15)
#   MILLION_CONNS       heartbeat connections (default 16)
#   MILLION_DEPTH       heartbeats in flight per connection, at most (default 128)
#   MILLION_QUERY_RATE  queries per second beside the heartbeats (default 50)
#   BENCH_NOTE          a sentence printed above the results (e.g. why the run is special)
#   BENCH_DOC           the file to write (default docs/BENCHMARKS.md); "-" prints only
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${MILLION_SECONDS:-60}
warmup=${MILLION_WARMUP:-5}
instances=${MILLION_INSTANCES:-1000000}
types=${MILLION_TYPES:-1000}
interval=${MILLION_INTERVAL:-5}
ttl=${MILLION_TTL:-15}
conns=${MILLION_CONNS:-16}
depth=${MILLION_DEPTH:-128}
query_rate=${MILLION_QUERY_RATE:-50}
note=${BENCH_NOTE:-}
doc=${BENCH_DOC:-docs/BENCHMARKS.md}
for value in "$seconds" "$warmup" "$instances" "$types" "$interval" "$ttl" "$conns" \
    "$depth" "$query_rate"; do
    if ! [[ $value =~ ^[0-9]+$ ]]; then
        echo "million.sh: every MILLION_* setting is a whole number, not '$value'" >&2
        exit 2
    fi
done
if ((seconds < 1 || seconds > 3600 || warmup > 3600)); then
    echo "million.sh: MILLION_SECONDS must be 1 to 3600 and MILLION_WARMUP at most 3600" >&2
    exit 2
fi

work=$(mktemp -d -t discovery-million.XXXXXX)
server_pid=

log() { echo "million.sh: $*" >&2; }

# CPU time so far of every process: "pid<TAB>name<TAB>ticks" (utime + stime, fields 14 and
# 15 of /proc/PID/stat, counted after the name, which may hold spaces and parentheses).
proc_cpu() {
    # Processes may end between the glob and the read: cat then fails, which is fine.
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
        o = index($0, "("); c = 0
        for (i = length($0); i > o; i--) if (substr($0, i, 1) == ")") { c = i; break }
        if (o == 0 || c == 0) next
        split(substr($0, c + 2), f, " ")
        printf "%s\t%s\t%d\n", substr($0, 1, o - 2), substr($0, o + 1, c - o - 1), f[12] + f[13]
    }'
}

# Stops a process we started, by its PID: SIGTERM, then SIGKILL after 10 s.
stop() {
    local pid=$1
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    stop "$server_pid"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building the release binaries"
cargo build --release --quiet -p discovery-server -p discovery-bench
server_bin=$root/target/release/discovery-server
bench_bin=$root/target/release/discovery-bench

# The registry's caps: the total at its default of 1,000,000 (written out, since this run
# fills it), and the per-type cap (default 100,000) far above instances / types.
"$server_bin" --listen 127.0.0.1:0 --ttl "${ttl}s" --max-instances 1000000 \
    --max-instances-per-type 100000 >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
addr=
for _ in $(seq 100); do
    addr=$(sed -n 's/^listening on //p' "$work/server.out")
    [[ -n $addr ]] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ -z $addr ]]; then
    log "discovery-server did not start; its log:"
    tail -n 20 "$work/server.log" >&2
    exit 1
fi
log "discovery-server $server_pid listening on $addr"

args=(--backend discovery --addr "$addr" --op keepalive --server-pid "$server_pid"
    --instances "$instances" --types "$types" --conns "$conns" --depth "$depth"
    --interval "${interval}s" --duration "${seconds}s" --warmup "${warmup}s"
    --query-rate "$query_rate")
load_before=$(cut -d ' ' -f 1-3 /proc/loadavg)
started=$(date -u '+%Y-%m-%d %H:%M UTC')
proc_cpu >"$work/cpu.before"
t0=$(date +%s.%N)
status=0
# Bounded: the run ends by itself; this is in case it does not.
timeout --kill-after=5 $((warmup + seconds + 300)) "$bench_bin" "${args[@]}" \
    >"$work/result.txt" 2>"$work/bench.log" || status=$?
load_after=$(cut -d ' ' -f 1-3 /proc/loadavg)
t1=$(date +%s.%N)
proc_cpu >"$work/cpu.after"
# The busiest processes over the run (% of one core; clock ticks are 1/100 s), the server
# marked. The load generator has ended by now: its own figure is in its line.
busiest=$(awk -F '\t' -v secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
    -v server="$server_pid" '
    NR == FNR { before[$1] = $3; next }
    {
        d = $3 - before[$1]
        if (d <= 0) next
        name = $2
        if ($1 == server) name = name " (the server)"
        printf "%.0f\t%s\n", d / secs, name
    }' "$work/cpu.before" "$work/cpu.after" | sort -rn | head -n 6 |
    awk -F '\t' '$1 >= 2 { printf "%s%s %s %%", sep, $2, $1; sep = ", " }')
stop "$server_pid"
server_pid=
cat "$work/bench.log" >&2
line=$(cat "$work/result.txt")
if ((status != 0)) || [[ -z $line ]]; then
    log "the load generator failed (exit $status)"
    line="FAILED"
fi
echo "$line"

# ---------------------------------------------------------------------------- report

# The value of `key=value` in the result line.
field() {
    sed -n "s|.* $1=\([^ ]*\).*|\1|p" <<<" $line"
}
mib() {
    awk -v k="$1" 'BEGIN { if (k ~ /^[0-9]+$/) printf "%.0f MiB", k / 1024; else print "n/a" }'
}

rate=$(field heartbeats_per_sec)
target=$(field target_heartbeats_per_sec)
not_found=$(field not_found)
errors=$(field errors)
failed=$(field failed_conns)
live=$(field live_at_end)
queries=$(field queries)
# The target of issue 9: 200,000 heartbeats a second (99 % of it, for the edges of the
# measured time), no NotFound, no error, every instance live at the end, queries answered.
verdict=$(awk -v r="${rate:-0}" -v nf="${not_found:-x}" -v e="${errors:-x}" \
    -v f="${failed:-x}" -v live="${live:-x}" -v n="$instances" -v q="${queries:-0}" 'BEGIN {
    why = ""
    if (r < 198000) why = why sprintf("; %.0f heartbeats/s is %.1f %% of 200,000", r, r / 2000)
    if (nf != "0") why = why "; " nf " NotFound"
    if (e != "0" || f != "0") why = why "; " e " errors, " f " failed connections"
    if (live != n) why = why "; " live " of " n " instances live at the end"
    if (q + 0 == 0) why = why "; no query answered"
    if (why == "") print "reached"; else print "NOT reached" why
}')

# The machine's busy share that was neither the server nor the load generator.
others=$(awk -v m="$(field machine_busy_pct)" -v s="$(field server_cpu_pct_machine)" \
    -v b="$(field bench_cpu_pct_core)" -v n="$(nproc)" \
    'BEGIN { if (m ~ /^[0-9.]+$/ && s ~ /^[0-9.]+$/) printf "%.0f", m - s - b / n; else print "n/a" }')
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
[[ -n $cpu ]] || cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain 2>/dev/null) ]]; then revision="$revision + uncommitted changes"; fi
command_line="MILLION_SECONDS=$seconds MILLION_WARMUP=$warmup MILLION_INSTANCES=$instances MILLION_TYPES=$types MILLION_INTERVAL=$interval MILLION_TTL=$ttl MILLION_CONNS=$conns MILLION_DEPTH=$depth MILLION_QUERY_RATE=$query_rate bench/million.sh"

generated=$work/generated.md
{
    echo "### Results of $started"
    echo
    if [[ -n $note ]]; then
        echo "**$note**"
        echo
    fi
    echo "- Command: \`$command_line\`"
    echo "- Load generator: \`discovery-bench ${args[*]}\` (address and PID of that run)"
    echo "- Server: \`discovery-server --listen 127.0.0.1:0 --ttl ${ttl}s --max-instances 1000000 --max-instances-per-type 100000\`"
    echo "- Machine: $(nproc) cores ($cpu), $(uname -sr); the server and the load generator share them"
    echo "- Load average (1, 5, 15 min) before: $load_before; after: $load_after. The machine was $(field machine_busy_pct) % busy over the measured time, all processes together (server and load generator included); other processes: $others % of the machine"
    echo "- Busiest processes over the whole run, % of one core: ${busiest:-none above 2 %}"
    echo "- Versions: $(rustc -V 2>/dev/null || echo rustc unknown); source: revision $revision"
    echo "- Target: **$verdict**"
    echo
    echo "| figure | value |"
    echo "|---|---:|"
    echo "| live instances (types) | $instances ($types) |"
    echo "| registering them, pipelined on 4 connections | $(field register_s) s ($(field registers_per_sec)/s) |"
    echo "| heartbeats per second: target / achieved | $target / $rate |"
    echo "| heartbeats answered \`Ok\` in the measured ${seconds} s | $(field heartbeats) |"
    echo "| \`NotFound\` / other errors / failed connections (whole run) | $not_found / $errors / $failed |"
    echo "| longest round of a connection's share (gap between two heartbeats of one instance) | $(field longest_pass_ms) ms |"
    echo "| most a connection fell behind its schedule | $(field max_lag_ms) ms |"
    echo "| heartbeat latency p50 / p99 / p999 / max | $(field hb_p50_us) / $(field hb_p99_us) / $(field hb_p999_us) / $(field hb_max_us) µs |"
    echo "| queries answered (per second), instances per query | $queries ($(field queries_per_sec)), $(field items_per_query) |"
    echo "| query latency p50 / p99 / p999 / max | $(field q_p50_us) / $(field q_p99_us) / $(field q_p999_us) / $(field q_max_us) µs |"
    echo "| instances live at the end (every type queried) | $live |"
    echo "| server RSS: empty / after registering / at the end / peak | $(mib "$(field rss_empty_kib)") / $(mib "$(field rss_start_kib)") / $(mib "$(field rss_end_kib)") / $(mib "$(field rss_peak_kib)") |"
    echo "| server RSS per instance (after registering − empty) | $(field bytes_per_instance) B |"
    echo "| server CPU, % of one core (% of the machine) | $(field server_cpu_pct_core) % ($(field server_cpu_pct_machine) %) |"
    echo "| load generator CPU, % of one core | $(field bench_cpu_pct_core) % |"
    echo "| whole machine busy, all processes | $(field machine_busy_pct) % |"
    echo
    echo "<details><summary>The load generator's output</summary>"
    echo
    echo '```'
    grep -v '^$' "$work/bench.log" || true
    echo "$line"
    echo '```'
    echo
    echo "</details>"
} >"$generated"

cat "$generated"

begin='<!-- BEGIN GENERATED by bench/million.sh: everything up to its END marker is replaced on each run -->'
end='<!-- END GENERATED by bench/million.sh -->'
if [[ $doc != - ]]; then
    if [[ ! -f $doc ]]; then
        printf '# Benchmarks\n\n' >"$doc"
    fi
    if grep -qxF "$begin" "$doc"; then
        awk -v gen="$generated" -v begin="$begin" -v end="$end" '
            $0 == begin { print; while ((getline l < gen) > 0) print l; skip = 1; next }
            $0 == end { skip = 0 }
            !skip { print }
        ' "$doc" >"$work/doc.md"
    else
        { cat "$doc"; echo; echo "$begin"; cat "$generated"; echo "$end"; } >"$work/doc.md"
    fi
    cat "$work/doc.md" >"$doc"
    log "wrote the results into $doc"
fi
if [[ $line == FAILED || $verdict != reached ]]; then
    log "target $verdict"
    exit 1
fi
