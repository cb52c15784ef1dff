// Package tensor holds carryon's numbers: CPU kernels (GEMM with a pure-Go
// fallback), the ops of the base models and of the carry-on with forward and
// backward side by side, half-precision conversion, the bridge codecs and
// file formats.
//
// Conventions, once for the whole package (after llm.c):
//
//   - Every tensor is a row-major []float32; shapes are given as int
//     arguments and documented in comments, e.g. // x: (T, C).
//   - Forward writes into caller-owned outputs and saves what backward needs
//     (rstd, logsumexp, ...) into caller-owned caches.
//   - Backward ACCUMULATES (+=) into every gradient it writes (parameters and
//     activations alike), so a tensor read by several ops just sums their
//     contributions; callers zero gradient buffers before a backward pass.
//     A nil gradient argument is skipped (e.g. the input of a frozen leaf).
//     The one exception, RoPE.Backward, works in place and says so.
//   - Functions never allocate per call in hot paths unless stated; scratch
//     space is passed in.
//   - Library code never logs; it returns errors (or panics on programmer
//     errors such as mismatched shapes).
package tensor
