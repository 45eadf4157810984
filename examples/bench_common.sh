# Shared by the bench scripts; sourced once $work and $out are set. Builds
# both programs and sets $sim and $ib.
mkdir -p "$work" "$out"
cargo build --quiet --release -p ibackup -p ibackup-sim
sim=target/release/ibackup-sim; ib=target/release/ibackup

# A developer's own configuration must not change what is measured.
export IBACKUP_CONFIG=/dev/null

# serve_sim LOG DEVICE...: serve the device folders with ibackup-sim, point
# USBMUXD_SOCKET_ADDRESS at them, stop them on exit, wait until they answer.
# The clients reach it through a loopback TCP port (usbmuxd's transport on
# Windows); BENCH_MUX=unix uses a Unix socket, as usbmuxd on Linux and macOS.
serve_sim() {
  local log=$1; shift
  local listen addr
  if [ "${BENCH_MUX:-tcp}" = tcp ]; then
    listen="127.0.0.1:$((20000 + RANDOM % 20000))"; addr=$listen; muxsock=
  else
    muxsock=$(mktemp -u /tmp/ibackup-bench-XXXXXX.sock); listen=$muxsock; addr="UNIX:$muxsock"
  fi
  "$sim" serve --listen "$listen" "$@" 2>"$log" &
  simpid=$!
  trap stop_sim EXIT
  export USBMUXD_SOCKET_ADDRESS="$addr"
  for _ in $(seq 100); do "$ib" -q devices >/dev/null 2>&1 && return; sleep 0.2; done
  echo "the simulator did not answer; see $log" >&2
  exit 1
}

# stop_sim: stop what serve_sim started.
stop_sim() {
  kill "$simpid" 2>/dev/null
  [ -z "$muxsock" ] || rm -f "$muxsock"
}

# udid_of DEVICE: the UDID in a device folder's device.toml.
udid_of() { sed -n 's/^udid = "\(.*\)"/\1/p' "$1/device.toml"; }

# steal: the CPU time the hypervisor has taken from this machine's CPUs so
# far, in hundredths of a second (all CPUs; /proc/stat), 0 where unknown.
steal() { if [ -r /proc/stat ]; then awk '/^cpu /{print $9 + 0; exit}' /proc/stat; else echo 0; fi; }

# measure NAME COMMAND...: run it, print "NAME seconds peak_kb steal_cs";
# stop on failure. Seconds to the millisecond from the shell's clock (GNU
# time's %e counts in hundredths, too coarse for a run of 0.08 s); peak RSS
# from GNU time; the CPU time stolen by the hypervisor meanwhile.
measure() {
  local name=$1; shift
  sync
  local s0; s0=$(steal)
  local t0=$EPOCHREALTIME
  /usr/bin/time -f "%M" -o "$work/time.txt" "$@" >/dev/null 2>"$work/$name.err" || { echo "$name failed:" >&2; tail -3 "$work/$name.err" >&2; exit 1; }
  local t1=$EPOCHREALTIME
  echo "$name $(python3 -c "print(f'{$t1 - $t0:.3f}')") $(cat "$work/time.txt") $(( $(steal) - s0 ))"
}

# prepare_devices PROFILE: the PROFILE device and one with a single 2 GiB
# file (end-to-end throughput on large files) in $work, made once. The
# simulated phone's storage is not what is measured: $devs is set to copies
# of both in RAM (tmpfs), where neither a cold disk nor the kernel's
# proactive reclaim of idle page cache (DAMON, on these machines) can slow
# the device down between runs. BENCH_DEVICES= (empty) serves them in place.
prepare_devices() {
  local profile=$1
  [ -d "$work/$profile" ] || "$sim" populate "$work/$profile" --profile "$profile" --seed 1 >/dev/null
  if [ ! -d "$work/bigfile" ]; then
    "$sim" populate "$work/bigfile" --profile empty --seed 99 >/dev/null
    mkdir -p "$work/bigfile/fs/CameraRollDomain/Media/DCIM/100APPLE"
    head -c $((2048 * 1024 * 1024)) /dev/urandom > "$work/bigfile/fs/CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.MOV"
  fi
  devs="${BENCH_DEVICES-/dev/shm/ibackup-bench-devices}"
  if [ -n "$devs" ]; then
    rm -rf "$devs"; mkdir -p "$devs"
    cp -a "$work/$profile" "$work/bigfile" "$devs/"
  else
    devs="$work"
  fi
}
