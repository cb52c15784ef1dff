#!/usr/bin/env bash
# Benchmark: cached embeddings fetched by CID from a peer's cache (`carryon train --from-swarm`, over
# loopback in a private swarm) against the same embeddings computed by the base's forward pass
# (`carryon train`), in one run, for the default base and for a random-weight checkpoint at the
# Qwen2.5-0.5B shape (shared/tools/llamacpp: make-random-hf.py, hf2gguf.py with the real Qwen vocabulary).
# Prints the tokens/s lines the commands print, and the load average beside each.
# Usage: scripts/bench_embcache.sh   (env: N problems, default 64; QWEN=0 skips the Qwen shape;
#                                     CARRYON_SHARED, default ../shared; CARRYON_ORACLE_DIR for the vocabulary)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-64}
tools=${CARRYON_SHARED:-../shared}/tools/llamacpp
vocab=${CARRYON_ORACLE_DIR:-$HOME/.cache/carryon-oracle}/vocab/ggml-vocab-qwen2.gguf
w=$(mktemp -d)
coord=""
trap '[ -n "$coord" ] && kill -INT "$coord" 2>/dev/null; wait 2>/dev/null; rm -rf "$w"' EXIT
go build -o "$w/carryon" ./cmd/carryon
c=$w/carryon
"$c" keygen --out "$w/swarm.key" >/dev/null
"$c" synth --family multi-step --n "$n" --seed 1 --jsonl "$w/data.jsonl" >/dev/null
load() { cut -d' ' -f1-3 /proc/loadavg; }
models=(default)
if [ "${QWEN:-1}" != 0 ]; then
  "$tools/make-random-hf.py" "$w/q05" --arch qwen2 --preset qwen2.5-0.5b --seed 1 >/dev/null
  "$tools/hf2gguf.py" "$w/q05" "$w/qwen2.5-0.5b-random.gguf" --vocab "$vocab" >/dev/null
  rm -rf "$w/q05"
  models+=("$w/qwen2.5-0.5b-random.gguf")
fi
echo "$n problems (carryon synth --family multi-step --seed 1), seq-len 128, codec q8; $(nproc) cores"
for m in "${models[@]}"; do
  job=(--model "$m" --data "$w/data.jsonl" --seq-len 128 --steps 1 --batch 4 --width 16 --layers 1)
  net=(--key "$w/swarm.key" --listen /ip4/127.0.0.1/tcp/0)
  rm -rf "$w/a" "$w/b" "$w/c"
  echo "== base $(basename "$m")"
  "$c" train "${job[@]}" --cache "$w/a" --out "$w/a.safetensors" -q > "$w/a.out"
  echo "computed here (forward + q8): $(grep '^computed' "$w/a.out") [load $(load)]"
  : > "$w/coord.out"
  "$c" coordinator "${job[@]}" "${net[@]}" --dht off --cache "$w/a" --serve -q > "$w/coord.out" 2>&1 &
  coord=$!
  until grep -q '^adaptor ' "$w/coord.out"; do
    kill -0 "$coord" 2>/dev/null || { cat "$w/coord.out"; exit 1; }
    sleep 0.5
  done
  addr=$(sed -n 's/^listening on //p' "$w/coord.out" | head -1)
  for v in 0 1; do
    rm -rf "$w/b"
    "$c" train "${job[@]}" "${net[@]}" --cache "$w/b" --out "$w/b.safetensors" --from-swarm "$addr" --verify "$v" -q > "$w/b.out"
    cmp -s "$w/a.safetensors" "$w/b.safetensors" || { echo "the adaptor trained on fetched embeddings differs"; exit 1; }
    echo "fetched by CID, --verify $v: $(grep '^fetched' "$w/b.out") [load $(load)]"
  done
  kill -INT "$coord"; wait "$coord" || true; coord=""
done
