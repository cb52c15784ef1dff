// Package carryon is the carry-on of GPT Carry-On: a small causal
// transformer trained on the frozen base's final-layer hidden states, whose
// gated correction is blended into the base's own LM head,
//
//	logits = W_pred (x̂ + α · g ⊙ Δx)
//
// (docs/method.md has the method as implemented). The package holds the
// network and its forward (net.go) and backward (backward.go) passes side by
// side, the AdamW optimiser (optim.go), the adaptor file format (adaptor.go:
// safetensors with the config and provenance in its metadata), incremental
// decoding with a key/value cache (session.go), and chains of stages
// (chain.go): boosting, where each stage is trained on the output of the
// stages before it, and generation with base + stages.
//
// Numerics: every op's backward is checked against finite differences in
// tensor/, the whole network's gradients and a 10-step loss trajectory
// against PyTorch in float64 (testdata/carryon/gen_reference.py).
package carryon
