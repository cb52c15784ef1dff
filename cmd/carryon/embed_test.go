package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"carryon/model"
	"carryon/tokenizer"
)

// TestEmbedAndBenchForward runs `embed` on a small random checkpoint with
// the byte vocabulary and checks the JSON against Base.Forward, then runs
// benchForward on it and checks its JSON line.
func TestEmbedAndBenchForward(t *testing.T) {
	dir := t.TempDir()
	mdir := filepath.Join(dir, "m")
	cfg := model.DemoConfig()
	cfg.Layers = 2
	if err := model.WriteRandomBase(mdir, cfg, 4); err != nil {
		t.Fatal(err)
	}
	in, out := filepath.Join(dir, "in.json"), filepath.Join(dir, "out.json")
	os.WriteFile(in, []byte(`["hi there", "x"]`), 0o644)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"embed", "--model", mdir, "--text", in, "--layers", "final,0,2", "--out", out}, &stdout, &stderr); code != 0 {
		t.Fatalf("embed exit %d: %s", code, stderr.String())
	}
	var res embedOutput
	data, _ := os.ReadFile(out)
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatal(err)
	}
	b, err := model.LoadBase(mdir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if len(res.Sequences) != 2 || res.Dim != cfg.Dim || len(res.Layers) != 3 || res.WeightsHash != b.WeightsHash {
		t.Fatalf("output: %d sequences, dim %d, layers %v, hash %s", len(res.Sequences), res.Dim, res.Layers, res.WeightsHash)
	}
	// embed runs its sequences as one batch: exactly ForwardBatch's numbers.
	var texts [][]int32
	for _, txt := range []string{"hi there", "x"} {
		texts = append(texts, tokenizer.ByteTokenizer{}.Encode(txt))
	}
	batch, err := b.ForwardBatch(texts, []int{model.FinalLayer, 0, 2})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range res.Sequences {
		want := batch[i]
		for l := range want {
			if len(s.Hidden[l]) != len(s.Tokens) {
				t.Fatalf("seq %d layer %d: %d rows for %d tokens", i, l, len(s.Hidden[l]), len(s.Tokens))
			}
			for p, row := range s.Hidden[l] {
				for j, v := range row {
					if v != want[l][p*cfg.Dim+j] {
						t.Fatalf("seq %d layer %s pos %d dim %d: %g, want %g", i, res.Layers[l], p, j, v, want[l][p*cfg.Dim+j])
					}
				}
			}
		}
	}
	if code := run([]string{"embed", "--model", mdir, "--tokens", in, "--out", out}, &stdout, &stderr); code == 0 {
		t.Error("embed accepted strings as --tokens")
	}
	stdout.Reset()
	if err := benchForward(context.Background(), []string{"--model", mdir, "--tokens", "32", "--threads", "1", "--runs", "1"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	var br forwardBenchResult
	if err := json.Unmarshal(stdout.Bytes(), &br); err != nil {
		t.Fatalf("%v: %s", err, stdout.String())
	}
	if br.Tokens != 32 || br.TokensPerSec <= 0 || br.PeakRSSBytes <= 0 || br.ModelBytes <= 0 || len(br.TimesS) != 1 || len(br.CPUS) != 1 {
		t.Errorf("bench forward: %+v", br)
	}
}
