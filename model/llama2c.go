package model

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"os"
)

// llama2.c checkpoint format (karpathy/llama2.c, run.c "legacy" version 0):
// a header of seven little-endian int32 — dim, hidden_dim, n_layers,
// n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means the
// classifier is not shared with the token embedding — then float32 weights:
//
//	token_embedding (vocab, dim)
//	rms_att (layers, dim)
//	wq (layers, heads·hs, dim)   wk, wv (layers, kv·hs, dim)   wo (layers, dim, heads·hs)
//	rms_ffn (layers, dim)
//	w1 (layers, hidden, dim)   w2 (layers, dim, hidden)   w3 (layers, hidden, dim)
//	rms_final (dim)
//	freq_cis_real, freq_cis_imag (seq_len, hs/2), unused
//	wcls (vocab, dim), only when unshared
//
// with hs = dim / heads. The FFN is w2(silu(w1·x) ⊙ w3·x), so w1 is HF's
// gate_proj and w3 its up_proj. RoPE (θ = 10000) rotates adjacent pairs
// (2i, 2i+1) within each head; the loader permutes the rows of wq and wk per
// head to HF's rotate-half order [0, 2, 4, …, 1, 3, 5, …], which leaves q·k
// unchanged, so the model runs on the ordinary HF path. RMSNorm eps is 1e-5;
// llama2.c's tokenizers use BOS 1 and EOS 2.
const llama2cHeaderBytes = 7 * 4

// LoadLlama2C reads a llama2.c checkpoint and converts it to a Base (Arch
// "llama", HF layout). The weights are copied into memory (the file is
// small by the standards of this format); WeightsHash is the sha256 of the
// file.
func LoadLlama2C(path string) (*Base, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("model.LoadLlama2C: %w", err)
	}
	b, err := parseLlama2C(data)
	if err != nil {
		return nil, fmt.Errorf("model.LoadLlama2C: %s: %w", path, err)
	}
	return b, nil
}

// llama2cConfig decodes and checks the header.
func llama2cConfig(data []byte) (Config, bool, error) {
	if len(data) < llama2cHeaderBytes {
		return Config{}, false, fmt.Errorf("%d bytes: shorter than the %d-byte header", len(data), llama2cHeaderBytes)
	}
	var h [7]int
	for i := range h {
		h[i] = int(int32(binary.LittleEndian.Uint32(data[4*i:])))
	}
	dim, hidden, layers, heads, kv, vocab, seqLen := h[0], h[1], h[2], h[3], h[4], h[5], h[6]
	shared := vocab > 0
	if vocab < 0 {
		vocab = -vocab
	}
	if heads < 1 || heads > MaxHeads || dim < 1 || dim > MaxDim || dim%heads != 0 {
		return Config{}, false, fmt.Errorf("header: dim %d is not a positive multiple of n_heads %d", dim, heads)
	}
	cfg := Config{Arch: "llama", Dim: dim, Layers: layers, Heads: heads, KVHeads: kv, HeadDim: dim / heads,
		FFN: hidden, Vocab: vocab, MaxPos: seqLen, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: shared,
		BOS: 1, EOS: 2}
	if cfg.Vocab < 3 {
		cfg.BOS, cfg.EOS = -1, -1
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, false, fmt.Errorf("header: %w", err)
	}
	return cfg, shared, nil
}

// llama2cFloats is the number of float32s after the header; the caps of
// Validate keep it far from overflowing.
func llama2cFloats(c Config) int64 {
	D, L, F, V := int64(c.Dim), int64(c.Layers), int64(c.FFN), int64(c.Vocab)
	qd, kvd, hs := int64(c.Heads*c.HeadDim), int64(c.KVHeads*c.HeadDim), int64(c.HeadDim)
	n := V*D + L*(D+qd*D+2*kvd*D+D*qd+D+3*F*D) + D + int64(c.MaxPos)*hs
	if !c.TiedEmbeddings {
		n += V * D
	}
	return n
}

func parseLlama2C(data []byte) (*Base, error) {
	cfg, shared, err := llama2cConfig(data)
	if err != nil {
		return nil, err
	}
	want := llama2cHeaderBytes + 4*llama2cFloats(cfg)
	if int64(len(data)) != want {
		return nil, fmt.Errorf("file is %d bytes; the header (dim %d, hidden %d, layers %d, heads %d/%d, vocab %d, seq_len %d, shared classifier %v) needs %d",
			len(data), cfg.Dim, cfg.FFN, cfg.Layers, cfg.Heads, cfg.KVHeads, cfg.Vocab, cfg.MaxPos, shared, want)
	}
	all := make([]float32, (len(data)-llama2cHeaderBytes)/4)
	for i := range all {
		all[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[llama2cHeaderBytes+4*i:]))
	}
	sum := sha256.Sum256(data)
	b := &Base{Config: cfg, WeightsHash: hex.EncodeToString(sum[:])}
	D, L, F, V, hd := cfg.Dim, cfg.Layers, cfg.FFN, cfg.Vocab, cfg.HeadDim
	qd, kvd := cfg.Heads*hd, cfg.KVHeads*hd
	next := func(n int) []float32 {
		s := all[:n:n]
		all = all[n:]
		return s
	}
	b.embed = next(V * D)
	rmsAtt, wq, wk, wv, wo := next(L*D), next(L*qd*D), next(L*kvd*D), next(L*kvd*D), next(L*D*qd)
	rmsFFN, w1, w2, w3 := next(L*D), next(L*F*D), next(L*D*F), next(L*F*D)
	b.finalNorm = next(D)
	next(cfg.MaxPos * hd) // freq_cis_real and freq_cis_imag, (seq_len, hs/2) each
	b.lmHead = b.embed
	if !shared {
		b.lmHead = next(V * D)
	}
	b.layers = make([]layerWeights, L)
	for l := range b.layers {
		w := &b.layers[l]
		w.attnNorm = rmsAtt[l*D : (l+1)*D]
		w.wq = f32Matrix(interleavedToHalf(wq[l*qd*D:(l+1)*qd*D], cfg.Heads, hd, D))
		w.wk = f32Matrix(interleavedToHalf(wk[l*kvd*D:(l+1)*kvd*D], cfg.KVHeads, hd, D))
		w.wv = f32Matrix(wv[l*kvd*D : (l+1)*kvd*D])
		w.wo = f32Matrix(wo[l*D*qd : (l+1)*D*qd])
		w.mlpNorm = rmsFFN[l*D : (l+1)*D]
		w.gate = f32Matrix(w1[l*F*D : (l+1)*F*D])
		w.down = f32Matrix(w2[l*D*F : (l+1)*D*F])
		w.up = f32Matrix(w3[l*F*D : (l+1)*F*D])
	}
	return b, nil
}

// interleavedToHalf reorders, in place, the rows of a projection w
// (heads·hd, in) so that within each head row 2i moves to i and row 2i+1 to
// hd/2+i: interleaved-pair RoPE on the old rows equals rotate-half RoPE on
// the new ones. It returns w.
func interleavedToHalf(w []float32, heads, hd, in int) []float32 {
	tmp := make([]float32, hd*in)
	for h := 0; h < heads; h++ {
		head := w[h*hd*in : (h+1)*hd*in]
		for i := 0; i < hd/2; i++ {
			copy(tmp[i*in:(i+1)*in], head[2*i*in:(2*i+1)*in])
			copy(tmp[(hd/2+i)*in:(hd/2+i+1)*in], head[(2*i+1)*in:(2*i+2)*in])
		}
		copy(head, tmp)
	}
	return w
}
