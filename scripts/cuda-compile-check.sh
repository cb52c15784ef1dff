#!/usr/bin/env bash
# Compiles everything CUDA without a GPU (CI runs it; docs/gpu.md):
#   1. installs Debian bookworm's CUDA 11.8 compiler, headers and driver/cuBLAS
#      stubs (non-free component, same mirror as the system's sources) into a
#      private folder, $CARRYON_CUDA_DIR (default ~/.cache/carryon-cuda-11.8),
#      without touching the system's packages; idempotent;
#   2. regenerates cuda/kernels/*.ptx with nvcc 11.8 and fails if they differ
#      from the committed files, and assembles each for sm_80 and sm_90 with
#      ptxas (what the driver's JIT would reject fails here);
#   3. vets and compiles every package with -tags cuda (and the cuda test
#      binary) against the stubs. Nothing runs: the binaries need a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${CARRYON_CUDA_DIR:-$HOME/.cache/carryon-cuda-11.8}"
t0=$(date +%s)
if [ ! -x "$root/usr/lib/nvidia-cuda-toolkit/bin/nvcc" ] || [ ! -f "$root/usr/include/cublas_v2.h" ]; then
  apt="$root.apt"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
  cat > "$apt/sources.list" <<'SRC'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main contrib non-free
SRC
  o=(-o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache" -qq)
  apt-get "${o[@]}" update
  (cd "$apt/debs" && apt-get "${o[@]}" download nvidia-cuda-toolkit nvidia-cuda-dev libnvvm4 \
    gcc-11 g++-11 cpp-11 libstdc++-11-dev libgcc-11-dev gcc-11-base libasan6 libtsan0)
  echo "cuda-compile-check: downloaded $(du -sh "$apt/debs" | cut -f1) in $(($(date +%s) - t0)) s"
  rm -rf "$root" && mkdir -p "$root"
  for f in "$apt/debs"/*.deb; do
    case "$f" in
      *nvidia-cuda-dev_*) # headers and link stubs only (the rest is 3 GB of libraries)
        dpkg-deb --fsys-tarfile "$f" | tar -x -C "$root" --wildcards './usr/include/*' \
          './usr/lib/x86_64-linux-gnu/stubs/*' ;;
      *) dpkg -x "$f" "$root" ;;
    esac
  done
  rm -rf "$apt"
  bin="$root/usr/lib/nvidia-cuda-toolkit/bin"
  rm -f "$bin/nvcc.profile" # a link to /etc/nvcc.profile: point it at this folder instead
  cat > "$bin/nvcc.profile" <<PROF
NVVMIR_LIBRARY_DIR = \$(_HERE_)/../libdevice
PATH += \$(_HERE_):$root/usr/bin:
INCLUDES += "-I$root/usr/include" \$(_SPACE_)
LIBRARIES =+ \$(_SPACE_) -L$root/usr/lib/x86_64-linux-gnu/stubs
PROF
  echo "cuda-compile-check: installed into $root ($(du -sh "$root" | cut -f1)) in $(($(date +%s) - t0)) s"
fi
export PATH="$root/usr/lib/nvidia-cuda-toolkit/bin:$root/usr/bin:$PATH"

t1=$(date +%s)
NVCC=nvcc CCBIN="$root/usr/bin/g++-11" PTXAS="$root/usr/bin/ptxas" cuda/kernels/build.sh --check
if ! git diff --quiet -- cuda/kernels; then
  git diff --stat -- cuda/kernels
  echo "cuda-compile-check: the committed PTX differs from what nvcc 11.8 makes of the sources: commit the output of cuda/kernels/build.sh" >&2
  exit 1
fi
echo "cuda-compile-check: PTX regenerated identically and assembled for sm_80/sm_90 in $(($(date +%s) - t1)) s"

t2=$(date +%s)
export CGO_CFLAGS="-I$root/usr/include" CGO_LDFLAGS="-L$root/usr/lib/x86_64-linux-gnu/stubs"
go vet -tags cuda ./...
go test -tags cuda -c -o /dev/null ./cuda
go build -tags cuda -o /dev/null ./cmd/carryon
go build -tags cuda -o /dev/null ./cuda/devbench
echo "cuda-compile-check: -tags cuda vetted and compiled in $(($(date +%s) - t2)) s (total $(($(date +%s) - t0)) s)"
