package node

import (
	"testing"

	"carryon/model"
)

// TestServeAdvertisesEmbedHash checks that a node names its base by its
// weights and numerics: a BF16 checkpoint loaded by default (activations
// rounded to bf16) is advertised under a hash other than the same files
// loaded with ExactBF16, so that a coordinator never leases one's job to
// the other (their hidden states differ by more than verification allows).
func TestServeAdvertisesEmbedHash(t *testing.T) {
	rb, err := model.NewRandomBase(model.TinyConfig("qwen2"), 7)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := rb.SaveHFBF16(dir); err != nil {
		t.Fatal(err)
	}
	def, err := model.LoadBase(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer def.Close()
	exact, err := model.LoadBaseWith(dir, model.LoadOptions{ExactBF16: true})
	if err != nil {
		t.Fatal(err)
	}
	defer exact.Close()
	if def.WeightsHash != exact.WeightsHash {
		t.Fatalf("the same files have two weights hashes: %s, %s", def.WeightsHash, exact.WeightsHash)
	}
	d, e := Serve(def, "bf16").Info().WeightsHash, Serve(exact, "exact").Info().WeightsHash
	if d != def.EmbedHash() || d == def.WeightsHash || def.Numerics() != model.NumericsBF16 {
		t.Errorf("default BF16 base advertised as %s (EmbedHash %s, WeightsHash %s, numerics %q)", d, def.EmbedHash(), def.WeightsHash, def.Numerics())
	}
	if e != exact.WeightsHash {
		t.Errorf("exact base advertised as %s, want its WeightsHash %s", e, exact.WeightsHash)
	}
}
