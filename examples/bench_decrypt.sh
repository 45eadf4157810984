#!/usr/bin/env bash
# Benchmark: extracting an encrypted backup, `ibackup extract` against
# iphone_backup_decrypt on the same backup in the same run, alternating.
#   bash examples/bench_decrypt.sh [medium|small|large] [rounds]
# Needs a Python with iphone_backup_decrypt (IBACKUP_REFEREE_VENV, default
# /tmp/ref, as .ci/run makes) and GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-medium}"; rounds="${2:-2}"
work="${BENCH_DIR:-target/bench}"
out="${BENCH_OUT:-$work}"
py="${IBACKUP_REFEREE_VENV:-/tmp/ref}/bin/python3"
. examples/bench_common.sh
dev="$work/$profile-encrypted"
if [ ! -d "$dev" ]; then
  "$sim" populate "$dev" --profile "$profile" --seed 1 >/dev/null
  # Device-side encryption with the device's own key derivation (10,000,000 rounds).
  echo 'backup_password = "bench password"' >> "$dev/device.toml"
fi
serve_sim "$work/sim-enc.log" "$dev"
udid=$(udid_of "$dev")
backups="$work/backups-$profile-encrypted"
if [ ! -f "$backups/$udid/Manifest.db" ]; then
  mkdir -p "$backups"
  "$ib" -q -u "$udid" full "$backups"
fi
export IBACKUP_PASSWORD="bench password"
bytes=$(du -sb "$dev/fs" | cut -f1)
files=$(find "$dev/fs" -type f | wc -l)

results="$work/results-decrypt.txt"; : > "$results"
for r in $(seq 1 "$rounds"); do
  rm -rf "$out/x-ib" "$out/x-ibd"
  measure ibackup_extract "$ib" -q extract "$backups/$udid" --to "$out/x-ib" >> "$results"
  measure iphone_backup_decrypt "$py" tests/support/ibd_extract.py "$backups/$udid" "$IBACKUP_PASSWORD" "$out/x-ibd" >> "$results"
  # The password step alone (key derivation + index), the same for any size.
  measure ibackup_ls "$ib" -q ls "$backups/$udid" >> "$results"
done
rm -rf "$out/x-ib" "$out/x-ibd"
python3 - "$results" "$bytes" "$files" "$profile" <<'PY'
import sys, collections, statistics
path, nbytes, nfiles, profile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runs = collections.defaultdict(list)
for line in open(path):
    name, secs, kb, *_ = line.split()
    runs[name].append((float(secs), int(kb)))
def med(n): return statistics.median(s for s, _ in runs[n])
def rss(n): return max(k for _, k in runs[n]) / 1024
print(f"encrypted {profile}: {nfiles} files, {nbytes/1e6:.0f} MB; {len(runs['ibackup_extract'])} rounds, medians")
print(f"{'run':24} {'seconds':>8} {'MB/s':>8} {'peak RSS MB':>12}")
for n in ["ibackup_extract", "iphone_backup_decrypt", "ibackup_ls"]:
    s = max(med(n), 0.01)
    print(f"{n:24} {s:8.2f} {'' if n == 'ibackup_ls' else f'{nbytes/1e6/s:8.0f}':>8} {rss(n):12.1f}")
print(f"extract, iphone_backup_decrypt / ibackup: {med('iphone_backup_decrypt')/max(med('ibackup_extract'),0.01):.1f}x")
print(f"key derivation + index (ibackup ls): {med('ibackup_ls'):.2f} s of ibackup's {med('ibackup_extract'):.2f} s")
PY
