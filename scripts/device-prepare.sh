#!/usr/bin/env bash
# Prepares .device/, the folder that scripts/device-check.sh needs on the lent
# GPU machine (which has nvcc, the CUDA libraries and PyTorch but no Go and no
# network), and checks that it and the working tree fit the device tool's
# 64 MiB. Run here, then call the device tool with carry [".device"]
# (docs/gpu.md). Contents:
#
#   .device/go.tar.xz   this machine's Go toolchain (same version as go.mod
#                       asks for), without tests, testdata, src/cmd, api and
#                       doc: the go command, compile/link/asm/cgo/vet and the
#                       standard library sources
#   .device/vendor/     `go mod vendor` pruned to the packages that the
#                       cuda-tagged build and tests of cuda/, devmodel/ and
#                       tensor/ import, with vendor/modules.txt whole (so
#                       -mod=vendor accepts it)
#   .device/cuda-include/  the CUDA 11.8 headers that the cgo code includes
#                       (cuda.h, cublas_v2.h and what they include, 1.7 MB),
#                       from $CUDA_ROOT (scripts/cuda-compile-check.sh's
#                       folder): the device machine's own CUDA 13 headers
#                       no longer declare the texture-reference calls and the
#                       3-argument cuCtxCreate that gorgonia.org/cu wraps; its
#                       driver still exports them, so we compile against
#                       11.8's declarations and link against that driver
#   .device/MANIFEST    versions, sizes and the package list
#
# .device/ is in .gitignore. Usage: scripts/device-prepare.sh [--test]
# (--test also builds cuda/, devmodel/ and cuda/devbench with the packed
# toolchain and vendor folder, offline, -tags cuda, when CUDA headers are at
# $CUDA_ROOT, as a dry run of what device-check.sh does; --test-only does
# only that, with the .device/ already there.)
set -euo pipefail
cd "$(dirname "$0")/.."
out=.device
limit=$((64 << 20))
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ "${1:-}" != "--test-only" ]; then
rm -rf "$out"
mkdir -p "$out"
goroot=$(go env GOROOT)
gover=$(go env GOVERSION)

echo "prepare: Go toolchain $gover from $goroot"
tar -C "$(dirname "$goroot")" -cf - \
  --exclude='*_test.go' --exclude='testdata' \
  --exclude="$(basename "$goroot")/src/cmd" --exclude="$(basename "$goroot")/test" \
  --exclude="$(basename "$goroot")/api" --exclude="$(basename "$goroot")/doc" \
  --exclude="$(basename "$goroot")/pkg/tool/*/fix" --exclude="$(basename "$goroot")/pkg/tool/*/preprofile" \
  --exclude="$(basename "$goroot")/lib/wasm" \
  --transform "s,^$(basename "$goroot"),go," "$(basename "$goroot")" | xz -T0 -9 > "$out/go.tar.xz"

echo "prepare: vendor subset"
go mod vendor -o "$tmp/vendor"
pkgs=$(go list -deps -test -tags cuda -f '{{if not .Standard}}{{.ImportPath}}{{end}}' ./cuda/... ./devmodel ./tensor/... | grep -v '^carryon' | sort -u)
mkdir -p "$out/vendor"
cp "$tmp/vendor/modules.txt" "$out/vendor/"
for p in $pkgs; do
  [ -d "$tmp/vendor/$p" ] || continue
  mkdir -p "$out/vendor/$p"
  find "$tmp/vendor/$p" -maxdepth 1 -type f -exec cp {} "$out/vendor/$p/" \;
done
# Each vendored module's licence files.
for m in $(awk '/^# /{print $2}' "$tmp/vendor/modules.txt"); do
  [ -d "$out/vendor/$m" ] || continue
  find "$tmp/vendor/$m" -maxdepth 1 -type f -iname 'LICENSE*' -exec cp {} "$out/vendor/$m/" \;
done

echo "prepare: CUDA headers"
hroot=${CUDA_ROOT:-$HOME/.cache/carryon-cuda-11.8}/usr/include
[ -f "$hroot/cuda.h" ] || { echo "prepare: no cuda.h under $hroot: run scripts/cuda-compile-check.sh first or set CUDA_ROOT" >&2; exit 1; }
printf '#include <cuda.h>\n#include <cublas_v2.h>\n#include <library_types.h>\n' > "$tmp/h.c"
mkdir -p "$out/cuda-include"
for f in $(gcc -M -I "$hroot" "$tmp/h.c" | tr ' \\' '\n\n' | grep "^$hroot/"); do
  rel=${f#"$hroot"/}
  mkdir -p "$out/cuda-include/$(dirname "$rel")"
  cp "$f" "$out/cuda-include/$rel"
done

tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
dev=$(du -sb "$out" | cut -f1)
{
  echo "go: $gover"
  echo "go.tar.xz bytes: $(stat -c %s "$out/go.tar.xz")"
  echo "vendor bytes: $(du -sb "$out/vendor" | cut -f1)"
  echo "tracked tree bytes: $tree"
  echo "packages:"
  echo "$pkgs" | sed 's/^/  /'
} > "$out/MANIFEST"
printf 'prepare: go.tar.xz %.1f MiB, vendor %.1f MiB, .device %.1f MiB, tracked tree %.1f MiB, together %.1f of 64 MiB\n' \
  "$(echo "$(stat -c %s "$out/go.tar.xz") / 1048576" | bc -l)" "$(echo "$(du -sb "$out/vendor" | cut -f1) / 1048576" | bc -l)" \
  "$(echo "$dev / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" "$(echo "($dev + $tree) / 1048576" | bc -l)"
if [ $((dev + tree)) -gt $limit ]; then
  echo "prepare: .device and the tree exceed the device tool's 64 MiB" >&2
  exit 1
fi

fi

if [ "${1:-}" = "--test" ] || [ "${1:-}" = "--test-only" ]; then
  root=${CUDA_ROOT:-$HOME/.cache/carryon-cuda-11.8}
  hdr=$PWD/$out/cuda-include
  w="$tmp/work"
  mkdir -p "$w"
  git ls-files -z | xargs -0 cp --parents -t "$w"
  cp -r cuda/kernels/*.ptx "$w/cuda/kernels/" 2>/dev/null || true
  tar -C "$tmp" -xJf "$out/go.tar.xz"
  ln -s "$PWD/$out/vendor" "$w/vendor"
  (cd "$w" && env -u GOROOT PATH="$tmp/go/bin:$PATH" GOTOOLCHAIN=local GOFLAGS=-mod=vendor GOPROXY=off \
    GOCACHE="$tmp/gocache" GOPATH="$tmp/gopath" \
    CGO_CFLAGS="-I$hdr" CGO_LDFLAGS="-L$root/usr/lib/x86_64-linux-gnu/stubs -L$root/usr/lib/x86_64-linux-gnu" \
    sh -c 'go version && go vet -tags cuda ./cuda ./devmodel && go test -c -tags cuda -o /dev/null ./cuda && go build -tags cuda -o /dev/null ./cuda/devbench')
  echo "prepare: offline cuda-tagged build with the packed toolchain and vendor: ok"
fi
