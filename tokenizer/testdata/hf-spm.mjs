// Writes testdata/hf-spm-FORM.out: the ids that Hugging Face tokenizers
// (npm tokenizers@0.23.2, the Rust library's Node binding) gives for each
// case of llama.cpp's ggml-vocab-llama-spm.gguf.inp, without special
// tokens, with the tokenizer.json files that TestHFSPMGolden writes.
//
//   mkdir /tmp/hf && cd /tmp/hf && npm install tokenizers@0.23.2
//   CARRYON_WRITE_HF_SPM=/tmp/hf/forms go test ./tokenizer -run TestHFSPMGolden
//   git --git-dir ~/.cache/carryon-oracle/llama.cpp.git show HEAD:models/ggml-vocab-llama-spm.gguf.inp > /tmp/hf/cases.inp
//   NODE_PATH=/tmp/hf/node_modules node tokenizer/testdata/hf-spm.mjs /tmp/hf/forms /tmp/hf/cases.inp tokenizer/testdata
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const require = createRequire(process.env.NODE_PATH ? join(process.env.NODE_PATH, "x") : import.meta.url);
const { Tokenizer } = require("tokenizers");
const [forms, inp, out] = process.argv.slice(2);
const sep = "\n__ggml_vocab_test__\n";
let text = readFileSync(inp, "utf8");
if (text.endsWith(sep)) text = text.slice(0, -sep.length);
const cases = text.split(sep);
for (const form of ["bpe-legacy", "bpe-metaspace", "unigram"]) {
  const tok = Tokenizer.fromFile(join(forms, form, "tokenizer.json"));
  const lines = [];
  for (const c of cases) {
    const enc = await tok.encode(c, null, { addSpecialTokens: false });
    lines.push(enc.getIds().join(" "));
  }
  writeFileSync(join(out, `hf-spm-${form}.out`), lines.join("\n") + "\n");
  console.log(form, cases.length, "cases");
}
