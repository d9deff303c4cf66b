#!/usr/bin/env bash
# Benchmark 6: peak memory (maximum resident set size, from GNU time) of
# `examples/tally.rs`, a no-op run with the default group commit, over
# 1,000,000 and 10,000,000 lines, with one worker and with 8. The target is
# under 16 MiB in every case, independent of the number of lines.
#
#   bash benches/tally_memory.sh
#
# Inputs are generated (the same bytes as benches/common/mod.rs) into a
# temporary directory under target/, on the real disk, removed at the end.
# Needs GNU time at /usr/bin/time (Debian: apt-get install -y time).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x /usr/bin/time ]]; then
    echo "tally_memory: /usr/bin/time is missing (apt-get install -y time)" >&2
    exit 2
fi

cargo build --release --quiet --example tally
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
tally="$target_dir/release/examples/tally"
mkdir -p "$target_dir/tmp"
work=$(mktemp -d "$target_dir/tmp/linemark-memory-XXXXXX")
trap 'rm -rf "$work"' EXIT

limit_kib=$((16 * 1024))
status=0
printf '%-8s %-12s %14s %10s\n' workers lines "max RSS (KiB)" "time (s)"
for lines in 1000000 10000000; do
    input="$work/input-$lines.txt"
    awk -v n="$lines" 'BEGIN {
        for (i = 1; i <= n; i++)
            printf "%010d https://example.org/records/item-%010d.json\n", i, (i * 48271) % 2147483647
    }' >"$input"
    [[ $(stat -c %s "$input") -eq $((lines * 60)) ]]
    for workers in 1 8; do
        rm -f "$input.checkpoint" "$input.checkpoint.lock"
        /usr/bin/time -v -o "$work/time-$lines.txt" "$tally" --workers "$workers" "$input" \
            >"$work/out-$lines.txt"
        grep -q "^this run:  $lines lines, $((lines * 60)) bytes" "$work/out-$lines.txt"
        rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time-$lines.txt")
        wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time-$lines.txt")
        printf '%-8s %-12s %14s %10s\n' "$workers" "$lines" "$rss" "$wall"
        if ((rss >= limit_kib)); then
            echo "tally_memory: $workers workers, $lines lines took $rss KiB, over $limit_kib KiB" >&2
            status=1
        fi
    done
    rm -f "$input" "$input.checkpoint" "$input.checkpoint.lock"
done
exit "$status"
