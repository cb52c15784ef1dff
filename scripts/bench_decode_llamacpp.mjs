#!/usr/bin/env node
// bench_decode_llamacpp.mjs MODEL.gguf [--prompt 32] [--decode 64] [--threads N] [--runs 3]
//
// Decode (batch 1) throughput of llama.cpp on the CPU, the yardstick of `carryon bench forward --decode N`:
// a prompt of --prompt pseudo-random token ids is decoded into an empty F32 KV cache, then --decode single tokens
// are decoded one llama_decode call each, the LM head run for every one (as a generator does). One warm-up run,
// then the median of --runs. Uses the llama.cpp oracle's tools (CARRYON_LLAMACPP_TOOLS, default
// the first shared/tools/llamacpp above this script; see its README). Prints one JSON line.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
// the first shared/tools/llamacpp found above this script (a worktree may sit deeper than ../)
let tools = process.env.CARRYON_LLAMACPP_TOOLS;
for (let d = here; !tools; d = path.dirname(d)) {
    const c = path.join(d, "shared", "tools", "llamacpp");
    if (fs.existsSync(path.join(c, "hidden.mjs"))) tools = c;
    else if (path.dirname(d) === d) { console.error("shared/tools/llamacpp not found: set CARRYON_LLAMACPP_TOOLS"); process.exit(2); }
}
const { loadNodeLlamaCpp, parseArgs } = await import(pathToFileURL(path.join(tools, "hidden.mjs")).href);

const usage = "usage: bench_decode_llamacpp.mjs MODEL.gguf [--prompt 32] [--decode 64] [--threads N] [--runs 3]";
const { pos, opt } = parseArgs(process.argv.slice(2), usage);
if (pos.length !== 1) { console.error(usage); process.exit(2); }
const nPrompt = Number(opt.prompt ?? 32);
const nDecode = Number(opt.decode ?? 64);
const threads = Number(opt.threads ?? os.availableParallelism?.() ?? os.cpus().length);
const runs = Number(opt.runs ?? 3);

const { getLlama, LlamaLogLevel } = await loadNodeLlamaCpp();
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: pos[0], gpuLayers: 0 });
const md = model.fileInfo.metadata;
const nVocab = md.tokenizer?.ggml?.tokens?.length ?? md[md.general.architecture]?.vocab_size;
const context = await model.createContext({
    contextSize: Math.max(nPrompt + nDecode + 64, 256), batchSize: Math.max(nPrompt, 1), sequences: 1, threads,
    flashAttention: false, experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
});
const seq = context.getSequence();
let state = 12345; // fixed-seed LCG
const next = () => (state = (state * 1103515245 + 12345) % 2 ** 31) % nVocab;
const prompt = Array.from({ length: nPrompt }, next);
const steps = Array.from({ length: nDecode }, next);

const times = [];
for (let r = 0; r <= runs; r++) {
    await seq.clearHistory();
    await seq.controlledEvaluate(prompt.map((t, i) => (i === nPrompt - 1 ? [t, { generateNext: { token: true } }] : t)));
    const t0 = performance.now();
    for (const t of steps) {
        await seq.controlledEvaluate([[t, { generateNext: { token: true } }]]);
    }
    const s = (performance.now() - t0) / 1000;
    if (r > 0) times.push(s); // run 0 is the warm-up
}
const sorted = [...times].sort((a, b) => a - b);
const median = sorted[(sorted.length - 1) >> 1];
console.log(JSON.stringify({
    model: path.basename(pos[0]), prompt: nPrompt, decode: nDecode, threads, runs,
    decode_tok_s: Number((nDecode / median).toFixed(2)), median_s: Number(median.toFixed(4)),
    times_s: times.map((t) => Number(t.toFixed(4))), engine: "llama.cpp via node-llama-cpp 3.21.1, CPU",
}));
await context.dispose();
await model.dispose();
await llama.dispose();
