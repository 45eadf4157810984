#!/usr/bin/env bash
# Benchmark: ibackup against idevicebackup2 on the same simulated device, in
# the same run, alternating. Prints MB/s, files/s, peak RSS and ratios.
#   bash examples/bench.sh [medium|small|large] [rounds]
# Needs idevicebackup2 (libimobiledevice-utils) and GNU time (/usr/bin/time).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-medium}"; rounds="${2:-2}"
work="${BENCH_DIR:-target/bench}"
# Backups are written here; /dev/shm (RAM) measures the software, not the disk.
out="${BENCH_OUT:-$work}"
. examples/bench_common.sh
prepare_devices "$profile"
serve_sim "$work/sim.log" "$devs/$profile" "$devs/bigfile"
[ "$devs" = "$work" ] || trap 'stop_sim; rm -rf "$devs"' EXIT
udid=$(udid_of "$devs/$profile")
big=$(udid_of "$devs/bigfile")
"$ib" -q -u "$udid" pair; "$ib" -q -u "$big" pair
bytes=$(du -sb "$work/$profile/fs" --exclude=HealthDomain --exclude=KeychainDomain | cut -f1)
files=$(find "$work/$profile/fs" -type f -not -path '*HealthDomain*' -not -path '*KeychainDomain*' | wc -l)

bigbytes=$(stat -c %s "$work/bigfile/fs/CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.MOV")

results="$work/results.txt"; : > "$results"
# Round 0 is a warm-up, not counted: on these virtual machines the first
# touch of fresh memory (new tmpfs pages, page cache) costs several times
# what later rounds pay. Each client's unchanged backup follows its own full
# backup into the same folder, as a nightly run follows last night's.
for r in $(seq 0 "$rounds"); do
  dest="$results"; [ "$r" = 0 ] && dest="$work/warmup.txt"
  rm -rf "$out/out-ib" "$out/out-limd"; mkdir -p "$out/out-ib" "$out/out-limd"
  measure ibackup_full "$ib" -q -u "$udid" full "$out/out-ib" >> "$dest"
  # Short runs: several per round, so that their median is not one sample.
  for _ in $(seq "${BENCH_UNCHANGED:-5}"); do
    measure ibackup_unchanged "$ib" -q -u "$udid" backup "$out/out-ib" >> "$dest"
  done
  measure idevicebackup2_full idevicebackup2 -u "$udid" backup --full "$out/out-limd" >> "$dest"
  for _ in $(seq "${BENCH_UNCHANGED:-5}"); do
    measure idevicebackup2_unchanged idevicebackup2 -u "$udid" backup "$out/out-limd" >> "$dest"
  done
  # The 2 GiB file several times a round (BENCH_BIG), each time beside the
  # machine's own ceiling in the same state: as many bytes written to the
  # same place from /dev/zero, with no device, socket or format. How fast
  # fresh memory is handed out varies from second to second here (see
  # docs/benchmarks.md); both rows meet the same conditions, and more
  # samples make their medians steadier.
  for _ in $(seq "${BENCH_BIG:-3}"); do
    rm -rf "$out/out-big"; mkdir -p "$out/out-big"
    measure ibackup_bigfile "$ib" -q -u "$big" full "$out/out-big" >> "$dest"
    rm -rf "$out/out-big"; mkdir -p "$out/out-big"
    measure dd_bigfile dd if=/dev/zero of="$out/out-big/zero" bs=1M count=$((bigbytes / 1048576)) >> "$dest"
  done
  rm -rf "$out/out-big"; mkdir -p "$out/out-big"
  measure idevicebackup2_bigfile idevicebackup2 -u "$big" backup --full "$out/out-big" >> "$dest"
done
rm -rf "$out/out-ib" "$out/out-limd" "$out/out-big"
python3 - "$results" "$bytes" "$files" "$bigbytes" "$profile" <<'PY'
import os, sys, collections, statistics
path, nbytes, nfiles, bigbytes, profile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
runs = collections.defaultdict(list)
stolen = collections.defaultdict(list)
for line in open(path):
    name, secs, kb, steal = line.split()
    runs[name].append((float(secs), int(kb)))
    stolen[name].append(int(steal) / 100)
def med(name): return statistics.median(s for s, _ in runs[name])
def rss(name): return max(k for _, k in runs[name]) / 1024
print(f"profile {profile}: {nfiles} files, {nbytes/1e6:.0f} MB; big file {bigbytes/1e9:.2f} GB; {len(runs['ibackup_full'])} rounds, medians")
print(f"{'run':26} {'seconds':>8} {'MB/s':>8} {'files/s':>9} {'peak RSS MB':>12} {'runs':>5}")
for name in ["ibackup_full", "idevicebackup2_full", "ibackup_unchanged", "idevicebackup2_unchanged", "ibackup_bigfile", "dd_bigfile", "idevicebackup2_bigfile"]:
    s = max(med(name), 0.01); b = bigbytes if "big" in name else nbytes; f = 1 if "big" in name else nfiles
    print(f"{name:26} {s:8.3f} {b/1e6/s:8.0f} {f/s:9.0f} {rss(name):12.1f} {len(runs[name]):5}")
print(f"full backup throughput, ibackup / idevicebackup2: {med('idevicebackup2_full')/max(med('ibackup_full'),0.01):.2f}x")
print(f"unchanged incremental / full (ibackup): {100*med('ibackup_unchanged')/max(med('ibackup_full'),0.01):.1f}%")
print(f"big file, ibackup: {bigbytes/1e9/max(med('ibackup_bigfile'),0.01):.2f} GB/s; idevicebackup2: {bigbytes/1e9/max(med('idevicebackup2_bigfile'),0.01):.2f} GB/s")
# Pair by pair, as the machine's state changes between pairs.
share = statistics.median(d / i for (d, _), (i, _) in zip(runs["dd_bigfile"], runs["ibackup_bigfile"]))
print(f"big file, ibackup's speed as a share of dd's just after it (median): {100*share:.0f}%")
over = sum(bigbytes / s > 1e9 for s, _ in runs["ibackup_bigfile"])
print(f"big file, ibackup over 1 GB/s in {over} of {len(runs['ibackup_bigfile'])} runs; each run, GB/s (CPU seconds stolen): "
      + " ".join(f"{bigbytes/1e9/s:.2f} ({t:.2f})" for (s, _), t in zip(runs["ibackup_bigfile"], stolen["ibackup_bigfile"])))
# The hypervisor takes CPU time from these virtual machines; a run that lost
# much of it measured the neighbours, not the software.
wall = sum(s for r in runs.values() for s, _ in r)
taken = sum(t for r in stolen.values() for t in r)
print(f"CPU time stolen by the hypervisor during the timed runs: {taken:.1f} s in {wall:.1f} s of wall time ({100*taken/max(wall,0.01)/max(os.cpu_count() or 1,1):.1f}% of {os.cpu_count()} CPUs)")
PY
