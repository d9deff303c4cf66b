#!/usr/bin/env bash
# Benchmark 9, memory: peak memory (maximum resident set size, from GNU time)
# of the runs of benches/failures.rs: `Runner::run` over N lines
# of 60 bytes that ALL fail permanently (`Err(permanent(..))`, under
# `RetryPolicy::never()`), with one worker (`fail`) and with `workers(4)`
# (`fail4`), and for comparison the same run where every line succeeds
# (`ok`, one worker). The goal for the failing runs: under 32 MiB at
# 1,000,000 lines, and the last tenth of the lines within 1.5 times the time
# of the first tenth.
#
#   bash benches/failures_memory.sh [lines ...]     (default: 100000 1000000)
#
# Each workload runs alone in a process of the bench binary (built as
# `cargo bench` builds it), selected by LINEMARK_FAILURES_RSS; each runs 3
# times. Shown per workload: the highest peak, the run's time (of the run
# with that peak, measured by the binary, without the process's start), the
# ratio last tenth / first tenth of each run (and of the slowest tenth over
# the first: see benches/failures.rs), the checkpoint's final size
# and the bytes written during the run (`wchar` of /proc/self/io: the
# checkpoint's appends and compaction rewrites), both of the run with the
# peak. The input is generated (the same bytes as benches/common/mod.rs)
# into a temporary directory under target/, on the real disk, removed at the
# end. Exits 1 when a failing run misses a goal.
# Needs GNU time at /usr/bin/time (Debian: apt-get install -y time).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x /usr/bin/time ]]; then
    echo "failures_memory: /usr/bin/time is missing (apt-get install -y time)" >&2
    exit 2
fi

bench=$(cargo bench --quiet --bench failures --no-run --message-format=json |
    sed -n '/"kind":\["bench"\]/{/"name":"failures"/s/.*"executable":"\([^"]*\)".*/\1/p}' |
    tail -n 1)
if [[ ! -x "$bench" ]]; then
    echo "failures_memory: did not find the bench binary of benches/failures.rs" >&2
    exit 2
fi
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
mkdir -p "$target_dir/tmp"
work=$(mktemp -d "$target_dir/tmp/linemark-failures-memory-XXXXXX")
trap 'rm -rf "$work"' EXIT

if (($# == 0)); then
    set -- 100000 1000000
fi
line_len=60
limit_kib=$((32 * 1024))
ratio_limit=1.5
runs=3
status=0
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" "$work/stdout.txt"; }
joined() {
    local IFS=/
    echo "$*"
}

printf '%-8s %9s %14s %10s %16s %16s %12s %12s %12s\n' workload lines \
    "max RSS (KiB)" "run (ms)" "last/first" "worst/first" "checkpoint" "log" "wchar"
for lines in "$@"; do
    input="$work/links.txt"
    awk -v n="$lines" 'BEGIN {
        for (i = 1; i <= n; i++)
            printf "%010d https://example.org/records/item-%010d.json\n", i, (i * 48271) % 2147483647
    }' >"$input"
    [[ $(stat -c %s "$input") -eq $((lines * line_len)) ]]
    for workload in fail fail4 ok; do
        peak=0
        ratios=()
        worsts=()
        for ((run = 1; run <= runs; run++)); do
            rm -f "$work"/checkpoint*
            LINEMARK_FAILURES_RSS=$workload /usr/bin/time -v -o "$work/time.txt" \
                "$bench" "$input" "$work/checkpoint" >"$work/stdout.txt"
            # The binary asserts that every line failed (or succeeded), once,
            # and that the checkpoint records as many failed lines.
            [[ $(field lines) -eq $lines ]]
            ms=$(field run_ms)
            ratios+=("$(field ratio)")
            worsts+=("$(field worst_ratio)")
            rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time.txt")
            if ((rss > peak)); then
                peak=$rss
                peak_ms=$ms
                peak_checkpoint=$(field checkpoint_bytes)
                peak_log=$(field log_bytes)
                peak_wchar=$(field wchar)
            fi
        done
        printf '%-8s %9s %14s %10s %16s %16s %12s %12s %12s\n' "$workload" "$lines" "$peak" \
            "$peak_ms" "$(joined "${ratios[@]}")" "$(joined "${worsts[@]}")" \
            "$peak_checkpoint" "$peak_log" "$peak_wchar"
        if [[ $workload == fail* ]]; then
            if ((peak >= limit_kib)); then
                echo "failures_memory: $workload over $lines lines took $peak KiB," \
                    "over $limit_kib KiB" >&2
                status=1
            fi
            median=$(printf '%s\n' "${ratios[@]}" | sort -g | sed -n "$(((runs + 1) / 2))p")
            if awk -v r="$median" -v l="$ratio_limit" 'BEGIN { exit !(r > l) }'; then
                echo "failures_memory: $workload over $lines lines: median ratio last/first" \
                    "tenth $median, over $ratio_limit" >&2
                status=1
            fi
        fi
    done
done
exit "$status"
