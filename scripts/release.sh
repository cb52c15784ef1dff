#!/usr/bin/env bash
# release.sh VERSION [OUTDIR]: builds carryon for the six release targets
# (linux, darwin and windows on amd64 and arm64; pure Go, CGO_ENABLED=0, so
# no cross C toolchain is needed), stamps the version and commit into each
# binary (`carryon version` prints them), packs one archive per target
# (.tar.gz; .zip for Windows) with README.md and docs/volunteer.md, and
# writes SHA256SUMS over the archives.
#
#   scripts/release.sh v0.3.0            # -> dist/v0.3.0/
#   RELEASE_TARGETS=linux/amd64 scripts/release.sh v0.3.0-rc1 /tmp/out
#
# The CUDA build (-tags cuda) needs the CUDA toolkit and cgo, so it is not
# part of these archives; see README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

version="${1:?usage: scripts/release.sh VERSION [OUTDIR]}"
out="${2:-dist/$version}"
targets="${RELEASE_TARGETS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64}"
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  commit="$commit+dirty"
fi
ldflags="-s -w -X carryon/internal/buildinfo.Version=$version -X carryon/internal/buildinfo.Commit=$commit"

mkdir -p "$out"
out="$(cd "$out" && pwd)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

archives=()
for target in $targets; do
  goos="${target%/*}" goarch="${target#*/}"
  name="carryon-$version-$goos-$goarch"
  dir="$stage/$name"
  mkdir -p "$dir"
  exe="carryon"
  [ "$goos" = windows ] && exe="carryon.exe"
  echo "release: building $target"
  GOOS="$goos" GOARCH="$goarch" CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$dir/$exe" ./cmd/carryon
  cp README.md "$dir/"
  [ -f docs/volunteer.md ] && cp docs/volunteer.md "$dir/"
  if [ "$goos" = windows ]; then
    (cd "$stage" && rm -f "$out/$name.zip" && zip -qr "$out/$name.zip" "$name")
    archives+=("$name.zip")
  else
    tar -C "$stage" -czf "$out/$name.tar.gz" "$name"
    archives+=("$name.tar.gz")
  fi
  awk -v t="$target" -v b="$(wc -c < "$dir/$exe")" 'BEGIN { printf "release: %-16s binary %6.1f MiB\n", t, b / 1048576 }'
done
(cd "$out" && sha256sum "${archives[@]}" > SHA256SUMS)
echo "release: $version ($commit) in $out"
(cd "$out" && ls -l "${archives[@]}" SHA256SUMS)
