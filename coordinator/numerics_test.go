package coordinator

import (
	"testing"

	"carryon/model"
)

// TestJobNamesNumerics checks that the embedding job, its ID and its cache
// keys name the base by EmbedHash (weights and numerics): the same BF16
// files loaded with and without ExactBF16 give two jobs and two caches, so
// cached hidden states of one numerics are never read as the other's, and
// an exact base keeps the names it had (EmbedHash is WeightsHash).
func TestJobNamesNumerics(t *testing.T) {
	rb, err := model.NewRandomBase(localBase(t).Config, 3)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := rb.SaveHFBF16(dir); err != nil {
		t.Fatal(err)
	}
	ds := localData(t, 10)
	var jobs [2]embedJob
	for i, opt := range []model.LoadOptions{{}, {ExactBF16: true}} {
		b, err := model.LoadBaseWith(dir, opt)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		c := localCoordinator(t, t.TempDir(), b, "q8", []int{model.FinalLayer})
		jobs[i] = c.job(ds)
		if jobs[i].Base != b.EmbedHash() {
			t.Errorf("%+v: job base %s, want EmbedHash %s", opt, jobs[i].Base, b.EmbedHash())
		}
		if k := jobs[i].key(model.FinalLayer, ds.Train[0]); k.Base != b.EmbedHash() {
			t.Errorf("%+v: cache key base %s, want %s", opt, k.Base, b.EmbedHash())
		}
		if opt.ExactBF16 && b.EmbedHash() != b.WeightsHash {
			t.Errorf("exact base: EmbedHash %s is not its WeightsHash %s", b.EmbedHash(), b.WeightsHash)
		}
	}
	if jobs[0].Base == jobs[1].Base || jobs[0].ID == jobs[1].ID {
		t.Errorf("bf16 and exact numerics share a job: %s/%s vs %s/%s", jobs[0].ID, jobs[0].Base, jobs[1].ID, jobs[1].Base)
	}
}
