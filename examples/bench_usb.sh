#!/usr/bin/env bash
# Benchmark: direct USB (the emulated bus) against usbmuxd's socket, the
# same ibackup binary, the same simulated devices, the same run,
# alternating. The figure that matters is the ratio: direct USB should move
# at least 80% of what the socket moves (issue 18), so the mux is never what
# limits a backup.
#   bash examples/bench_usb.sh [medium|small|large] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-medium}"; rounds="${2:-3}"
work="${BENCH_DIR:-target/bench}"
out="${BENCH_OUT:-$work}"
. examples/bench_common.sh
prepare_devices "$profile"
usbport=$((20000 + RANDOM % 20000))
serve_sim "$work/sim.log" --usb-emulated "127.0.0.1:$usbport" "$devs/$profile" "$devs/bigfile"
[ "$devs" = "$work" ] || trap 'stop_sim; rm -rf "$devs"' EXIT
export IBACKUP_USB_EMULATOR="127.0.0.1:$usbport"
export IBACKUP_LOCKDOWN_DIR="$work/usb-lockdown"
udid=$(udid_of "$devs/$profile"); big=$(udid_of "$devs/bigfile")
for t in usbmuxd usb; do
  "$ib" -q --transport $t -u "$udid" pair; "$ib" -q --transport $t -u "$big" pair
done
bytes=$(du -sb "$work/$profile/fs" --exclude=HealthDomain --exclude=KeychainDomain | cut -f1)
bigbytes=$(stat -c %s "$work/bigfile/fs/CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.MOV")
results="$work/usb-results.txt"; : > "$results"
# timed NAME COMMAND...: "NAME wall_s cpu_s peak_kb" of ibackup itself
# (user + system: the host's share; the simulated phone's is not in it).
timed() {
  local name=$1; shift
  sync
  local t0=$EPOCHREALTIME
  /usr/bin/time -f "%U %S %M" -o "$work/time.txt" "$@" >/dev/null 2>"$work/$name.err" || { echo "$name failed:" >&2; tail -3 "$work/$name.err" >&2; exit 1; }
  local t1=$EPOCHREALTIME
  read -r u s m < "$work/time.txt"
  echo "$name $(python3 -c "print(f'{$t1 - $t0:.3f} {$u + $s:.2f}')") $m"
}
for r in $(seq 0 "$rounds"); do
  dest="$results"; [ "$r" = 0 ] && dest="$work/usb-warmup.txt"
  for t in usbmuxd usb; do
    rm -rf "$out/out-$t"; mkdir -p "$out/out-$t"
    timed "${t}_full" "$ib" -q --transport $t -u "$udid" full "$out/out-$t" >> "$dest"
    rm -rf "$out/out-$t"; mkdir -p "$out/out-$t"
    timed "${t}_bigfile" "$ib" -q --transport $t -u "$big" full "$out/out-$t" >> "$dest"
    rm -rf "$out/out-$t"
  done
done
python3 - "$results" "$bytes" "$bigbytes" "$profile" <<'PY'
import sys, collections, statistics
path, nbytes, bigbytes, profile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runs = collections.defaultdict(list)
for line in open(path):
    name, secs, cpu, kb = line.split()
    runs[name].append((float(secs), float(cpu), int(kb)))
def med(name, i): return statistics.median(r[i] for r in runs[name])
def rss(name): return max(r[2] for r in runs[name]) / 1024
print("| job | usbmuxd socket | direct USB (emulated bus) | speed, direct / socket | ibackup CPU, direct / socket |")
print("|---|---|---|---|---|")
for job, key, size in ((f"full backup, {profile}", "full", nbytes), ("one 2 GiB file", "bigfile", bigbytes)):
    a, b = med(f"usbmuxd_{key}", 0), med(f"usb_{key}", 0)
    ca, cb = med(f"usbmuxd_{key}", 1), med(f"usb_{key}", 1)
    print(f"| {job} | {size/a/1e6:.0f} MB/s ({a:.2f} s, {rss('usbmuxd_'+key):.0f} MB) | {size/b/1e6:.0f} MB/s ({b:.2f} s, {rss('usb_'+key):.0f} MB) | {a/b:.2f} | {cb/ca:.2f} ({cb:.2f} s / {ca:.2f} s) |")
print(f"\n{len(runs['usb_full'])} rounds after a warm-up, alternating; medians; peak RSS and CPU (user + system) of ibackup only.")
PY
