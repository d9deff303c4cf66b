#!/usr/bin/env bash
# Benchmark 8, memory: peak memory (maximum resident set size, from GNU time)
# of the identity map of benches/output.rs (`Runner::map` writing each line
# to one output) over 10,000,000 URL lines of 41 bytes, with one worker and
# with `workers(2)`. The target is under 16 MiB for the runner. For
# comparison: the plain loop of the same bench (`read_until` +
# `BufWriter::write_all` to a file, no checkpoint), the floor of any
# program that does the same, and the runner with no output and a no-op
# task (`Runner::run`, one worker).
#
#   bash benches/output_memory.sh [lines]
#
# Each workload runs alone in a process of the bench binary (built as
# `cargo bench` builds it), selected by LINEMARK_OUTPUT_RSS; each runs 3
# times and the highest peak is shown. The input is generated (the same
# bytes as benches/output.rs) into a temporary directory under target/, on
# the real disk, removed at the end.
# Needs GNU time at /usr/bin/time (Debian: apt-get install -y time).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x /usr/bin/time ]]; then
    echo "output_memory: /usr/bin/time is missing (apt-get install -y time)" >&2
    exit 2
fi

bench=$(cargo bench --quiet --bench output --no-run --message-format=json |
    sed -n '/"kind":\["bench"\]/{/"name":"output"/s/.*"executable":"\([^"]*\)".*/\1/p}' |
    tail -n 1)
if [[ ! -x "$bench" ]]; then
    echo "output_memory: did not find the bench binary of benches/output.rs" >&2
    exit 2
fi
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
mkdir -p "$target_dir/tmp"
work=$(mktemp -d "$target_dir/tmp/linemark-output-memory-XXXXXX")
trap 'rm -rf "$work"' EXIT

lines=${1:-10000000}
line_len=41
input="$work/urls.txt"
awk -v n="$lines" 'BEGIN {
    for (i = 1; i <= n; i++)
        printf "https://example.org/item/%010d.html\n", (i * 48271) % 2147483647
}' >"$input"
[[ $(stat -c %s "$input") -eq $((lines * line_len)) ]]

limit_kib=$((16 * 1024))
runs=3
status=0
printf '%-8s %12s %14s %10s\n' workload lines "max RSS (KiB)" "run (ms)"
for workload in plain run map map2; do
    peak=0
    for ((run = 1; run <= runs; run++)); do
        rm -f "$work"/checkpoint* "$work/out.txt"
        LINEMARK_OUTPUT_RSS=$workload /usr/bin/time -v -o "$work/time.txt" \
            "$bench" "$input" "$work/checkpoint" "$work/out.txt" >"$work/stdout.txt"
        # The binary asserts that every line is done and that the output is
        # as long as the input; it prints its own time of the run, without
        # the process's start.
        ms=$(sed -n "s/^$workload: $lines lines, \([0-9.]*\) ms$/\1/p" "$work/stdout.txt")
        [[ -n "$ms" ]]
        if [[ $workload != run ]]; then
            [[ $(stat -c %s "$work/out.txt") -eq $((lines * line_len)) ]]
        fi
        rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time.txt")
        if ((rss > peak)); then
            peak=$rss
            peak_ms=$ms
        fi
    done
    printf '%-8s %12s %14s %10s\n' "$workload" "$lines" "$peak" "$peak_ms"
    if [[ $workload == map* ]] && ((peak >= limit_kib)); then
        echo "output_memory: $workload took $peak KiB, over $limit_kib KiB" >&2
        status=1
    fi
done
exit "$status"
