#!/usr/bin/env bash
# Benchmark: `ibackup verify`, which reads every byte of every file of a
# backup against the SHA-256 recorded as it arrived, on all cores; beside
# it `verify --quick` (presence and size) and, as the floor for the same
# work, `sha256sum` over the same files with one process per core.
#   bash examples/bench_verify.sh [medium|large|small] [rounds]
# BENCH_OUT=/dev/shm puts the backup in RAM (measures the software); the
# default reads it from the page cache of the disk it was written to.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-medium}"; rounds="${2:-3}"
work="${BENCH_DIR:-target/bench}"
out="${BENCH_OUT:-$work}"
. examples/bench_common.sh
dev="$work/$profile"
[ -d "$dev" ] || "$sim" populate "$dev" --profile "$profile" --seed 1 >/dev/null
serve_sim "$work/sim-verify.log" "$dev"
udid=$(udid_of "$dev")
backups="$out/verify-$profile"
rm -rf "$backups"; mkdir -p "$backups"
"$ib" -q -u "$udid" full "$backups"
bytes=$("$ib" --json verify --quick "$backups" | python3 -c 'import json,sys; print([json.loads(l) for l in sys.stdin if "\"verify\"" in l][-1]["bytes"])')
files=$(find "$backups/$udid" -mindepth 2 -type f | wc -l)
cores=$(nproc)
echo "profile $profile: $files content files, $bytes bytes; $cores cores"
printf '%-6s %-22s %9s %9s %10s\n' round what seconds "GB/s" "peak KB"
for r in $(seq 1 "$rounds"); do
  for what in verify quick sha256sum; do
    case $what in
      verify) line=$(measure verify "$ib" verify "$backups") ;;
      quick) line=$(measure quick "$ib" verify --quick "$backups") ;;
      sha256sum) line=$(measure sha256sum sh -c "find '$backups/$udid' -mindepth 2 -type f -print0 | xargs -0 -n 256 -P $cores sha256sum") ;;
    esac
    read -r _ secs kb _ <<<"$line"
    printf '%-6s %-22s %9s %9.2f %10s\n' "$r" "$what" "$secs" "$(python3 -c "print($bytes / $secs / 1e9)")" "$kb"
  done
done
