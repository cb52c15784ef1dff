// Package model is the frozen base LLM: the llama, qwen2 and qwen3 dense
// families, their loaders (Hugging Face safetensors, GGUF, llama2.c), the
// forward pass, KV-cached incremental decoding and sampling, and the base's
// full training step (BaseTrainer, which pretrain drives). Tokenizers live in
// tokenizer/, the carry-on in carryon/.
//
// # Base models
//
// A Base runs the Hugging Face forward pass of the llama / qwen2 / qwen3
// dense families on the CPU, in float32:
//
//	x = embed[ids]                                   // (T, Dim)
//	for each layer:
//	    h = RMSNorm(x)·{Wq,Wk,Wv}ᵀ (+ biases: qwen2)  // q (T, Heads·hd), k, v (T, KVHeads·hd)
//	    q, k = RMSNorm per head (qwen3 only)
//	    q, k = RoPE (rotate-half, optional llama3 frequency scaling)
//	    x += causal GQA attention(q, k, v)·Woᵀ
//	    x += down(silu(gate(RMSNorm(x))) ⊙ up(RMSNorm(x)))
//	hidden = RMSNorm(x)                               // FinalLayer: the LM head's input
//	logits = hidden·W_predᵀ                           // (T, Vocab)
//
// Forward returns the hidden states of any requested layers: FinalLayer (the
// carry-on's input x_t), or the residual stream after k blocks (0 = the
// token embeddings, the shallow shortcut s_t).
//
// LoadBase reads config.json and model.safetensors (or shards with
// model.safetensors.index.json) and LoadGGUF a llama.cpp GGUF file. The
// weights stay memory-mapped in their stored format (F32, F16, BF16, Q8_0,
// Q4_K, Q6_K): float32 block matrices are packed once for tensor.GemmPacked
// and their mapped pages released, the others are multiplied in place by
// tensor.GemmQuant, so resident memory stays at about one copy of the file
// (LoadOptions.Widen changes this). BF16 block matrices are multiplied with
// the activations rounded to bf16 (tensor.GemmBF16's numerics, packed for
// VDPBF16PS where the CPU has AVX512_BF16) unless LoadOptions.ExactBF16;
// Base.Numerics and Base.EmbedHash name that. The weights
// are named by WeightsHash, the sha256 of the weight files' bytes, which the
// swarm uses to tell bases apart. LoadLlama2C reads llama2.c checkpoints
// (stories260K), permuting their interleaved RoPE layout into HF's.
// WriteRandomBase makes deterministic random checkpoints for tests and the
// demo (DemoConfig).
//
// Numerics are checked against llama.cpp (model/oracle_test.go, through
// shared/tools/llamacpp).
package model
