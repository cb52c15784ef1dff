#!/usr/bin/env bash
# Benchmark: a SIZE_MIB (default 256) random file over loopback in a private
# swarm. `carryon pull` from 1 and from 3 `carryon node` providers, against
# `ipfs get` from a Kubo daemon (Kubo v0.43.1, scripts/build-kubo.sh) in the
# same run; MiB/s and peak RSS (/usr/bin/time -v) of the pullers and servers.
# Usage: scripts/bench_ipfs.sh [KUBO_BIN]   (needs go, /usr/bin/time)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${SIZE_MIB:-256}
kubo=${1:-${CARRYON_KUBO:-$HOME/.cache/carryon-kubo/ipfs-v0.43.1}}
w=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$w"' EXIT
go build -o "$w/carryon" ./cmd/carryon
head -c $((size<<20)) /dev/urandom > "$w/file"
"$w/carryon" keygen --out "$w/swarm.key" >/dev/null
peak() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1" | awk '{printf "%.0f", $1/1024}'; }
addrs=()
for i in 1 2 3; do
  "$w/carryon" add --store "$w/s$i" "$w/file" > "$w/cid"
  : > "$w/node$i.out"
  /usr/bin/time -v -o "$w/node$i.time" "$w/carryon" node --key "$w/swarm.key" --store "$w/s$i" --state "$w/n$i" \
    --listen /ip4/127.0.0.1/tcp/0 --dht off --advert-interval 1h > "$w/node$i.out" 2>&1 &
  pid=$!
  until grep -q "listening on" "$w/node$i.out"; do
    kill -0 $pid 2>/dev/null || { echo "carryon node $i failed:"; cat "$w/node$i.out"; exit 1; }
    sleep 0.2
  done
  addrs+=("$(sed -n 's/^listening on //p' "$w/node$i.out" | head -1)")
done
cid=$(cut -d' ' -f1 "$w/cid")
echo "file: $size MiB, CID $cid, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
pull() { # name, --from list
  rm -rf "$w/p" "$w/out"; local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -v -o "$w/pull.time" "$w/carryon" pull "$cid" --key "$w/swarm.key" --from "$2" --store "$w/p" \
    --out "$w/out" --check=false --max-size $(((size+1)<<20)) --timeout 10m --dht off > "$w/pull.out"
  t1=$(date +%s.%N)
  cmp -s "$w/file" "$w/out" || { echo "$1: output differs"; exit 1; }
  echo "$1: $(awk -v s=$size -v a=$t0 -v b=$t1 'BEGIN{printf "%.1f MiB/s (%.1f s, whole process)", s/(b-a), b-a}'), puller peak RSS $(peak "$w/pull.time") MiB; $(grep -o '([0-9.]* MiB/s)' "$w/pull.out") in the fetch itself"
}
pull "carryon pull, 1 provider " "${addrs[0]}"
pull "carryon pull, 3 providers" "$(IFS=,; echo "${addrs[*]}")"
stop() { for p in $(jobs -p); do pkill -INT -P "$p" 2>/dev/null || true; kill -INT "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; } # /usr/bin/time ignores SIGINT: signal its child too
stop
for i in 1 2 3; do echo "carryon node $i (server) peak RSS $(peak "$w/node$i.time") MiB"; done

if [ -x "$kubo" ]; then
  export LIBP2P_FORCE_PNET=1
  for r in ka kb; do IPFS_PATH="$w/$r" "$kubo" init --profile=test >/dev/null; cp "$w/swarm.key" "$w/$r/swarm.key"; done
  IPFS_PATH="$w/ka" "$kubo" add -Q --cid-version=1 --raw-leaves "$w/file" > "$w/kcid"
  [ "$(cat "$w/kcid")" = "$cid" ] || echo "Kubo's CID $(cat "$w/kcid") differs from carryon's $cid"
  : > "$w/ka.out"
  IPFS_PATH="$w/ka" /usr/bin/time -v -o "$w/ka.time" "$kubo" daemon > "$w/ka.out" 2>&1 &
  until grep -q "Daemon is ready" "$w/ka.out"; do sleep 0.2; done
  : > "$w/kb.out"
  IPFS_PATH="$w/kb" "$kubo" daemon > "$w/kb.out" 2>&1 &
  kbpid=$!
  until grep -q "Daemon is ready" "$w/kb.out"; do sleep 0.2; done
  ka=$(IPFS_PATH="$w/ka" "$kubo" id -f '<addrs>' | grep '^/ip4/127.0.0.1/tcp/' | grep -v /ws | head -1)/p2p/$(IPFS_PATH="$w/ka" "$kubo" id -f '<id>')
  IPFS_PATH="$w/kb" "$kubo" swarm connect "$ka" >/dev/null
  t0=$(date +%s.%N)
  IPFS_PATH="$w/kb" "$kubo" get -o "$w/kout" "$cid" >/dev/null 2>&1
  t1=$(date +%s.%N)
  cmp -s "$w/file" "$w/kout" || { echo "ipfs get: output differs"; exit 1; }
  echo "ipfs get (Kubo → Kubo daemon), 1 provider: $(awk -v s=$size -v a=$t0 -v b=$t1 'BEGIN{printf "%.1f MiB/s (%.1f s)", s/(b-a), b-a}'), puller daemon peak RSS $(awk '/^VmHWM/{printf "%.0f", $2/1024}' /proc/$kbpid/status) MiB (VmHWM)"
  stop
  echo "Kubo daemon (server) peak RSS $(peak "$w/ka.time") MiB"
fi
