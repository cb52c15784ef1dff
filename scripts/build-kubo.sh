#!/usr/bin/env bash
# Builds Kubo (the reference IPFS node) from the Go module proxy and caches the
# binary, for the interop tests in swarm/ and cmd/carryon (CARRYON_KUBO names
# the binary; .ci/run sets it). Usage: scripts/build-kubo.sh CACHE_DIR
# Prints the path of the binary. Idempotent: a cached binary of the right
# version is reused, so CI pays (about 7 minutes on 2 cores) once per machine.
#
# `go install github.com/ipfs/kubo/cmd/ipfs@v0.43.1` is refused because Kubo's
# go.mod has replace directives, and the go-libp2p fork it names is not served
# by the proxy. So: download the module source, drop that replace line, pin the
# released go-libp2p, build.
set -euo pipefail
version="${KUBO_VERSION:-v0.43.1}"
libp2p="${KUBO_LIBP2P:-v0.51.0}"
cache="${1:?usage: build-kubo.sh CACHE_DIR}"
bin="$cache/ipfs-$version"
if [ -x "$bin" ] && "$bin" version 2>/dev/null | grep -q "${version#v}"; then
  echo "$bin"; exit 0
fi
mkdir -p "$cache"
src="$(go mod download -json "github.com/ipfs/kubo@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -d "$src" ] || { echo "build-kubo: go mod download gave no source dir for kubo@$version" >&2; exit 1; }
work="$(mktemp -d "$cache/build.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$src/." "$work/"
chmod -R u+w "$work"
cd "$work"
sed -i '/^replace github.com\/libp2p\/go-libp2p /d; /^[[:space:]]*github.com\/libp2p\/go-libp2p => /d' go.mod
go get "github.com/libp2p/go-libp2p@$libp2p" >&2
go build -trimpath -o "$bin.tmp" ./cmd/ipfs >&2
mv "$bin.tmp" "$bin"
echo "$bin"
