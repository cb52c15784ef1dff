#!/usr/bin/env bash
# The GPU check of issue 17, in one call of the device tool (at most 8
# minutes on the lent H200; docs/gpu.md). Prepare here first:
#
#   scripts/device-prepare.sh            # builds .device/ (Go toolchain + vendor)
#   device tool: run(command="bash scripts/device-check.sh", carry=[".device"], timeout_s=540)
#
# On the device machine it: unpacks the Go toolchain; finds cuda.h, libcuda
# and libcublas; compiles cuda/kernels/*.cu with that machine's nvcc and
# ptxas for sm_90 (a check: the tests use the committed PTX, which is what
# volunteers run); builds with -tags cuda against the carried vendor folder;
# runs the shared tensor.Backend suite on the GPU (CARRYON_REQUIRE_GPU=1);
# benchmarks the prefill of 8 × 512 tokens at Qwen2.5-0.5B's shape against
# PyTorch on the same weights and ids (and compares their hidden states);
# times the carry-on's training step (carryon's DeviceTrainer through
# cuda/devbench -mode train, and PyTorch's) and measures one step of a 116M
# carry-on at the 32B shape for memory (both). Everything goes to $OUT: report.md (the summary), log.txt and
# one JSON file per measurement. Each step has its own time limit, and a
# failed step does not stop the later ones.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/carryon-device-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
start=$(date +%s)
status=()
step() { echo; echo "== $1 (t+$(($(date +%s) - start))s)"; }
record() { status+=("$1: $2"); echo "-- $1: $2"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nvcc --version | tail -2 || true

step "Go toolchain"
tar -C /tmp -xJf .device/go.tar.xz && export PATH=/tmp/go/bin:$PATH
export GOTOOLCHAIN=local GOFLAGS=-mod=vendor GOPROXY=off GOCACHE=/tmp/gocache GOPATH=/tmp/gopath
unset GOROOT
[ -e vendor ] || ln -s .device/vendor vendor
go version && record toolchain ok || record toolchain FAILED

step "CUDA paths"
py_nv=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]) + "/nvidia")' 2>/dev/null || true)
inc=""
for d in /usr/local/cuda/include /usr/local/cuda/targets/x86_64-linux/include "$py_nv/cuda_runtime/include"; do
  [ -f "$d/cuda.h" ] && [ -z "$inc" ] && inc=$d
done
blasinc=""
for d in "$inc" /usr/local/cuda/include "$py_nv/cublas/include"; do
  [ -n "$d" ] && [ -f "$d/cublas_v2.h" ] && [ -z "$blasinc" ] && blasinc=$d
done
find_lib() { # name: first match of lib$1.so* in the usual places
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 /usr/local/nvidia/lib \
    /usr/lib/x86_64-linux-gnu "$py_nv/cublas/lib" /usr/local/cuda/lib64/stubs; do
    for f in "$d/lib$1.so" "$d"/lib"$1".so.[0-9]*; do [ -f "$f" ] && { echo "$f"; return; }; done
  done
}
mkdir -p /tmp/cudalink
libcuda=$(find_lib cuda); libcublas=$(find_lib cublas); libcublaslt=$(find_lib cublasLt)
# The carried CUDA 11.8 headers come first (device-prepare.sh says why).
[ -f .device/cuda-include/cuda.h ] && inc=$PWD/.device/cuda-include blasinc=$PWD/.device/cuda-include
echo "cuda.h in $inc, cublas_v2.h in $blasinc; libcuda $libcuda; libcublas $libcublas; libcublasLt $libcublaslt"
ln -sf "$libcuda" /tmp/cudalink/libcuda.so
ln -sf "$libcublas" /tmp/cudalink/libcublas.so
export CGO_CFLAGS="-I$inc -I$blasinc"
export CGO_LDFLAGS="-L/tmp/cudalink"
export LD_LIBRARY_PATH="$(dirname "$libcuda"):$(dirname "$libcublas"):$(dirname "${libcublaslt:-$libcublas}"):${LD_LIBRARY_PATH:-}"
[ -n "$inc" ] && [ -n "$libcuda" ] && [ -n "$libcublas" ] && record cuda-paths ok || record cuda-paths FAILED

step "kernels with this machine's nvcc (check only; tests use the committed PTX)"
rm -rf /tmp/kern && cp -r cuda/kernels /tmp/kern
if timeout 120 env NVCC=nvcc /tmp/kern/build.sh --check > "$OUT/kernels.txt" 2>&1; then
  record nvcc-ptxas-sm90 ok
else
  record nvcc-ptxas-sm90 FAILED
fi
cat "$OUT/kernels.txt"

step "build -tags cuda"
# (vet runs in CI against the stubs: scripts/cuda-compile-check.sh)
nm -D "$libcuda" 2>/dev/null | grep -cE ' T (cuTexRefSetArray|cuCtxCreate_v2|cuModuleGetTexRef)$' | sed 's/^/legacy driver symbols exported (of 3): /'
if timeout 240 sh -c 'go test -c -tags cuda -o /tmp/cuda.test ./cuda && go build -tags cuda -o /tmp/devbench ./cuda/devbench'; then
  record build ok
else
  record build FAILED
fi

step "shared backend suite on the GPU"
if (cd cuda && CARRYON_REQUIRE_GPU=1 timeout 120 /tmp/cuda.test -test.v -test.count=1) > "$OUT/suite.txt" 2>&1; then
  record suite ok
else
  record suite FAILED
fi
grep -E "^(=== RUN|--- |    --- |ok|FAIL|PASS|panic)|suite.go|backend_test" "$OUT/suite.txt" | grep -v "=== RUN" | head -80

step "prefill 8 x 512, Qwen2.5-0.5B shape, random BF16 weights"
timeout 150 /tmp/devbench -dir /tmp/cdb -batch 8 -seq 512 -runs 5 > "$OUT/prefill_carryon.json" && record prefill-carryon ok || record prefill-carryon FAILED
cat "$OUT/prefill_carryon.json"
PYTHONUNBUFFERED=1 timeout 120 python3 scripts/device_torch.py prefill --dir /tmp/cdb --runs 5 > "$OUT/prefill_torch.json" && record prefill-torch ok || record prefill-torch FAILED
cat "$OUT/prefill_torch.json"

step "carry-on training (h 64, L 2, D 896, V 151936, 8 x 512), PyTorch and carryon on this GPU"
timeout 90 python3 scripts/device_torch.py train --steps 20 > "$OUT/train_torch.json" && record train-torch ok || record train-torch FAILED
cat "$OUT/train_torch.json"
timeout 60 /tmp/devbench -mode train -steps 20 > "$OUT/train_carryon.json" && record train-carryon ok || record train-carryon FAILED
cat "$OUT/train_carryon.json"

step "memory: 116M carry-on at the 32B shape (D 5120, V 152064), PyTorch and carryon"
timeout 90 python3 scripts/device_torch.py memory --width 1024 --layers 8 --heads 16 --ffn 2752 --base-dim 5120 \
  --vocab 152064 --batch 4 --seq 512 > "$OUT/memory_torch.json" && record memory-torch ok || record memory-torch FAILED
cat "$OUT/memory_torch.json"
timeout 60 /tmp/devbench -mode memory -width 1024 -layers 8 -heads 16 -ffn 2752 -base-dim 5120 \
  -vocab 152064 -batch 4 -seq 512 > "$OUT/memory_carryon.json" && record memory-carryon ok || record memory-carryon FAILED
cat "$OUT/memory_carryon.json"

step "report"
python3 - "$OUT" "${status[@]}" <<'PY' > "$OUT/report.md"
import json, os, sys
out, status = sys.argv[1], sys.argv[2:]
def load(n):
    try:
        return json.load(open(os.path.join(out, n)))
    except Exception as e:
        return {"error": str(e)}
c, t = load("prefill_carryon.json"), load("prefill_torch.json")
print("# carryon device check\n")
print("## steps\n")
for s in status:
    print("- " + s)
print("\n## prefill 8 x 512 tokens, Qwen2.5-0.5B shape, BF16\n")
print("| impl | tokens/s | median s |\n| --- | --- | --- |")
for r in (c, t):
    print(f"| {r.get('impl')} | {r.get('tokens_per_s', float('nan')):.0f} | {r.get('prefill_s_median', float('nan')):.4f} |")
if "tokens_per_s" in c and "tokens_per_s" in t:
    print(f"\nratio carryon / PyTorch: {c['tokens_per_s'] / t['tokens_per_s']:.2f}x")
print(f"\nhidden states of sequence 0, relative L2 carryon vs PyTorch: {t.get('hidden_rel_l2_vs_carryon')}")
print(f"\ncarryon device memory: weights {c.get('weights_mib')} MiB, workspace {c.get('workspace_mib')} MiB")
print("\n## carry-on training (h 64, L 2, D 896, V 151936, 8 x 512), float32, on this GPU\n")
tt, tc = load("train_torch.json"), load("train_carryon.json")
print("| impl | tokens/s | ms/step |\n| --- | --- | --- |")
for r in (tc, tt):
    print(f"| {r.get('impl')} | {r.get('tokens_per_s', float('nan')):.0f} | {r.get('step_ms', float('nan')):.1f} |")
if "tokens_per_s" in tc and "tokens_per_s" in tt:
    print(f"\nratio carryon / PyTorch: {tc['tokens_per_s'] / tt['tokens_per_s']:.2f}x")
print("\n```\n" + json.dumps(tc) + "\n" + json.dumps(tt) + "\n```")
print("\n## 116M carry-on at the 32B shape (batch 4 x 512), one training step\n")
mt, mc = load("memory_torch.json"), load("memory_carryon.json")
print(f"PyTorch peak (max_memory_allocated): {mt.get('peak_mib')} MiB; carryon device memory (cuMemGetInfo, cuBLAS workspace included): {mc.get('device_mib')} MiB, of which the float32 LM head {mc.get('head_mib')} MiB and parameters+gradients+moments {mc.get('params_grads_moments_mib')} MiB")
print("\n```\n" + json.dumps(mc) + "\n" + json.dumps(mt) + "\n```")
PY
cat "$OUT/report.md"
echo "device-check: done in $(($(date +%s) - start)) s"
