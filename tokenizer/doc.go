// Package tokenizer turns text into token ids and back, as the bases'
// own tokenizers do: byte-level BPE (GPT-2, Llama 3, Qwen2/2.5/3) read from
// a Hugging Face tokenizer.json or from a GGUF file's tokenizer.ggml.*
// metadata, with the families' pre-tokenizers (pretokenize.go), special
// tokens and NFC normalisation; SentencePiece as llama.cpp runs it for GGUF
// files of the Llama 2 family (spm.go), also read from the SentencePiece
// form of tokenizer.json (BPE with byte fallback, or Unigram: hfspm.go);
// and the byte vocabulary of test
// bases. It also trains byte-level BPE vocabularies from a corpus
// (bpe_train.go), which pretrain uses to build the embedded base's
// tokenizer.
//
// Checked against llama.cpp's upstream vocabulary test vectors (BPE and
// SentencePiece: tokenizer_test.go, spm_test.go, hfspm_test.go), against
// transformers.js on the real Qwen3 tokenizer (tokenizer_test.go) and
// against Hugging Face tokenizers on SentencePiece-form tokenizer.json
// files (hfspm_test.go).
package tokenizer
