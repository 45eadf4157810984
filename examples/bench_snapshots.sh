#!/usr/bin/env bash
# Benchmark: what a snapshot costs. Backs up a simulated device fully, then
# per round changes N files on it and runs an incremental `ibackup backup`,
# reporting the whole run, the staging of links (made as the device first
# touches each folder; on a disk without symbolic links, all of them in the
# background while the device decides what changed), the commit (from the
# result's commit_seconds) and the disk the new snapshot added.
#   bash examples/bench_snapshots.sh [large|medium|small] [changed files] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-large}"; changed="${2:-100}"; rounds="${3:-3}"
work="${BENCH_DIR:-target/bench}"
out="${BENCH_OUT:-$work}"
. examples/bench_common.sh
dev="$work/$profile-history"
[ -d "$dev" ] || "$sim" populate "$dev" --profile "$profile" --seed 7 >/dev/null
serve_sim "$work/sim-history.log" "$dev"
udid=$(udid_of "$dev")
backups="$out/history-$profile"
rm -rf "$backups"; mkdir -p "$backups"
"$ib" -q -u "$udid" full "$backups"
files=$(find "$dev/fs" -type f | wc -l)
du_all() { du -sb "$backups" | cut -f1; }
echo "profile $profile: $files files; $changed changed files per round"
printf '%-6s %10s %12s %10s %14s\n' round "run s" "staging s" "commit s" "added MB"
for r in $(seq 1 "$rounds"); do
  # Change N existing files (new content, same paths) and note their bytes.
  # (None: an unchanged night.)
  if [ "$changed" -gt 0 ]; then
    find "$dev/fs" -type f -name '*.JPG' | shuf -n "$changed" --random-source=<(yes "$r") | while read -r f; do
      head -c 200000 /dev/urandom > "$f"
    done
  fi
  before=$(du_all)
  sync
  start=$(date +%s.%N)
  RUST_LOG=ibackup_engine=info "$ib" --json -u "$udid" backup "$backups" > "$work/history-result.json" 2> "$work/history.err"
  end=$(date +%s.%N)
  after=$(du_all)
  commit=$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if "\"result\"" in l][-1]["commit_seconds"])' "$work/history-result.json")
  # "staging links made in 1.2s" (all folders, in the background) or
  # "staging links made on demand: 83 folders in 401.2ms; 173 moved whole".
  staging=$(python3 -c '
import re, sys
units = {"ns": 1e-9, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"staging links made (?:on demand: \d+ folders )?in ([0-9.]+)(ns|µs|ms|s)\b", line)
    if m:
        print(float(m.group(1)) * units[m.group(2)])
' "$work/history.err")
  printf '%-6s %10.2f %12.2f %10.3f %14.1f\n' "$r" "$(echo "$end - $start" | bc)" "${staging:-0}" "$commit" "$(echo "($after - $before) / 1000000" | bc -l)"
done
"$ib" snapshots "$backups"
