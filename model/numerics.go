package model

import (
	"crypto/sha256"
	"encoding/hex"
)

// NumericsBF16 is Base.Numerics for a base whose BF16 block matrices are
// multiplied with tensor.GemmBF16's numerics: activations rounded to bf16
// (nearest even), exact products, float32 accumulation (LoadOptions).
const NumericsBF16 = "bf16-activations"

// Numerics names how the base's products round where that is not the
// exact float32 product of its stored weights: "" when every product is
// exact (F32, F16 and quantized weights widened exactly, BF16 with
// LoadOptions.ExactBF16 or Widen), NumericsBF16 when its BF16 block
// matrices round the activations to bf16 (LoadOptions' default). Two
// bases with the same weights but different numerics give hidden states
// about 1e-3–1e-2 apart, more than the coordinator's verification allows
// between honest nodes, so the swarm tells them apart (EmbedHash).
// Int8 (LoadOptions.Int8) is not named here: it is opt-in for local use.
func (b *Base) Numerics() string { return b.numerics }

// EmbedHash names the base's hidden states for the swarm: the identity of
// an embedding job's base (node adverts, leases, the coordinator's cache
// keys and job IDs). It is WeightsHash when Numerics is "", so exact
// bases keep the names (and caches) they had; otherwise
// EmbedHashOf(WeightsHash, Numerics). Adaptors still name their base by
// WeightsHash: they work with either numerics.
func (b *Base) EmbedHash() string { return EmbedHashOf(b.WeightsHash, b.numerics) }

// EmbedHashOf is EmbedHash for weights named weightsHash computed with
// numerics: weightsHash itself for "", else the hex sha256 of
// "carryon numerics " + numerics + NUL + weightsHash.
func EmbedHashOf(weightsHash, numerics string) string {
	if numerics == "" {
		return weightsHash
	}
	h := sha256.Sum256([]byte("carryon numerics " + numerics + "\x00" + weightsHash))
	return hex.EncodeToString(h[:])
}
