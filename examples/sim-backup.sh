#!/usr/bin/env bash
# A full backup of a simulated iPhone, made by libimobiledevice's
# idevicebackup2 against ibackup-sim (until `ibackup --simulated full`
# lands, this is how to watch a backup happen).
#   bash examples/sim-backup.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
command -v idevicebackup2 >/dev/null || { echo "needs idevicebackup2: apt-get install libimobiledevice-utils" >&2; exit 2; }
cargo build --quiet --release -p ibackup-sim
sim=target/release/ibackup-sim
[ -d "$out/device" ] || "$sim" populate "$out/device" --profile small --seed 1
port=$((20000 + RANDOM % 20000))
"$sim" serve --listen "127.0.0.1:$port" "$out/device" 2>"$out/sim.log" &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
sleep 0.5
export USBMUXD_SOCKET_ADDRESS="127.0.0.1:$port"
udid=$(sed -n 's/^udid = "\(.*\)"/\1/p' "$out/device/device.toml")
mkdir -p "$out/backups"
idevicebackup2 -u "$udid" backup --full "$out/backups" | tr '\r' '\n' | grep -v '^\[' | grep -v '^$'
echo "backup: $out/backups/$udid"
