#!/usr/bin/env bash
# Benchmark 7, memory: peak memory (maximum resident set size, from GNU time)
# of the timer run of benches/async.rs: 10,000 lines, each awaiting a 10 ms
# tokio timer, `Runner::run_async` with `concurrency(1000)`, on a multi-thread
# and on a current-thread runtime. The target is under 32 MiB for the runner.
# For comparison, on the same runtime: the same lines through futures_util's
# `buffer_unordered(1000)` with no checkpoint, and the runtime alone awaiting
# one timer (the floor of any tokio program).
#
#   bash benches/async_memory.sh
#
# Each workload runs alone in a process of the bench binary (built as
# `cargo bench` builds it, with the `tokio` feature), selected by
# LINEMARK_ASYNC_RSS; each runs 3 times and the highest peak is shown. The
# input is generated (the same bytes as benches/common/mod.rs) into a
# temporary directory under target/, on the real disk, removed at the end.
# Needs GNU time at /usr/bin/time (Debian: apt-get install -y time).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x /usr/bin/time ]]; then
    echo "async_memory: /usr/bin/time is missing (apt-get install -y time)" >&2
    exit 2
fi

bench=$(cargo bench --quiet --features tokio --bench async --no-run --message-format=json |
    sed -n '/"kind":\["bench"\]/{/"name":"async"/s/.*"executable":"\([^"]*\)".*/\1/p}' |
    tail -n 1)
if [[ ! -x "$bench" ]]; then
    echo "async_memory: did not find the bench binary of benches/async.rs" >&2
    exit 2
fi
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
mkdir -p "$target_dir/tmp"
work=$(mktemp -d "$target_dir/tmp/linemark-async-memory-XXXXXX")
trap 'rm -rf "$work"' EXIT

lines=10000
input="$work/input.txt"
awk -v n="$lines" 'BEGIN {
    for (i = 1; i <= n; i++)
        printf "%010d https://example.org/records/item-%010d.json\n", i, (i * 48271) % 2147483647
}' >"$input"
[[ $(stat -c %s "$input") -eq $((lines * 60)) ]]

limit_kib=$((32 * 1024))
runs=3
status=0
printf '%-16s %-16s %14s %10s\n' workload runtime "max RSS (KiB)" "run (ms)"
for runtime in multi_thread current_thread; do
    for workload in runtime buffer_unordered runner; do
        peak=0
        for ((run = 1; run <= runs; run++)); do
            rm -f "$work"/checkpoint*
            LINEMARK_ASYNC_RSS=$workload /usr/bin/time -v -o "$work/time.txt" \
                "$bench" "$runtime" "$input" "$work/checkpoint" >"$work/out.txt"
            # The binary asserts that every line is done; it prints its own
            # time of the run, without the process's start.
            ms=$(sed -n "s/^$workload $runtime: \([0-9.]*\) ms$/\1/p" "$work/out.txt")
            [[ -n "$ms" ]]
            rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time.txt")
            if ((rss > peak)); then
                peak=$rss
                peak_ms=$ms
            fi
        done
        printf '%-16s %-16s %14s %10s\n' "$workload" "$runtime" "$peak" "$peak_ms"
        if [[ $workload == runner ]] && ((peak >= limit_kib)); then
            echo "async_memory: the runner on $runtime took $peak KiB, over $limit_kib KiB" >&2
            status=1
        fi
    done
done
exit "$status"
