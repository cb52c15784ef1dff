#!/usr/bin/env bash
# bench_forward.sh: prefill speed of carryon's base forward pass against llama.cpp on the same files.
#
# usage: scripts/bench_forward.sh [--tokens 512] [--threads 2] [--runs 5] [--work DIR] [--keep]
#
# Makes a random-weight Qwen2.5-0.5B checkpoint (shared/tools/llamacpp/make-random-hf.py, f32), converts it
# to an F32 GGUF (hf2gguf.py) and to BF16 and Q8_0 GGUFs (scripts/gguf_quantize.py, gguf-py), then runs
# llama.cpp (bench.mjs: one batch, F32 KV cache, LM head on the last position) and `carryon bench forward`
# (the same work) on each file with the same threads, median of --runs after one warm-up, and prints a
# table. The HF safetensors directory is benchmarked too (carryon only: llama.cpp reads GGUF), and so are
# carryon's other precisions: the Q8_0 file with --int8 (int8 activations and products, as llama.cpp) and
# the BF16 file with --exact-bf16 (unrounded activations; the default rounds them to bf16 as llama.cpp),
# each against llama.cpp on the same file.
# Speed does not depend on the weight values. The files (about 3 GB) go to --work (default: a temp dir,
# removed at exit unless --keep).
set -euo pipefail
TOKENS=512 THREADS=2 RUNS=5 WORK="" KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tokens) TOKENS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${CARRYON_ORACLE_TOOLS:-$ROOT/../shared/tools/llamacpp}
[ -x "$TOOLS/bench.mjs" ] || { echo "bench_forward: llama.cpp oracle tools not found in $TOOLS (set CARRYON_ORACLE_TOOLS)" >&2; exit 1; }
if [ -z "$WORK" ]; then
  WORK=$(mktemp -d)
  [ "$KEEP" = 1 ] || trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
CARRYON=${CARRYON:-$WORK/carryon}
if [ ! -x "$CARRYON" ]; then
  (cd "$ROOT" && go build -o "$CARRYON" ./cmd/carryon)
fi

HF=$WORK/q05-hf F32=$WORK/q05-f32.gguf BF16=$WORK/q05-bf16.gguf Q8=$WORK/q05-q8_0.gguf
[ -f "$HF/config.json" ] || "$TOOLS/make-random-hf.py" "$HF" --arch qwen2 --preset qwen2.5-0.5b --seed 1 --dtype f32 >&2
[ -f "$F32" ] || "$TOOLS/hf2gguf.py" "$HF" "$F32" >&2
[ -f "$BF16" ] || "$ROOT/scripts/gguf_quantize.py" "$F32" "$BF16" bf16 >&2
[ -f "$Q8" ] || "$ROOT/scripts/gguf_quantize.py" "$F32" "$Q8" q8_0 >&2

declare -A LL LLCPU CO
for f in "$F32" "$BF16" "$Q8"; do
  echo "llama.cpp: $(basename "$f")" >&2
  LL[$f]=$(/usr/bin/time -f "%U %S" -o "$WORK/time.txt" "$TOOLS/bench.mjs" "$f" --tokens "$TOKENS" --threads "$THREADS" --runs "$RUNS" | tail -1) || { echo "bench.mjs failed on $f" >&2; exit 1; }
  LLCPU[$f]=$(awk '{printf "%.1f", $1 + $2}' "$WORK/time.txt")
  echo "  ${LL[$f]}" >&2
done
# Rows: a file, or a file and a carryon flag (llama.cpp's number is the file's).
ROWS=("$F32" "$BF16" "$BF16 --exact-bf16" "$Q8" "$Q8 --int8" "$HF")
for row in "${ROWS[@]}"; do
  f=${row%% *} flag=""
  [ "$row" = "$f" ] || flag=${row#* }
  echo "carryon: $(basename "$f") $flag" >&2
  # shellcheck disable=SC2086
  CO[$row]=$("$CARRYON" bench forward --model "$f" --tokens "$TOKENS" --threads "$THREADS" --runs "$RUNS" $flag | tail -1) || { echo "carryon bench forward failed on $row" >&2; exit 1; }
  echo "  ${CO[$row]}" >&2
done

field() { /usr/bin/python3 -c 'import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print("-" if v is None else v)' "$1" "$2"; }
echo
echo "Qwen2.5-0.5B shapes (random weights), prefill $TOKENS tokens, $THREADS threads, median of $RUNS runs; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-30s %9s %12s %14s %8s %14s %16s %10s\n' file size_MiB llama_tok_s carryon_tok_s ratio carryon_cpu_s llama_cpu_s_all carryon_rss_MiB
for row in "${ROWS[@]}"; do
  f=${row%% *}
  co=$(field "${CO[$row]}" tokens_per_s)
  ll="-" ratio="-" llcpu="-"
  if [ -n "${LL[$f]:-}" ]; then
    ll=$(field "${LL[$f]}" pp_tok_s)
    ratio=$(/usr/bin/python3 -c "print(f'{$co/$ll:.2f}x')")
    llcpu=${LLCPU[$f]}
  fi
  size=$(( $(field "${CO[$row]}" model_bytes) >> 20 ))
  rss=$(( $(field "${CO[$row]}" peak_rss_bytes) >> 20 ))
  cpu=$(/usr/bin/python3 -c 'import json,sys,statistics as s; print("%.2f" % s.median(json.loads(sys.argv[1])["cpu_s"]))' "${CO[$row]}")
  name=$(basename "$f")${row#"$f"}
  printf '%-30s %9s %12s %14.1f %8s %14s %16s %10s\n' "$name" "$size" "$ll" "$co" "$ratio" "$cpu" "$llcpu" "$rss"
done
echo "ratio = carryon / llama.cpp tokens/s (wall clock: noisy on a shared machine). carryon_cpu_s: CPU seconds of one"
echo "forward (median); llama_cpu_s_all: CPU seconds of the whole bench.mjs process ($((RUNS + 1)) passes + load). Raw JSON:"
for f in "$F32" "$BF16" "$Q8"; do echo "${LL[$f]}"; done
for row in "${ROWS[@]}"; do echo "${CO[$row]}"; done
